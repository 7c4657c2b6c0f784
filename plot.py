"""Plot and tabulate PPO runs written as OUT/<reward>/seed<k>/metrics.jsonl.

    python plot.py OUT [--order sparse uniform abc]

Writes OUT/reward.png, OUT/kl.png and OUT/results.md. A run's scheme and beta come from the
config.json that abc_ppo.py writes beside its metrics, where there is one.
"""
import argparse
import glob
import json
import math
import os
import re

import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

KEYS = ["step", "reward_mean", "reward_std", "kl", "kl_coef", "policy_loss", "value_loss", "entropy",
        "clip_frac", "approx_kl", "completion_len", "time_generate", "time_score", "time_optimize"]
DEFAULT_ORDER = ["sparse", "uniform", "abc"]


def read_metrics(path):
    """One run -> {key: np.array over steps}, sorted by step; a repeated step (resumed run) keeps its last line."""
    by_step = {}
    try:
        lines = open(path).read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"plot.py: cannot read {path}: {e}")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            by_step[int(rec["step"])] = {k: float(rec[k]) for k in KEYS}
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"plot.py: {path}:{i}: bad metrics line ({type(e).__name__}: {e})")
    if not by_step:
        raise SystemExit(f"plot.py: {path}: no metrics lines")
    return {k: np.array([by_step[s][k] for s in sorted(by_step)]) for k in KEYS}


def read_config(metrics_path):
    """(reward, beta) of a run from the config.json beside its metrics, or None without one."""
    path = os.path.join(os.path.dirname(metrics_path), "config.json")
    if not os.path.exists(path):
        return None
    try:
        flags = json.load(open(path))["flags"]
        return flags["reward"], float(flags["beta"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"plot.py: {path}: not a run config ({type(e).__name__}: {e})")


def label(scheme, seeds):
    """The name a scheme's runs are shown by: its folder, with beta where the scheme uses it."""
    configs = {r["config"] for r in seeds} - {None}
    if len(configs) > 1:
        raise SystemExit(f"plot.py: the runs in {scheme}/ differ in --reward or --beta: {sorted(configs)}")
    reward, beta = configs.pop() if configs else (None, None)
    return f"{scheme} (β {beta:g})" if reward in ("abc", "abcd") else scheme


def load_runs(out):
    """OUT -> {scheme: [run, ...]} (one run per seed, sorted by seed, its number in run["seed"], its
    (reward, beta) in run["config"]), each run cut to the steps common to all seeds."""
    if not os.path.isdir(out):
        raise SystemExit(f"plot.py: {out} is not a readable directory")
    runs = {}
    for path in glob.glob(os.path.join(out, "*", "seed*", "metrics.jsonl")):
        m = re.fullmatch(r"seed(\d+)", os.path.basename(os.path.dirname(path)))
        if m:
            scheme = os.path.basename(os.path.dirname(os.path.dirname(path)))
            runs.setdefault(scheme, []).append((int(m.group(1)), read_metrics(path) | dict(config=read_config(path))))
    if not runs:
        raise SystemExit(f"plot.py: no metrics files found under {out}/<reward>/seed<k>/metrics.jsonl")
    for scheme, seeds in runs.items():
        seeds = sorted(seeds, key=lambda x: x[0])
        common = set.intersection(*(set(r["step"].tolist()) for _, r in seeds))
        if not common:
            raise SystemExit(f"plot.py: seeds of {scheme} share no steps")
        runs[scheme] = [{k: v[np.isin(r["step"], list(common))] for k, v in r.items() if k in KEYS}
                        | dict(seed=i, config=r["config"]) for i, r in seeds]
    return runs


def order_schemes(schemes, order=None):
    """--order names first (in that order), then sparse, uniform, abc, then the rest alphabetically."""
    first = [s for s in (order or []) + DEFAULT_ORDER if s in schemes]
    first = list(dict.fromkeys(first))
    return first + sorted(s for s in schemes if s not in first)


def summarise(runs, order=None, upto=100, last=10):
    """One row per scheme. With r_i(t) the reward_mean of seed i (n seeds) and rbar(t) = mean_i r_i(t):
    early = mean_i m_i  +- 2 * std_i(m_i, ddof=1) / sqrt(n),  m_i = mean of r_i(t) over steps t <= upto (0 if n = 1)
    vs_sparse = mean_i d_i +- 2 * std_i(d_i, ddof=1) / sqrt(n'),  d_i = m_i - m_i(sparse), over the n' seeds both
                ran (paired by seed, so a seed's shared prompts cancel); wins = #{i : d_i > 0}
    final = mean_i (mean of r_i over its last `last` steps);   final_kl: the same for kl
    completion_len = mean_{i,t} completion_len_i(t), the completion tokens actually sampled
    first_best = min{t : rbar(t) > max_{t' <= upto} rbar_sparse(t')}, as the paper reads its Figure 3
                 ("never" if none, None if there is no sparse scheme)
    kl_neg = #{i : min_t kl_i(t) < 0};   sec_per_step = mean_{i,t} (time_generate + time_score + time_optimize)"""
    def early_by_seed(scheme):
        return {r["seed"]: r["reward_mean"][r["step"] <= upto].mean() for r in runs[scheme]}

    best, sparse_early = None, None
    if "sparse" in runs:
        sparse = runs["sparse"]
        best = np.mean([r["reward_mean"] for r in sparse], 0)[sparse[0]["step"] <= upto].max()
        sparse_early = early_by_seed("sparse")
    rows = []
    for scheme in order_schemes(runs, order):
        seeds = runs[scheme]
        n, steps = len(seeds), seeds[0]["step"]
        by_seed = early_by_seed(scheme)
        early = np.array(list(by_seed.values()))
        rbar = np.mean([r["reward_mean"] for r in seeds], 0)
        hit = np.nonzero(rbar > best)[0] if best is not None else None
        d = np.array([m - sparse_early[i] for i, m in by_seed.items() if i in sparse_early]) \
            if sparse_early is not None and scheme != "sparse" else np.array([])
        rows.append(dict(
            scheme=scheme, label=label(scheme, seeds), seeds=n, early_upto=int(steps[steps <= upto].max()),
            early_mean=early.mean(), early_2se=mean_2se(early)[1],
            vs_sparse=(*mean_2se(d), int((d > 0).sum()), len(d)) if len(d) else None,
            final=np.mean([r["reward_mean"][-last:].mean() for r in seeds]),
            final_kl=np.mean([r["kl"][-last:].mean() for r in seeds]),
            first_best=None if hit is None else (int(steps[hit[0]]) if len(hit) else "never"),
            kl_neg=sum(int((r["kl"] < 0).any()) for r in seeds),
            completion_len=np.mean([r["completion_len"] for r in seeds]),
            sec_per_step=np.mean([r["time_generate"] + r["time_score"] + r["time_optimize"] for r in seeds])))
    return rows


def mean_2se(x):
    """Mean and 2 standard errors (ddof=1; 0 for a single value)."""
    return x.mean(), 2 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else 0.0


def write_table(rows, path, n_files=None):
    """rows (from summarise) -> markdown table at path."""
    hi = max(r["early_upto"] for r in rows)
    lines = [f"| scheme | seeds | mean reward, steps 0-{hi} ± 2 s.e. | minus sparse, paired ± 2 s.e. (seeds ahead) "
             "| final reward | final KL | first step > best sparse | seeds with KL < 0 | completion tokens | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = f" (steps 0-{r['early_upto']})" if r["early_upto"] != hi else ""
        fb = "-" if r["first_best"] is None else r["first_best"]
        vs = "-" if r["vs_sparse"] is None else "{:+.2f} ± {:.2f} ({}/{})".format(*r["vs_sparse"])
        lines.append(f"| {r['label']} | {r['seeds']} | {r['early_mean']:.2f} ± {r['early_2se']:.2f}{note} | {vs} "
                     f"| {r['final']:.2f} | {r['final_kl']:.2f} | {fb} | {r['kl_neg']} | {r['completion_len']:.1f} "
                     f"| {r['sec_per_step']:.2f} |")
    lines += ["", f"Columns: reward = reward_mean per step; mean over steps 0-{hi} per seed, then mean ± 2 s.e. over seeds; "
              "minus sparse: the same per-seed mean minus sparse's for the same seed, mean ± 2 s.e. over the seeds both ran, "
              "and on how many of them the scheme is ahead; "
              "final = mean of the last 10 steps, averaged over seeds (reward, and KL); first step at which the seed-mean reward exceeds "
              f"the best seed-mean sparse reward of steps 0-{hi}; seeds whose KL went negative at any step; "
              "completion tokens actually sampled, mean over seeds and steps; generate+score+optimize seconds per step.", ""]
    if n_files is not None:
        lines.append(f"Read {n_files} runs (metrics.jsonl files).")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _curves(ax, runs, order, key, band=False):
    """Per scheme: seed-mean of `key` (thick) and each seed (thin, translucent), same colour."""
    for c, scheme in enumerate(order_schemes(runs, order)):
        seeds, color = runs[scheme], f"C{c % 10}"
        steps = seeds[0]["step"]
        ys = np.array([r[key] for r in seeds])
        for y in ys:
            ax.plot(steps, y, color=color, lw=0.8, alpha=0.35)
        ax.plot(steps, ys.mean(0), color=color, lw=2.2, label=f"{label(scheme, seeds)} (n={len(seeds)})")
        if band:
            ax.fill_between(steps, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), color=color, alpha=0.15)


def plot_reward(runs, path, order=None):
    """reward.png: seed-mean reward_mean per step, band = mean ± std across seeds (ddof=0), thin lines = seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _curves(ax, runs, order, "reward_mean", band=True)
    ax.set(xlabel="PPO step", ylabel="reward (mean over batch)", title="Reward")
    ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def plot_kl(runs, path, order=None):
    """kl.png: left KL per step (dashed line at 0), right reward_mean against KL (one dot per seed and step)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    _curves(a, runs, order, "kl")
    a.axhline(0, color="k", ls="--", lw=1)
    a.set(xlabel="PPO step", ylabel="KL(policy || ref)", title="KL"), a.legend(), a.grid(alpha=0.3)
    for c, scheme in enumerate(order_schemes(runs, order)):
        for i, r in enumerate(runs[scheme]):
            b.plot(r["kl"], r["reward_mean"], "o", color=f"C{c % 10}", ms=3, alpha=0.5,
                   label=label(scheme, runs[scheme]) if i == 0 else None)
    b.axvline(0, color="k", ls="--", lw=1)
    b.set(xlabel="KL(policy || ref)", ylabel="reward", title="Reward vs KL"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="directory holding <reward>/seed<k>/metrics.jsonl")
    p.add_argument("--order", nargs="+", default=None, help="scheme order (others follow)")
    args = p.parse_args(argv)
    runs = load_runs(args.out)
    rows = summarise(runs, args.order)
    n_files = sum(len(v) for v in runs.values())
    write_table(rows, os.path.join(args.out, "results.md"), n_files)
    plot_reward(runs, os.path.join(args.out, "reward.png"), args.order)
    plot_kl(runs, os.path.join(args.out, "kl.png"), args.order)
    print(f"read {n_files} runs; wrote reward.png, kl.png, results.md in {args.out}")
    return rows


if __name__ == "__main__":
    main()
