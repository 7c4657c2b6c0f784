"""Plot and tabulate PPO runs written as OUT/<reward>/seed<k>/metrics.jsonl.

    python tools/report.py OUT [OUT ...] [--order sparse uniform abc]
    python tools/report.py studies/lengths/length-* studies/lengths/forced-* --lengths studies/lengths/length

Writes OUT/reward.png, OUT/kl.png and OUT/results.md for each OUT, and OUT/eval.png where its runs wrote
eval.jsonl (the gold and the proxy RM against the sequence KL and against the training seconds); with
--lengths, one figure and table across the OUT studies instead (by completion length, EOS free or forced). Runs of different builds of the
models (config.json's fingerprints) are never mixed. A run's scheme, beta, lengths and protocol come from
the config.json that abc_ppo.py writes beside its metrics, where there is one.
"""
import argparse
import glob
import json
import math
import os
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's root
from plumbing.runs import label, load_runs, lowest_kl, one_build, order_schemes, study_flags, summarise  # noqa: E402


def write_table(rows, runs, path, n_files=None):
    """rows (from summarise) -> markdown tables at path: one row per scheme, then one per seed."""
    hi = max(r["early_upto"] for r in rows)
    lines = [f"| scheme | seeds | mean reward, steps 0-{hi} ± 2 s.e. | minus sparse, paired ± 2 s.e. (seeds ahead) "
             "| reward at the last step ± 2 s.e. | first step > best sparse | lowest KL | seeds with KL < 0 "
             "| completion tokens | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = f" (steps 0-{r['early_upto']})" if r["early_upto"] != hi else ""
        fb = "-" if r["first_best"] is None else r["first_best"]
        vs = "-" if r["vs_sparse"] is None else "{:+.2f} ± {:.2f} ({}/{})".format(*r["vs_sparse"])
        lines.append(f"| {r['label']} | {r['seeds']} | {r['early_mean']:.2f} ± {r['early_2se']:.2f}{note} | {vs} "
                     f"| {r['last'][0]:.2f} ± {r['last'][1]:.2f} (step {r['last_step']}) | {fb} | {r['lowest_kl']:.2f} "
                     f"| {r['kl_neg']} | {r['completion_len']:.1f} | {r['sec_per_step']:.2f} |")
    lines += ["", f"Columns: reward = reward_mean per step; mean over steps 0-{hi} per seed, then mean ± 2 s.e. over seeds; "
              "minus sparse: the same per-seed mean minus sparse's for the same seed, mean ± 2 s.e. over the seeds both ran, "
              "and on how many of them the scheme is ahead; reward at the last step, mean ± 2 s.e. over seeds; "
              "first step at which the seed-mean reward exceeds "
              f"the best seed-mean sparse reward of steps 0-{hi}; lowest KL of any seed at any step after 0; seeds whose KL "
              "went negative at any step; completion tokens actually sampled, mean over seeds and steps; "
              "generate+score+optimize seconds per step.", ""]
    # Per seed, so that a collapse (reward falling while the KL goes negative) is visible.
    names = [r["scheme"] for r in rows]
    seeds = sorted({x["seed"] for s in names for x in runs[s]})
    by = {(s, x["seed"]): x for s in names for x in runs[s]}
    lines += ["Per seed: reward at the last step / lowest KL after step 0.", "",
              "| seed | " + " | ".join(r["label"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for i in seeds:
        cells = [f"{by[s, i]['reward_mean'][-1]:.2f} / {lowest_kl(by[s, i]):.2f}" if (s, i) in by else "-" for s in names]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines.append("")
    if n_files is not None:
        lines.append(f"Read {n_files} runs (metrics.jsonl files).")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def smooth(y, w):
    """Centred moving average over w steps (fewer at the ends), along the last axis."""
    y = np.asarray(y, dtype=float)
    if w <= 1:
        return y
    T, h = y.shape[-1], w // 2
    c = np.concatenate([np.zeros(y.shape[:-1] + (1,)), y.cumsum(-1)], -1)  # c[t] = sum of y[:t]
    lo, hi = np.clip(np.arange(T) - h, 0, T), np.clip(np.arange(T) + w - h, 0, T)
    return (c[..., hi] - c[..., lo]) / (hi - lo)


def band(ax, steps, ys, color, label):
    """Mean over seeds (rows of ys) with a band of ± 2 s.e. across seeds."""
    m = ys.mean(0)
    se = 2 * ys.std(0, ddof=1) / math.sqrt(len(ys)) if len(ys) > 1 else np.zeros_like(m)
    ax.plot(steps, m, color=color, lw=2, label=label)
    ax.fill_between(steps, m - se, m + se, color=color, alpha=0.2, lw=0)


def _curves(ax, runs, order, key, w):
    """Per scheme: the seed mean of `key`, smoothed over w steps, ± 2 s.e. across seeds; seeds faint."""
    for c, scheme in enumerate(order_schemes(runs, order)):
        seeds, color = runs[scheme], f"C{c % 10}"
        ys = smooth(np.array([r[key] for r in seeds]), w)
        for y in ys:
            ax.plot(seeds[0]["step"], y, color=color, lw=0.5, alpha=0.12)
        band(ax, seeds[0]["step"], ys, color, f"{label(scheme, seeds)} (n={len(seeds)})")


def plot_reward(runs, path, order=None, w=5):
    """reward.png. Left: per scheme, the seed-mean reward smoothed over w steps, ± 2 s.e. across seeds.
    Right: each scheme minus sparse, paired by seed: d_i(t) = r_i(t) - r_i^sparse(t), smoothed, mean ± 2 s.e."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    _curves(a, runs, order, "reward_mean", w)
    a.set(xlabel="PPO step", ylabel="reward (mean over batch)", title=f"Reward ({w}-step moving average)")
    a.legend(), a.grid(alpha=0.3)
    if "sparse" in runs:
        sparse = {r["seed"]: r["reward_mean"] for r in runs["sparse"]}
        for c, scheme in enumerate(order_schemes(runs, order)):
            pairs = [r["reward_mean"] - sparse[r["seed"]] for r in runs[scheme] if r["seed"] in sparse]
            if scheme != "sparse" and pairs:
                band(b, runs[scheme][0]["step"], smooth(np.array(pairs), w), f"C{c % 10}",
                     f"{label(scheme, runs[scheme])} − sparse (n={len(pairs)})")
        b.axhline(0, color="k", lw=1)
        if b.get_legend_handles_labels()[0]:  # a study of sparse alone has no difference to draw
            b.legend()
    b.set(xlabel="PPO step", ylabel="reward difference", title="Minus sparse, paired by seed ± 2 s.e.")
    b.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def plot_kl(runs, path, order=None, w=5):
    """kl.png: left KL per step as reward.png draws reward (dashed line at 0), right reward_mean against
    KL (one dot per seed and step, unsmoothed)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    _curves(a, runs, order, "kl", w)
    a.axhline(0, color="k", ls="--", lw=1)
    a.set(xlabel="PPO step", ylabel="KL(policy || ref)", title=f"KL ({w}-step moving average)"), a.legend(), a.grid(alpha=0.3)
    for c, scheme in enumerate(order_schemes(runs, order)):
        for i, r in enumerate(runs[scheme]):
            b.plot(r["kl"], r["reward_mean"], "o", color=f"C{c % 10}", ms=3, alpha=0.5,
                   label=label(scheme, runs[scheme]) if i == 0 else None)
    b.axvline(0, color="k", ls="--", lw=1)
    b.set(xlabel="KL(policy || ref)", ylabel="reward", title="Reward vs KL"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def read_evals(out):
    """OUT -> {scheme: [each seed's eval.jsonl rows]}, for the runs that evaluated."""
    evals = {}
    for path in sorted(glob.glob(os.path.join(out, "*", "seed*", "eval.jsonl"))):
        with open(path) as f:
            evals.setdefault(path.split(os.sep)[-3], []).append([json.loads(line) for line in f if line.strip()])
    return evals


def plot_eval(evals, path, order=None):
    """eval.png: per scheme, the gold RM's mean score (solid; the proxy's dashed) at each evaluation, against
    the sequence KL from the reference (left) and against the training seconds so far (right), as the seed
    mean at each evaluation the seeds share, each seed faint. Without a gold, the proxy's alone."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    has_gold = all(row["gold_mean"] is not None for seeds in evals.values() for rows in seeds for row in rows)
    judge = "gold_mean" if has_gold else "proxy_mean"
    for c, scheme in enumerate(order_schemes(evals, order)):
        seeds, color = evals[scheme], f"C{c % 10}"
        n = min(map(len, seeds))
        series = {key: np.array([[row[key] for row in rows[:n]] for rows in seeds], dtype=float)
                  for key in ("kl", "train_seconds", judge, "proxy_mean")}  # [seeds, evaluations]
        for ax, x in zip(axes, ("kl", "train_seconds")):
            for i in range(len(seeds)):
                ax.plot(series[x][i], series[judge][i], color=color, lw=0.5, alpha=0.2)
            ax.plot(series[x].mean(0), series[judge].mean(0), "o-", color=color, lw=2, label=f"{scheme} (n={len(seeds)})")
            if has_gold:
                ax.plot(series[x].mean(0), series["proxy_mean"].mean(0), "--", color=color, lw=1)
    name = "gold RM" + " (solid) and proxy RM (dashed)" if has_gold else "proxy RM (no gold)"
    axes[0].set(xlabel="sequence KL(π ‖ π_ref), fixed evaluation prompts", ylabel=f"{name}, mean score",
                title="Score against KL")
    axes[1].set(xlabel="training seconds (evaluation excluded)", ylabel=f"{name}, mean score",
                title="Score against compute")
    for ax in axes:
        ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


# Across studies: reward against completion length ---------------------------------------------
def plot_lengths(outs, prefix, order=None):
    """PREFIX.md and PREFIX.png: per study (a completion-length range, free or forced EOS) and scheme,
    the mean reward over steps ± 2 s.e. and the paired difference to sparse, against the length range's
    midpoint; forced-length studies (--min_new_tokens) dashed."""
    studies = []
    for out in outs:
        f = study_flags(out)
        lo, hi = f["gen_len"]
        studies.append(((lo + hi) / 2, f"{lo}–{hi}", "forced" if f.get("min_new_tokens") else "free EOS",
                        summarise(load_runs(out), order)))
    one_build([r for out in outs for seeds in load_runs(out).values() for r in seeds], " ".join(outs))
    studies.sort(key=lambda x: (x[2] != "free EOS", x[0]))
    lines = ["| tokens | EOS | scheme | seeds | mean reward ± 2 s.e. | minus sparse ± 2 s.e. (seeds ahead) "
             "| reward at the last step | first step > best sparse | completion tokens | seeds with KL < 0 | lowest KL "
             "| KL at the last step | s/step |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, rng, eos, rows in studies:
        for r in rows:
            vs = "-" if r["vs_sparse"] is None else "{:+.2f} ± {:.2f} ({}/{})".format(*r["vs_sparse"])
            lines.append(f"| {rng} | {eos} | {r['label']} | {r['seeds']} | {r['early_mean']:.2f} ± {r['early_2se']:.2f} "
                         f"| {vs} | {r['last'][0]:.2f} ± {r['last'][1]:.2f} | {r['first_best']} | {r['completion_len']:.1f} "
                         f"| {r['kl_neg']} | {r['lowest_kl']:.2f} | {r['last_kl'][0]:.1f} ± {r['last_kl'][1]:.1f} | {r['sec_per_step']:.2f} |")
    with open(prefix + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n\nColumns as in each study's results.md; mean reward over all steps of each "
                 "seed, then over seeds.\n")
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    schemes = order_schemes({r["scheme"] for *_, rows in studies for r in rows}, order)
    for c, scheme in enumerate(schemes):
        # forced: dashed, hollow squares, a little to the right so that the bars do not overlap
        for eos, ls, marker, dx in (("free EOS", "-", "o", 0), ("forced", "--", "s", 2)):
            pts = [(x + dx, r) for x, _, e, rows in studies if e == eos for r in rows if r["scheme"] == scheme]
            if not pts:
                continue
            x = [p[0] for p in pts]
            kw = dict(color=f"C{c % 10}", ls=ls, marker=marker, mfc="white" if dx else None, capsize=3,
                      label=f"{scheme}, {eos}")
            a.errorbar(x, [p[1]["early_mean"] for p in pts], [p[1]["early_2se"] for p in pts], **kw)
            vs = [p for p in pts if p[1]["vs_sparse"]]
            if vs:
                b.errorbar([p[0] for p in vs], [p[1]["vs_sparse"][0] for p in vs], [p[1]["vs_sparse"][1] for p in vs], **kw)
    b.axhline(0, color="k", lw=1)
    a.set(xlabel="completion tokens (midpoint of the range)", ylabel="mean reward over steps ± 2 s.e.",
          title="Reward against completion length")
    b.set(xlabel="completion tokens (midpoint of the range)", ylabel="minus sparse, paired ± 2 s.e.",
          title="Difference to sparse")
    for ax in (a, b):
        ax.legend(fontsize=8), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(prefix + ".png", dpi=120), plt.close(fig)
    return studies


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="+", help="directories holding <reward>/seed<k>/metrics.jsonl")
    p.add_argument("--order", nargs="+", default=None, help="scheme order (others follow)")
    p.add_argument("--lengths", metavar="PREFIX", help="across the OUT studies: PREFIX.png and PREFIX.md by length")
    args = p.parse_args(argv)
    if args.lengths:
        return plot_lengths(args.out, args.lengths, args.order)
    for out in args.out:
        runs = load_runs(out)
        rows = summarise(runs, args.order)
        n_files = sum(len(v) for v in runs.values())
        write_table(rows, runs, os.path.join(out, "results.md"), n_files)
        plot_reward(runs, os.path.join(out, "reward.png"), args.order)
        plot_kl(runs, os.path.join(out, "kl.png"), args.order)
        evals = read_evals(out)
        if evals:
            plot_eval(evals, os.path.join(out, "eval.png"), args.order)
        print(f"read {n_files} runs; wrote reward.png, kl.png, results.md{', eval.png' if evals else ''} in {out}")
    return rows


if __name__ == "__main__":
    main()
