"""The β study's table and figure: abc's mean reward against β, beside the paper's sweep.

    python studies/beta/beta.py studies/beta/beta-8-15/* studies/lengths/length-8-15 --out studies/beta/beta
"""
import os
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository's root
from plumbing.runs import analysis_main, load_runs, mean_2se, one_build  # noqa: E402

PAPER_BETA = {0.0: 7.94, 0.1: 7.79, 0.2: 8.28, 0.3: 8.30, 0.4: 8.40, 0.5: 8.48, 0.6: 8.50, 0.7: 8.62, 0.8: 8.64,
              0.9: 8.72, 1.0: 8.80}  # mean reward over all steps, batch 8, 251 steps


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
        raise SystemExit("--beta found no abc runs with a config.json")
    one_build([r for runs in (*by_beta.values(), sparse) for r in runs.values()], " ".join(outs))
    common = sorted(set.intersection(*(set(v) for v in by_beta.values())))
    lines = ["| β | seeds | mean reward ± 2 s.e. | minus sparse ± 2 s.e. (seeds ahead) | paper |", "|---|---|---|---|---|"]
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


def main(argv=None):
    return analysis_main(plot_beta, __doc__, "studies holding abc (and sparse) runs with a config.json", argv)


if __name__ == "__main__":
    main()
