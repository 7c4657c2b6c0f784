"""The frontier study's tables and figure: each scheme's gold reward at KL and compute budgets, read by the
estimator committed in docs/results.md before the study's first run ("The gold-reward–KL frontier").

    python studies/frontier/frontier.py studies/frontier --out studies/frontier/frontier

Reads ROOT/<setting>/kl-<C>/<reward>/seed<k>/eval.jsonl. Per run, a reading at a budget is the value where
the run spends it, linearly interpolated between the two evaluations around that point (KL: the first
point where the sequence KL reaches K; compute: the fractional step C / ratio); a run that never spends it
is read at its last evaluation. A scheme-seed's frontier at a budget is the best of its four runs'
readings (one a coefficient), paired with sparse by seed, ± 2 s.e.
"""
import argparse
import collections
import functools
import json
import os
import sys

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository's root
import reward  # noqa: E402
from plumbing.attention import KERNEL  # noqa: E402
from plumbing import presets  # noqa: E402
from plumbing.runs import analysis_main, mean_2se, one_build  # noqa: E402

SETTINGS = {"8-15": "8–15 free EOS", "forced-90-110": "90–110 forced"}
SCHEMES = ["sparse", "abc", "red", "ig", "shapley"]
COEFS = ["0.025", "0.1", "0.4", "1.6"]  # widened by phase 1's rule; 0.05 and 0.2 are outside every estimate
KL_BUDGETS, COMPUTE_BUDGETS = [2, 5, 10, 20], [20, 40, 80]
# s/step / sparse's, bench/bench_credit.py on an idle machine, 2026-12-06 (docs/speed.md): 2 threads (the
# primary reading, committed before the runs) and 1 thread (the check of how much the machine matters).
RATIO = {"8-15": dict(sparse=1.0, abc=1.0, red=1.0, ig=1.08, shapley=1.67),
         "forced-90-110": dict(sparse=1.0, abc=1.0, red=1.0, ig=1.18, shapley=2.12)}
RATIO_1_THREAD = {"8-15": dict(sparse=1.0, abc=1.0, red=1.0, ig=1.15, shapley=1.99),
                  "forced-90-110": dict(sparse=1.0, abc=1.0, red=1.0, ig=1.28, shapley=2.75)}
# An illustration added after the runs, never a primary reading: the same runs priced at the s/step ratios of a
# GPT-2-sized (124M) policy and RM, 2026-12-05 (docs/speed.md): what the price would be at that size.
RATIO_124M = {"8-15": dict(sparse=1.0, abc=1.00, red=1.00, ig=1.80, shapley=4.79),
              "forced-90-110": dict(sparse=1.0, abc=0.98, red=0.98, ig=2.05, shapley=7.28)}
CONTRASTS = [(s, "sparse") for s in SCHEMES[1:]] + [("shapley", "abc"), ("ig", "abc"), ("red", "abc")]
VERDICT = CONTRASTS[:5]  # the README's columns: each scheme against sparse, and shapley against abc
FIELDS = ["step", "kl", "gold_mean", "proxy_mean", "completion_len", "distinct_2"]


def run_path(root, setting, coef, scheme, seed):
    return os.path.join(root, setting, f"kl-{coef}", scheme, f"seed{seed}")


def load(root, setting):
    """{scheme: {seed: {coef: {field: array [evaluations]}}}}, keeping only scheme-seeds with all four
    coefficients finished (a `done` file), from one build."""
    runs, configs = {}, []
    for scheme in SCHEMES:
        for seed in range(10):
            by_coef = {}
            for coef in COEFS:
                run = run_path(root, setting, coef, scheme, seed)
                if os.path.exists(os.path.join(run, "done")):
                    rows = [json.loads(line) for line in open(os.path.join(run, "eval.jsonl"))]
                    by_coef[coef] = {k: np.array([r[k] for r in rows], dtype=float) for k in FIELDS}
                    models = json.load(open(os.path.join(run, "config.json"))).get("models")
                    configs.append(dict(models=json.dumps(models, sort_keys=True) if models else None))
            if len(by_coef) == len(COEFS):
                runs.setdefault(scheme, {})[seed] = by_coef
    one_build(configs, os.path.join(root, setting))
    return runs


def read_at(x, y, budget):
    """y where x first reaches `budget`, linear between the evaluations around it; y's last if it never does.
    x [E] is the KL, or the cost in sparse steps, at each evaluation; x[0] = 0 (step 0)."""
    reached = np.nonzero(x >= budget)[0]
    reached = reached[reached > 0]
    if not len(reached):
        return y[-1]
    i = reached[0]
    return y[i - 1] + (budget - x[i - 1]) / (x[i] - x[i - 1]) * (y[i] - y[i - 1])


def frontier(runs, field, budget, axis):
    """{seed: the best over coefficients of each run's `field` read at `budget`}; axis(run) gives the x."""
    return {seed: max(read_at(axis(run), run[field], budget) for run in by_coef.values())
            for seed, by_coef in runs.items()}


def gap(run):
    """(proxy - proxy_0) - (gold - gold_0) at each of a run's evaluations [E]."""
    return run["proxy_mean"] - run["gold_mean"] - (run["proxy_mean"][0] - run["gold_mean"][0])


def overoptimisation(runs, budget):
    """{seed: the mean over its four runs of the gap, read at KL `budget`}."""
    return {seed: np.mean([read_at(run["kl"], gap(run), budget) for run in by_coef.values()])
            for seed, by_coef in runs.items()}


def gao_fit(by_coef, kl_budget):
    """Gao et al.'s R(d) = d (alpha - beta ln d), d = sqrt(KL), fitted by least squares to gold - gold_0 over
    every evaluation of a scheme-seed's runs, read at sqrt(K); None when K exceeds the runs' largest KL."""
    kl = np.concatenate([run["kl"] for run in by_coef.values()])
    gain = np.concatenate([run["gold_mean"] - run["gold_mean"][0] for run in by_coef.values()])
    if kl.max() < kl_budget:
        return None
    d = np.sqrt(np.clip(kl, 0, None))
    d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1)), 0.0)
    (alpha, beta), *_ = np.linalg.lstsq(np.stack([d, -d_log_d], 1), gain, rcond=None)
    return np.sqrt(kl_budget) * (alpha - beta * np.log(np.sqrt(kl_budget)))


def cost_axis(setting, scheme, ratio):
    return lambda run: run["step"] * ratio[setting][scheme]


def paired(a, b, bold=False):
    """'mean ± 2 s.e. (ahead/n)' of a - b over the seeds both have ('**…**' with bold, where the interval
    excludes 0); '—' without two."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return "—"
    d = np.array([a[s] - b[s] for s in seeds])
    m, e = mean_2se(d)
    text = f"{m:+.2f} ± {e:.2f} ({int((d > 0).sum())}/{len(seeds)})".replace("-", "−")
    return f"**{text}**" if bold and abs(m) > e else text


def level(values):
    if not values:
        return "—"
    m, e = mean_2se(np.array(list(values.values())))
    return f"{m:.2f} ± {e:.2f}"


def table(title, runs, readings, budgets, unit):
    """A markdown table: per budget, each scheme's level and each contrast, from readings(scheme, budget)."""
    schemes = [s for s in SCHEMES if s in runs]
    contrasts = [(a, b) for a, b in CONTRASTS if a in runs and b in runs]
    header = [unit] + schemes + [f"{a} − {b}" for a, b in contrasts]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for budget in budgets:
        at = {s: readings(s, budget) for s in schemes}
        lines.append("| " + " | ".join([str(budget)] + [level(at[s]) for s in schemes]
                                       + [paired(at[a], at[b]) for a, b in contrasts]) + " |")
    return lines + [""]


def verdict(name, runs, gold_at_kl, gold_at_compute):
    """The README's rows for one setting: the gold difference of each VERDICT contrast at every KL and compute
    budget (gold_at_kl(scheme, K), gold_at_compute(scheme, C)), bold where its interval excludes 0."""
    lines = []
    for unit, budgets, gold_at in (("KL", KL_BUDGETS, gold_at_kl), ("compute", COMPUTE_BUDGETS, gold_at_compute)):
        for budget in budgets:
            at = {s: gold_at(s, budget) for s in runs}
            cells = [paired(at[a], at[b], bold=True) if a in at and b in at else "—" for a, b in VERDICT]
            lines.append(f"| {name if not lines else ''} | {unit} {budget} | " + " | ".join(cells) + " |")
    return lines


def mechanism_coef(seeds):
    """The coefficient that most often gives a scheme's frontier at KL 10 (the first in COEFS on a tie), and
    on how many of its seeds."""
    best = [max(by_coef, key=lambda c: read_at(by_coef[c]["kl"], by_coef[c]["gold_mean"], 10))
            for by_coef in seeds.values()]
    coef = max(COEFS, key=best.count)
    return coef, best.count(coef)


@functools.lru_cache
def rm_and_tokenizers(policy, reward_model):
    """The run's RM (float32, the row kernel ABC reads), the policy's tokenizer, and the RM's own (None when shared)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.disable_progress_bar()
    rm = presets.load("reward model", AutoModelForSequenceClassification, reward_model, attn_implementation=KERNEL,
                      dtype=torch.float32).eval().requires_grad_(False)
    tok, rm_tok = presets.load_tokenizer(policy), presets.load_tokenizer(reward_model)
    return rm, tok, None if rm_tok.get_vocab() == tok.get_vocab() else rm_tok


def sample_credit(run_dir, chunk=64):
    """The last evaluation's completions of a run (eval_samples.jsonl) with the credit r_t [n] that the run's
    scheme gives each of their n tokens, recomputed by reward.per_token_rewards on the run's RM and flags
    (shapley's orders drawn from the run's seed). A prompt's ids are its text's: the fixed prompts'
    decode-encode round trip is exact on mini. Returns [(completion_ids, credit)]."""
    flags = json.load(open(os.path.join(run_dir, "config.json")))["flags"]
    rm, tok, rm_tok = rm_and_tokenizers(flags["policy"], flags["reward_model"])
    models = argparse.Namespace(tok=tok, rm=rm, rm_tok=rm_tok)
    samples = [json.loads(line) for line in open(os.path.join(run_dir, "eval_samples.jsonl"))]
    generator, pad, out = torch.Generator().manual_seed(flags["seed"]), tok.pad_token_id, []
    for start in range(0, len(samples), chunk):
        batch = samples[start:start + chunk]
        prompts = [tok(x["prompt"])["input_ids"] for x in batch]
        completions = [x["completion_ids"] for x in batch]
        P, G = max(map(len, prompts)), max(map(len, completions))
        seq = torch.tensor([[pad] * (P - len(p)) + p + c + [pad] * (G - len(c)) for p, c in zip(prompts, completions)])
        prompt_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])  # [B, P], left-padded
        comp_mask = torch.tensor([[1] * len(c) + [0] * (G - len(c)) for c in completions])  # [B, G]
        _, credit, _ = reward.per_token_rewards(argparse.Namespace(**flags), models, seq, prompt_mask, comp_mask,
                                                generator=generator)  # [B, G]
        out += [(c, credit[b, :len(c)].tolist()) for b, c in enumerate(completions)]
    return out


def top_tokens(credited, n=3):
    """The n tokens on which a completion's largest credit most often falls: [(token id, share of completions)]."""
    top = collections.Counter(ids[int(np.argmax(credit))] for ids, credit in credited)
    return [(token, count / len(credited)) for token, count in top.most_common(n)]


def per_completion(token, credited):
    """How often `token` occurs in a completion, on average."""
    return np.mean([ids.count(token) for ids, _ in credited])


def mechanism(root, setting, runs):
    """Per scheme, at its mechanism coefficient (mechanism_coef), pooled over seeds at the last evaluation:
    completion length and distinct-2, the tokens its own credit ranks first, and how often they occur in its
    completions and in sparse's (at sparse's coefficient): new words, or the same words more often?"""
    lines = ["| scheme | coefficient (frontier at KL 10, seeds) | completion tokens | distinct-2 "
             "| top token by credit (share of completions) | its count a completion, here / sparse's |",
             "|---|---|---|---|---|---|"]
    credited = {}
    for scheme, seeds in runs.items():
        coef, count = mechanism_coef(seeds)
        there = [run_path(root, setting, coef, scheme, seed) for seed in seeds]
        credited[scheme] = [x for run in there for x in sample_credit(run)]
        length = np.mean([seeds[s][coef]["completion_len"][-1] for s in seeds])
        d2 = np.mean([seeds[s][coef]["distinct_2"][-1] for s in seeds])
        flags = json.load(open(os.path.join(there[0], "config.json")))["flags"]
        tok = rm_and_tokenizers(flags["policy"], flags["reward_model"])[1]  # loaded already, by sample_credit
        top = top_tokens(credited[scheme])
        shown = lambda token: "`" + repr(tok.decode([token])).replace("|", "\\|") + "`"  # noqa: E731
        words = ", ".join(f"{shown(t)} {share:.0%}" for t, share in top)
        rates = ", ".join(f"{per_completion(t, credited[scheme]):.2f} / {per_completion(t, credited['sparse']):.2f}"
                          for t, _ in top) if "sparse" in credited else "—"
        lines.append(f"| {scheme} | {coef} ({count}/{len(seeds)}) | {length:.1f} | {d2:.3f} | {words} | {rates} |")
    return lines + [""]


def plot(ax, runs, y_of, reading, axis_of, grid, budgets, xlabel):
    """Every evaluation point of every run (y_of(run)), each scheme's reading(seeds, budget, axis) over `grid`
    with ± 2 s.e. bands over seeds, and the budgets as dotted lines. The axis ends with the grid: points beyond
    it are counted in the label."""
    beyond = 0
    for i, (scheme, seeds) in enumerate(runs.items()):
        colour = f"C{i}"
        for by_coef in seeds.values():
            for run in by_coef.values():
                x = axis_of(scheme)(run)
                ax.scatter(x, y_of(run), s=4, alpha=0.25, color=colour)
                beyond += int((x > grid[-1]).sum())
        curve = np.array([list(reading(seeds, g, axis_of(scheme)).values()) for g in grid])  # [grid, seeds]
        m = curve.mean(1)
        e = 2 * curve.std(1, ddof=1) / np.sqrt(curve.shape[1]) if curve.shape[1] > 1 else 0 * m
        ax.plot(grid, m, color=colour, label=f"{scheme} ({curve.shape[1]} seeds)")
        ax.fill_between(grid, m - e, m + e, color=colour, alpha=0.2)
    for budget in budgets:
        ax.axvline(budget, color="grey", lw=0.6, ls=":")
    ax.set_xlim(grid[0] - 0.02 * grid[-1], grid[-1] * 1.02)
    ax.set_xlabel(xlabel + (f"; {beyond} points beyond" if beyond else ""))
    ax.legend(fontsize=7)


def analyse(outs, prefix):
    root = outs[0]
    md = ["# The gold-reward–KL frontier: tables", "",
          f"`python studies/frontier/frontier.py {root} --out {prefix}`. The estimator, budgets and ratios were "
          "committed before the study's first run (docs/results.md). Levels: mean ± 2 s.e. over seeds; "
          "differences: paired by seed ± 2 s.e. (seeds ahead/n). Only scheme-seeds with all four coefficients "
          f"finished count ({', '.join(COEFS)}).", ""]
    verdict_table = ["## The verdict table (the README's)", "",
                     "Gold at a budget minus sparse's (shapley − abc last), paired by seed ± 2 s.e. (seeds ahead); "
                     "compute in sparse-step equivalents at the primary ratios; bold: the interval excludes 0.", "",
                     "| setting | budget | " + " | ".join(f"{a} − {b}" for a, b in VERDICT) + " |",
                     "|---|---|" + "---|" * len(VERDICT)]
    fig, axes = plt.subplots(len(SETTINGS), 4, figsize=(20, 4.5 * len(SETTINGS)), squeeze=False)
    for row, (setting, name) in enumerate(SETTINGS.items()):
        runs = load(root, setting)
        if not runs:
            continue
        md += [f"## {name}", "", "Runs: " + ", ".join(f"{s} {len(v)} seeds" for s, v in runs.items()), ""]
        kl_axis = lambda scheme: lambda run: run["kl"]  # noqa: E731
        gold_at = lambda s, k: frontier(runs[s], "gold_mean", k, kl_axis(s))  # noqa: E731
        verdict_table += verdict(f"{name} ({min(map(len, runs.values()))} seeds)", runs, gold_at,
                                 lambda s, c: frontier(runs[s], "gold_mean", c, cost_axis(setting, s, RATIO)))
        md += table("Gold at a KL budget (the primary estimator)", runs, gold_at, KL_BUDGETS, "KL")
        md += table("Proxy at a KL budget", runs, lambda s, k: frontier(runs[s], "proxy_mean", k, kl_axis(s)),
                    KL_BUDGETS, "KL")
        for title, ratio in (("primary: 2-thread ratios", RATIO), ("check: 1-thread ratios", RATIO_1_THREAD),
                             ("illustration, added after the runs: 124M's ratios", RATIO_124M)):
            md += table(f"Gold at a compute budget, sparse-step equivalents ({title})", runs,
                        lambda s, c, ratio=ratio: frontier(runs[s], "gold_mean", c, cost_axis(setting, s, ratio)),
                        COMPUTE_BUDGETS, "sparse steps")
        md += table("Gold gain at a KL budget, Gao et al.'s fit (secondary)", runs,
                    lambda s, k: {seed: v for seed, by_coef in runs[s].items()
                                  if (v := gao_fit(by_coef, k)) is not None}, KL_BUDGETS, "KL")
        md += table("Over-optimisation: (proxy − proxy₀) − (gold − gold₀) at a KL budget, mean of the four runs",
                    runs, lambda s, k: overoptimisation(runs[s], k), KL_BUDGETS, "KL")
        md += ["**The mechanism**", ""] + mechanism(root, setting, runs)
        top_kl = max(run["kl"].max() for seeds in runs.values() for by_coef in seeds.values() for run in by_coef.values())
        kl_grid = np.linspace(0, min(top_kl, 40), 41)
        best = lambda field: lambda seeds, g, axis: frontier(seeds, field, g, axis)  # noqa: E731
        plot(axes[row, 0], runs, lambda run: run["gold_mean"], best("gold_mean"), kl_axis, kl_grid, KL_BUDGETS,
             "sequence KL (nats)")
        plot(axes[row, 1], runs, lambda run: run["proxy_mean"], best("proxy_mean"), kl_axis, kl_grid, KL_BUDGETS,
             "sequence KL (nats)")
        plot(axes[row, 2], runs, lambda run: run["gold_mean"], best("gold_mean"), lambda s: cost_axis(setting, s, RATIO),
             np.linspace(0, 80, 41), COMPUTE_BUDGETS, "compute (sparse-step equivalents)")
        plot(axes[row, 3], runs, gap, lambda seeds, g, axis: overoptimisation(seeds, g), kl_axis, kl_grid, KL_BUDGETS,
             "sequence KL (nats)")
        for col, what in enumerate(("gold score", "proxy score", "gold score",
                                    "(proxy − proxy₀) − (gold − gold₀), mean of 4 runs")):
            axes[row, col].set_ylabel(f"{what}, {name}", fontsize=8 if col == 3 else None)
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(md[:4] + verdict_table + [""] + md[4:]))
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=110)
    print(f"wrote {prefix}.md and {prefix}.png")


if __name__ == "__main__":
    analysis_main(analyse, __doc__, "the study's root folder, studies/frontier")
