"""Plot and tabulate PPO runs written as OUT/<reward>/seed<k>/metrics.jsonl.

    python plot.py OUT [OUT ...] [--order sparse uniform abc]
    python plot.py assets/length-* assets/forced-* --lengths assets/length    # the length figure
    python plot.py assets/beta-8-15/* assets/length-8-15 --beta assets/beta   # the beta figure
    python plot.py assets/builds/seed*/*/ --builds assets/builds/pooled        # pooled over builds
    python plot.py assets/builds/seed0/{,lam-*/}8-15 --horizon assets/builds/seed0/horizon  # against GAE's λ

Writes OUT/reward.png, OUT/kl.png and OUT/results.md for each OUT; with --lengths, --beta or --horizon
(by GAE's λ), one figure and table across the OUT studies instead. Runs of different builds of the models (config.json's
fingerprints) are never mixed, except with --builds, which pools over builds and says so. A run's scheme, beta, lengths and protocol come
from the config.json that abc_ppo.py writes beside its metrics, where there is one.
"""
import argparse
import glob
import json
import math
import os
import re
import sys

import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

KEYS = ["step", "reward_mean", "reward_std", "kl", "kl_coef", "policy_loss", "value_loss", "entropy",
        "clip_frac", "approx_kl", "completion_len", "time_generate", "time_score", "time_optimize"]
DEFAULT_ORDER = ["sparse", "uniform", "abc"]


class BadRun(Exception):
    """A run whose files cannot be read as abc_ppo.py writes them: load_runs skips it and says why."""


def read_metrics(path):
    """One run -> {key: np.array over steps}, sorted by step; a repeated step (resumed run) keeps its last line."""
    by_step = {}
    try:
        lines = open(path).read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadRun(f"cannot read {path}: {e}")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            by_step[int(rec["step"])] = {k: float(rec[k]) for k in KEYS}
        except (ValueError, KeyError, TypeError) as e:
            raise BadRun(f"{path}:{i}: bad metrics line ({type(e).__name__}: {e})")
    if not by_step:
        raise BadRun(f"{path}: no metrics lines")
    return {k: np.array([by_step[s][k] for s in sorted(by_step)]) for k in KEYS}


def read_config(metrics_path):
    """dict(config=(reward, beta), models=...) of a run from the config.json beside its metrics (models:
    the fingerprints of the models it started from, None for a run that predates them), or Nones."""
    path = os.path.join(os.path.dirname(metrics_path), "config.json")
    if not os.path.exists(path):
        return dict(config=None, models=None)
    try:
        config = json.load(open(path))
        models = config.get("models")
        return dict(config=(config["flags"]["reward"], float(config["flags"]["beta"])),
                    models=json.dumps(models, sort_keys=True) if models else None)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadRun(f"{path}: not a run config ({type(e).__name__}: {e})")


def label(scheme, seeds):
    """The name a scheme's runs are shown by: its folder, with beta where the scheme uses it."""
    configs = {r["config"] for r in seeds} - {None}
    if len(configs) > 1:
        raise SystemExit(f"plot.py: the runs in {scheme}/ differ in --reward or --beta: {sorted(configs)}")
    reward, beta = configs.pop() if configs else (None, None)
    return f"{scheme} (β {beta:g})" if reward in ("abc", "abcd", "shapley") else scheme


def load_runs(out):
    """OUT -> {scheme: [run, ...]} (one run per seed, sorted by seed, its number in run["seed"], its
    (reward, beta) in run["config"], its models' fingerprints in run["models"]), each run cut to the
    steps common to all seeds."""
    if not os.path.isdir(out):
        raise SystemExit(f"plot.py: {out} is not a readable directory")
    runs = {}
    for path in glob.glob(os.path.join(out, "*", "seed*", "metrics.jsonl")):
        m = re.fullmatch(r"seed(\d+)", os.path.basename(os.path.dirname(path)))
        if m:
            scheme = os.path.basename(os.path.dirname(os.path.dirname(path)))
            try:
                runs.setdefault(scheme, []).append((int(m.group(1)), read_metrics(path) | read_config(path)))
            except BadRun as e:  # a damaged run costs that run only
                print(f"plot.py: skipped {os.path.dirname(path)}: {e}", file=sys.stderr)
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        raise SystemExit(f"plot.py: no metrics files found under {out}/<reward>/seed<k>/metrics.jsonl")
    for scheme, seeds in runs.items():
        seeds = sorted(seeds, key=lambda x: x[0])
        common = set.intersection(*(set(r["step"].tolist()) for _, r in seeds))
        if not common:
            raise SystemExit(f"plot.py: seeds of {scheme} share no steps")
        runs[scheme] = [{k: v[np.isin(r["step"], list(common))] for k, v in r.items() if k in KEYS}
                        | dict(seed=i, config=r["config"], models=r["models"]) for i, r in seeds]
    one_build([r for seeds in runs.values() for r in seeds], out)
    return runs


def one_build(runs, where):
    """Stop if the runs started from different models: pairing seeds across two builds compares models,
    not schemes (mini builds other weights on another CPU; docs/mini.md)."""
    models = {r["models"] for r in runs} - {None}
    if len(models) > 1:
        raise SystemExit(f"plot.py: the runs in {where} started from {len(models)} different models "
                         f"(config.json \"models\"); a study compares schemes on one policy and reward model")


def order_schemes(schemes, order=None):
    """--order names first (in that order), then sparse, uniform, abc, then the rest alphabetically."""
    first = [s for s in (order or []) + DEFAULT_ORDER if s in schemes]
    first = list(dict.fromkeys(first))
    return first + sorted(s for s in schemes if s not in first)


def summarise(runs, order=None, upto=100):
    """One row per scheme. With r_i(t) the reward_mean of seed i (n seeds) and rbar(t) = mean_i r_i(t):
    early = mean_i m_i  +- 2 * std_i(m_i, ddof=1) / sqrt(n),  m_i = mean of r_i(t) over steps t <= upto (0 if n = 1)
    vs_sparse = mean_i d_i +- 2 * std_i(d_i, ddof=1) / sqrt(n'),  d_i = m_i - m_i(sparse), over the n' seeds both
                ran (paired by seed, so a seed's shared prompts cancel); wins = #{i : d_i > 0}
    last = mean_i r_i(T) +- 2 s.e., T the last step, and last_kl likewise of kl_i(T);   lowest_kl = min_{i, t > 0} kl_i(t) (step 0's is 0)
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
            last=mean_2se(np.array([r["reward_mean"][-1] for r in seeds])), last_step=int(steps[-1]),
            last_kl=mean_2se(np.array([r["kl"][-1] for r in seeds])),
            lowest_kl=min(lowest_kl(r) for r in seeds),
            first_best=None if hit is None else (int(steps[hit[0]]) if len(hit) else "never"),
            kl_neg=sum(int((r["kl"] < 0).any()) for r in seeds),
            completion_len=np.mean([r["completion_len"] for r in seeds]),
            sec_per_step=np.mean([r["time_generate"] + r["time_score"] + r["time_optimize"] for r in seeds])))
    return rows


def lowest_kl(run):
    """The lowest KL of a run after step 0, where it is 0 by construction (a one-step run: step 0's)."""
    return run["kl"][1:].min() if len(run["kl"]) > 1 else run["kl"][0]


def mean_2se(x):
    """Mean and 2 standard errors (ddof=1; 0 for a single value)."""
    return x.mean(), 2 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else 0.0


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


# Across studies: the paper's length and beta figures --------------------------------------------
PAPER_LENGTH = {"sparse": {25: 9.94, 50: 9.77, 100: 6.59, 150: 6.78}, "uniform": {25: 9.29, 50: 9.85, 100: 9.91, 150: 10.03},
                "abc": {25: 10.56, 50: 10.87, 100: 11.27, 150: 11.25}}  # reward at step 100 (../shared/paper_numbers.md)
PAPER_BETA = {0.0: 7.94, 0.1: 7.79, 0.2: 8.28, 0.3: 8.30, 0.4: 8.40, 0.5: 8.48, 0.6: 8.50, 0.7: 8.62, 0.8: 8.64,
              0.9: 8.72, 1.0: 8.80}  # mean reward over all steps, batch 8, 251 steps


def study_flags(out):
    """The flags of a study's runs, from the config.json of its first run."""
    paths = sorted(glob.glob(os.path.join(out, "*", "seed*", "config.json")))
    if not paths:
        raise SystemExit(f"plot.py: no config.json under {out}/<reward>/seed<k>/")
    return json.load(open(paths[0]))["flags"]


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


def plot_beta(outs, prefix):
    """PREFIX.md and PREFIX.png: abc's mean reward over steps ± 2 s.e. against beta, on the seeds every
    beta ran, beside the paper's beta sweep; and whether beta = 0 repeats the sparse runs exactly."""
    by_beta, sparse = {}, {}
    for out in outs:
        for scheme, seeds in load_runs(out).items():
            for r in seeds:
                if r["config"] and r["config"][0] == "abc":
                    by_beta.setdefault(r["config"][1], {})[r["seed"]] = r
                elif r["config"] and r["config"][0] == "sparse":
                    sparse[r["seed"]] = r
    if not by_beta:
        raise SystemExit("plot.py: --beta found no abc runs with a config.json")
    one_build([r for runs in (*by_beta.values(), sparse) for r in runs.values()], " ".join(outs))
    common = sorted(set.intersection(*(set(v) for v in by_beta.values())))
    lines = [f"| β | seeds | mean reward ± 2 s.e. | minus sparse ± 2 s.e. (seeds ahead) | paper |", "|---|---|---|---|---|"]
    pts = []
    for beta in sorted(by_beta):
        m = np.array([by_beta[beta][i]["reward_mean"].mean() for i in common])
        d = np.array([m_i - sparse[i]["reward_mean"].mean() for m_i, i in zip(m, common) if i in sparse])
        pts.append((beta, *mean_2se(m)))
        vs = "{:+.2f} ± {:.2f} ({}/{})".format(*mean_2se(d), int((d > 0).sum()), len(d)) if len(d) else "-"
        lines.append(f"| {beta:g} | {len(common)} | {pts[-1][1]:.2f} ± {pts[-1][2]:.2f} | {vs} | {PAPER_BETA.get(beta, '-')} |")
    if 0.0 in by_beta and sparse:
        both = [i for i in by_beta[0.0] if i in sparse]
        diff = max(np.abs(by_beta[0.0][i]["reward_mean"] - sparse[i]["reward_mean"]).max() for i in both)
        lines += ["", f"β = 0 against sparse on the same seeds ({len(both)}): largest reward difference at any step {diff:.3g}."]
    with open(prefix + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    fig, a = plt.subplots(figsize=(7, 4.5))
    a.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], marker="o", capsize=3, color="C2",
               label=f"abc, this project (n={len(common)})")
    a.set(xlabel="β", ylabel="mean reward over steps ± 2 s.e.", title="Reward against β")
    p = a.twinx()
    p.plot(list(PAPER_BETA), list(PAPER_BETA.values()), "k--", marker=".", label="the paper (right axis)")
    p.set_ylabel("the paper's mean reward")
    a.legend(loc="upper left"), p.legend(loc="lower right"), a.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(prefix + ".png", dpi=120), plt.close(fig)
    return pts


def setting(out):
    """A study's completion lengths and protocol, e.g. '90–110 forced'."""
    f = study_flags(out)
    return f"{f['gen_len'][0]}–{f['gen_len'][1]} " + ("forced" if f.get("min_new_tokens") else "free EOS")


def build_name(out, runs):
    """A build's label: the seed in its manifest where the run's --mini_dir still holds one, and the
    policy's and RM's fingerprints (the first 8 hex digits of each)."""
    models = json.loads(next(r["models"] for seeds in runs.values() for r in seeds))
    flags = study_flags(out)
    try:
        seed = f"seed {json.load(open(os.path.join(flags['mini_dir'], 'manifest.json')))['seed']}, "
    except (OSError, ValueError, KeyError, TypeError):
        seed = ""
    return f"{seed}{models['policy'][:8]}/{models['reward_model'][:8]}"


def plot_builds(outs, prefix, scheme="abc"):
    """PREFIX.md and PREFIX.png: scheme - sparse per build and setting, and pooled over builds.
    On the n seeds that every build of a setting ran, build b has paired differences d_bs (the per-seed
    mean reward over steps, scheme minus sparse). Per build: m_b = mean_s d_bs +- 2 sd_s(d_bs) / sqrt(n). Pooled over the B builds
    of a setting, each build weighted alike:
        pooled = mean_b m_b  +- 2 sqrt(max(Var_b(m_b), mean_b(s_b^2) / n) / B)
    Var(m_b) = sigma_build^2 + sigma_seed^2 / n holds both levels, the spread of the method's effect
    between builds and the seed noise within one (s_b^2: build b's variance over seeds). Var_b(m_b)
    estimates it; where the build means happen to lie closer than their seed noise allows, the
    seed noise alone, mean_b(s_b^2) / n, is the floor (sigma_build^2 estimated as 0, not negative).
    With B = 4 builds the s.e. has about 3 degrees of freedom. The table also gives the split:
    sigma_seed from the within-build variances pooled, sigma_build = sqrt(max(0, Var_b(m_b) - mean_b(s_b^2) / n))."""
    by_setting = {}
    for out in outs:
        runs = load_runs(out)  # one build per study (one_build)
        if scheme not in runs or "sparse" not in runs or not all(r["models"] for s in runs.values() for r in s):
            raise SystemExit(f"plot.py: --builds needs {scheme} and sparse runs with fingerprints in {out}")
        sparse = {r["seed"]: r["reward_mean"].mean() for r in runs["sparse"]}
        d = {r["seed"]: r["reward_mean"].mean() - sparse[r["seed"]] for r in runs[scheme] if r["seed"] in sparse}
        by_setting.setdefault(setting(out), {})
        name = build_name(out, runs)
        if name in by_setting[setting(out)]:
            raise SystemExit(f"plot.py: two studies of setting {setting(out)} ran on build {name}")
        by_setting[setting(out)][name] = d
    for st, builds in by_setting.items():  # the seeds every build of a setting ran: a balanced design
        common = sorted(set.intersection(*(set(d) for d in builds.values())))
        if len(common) < 2:
            raise SystemExit(f"plot.py: --builds needs at least 2 seeds that every build of {st} ran")
        by_setting[st] = {name: np.array([d[i] for i in common]) for name, d in builds.items()}
    lines = [f"| setting | build (seed, policy/RM fingerprint) | seeds | {scheme} − sparse ± 2 s.e. (seeds ahead) |",
             "|---|---|---|---|"]
    pooled = {}
    for st, builds in by_setting.items():
        for name, d in builds.items():
            lines.append(f"| {st} | {name} | {len(d)} | " + "{:+.2f} ± {:.2f}".format(*mean_2se(d))
                         + f" ({int((d > 0).sum())}/{len(d)}) |")
        m = np.array([d.mean() for d in builds.values()])
        within = np.mean([d.var(ddof=1) / len(d) for d in builds.values()])
        sd_build = math.sqrt(max(0.0, m.var(ddof=1) - within)) if len(m) > 1 else float("nan")
        pooled[st] = (m.mean(), 2 * math.sqrt(max(m.var(ddof=1), within) / len(m)), len(m))
        ahead = sum(int((d > 0).sum()) for d in builds.values())
        lines.append(f"| {st} | **pooled over {len(m)} builds** | {sum(map(len, builds.values()))} | **"
                     + "{:+.2f} ± {:.2f}**".format(*pooled[st]) + f" ({ahead}/{sum(map(len, builds.values()))}); "
                     f"builds ahead {int((m > 0).sum())}/{len(m)}; σ_build {sd_build:.2f}, "
                     f"σ_seed {math.sqrt(np.mean([d.var(ddof=1) for d in builds.values()])):.2f} |")
    lines += ["", f"Per build: the paired difference of the per-seed mean reward over all steps, {scheme} minus "
              "sparse on the same seed, mean ± 2 s.e. over seeds. Pooled: the mean of the builds' means, ± 2 s.e. "
              "over builds: 2 √(max(variance of the build means, mean within-build variance of a build's mean) / B), "
              "which counts the seed noise within a build and the spread between builds. σ_build: the between-build sd of the effect, after taking out the seed "
              "noise (0 where the builds differ no more than their seeds explain); σ_seed: the within-build sd "
              "of a seed's difference."]
    with open(prefix + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    fig, a = plt.subplots(figsize=(8, 4.5))
    names = list(dict.fromkeys(n for b in by_setting.values() for n in b))
    for x, (st, builds) in enumerate(by_setting.items()):
        for name, d in builds.items():
            dx = -0.3 + 0.4 * names.index(name) / max(1, len(names) - 1)
            a.errorbar(x + dx, *[[v] for v in mean_2se(d)], marker="o", capsize=3, color=f"C{names.index(name) % 10}",
                       label=name if x == 0 else None)
        a.errorbar(x + 0.25, [pooled[st][0]], [pooled[st][1]], marker="D", ms=8, capsize=4, color="k",
                   label="pooled over builds" if x == 0 else None)
    a.axhline(0, color="k", lw=1)
    a.set_xticks(range(len(by_setting)), list(by_setting))
    a.set(ylabel=f"{scheme} − sparse, mean reward over steps ± 2 s.e.",
          title=f"POOLED OVER {len(names)} BUILDS of mini: each build's {scheme} − sparse, and the pooled estimate")
    a.legend(fontsize=7), a.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(prefix + ".png", dpi=120), plt.close(fig)
    return pooled


REFERENCE_LAM = 0.95  # abc_ppo.py's default --lam, the one every other study ran


def plot_horizon(outs, prefix, scheme="abc"):
    """PREFIX.md and PREFIX.png: scheme - sparse against GAE's lambda, per setting (lengths, protocol).
    On the n seeds that every lambda of a setting ran, d_i(lam) = the per-seed mean reward over steps,
    scheme minus sparse on seed i: per lambda mean_i d_i +- 2 s.e.; the move from the reference lambda,
    paired by seed, mean_i (d_i(lam) - d_i(0.95)) +- 2 s.e.; and each scheme's completion length at the
    last step, mean +- 2 s.e. over seeds (where a policy has learnt to stop, with EOS free)."""
    by_setting = {}
    for out in outs:
        runs = load_runs(out)
        if scheme not in runs or "sparse" not in runs:
            raise SystemExit(f"plot.py: --horizon needs {scheme} and sparse runs in {out}")
        lam = float(study_flags(out).get("lam", REFERENCE_LAM))
        if lam in by_setting.setdefault(setting(out), {}):
            raise SystemExit(f"plot.py: two studies of setting {setting(out)} ran at λ {lam:g}")
        by_setting[setting(out)][lam] = runs
    one_build([r for lams in by_setting.values() for runs in lams.values() for seeds in runs.values() for r in seeds],
              " ".join(outs))
    lines = [f"| setting | λ | seeds | sparse | {scheme} | {scheme} − sparse ± 2 s.e. (seeds ahead) "
             f"| move from λ {REFERENCE_LAM:g}, paired ± 2 s.e. | completion tokens at the last step, sparse / {scheme} |",
             "|---|---|---|---|---|---|---|---|"]
    points = {}
    for st, lams in by_setting.items():
        common = sorted(set.intersection(*({r["seed"] for r in runs[k]} for runs in lams.values() for k in (scheme, "sparse"))))
        if len(common) < 2:
            raise SystemExit(f"plot.py: --horizon needs at least 2 seeds that every λ of {st} ran")
        mean, length = {}, {}  # (lam, scheme) -> array over the common seeds
        for lam, runs in lams.items():
            for k in (scheme, "sparse"):
                by_seed = {r["seed"]: r for r in runs[k]}
                mean[lam, k] = np.array([by_seed[i]["reward_mean"].mean() for i in common])
                length[lam, k] = np.array([by_seed[i]["completion_len"][-1] for i in common])
        d = {lam: mean[lam, scheme] - mean[lam, "sparse"] for lam in lams}
        for lam in sorted(lams):
            move = "{:+.2f} ± {:.2f}".format(*mean_2se(d[lam] - d[REFERENCE_LAM])) \
                if lam != REFERENCE_LAM and REFERENCE_LAM in d else "-"
            stop = {k: mean_2se(length[lam, k]) for k in (scheme, "sparse")}
            points.setdefault(st, []).append((lam, *mean_2se(d[lam]), stop))
            lines.append(f"| {st} | {lam:g} | {len(common)} | {mean[lam, 'sparse'].mean():.2f} | {mean[lam, scheme].mean():.2f} "
                         "| {:+.2f} ± {:.2f}".format(*mean_2se(d[lam])) + f" ({int((d[lam] > 0).sum())}/{len(common)}) "
                         f"| {move} | {stop['sparse'][0]:.1f} ± {stop['sparse'][1]:.1f} / {stop[scheme][0]:.1f} ± {stop[scheme][1]:.1f} |")
    lines += ["", f"Per seed, the mean reward over all steps; sparse, {scheme}: their mean over seeds; {scheme} − sparse: "
              "paired by seed, mean ± 2 s.e. over the seeds every λ of the setting ran; the move: that difference "
              f"minus the same seed's difference at λ {REFERENCE_LAM:g}, mean ± 2 s.e.; completion tokens actually "
              "sampled at the last step, mean ± 2 s.e. over seeds."]
    with open(prefix + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for c, (st, pts) in enumerate(points.items()):
        lam = [p[0] for p in pts]
        a.errorbar(lam, [p[1] for p in pts], [p[2] for p in pts], marker="o", capsize=3, color=f"C{c}", label=st)
        if st.endswith("free EOS"):  # forced lengths say nothing about where a policy stops
            for k, ls in (("sparse", "--"), (scheme, "-")):
                b.errorbar(lam, [p[3][k][0] for p in pts], [p[3][k][1] for p in pts], marker="o", capsize=3, ls=ls,
                           color=f"C{c}", label=f"{k}, {st}")
    a.axhline(0, color="k", lw=1)
    a.set(xlabel="GAE λ", ylabel=f"{scheme} − sparse, mean reward over steps ± 2 s.e.", title=f"{scheme} − sparse against λ")
    b.set(xlabel="GAE λ", ylabel="completion tokens at the last step ± 2 s.e.", title="Where the policy stops (EOS free)")
    for ax in (a, b):
        ax.legend(fontsize=8), ax.grid(alpha=0.3)
    fig.tight_layout(), fig.savefig(prefix + ".png", dpi=120), plt.close(fig)
    return points


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="+", help="directories holding <reward>/seed<k>/metrics.jsonl")
    p.add_argument("--order", nargs="+", default=None, help="scheme order (others follow)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--lengths", metavar="PREFIX", help="across the OUT studies: PREFIX.png and PREFIX.md by length")
    g.add_argument("--beta", metavar="PREFIX", help="across the OUT studies: PREFIX.png and PREFIX.md by abc's beta")
    g.add_argument("--builds", metavar="PREFIX",
                   help="pool over builds, explicitly: abc - sparse per build and setting, and pooled (PREFIX.png, .md)")
    g.add_argument("--horizon", metavar="PREFIX", help="across the OUT studies: abc - sparse against GAE's λ (PREFIX.png, .md)")
    args = p.parse_args(argv)
    if args.builds:
        return plot_builds(args.out, args.builds)
    if args.horizon:
        return plot_horizon(args.out, args.horizon)
    if args.lengths:
        return plot_lengths(args.out, args.lengths, args.order)
    if args.beta:
        return plot_beta(args.out, args.beta)
    for out in args.out:
        runs = load_runs(out)
        rows = summarise(runs, args.order)
        n_files = sum(len(v) for v in runs.values())
        write_table(rows, runs, os.path.join(out, "results.md"), n_files)
        plot_reward(runs, os.path.join(out, "reward.png"), args.order)
        plot_kl(runs, os.path.join(out, "kl.png"), args.order)
        print(f"read {n_files} runs; wrote reward.png, kl.png, results.md in {out}")
    return rows


if __name__ == "__main__":
    main()
