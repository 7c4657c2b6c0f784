"""The horizon study's table and figure: abc - sparse against GAE's λ, per setting, on build 0.

    python studies/builds/horizon.py studies/builds/seed0/{,lam-0.5/,lam-1/}{8-15,forced-90-110,90-110} \
        --out studies/builds/seed0/horizon
"""
import os
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository's root
from plumbing.runs import analysis_main, load_runs, mean_2se, one_build, setting, study_flags  # noqa: E402

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
            raise SystemExit(f"horizon.py needs {scheme} and sparse runs in {out}")
        lam = float(study_flags(out).get("lam", REFERENCE_LAM))
        if lam in by_setting.setdefault(setting(out), {}):
            raise SystemExit(f"two studies of setting {setting(out)} ran at λ {lam:g}")
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
            raise SystemExit(f"horizon.py needs at least 2 seeds that every λ of {st} ran")
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
    return analysis_main(plot_horizon, __doc__, "one study per setting and λ, each with sparse and abc runs", argv)


if __name__ == "__main__":
    main()
