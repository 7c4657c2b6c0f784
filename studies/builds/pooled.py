"""The cross-build study's table and figure: abc - sparse per build and setting, and pooled over builds.

    python studies/builds/pooled.py studies/builds/seed{0,5,13,14}/8-15 studies/builds/seed{0,5,13,14}/90-110 \
        studies/builds/seed{0,5,13,14}/forced-90-110 --out studies/builds/pooled
"""
import json
import math
import os
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository's root
from plumbing.runs import analysis_main, load_runs, mean_2se, setting, study_flags  # noqa: E402

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
            raise SystemExit(f"pooled.py needs {scheme} and sparse runs with fingerprints in {out}")
        sparse = {r["seed"]: r["reward_mean"].mean() for r in runs["sparse"]}
        d = {r["seed"]: r["reward_mean"].mean() - sparse[r["seed"]] for r in runs[scheme] if r["seed"] in sparse}
        by_setting.setdefault(setting(out), {})
        name = build_name(out, runs)
        if name in by_setting[setting(out)]:
            raise SystemExit(f"two studies of setting {setting(out)} ran on build {name}")
        by_setting[setting(out)][name] = d
    for st, builds in by_setting.items():  # the seeds every build of a setting ran: a balanced design
        common = sorted(set.intersection(*(set(d) for d in builds.values())))
        if len(common) < 2:
            raise SystemExit(f"pooled.py needs at least 2 seeds that every build of {st} ran")
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


def main(argv=None):
    return analysis_main(plot_builds, __doc__, "one study per build and setting, each with sparse and abc runs", argv)


if __name__ == "__main__":
    main()
