"""Seconds per PPO step, split into generation, scoring and optimisation, for sparse vs abc (or --schemes).

    python bench/bench_step.py                 # GPT-2 124M-sized policy and RM (random weights), CPU
    python bench/bench_step.py --policy lvwerra/gpt2-imdb --reward_model XanderJC/gpt2-rm-imdb
    python bench/bench_step.py --layers 2 --width 128 --mini_batch_size 16 --gen_len 16 16
    python bench/bench_step.py --policy data/mini/policy --reward_model data/mini/reward_model \
        --dataset data/mini/prompts.jsonl --schemes sparse abc shapley --gen_len 8 15 --extra --lr 1e-4

Not collected by pytest. Both schemes run on the same seed, so they see the same prompts and
lengths at step 0; the order alternates (sparse, abc, sparse, abc, ...) so that drift in the
machine's speed hits both alike. Step 0 is dropped as warm-up. The RM's rows per step (rm_rows: the
batch, and for shapley every coalition) are printed beside the times.
"""
import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import abc_ppo  # noqa: E402
from plumbing import checkpoints  # noqa: E402
from plumbing import mini  # noqa: E402

PHASES = ("time_generate", "time_score", "time_optimize")


def gpt2_small(root, layers=12, width=768):
    """Random-weight GPT-2 124M policy and reward model (12 layers, 768 wide, 50257 vocab), saved locally,
    or another depth and width with the same vocabulary. The tokenizer is the mini one; its ids are a
    subset of the vocab, and nothing is decoded."""
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    texts, _ = mini.read_reviews(mini.CORPUS)
    tok = mini.train_tokenizer(texts)
    size = dict(n_layer=layers, n_embd=width, n_head=width // 64, n_positions=1024, vocab_size=50257)
    for name, model in (("policy", GPT2LMHeadModel(mini.gpt2_config(tok, **size))),
                        ("reward_model", GPT2ForSequenceClassification(mini.gpt2_config(tok, num_labels=2, **size)))):
        model.save_pretrained(os.path.join(root, name))
        tok.save_pretrained(os.path.join(root, name))
    data = os.path.join(root, "prompts.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return os.path.join(root, "policy"), os.path.join(root, "reward_model"), data


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy")
    p.add_argument("--reward_model")
    p.add_argument("--dataset", default=None)
    p.add_argument("--steps", type=int, default=3, help="steps per run, the first dropped as warm-up")
    p.add_argument("--repeats", type=int, default=2, help="runs per scheme, alternating")
    p.add_argument("--mini_batch_size", type=int, default=1)
    p.add_argument("--layers", type=int, default=12, help="of the random-weight GPT-2 (no --policy)")
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--gen_len", nargs=2, default=["8", "16"], help="MIN MAX new tokens; prompts are 2-8, as bench_trl.py")
    p.add_argument("--device", default="cpu")
    p.add_argument("--schemes", nargs="+", default=["sparse", "abc"], help="the first is the baseline of the ratios")
    p.add_argument("--check_cost", action="store_true",
                   help="abc with and without the per-step finite check (checkpoints.check_finite), alternating")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more abc_ppo.py flags for every run")
    a = p.parse_args()
    if a.check_cost:
        a.schemes = ["abc", "abc-unchecked"]
    root = tempfile.mkdtemp()
    policy, rm, data = (a.policy, a.reward_model, a.dataset) if a.policy else gpt2_small(root, a.layers, a.width)
    times, rm_rows = {s: [] for s in a.schemes}, {s: [] for s in a.schemes}
    check = checkpoints.check_finite
    for r in range(a.repeats):
        for scheme in times:
            out = os.path.join(root, f"{scheme}{r}")
            checkpoints.check_finite = (lambda *x, **k: None) if scheme.endswith("-unchecked") else check
            abc_ppo.main(["--policy", policy, "--reward_model", rm, "--dataset", data or "stanfordnlp/imdb",
                          "--min_chars", "0" if data else "200", "--reward", scheme.removesuffix("-unchecked"), "--steps", str(a.steps),
                          "--mini_batch_size", str(a.mini_batch_size), "--prompt_len", "2", "8", "--gen_len", *a.gen_len,
                          "--device", a.device, "--out_dir", out,
                          "--seed", "0", "--save_every", "1000000", *a.extra])
            rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))][1:]
            times[scheme] += [[row[k] for k in PHASES] for row in rows]
            rm_rows[scheme] += [row["rm_rows"] for row in rows]
    print(f"threads {torch.get_num_threads()}, device {a.device}, batch 16, mini-batch {a.mini_batch_size}, "
          f"{a.repeats} x {a.steps - 1} timed steps per scheme")
    print(f"{'scheme':8} {'generate':>9} {'score':>9} {'optimise':>9} {'total':>9} {'RM rows':>9}   (per PPO step)")
    mean, base = {}, a.schemes[0]
    for scheme, rows in times.items():
        cols = [sum(c) / len(c) for c in zip(*rows)]
        mean[scheme] = sum(cols)
        print(f"{scheme:8} " + " ".join(f"{c:9.3f}" for c in cols) + f" {mean[scheme]:9.3f}"
              f" {sum(rm_rows[scheme]) / len(rm_rows[scheme]):9.0f}")
    for scheme in a.schemes[1:]:
        print(f"{scheme} / {base} step time: {mean[scheme] / mean[base]:.3f}")
