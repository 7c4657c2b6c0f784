"""Reading finished runs: OUT/<reward>/seed<k>/metrics.jsonl beside the config.json that abc_ppo.py writes.

load_runs reads one study (OUT) as {scheme: [run per seed]}; summarise gives each scheme's mean reward
± 2 s.e. and its difference to sparse, paired by seed. Runs of different builds of the models (config.json's
fingerprints) are never mixed (one_build). tools/report.py draws and tabulates them; each study's own
analysis in studies/ reads them through here.
"""
import argparse
import glob
import json
import math
import os
import re
import sys

import numpy as np

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
        raise SystemExit(f"the runs in {scheme}/ differ in --reward or --beta: {sorted(configs)}")
    reward, beta = configs.pop() if configs else (None, None)
    return f"{scheme} (β {beta:g})" if reward in ("abc", "abcd", "shapley", "ig") else scheme  # reward.USES_BETA


def load_runs(out):
    """OUT -> {scheme: [run, ...]} (one run per seed, sorted by seed, its number in run["seed"], its
    (reward, beta) in run["config"], its models' fingerprints in run["models"]), each run cut to the
    steps common to all seeds."""
    if not os.path.isdir(out):
        raise SystemExit(f"{out} is not a readable directory")
    runs = {}
    for path in glob.glob(os.path.join(out, "*", "seed*", "metrics.jsonl")):
        m = re.fullmatch(r"seed(\d+)", os.path.basename(os.path.dirname(path)))
        if m:
            scheme = os.path.basename(os.path.dirname(os.path.dirname(path)))
            try:
                runs.setdefault(scheme, []).append((int(m.group(1)), read_metrics(path) | read_config(path)))
            except BadRun as e:  # a damaged run costs that run only
                print(f"skipped {os.path.dirname(path)}: {e}", file=sys.stderr)
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        raise SystemExit(f"no metrics files found under {out}/<reward>/seed<k>/metrics.jsonl")
    for scheme, seeds in runs.items():
        seeds = sorted(seeds, key=lambda x: x[0])
        common = set.intersection(*(set(r["step"].tolist()) for _, r in seeds))
        if not common:
            raise SystemExit(f"seeds of {scheme} share no steps")
        runs[scheme] = [{k: v[np.isin(r["step"], list(common))] for k, v in r.items() if k in KEYS}
                        | dict(seed=i, config=r["config"], models=r["models"]) for i, r in seeds]
    one_build([r for seeds in runs.values() for r in seeds], out)
    return runs


def one_build(runs, where):
    """Stop if the runs started from different models: pairing seeds across two builds compares models,
    not schemes (mini builds other weights on another CPU; docs/mini.md)."""
    models = {r["models"] for r in runs} - {None}
    if len(models) > 1:
        raise SystemExit(f"the runs in {where} started from {len(models)} different models "
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


def study_flags(out):
    """The flags of a study's runs, from the config.json of its first run."""
    paths = sorted(glob.glob(os.path.join(out, "*", "seed*", "config.json")))
    if not paths:
        raise SystemExit(f"no config.json under {out}/<reward>/seed<k>/")
    return json.load(open(paths[0]))["flags"]


def setting(out):
    """A study's completion lengths and protocol, e.g. '90–110 forced'."""
    f = study_flags(out)
    return f"{f['gen_len'][0]}–{f['gen_len'][1]} " + ("forced" if f.get("min_new_tokens") else "free EOS")


def analysis_main(analyse, doc, what, argv=None):
    """The command line of a study's analysis script: `OUT [OUT ...] --out PREFIX` runs analyse(outs, prefix),
    which writes PREFIX.md and PREFIX.png. doc: the script's docstring; what: the OUT folders it reads."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("out", nargs="+", help=what)
    p.add_argument("--out", dest="prefix", required=True, metavar="PREFIX", help="writes PREFIX.md and PREFIX.png")
    args = p.parse_args(argv)
    return analyse(args.out, args.prefix)
