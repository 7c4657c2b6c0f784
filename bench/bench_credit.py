"""What each credit costs: seconds per PPO step and the reward model's rows per step, by scheme.

    python bench/bench_credit.py --model mini --gen_len 8 15
    python bench/bench_credit.py --model mini --gen_len 90 110 --min_new_tokens
    python bench/bench_credit.py --model 124m --gen_len 8 15          # GPT-2 124M-shaped, random weights
    python bench/bench_credit.py --model 124m --gen_len 90 110 --min_new_tokens

Not collected by pytest. A PPO step is generate + score + optimise, and only the score phase depends on
the scheme (abc_ppo.experience: the policy's and the reference's passes, the RM's passes, the credit and
GAE); the update's cost depends on the batch's shapes alone. So each repeat samples one batch of rollouts
(batch 16, as the runs), times `rollout` on it, times `experience` for every scheme on that same batch,
in an order that reverses from one repeat to the next so that drift in the machine's speed hits all
alike, and then times one `ppo_update` (mini-batch 1, the paper's). A scheme's s/step is generate +
its score + optimise of the same repeat. A first repeat on a batch of 2 warms every path up, untimed.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import abc_ppo  # noqa: E402
from bench_step import gpt2_small  # noqa: E402
from plumbing import mini, presets, speed  # noqa: E402

VARIANTS = {  # the label in the table -> the flags of its scheme
    "sparse": ["--reward", "sparse"], "abc": ["--reward", "abc", "--beta", "0.8"], "red": ["--reward", "red"],
    "ig, m 1": ["--reward", "ig", "--beta", "0.8", "--ig_steps", "1"],
    "ig, m 16": ["--reward", "ig", "--beta", "0.8", "--ig_steps", "16"],
    "shapley, K 1": ["--reward", "shapley", "--beta", "0.8", "--shapley_perms", "1"],
    "shapley, K 8": ["--reward", "shapley", "--beta", "0.8", "--shapley_perms", "8"],
}


def timed(f, *a):
    t0 = time.perf_counter()
    out = f(*a)
    return out, time.perf_counter() - t0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["mini", "124m"], default="mini")
    p.add_argument("--gen_len", nargs=2, default=["8", "15"])
    p.add_argument("--min_new_tokens", action="store_true")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats, after the warm-up")
    p.add_argument("--schemes", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="LABEL")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if a.model == "mini":
        where = ["--preset", "mini"]
    else:
        policy, rm, data = gpt2_small(tempfile.mkdtemp())
        where = ["--policy", policy, "--reward_model", rm, "--dataset", data, "--min_chars", "0", "--prompt_len", "2", "5"]
    common = [*where, "--gen_len", *a.gen_len, *(["--min_new_tokens"] if a.min_new_tokens else []), "--device", a.device,
              "--eval_every", "0"]
    flags = {label: abc_ppo.parse_args(common + VARIANTS[label]) for label in a.schemes}
    args = flags[a.schemes[0]]
    mini.ensure_preset(args)
    device = torch.device(args.device)
    models = abc_ppo.load_models(args, device)
    speed.tune(models.policy, models.ref)
    texts = presets.load_texts(args.dataset, args.min_chars)
    value_head = abc_ppo.ValueHead(models.policy.config.hidden_size).to(device)
    opt = torch.optim.Adam(list(models.policy.parameters()) + list(value_head.parameters()), lr=args.lr, fused=True)
    autocast, data_rng = speed.bf16_autocast(device, False), torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    times, rows = {label: [] for label in a.schemes}, {label: [] for label in a.schemes}
    for r in range(a.repeats + 1):  # repeat 0: the warm-up, on 2 rollouts
        B = 2 if r == 0 else args.batch_size
        prompt_ids, prompt_mask, lengths = abc_ppo.sample_prompts(texts, models.tok, args, data_rng, device, B)
        (seq, comp_mask), t_generate = timed(abc_ppo.rollout, models.policy, models.tok, prompt_ids, prompt_mask, lengths,
                                             args.min_new_tokens)
        order = a.schemes if r % 2 else a.schemes[::-1]
        score = {}
        for label in order:
            exp, score[label] = timed(abc_ppo.experience, flags[label], models, value_head, seq, prompt_mask, comp_mask,
                                      args.init_kl_coef, autocast, torch.Generator().manual_seed(r))
            if r:
                rows[label].append(exp.rm_rows)
        _, t_optimise = timed(abc_ppo.ppo_update, args, models.policy, value_head, opt, exp, data_rng, autocast)
        if r:
            for label in a.schemes:
                times[label].append((t_generate, score[label], t_optimise))
        print(f"repeat {r}: {comp_mask.sum(1).float().mean():.1f} tokens a completion; generate {t_generate:.2f} s, "
              f"optimise {t_optimise:.2f} s; score " + ", ".join(f"{k} {v:.2f}" for k, v in score.items()), flush=True)
    print(f"\n{a.model}, {a.gen_len[0]}-{a.gen_len[1]} tokens{', forced' if a.min_new_tokens else ''}, "
          f"batch {args.batch_size}, threads {torch.get_num_threads()}, {a.repeats} repeats (mean)\n")
    print("| scheme | generate | score | optimise | s/step | × sparse | RM rows/step |\n|---|---|---|---|---|---|---|")
    base = None
    for label in a.schemes:
        g, s, o = (sum(x) / len(x) for x in zip(*times[label]))
        base = base or g + s + o
        print(f"| {label} | {g:.2f} | {s:.2f} | {o:.2f} | {g + s + o:.2f} | {(g + s + o) / base:.2f} | {sum(rows[label]) / len(rows[label]):.0f} |")
