"""shapley against sparse at equal wall time, an analysis added after the credit study's runs (not fixed
before them): sparse's mean reward over its last 5 steps (75-79) against shapley's over the 5 steps
ending at step 79 / ratio, ratio = shapley's s/step over sparse's; paired by seed, mean ± 2 s.e.
Each ratio measured is used: docs/speed.md's two sittings at 8-15 and 90-110 tokens, and the 40-60
study's own step times (no sitting measured that length).

    python studies/builds/seed0/equal_time.py
"""
import glob
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RATIOS = {"8-15": (("beside two study runs", 1.92), ("idle machine", 2.22)),
          "forced-40-60": (("the study's step times", 4.81 / 2.07),),
          "forced-90-110": (("beside two study runs", 2.55), ("idle machine", 2.70))}


def rewards(study, scheme, seed):
    return np.array([json.loads(line)["reward_mean"] for line in open(f"{HERE}/{study}/{scheme}/seed{seed}/metrics.jsonl")])


print("| tokens | shapley's s/step ÷ sparse's | shapley's steps | shapley − sparse at equal time (seeds ahead) |")
print("|---|---|---|---|")
for study, ratios in RATIOS.items():
    seeds = sorted(int(p.rsplit("seed", 1)[1]) for p in glob.glob(f"{HERE}/{study}/shapley/seed*"))
    for source, ratio in ratios:
        k = int(79 / ratio)
        d = np.array([rewards(study, "shapley", s)[k - 4:k + 1].mean() - rewards(study, "sparse", s)[75:80].mean()
                      for s in seeds])
        print(f"| {study} | {ratio:.2f} ({source}) | {k - 4}–{k} | {d.mean():+.2f} ± {2 * d.std(ddof=1) / len(d) ** 0.5:.2f} "
              f"({(d > 0).sum()}/{len(d)}) |")
