"""The mechanism: do the advantages PPO uses follow the occlusion effect? Reads finished runs.

    python tools/mechanism.py RUN [RUN ...] [--steps 0 20 79]   # each RUN: abc_ppo.py --log_samples B

One table row per run and step (mechanism_report), by the faithfulness measure of plumbing/credit.py.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's root
from transformers import AutoModelForSequenceClassification  # noqa: E402

from plumbing.attention import KERNEL  # noqa: E402
from plumbing.credit import occlusion, spearman, top1  # noqa: E402
from plumbing.presets import fail, load, load_tokenizer  # noqa: E402


@torch.no_grad()
def mechanism(rm, eos_id, score_eos, samples, steps):
    """Does a scheme's credit reach the advantages PPO uses? For each logged sample (samples.jsonl of a
    run with --log_samples) at the given steps, compare the whitened GAE advantage A_t with the
    occlusion effect d_t = s(x, y) - s(x, y without y_t), over the tokens the RM read, by the
    faithfulness measure (plumbing/credit.py), and signed:
        adv = Spearman(|A|, |d|),  top1 = [argmax_t |A_t| = argmax_t |d_t|],  signed = Spearman(A, d),
        credit = Spearman(|r|, |d|) for the scheme's credit r_t, before the KL term and GAE.
    Whitening moves a whole batch by one shift and scale, so it changes the signed ranking of no sample.
    Returns {step: dict(samples, adv, top1, signed, credit)}, correlations as (mean, 2 s.e.) over samples."""
    device = next(rm.parameters()).device
    out = {}
    for step in steps:
        rho = dict(adv=[], signed=[], credit=[])
        hit = []
        for x in (x for x in samples if x["step"] == step):
            n = len(x["token_ids"]) - (not score_eos and x["token_ids"][-1] == eos_id)  # tokens the RM read
            if n < 2:
                continue
            ids = torch.tensor([x["prompt_ids"] + x["token_ids"][:n]], device=device)
            comp = torch.ones(1, n, device=device)
            d = occlusion(rm, ids, torch.ones_like(ids), len(x["prompt_ids"]), signed=True)  # [1, n]
            a, r = (torch.tensor([x[key][:n]], device=device) for key in ("advantage", "credit"))
            for key, (u, v) in dict(adv=(a.abs(), d.abs()), signed=(a, d), credit=(r.abs(), d.abs())).items():
                rho[key].append(spearman(u, v, comp).item())
            hit.append(float(top1(a.abs(), comp) == top1(d.abs(), comp)))
        stat = lambda v: mean_2se([r for r in v if r == r])  # NaN: a constant row has no ranking
        out[step] = dict(samples=len(hit), top1=sum(hit) / max(len(hit), 1), **{k: stat(v) for k, v in rho.items()})
    return out


def mean_2se(v):
    m = sum(v) / len(v)
    return m, 2 * (sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)) ** 0.5 if len(v) > 1 else 0.0


def mechanism_report(runs, steps):
    """python tools/mechanism.py RUN [RUN ...]: the mechanism table, one row per run and step,
    each RUN a folder of abc_ppo.py --log_samples B with its config.json."""
    lines = ["| tokens | run | step | samples | Spearman(\\|A\\|, \\|d\\|) ± 2 s.e. | top-1 of \\|A\\| | Spearman(A, d) "
             "| Spearman(\\|credit\\|, \\|d\\|) |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        try:
            flags = json.load(open(os.path.join(run, "config.json")))["flags"]
            samples = [json.loads(line) for line in open(os.path.join(run, "samples.jsonl"))]
        except (OSError, ValueError, KeyError) as e:
            fail(f"{run} is not a run with config.json and samples.jsonl ({e})")
        if flags["reward_model"] != flags["policy"] and load_tokenizer(flags["reward_model"]).get_vocab() != \
                load_tokenizer(flags["policy"]).get_vocab():
            fail("the RM's tokenizer differs from the policy's; the samples are policy tokens")
        rm = load("reward model", AutoModelForSequenceClassification, flags["reward_model"],
                  attn_implementation=KERNEL, dtype=torch.float32).eval()
        eos = load_tokenizer(flags["policy"]).eos_token_id
        name = (flags["reward"] + (f" (β {flags['beta']:g})" if flags["reward"] in ("abc", "abcd", "shapley", "ig") else "")
                + (f", λ {flags['lam']:g}" if flags.get("lam", 0.95) != 0.95 else "")
                + (", forced" if flags.get("min_new_tokens") else ""))
        for step, r in mechanism(rm, eos, flags["score_eos"], samples, steps).items():
            lines.append(f"| {flags['gen_len'][0]}–{flags['gen_len'][1]} | {name}, seed {flags['seed']} | {step} "
                         f"| {r['samples']} | {r['adv'][0]:+.2f} ± {r['adv'][1]:.2f} | {r['top1']:.2f} "
                         f"| {r['signed'][0]:+.2f} ± {r['signed'][1]:.2f} | {r['credit'][0]:+.2f} ± {r['credit'][1]:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders with config.json and samples.jsonl")
    p.add_argument("--steps", nargs="+", type=int, default=[0, 20, 79])
    a = p.parse_args()
    mechanism_report(a.runs, a.steps)
