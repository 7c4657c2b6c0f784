"""shapley against sparse at equal wall time, an analysis added after the credit study's runs (not fixed
before them): sparse's mean reward over its last 5 steps (75-79) against shapley's over the 5 steps
ending at step 79 / ratio, ratio = shapley's s/step over sparse's; paired by seed, mean ± 2 s.e.

    python assets/builds/seed0/equal_time.py     # the ratios measured in docs/speed.md (8-15, 90-110)
                                                 # and in the 40-60 study's own step times
"""
import glob
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def rewards(study, scheme, seed):
    return np.array([json.loads(line)["reward_mean"] for line in open(f"{HERE}/{study}/{scheme}/seed{seed}/metrics.jsonl")])


for study, ratio, source in (("8-15", 1.92, "docs/speed.md"), ("forced-40-60", 4.81 / 2.07, "the study's s/step"),
                             ("forced-90-110", 2.55, "docs/speed.md")):
    k = int(79 / ratio)
    seeds = sorted(int(p.rsplit("seed", 1)[1]) for p in glob.glob(f"{HERE}/{study}/shapley/seed*"))
    d = np.array([rewards(study, "shapley", s)[k - 4:k + 1].mean() - rewards(study, "sparse", s)[75:80].mean() for s in seeds])
    print(f"| {study} | {ratio:.2f} ({source}) | {k - 4}–{k} | {d.mean():+.2f} ± {2 * d.std(ddof=1) / len(d) ** 0.5:.2f} "
          f"({(d > 0).sum()}/{len(d)}) |")
