"""walkthrough.py runs as a plain script, on a small mini build, with 2 PPO steps per run."""
import os
import re
import subprocess
import sys

from conftest import ROOT, read_metrics


def test_walkthrough_runs_and_shows_what_it_says(mini_dir, tmp_path):
    env = dict(os.environ, WALKTHROUGH_STEPS="2", WALKTHROUGH_SEEDS="1", WALKTHROUGH_MINI_DIR=mini_dir,
               WALKTHROUGH_OUT=str(tmp_path), MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "walkthrough.py"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    # 3. Schemes that keep the score sum to it: sparse, uniform, abc, abcd (red sums to score - s_0).
    score = float(re.search(r"RM score ([-+.\d]+)", out).group(1))
    sums = [float(x) for x in re.search(r"^sum (.*)$", out, re.M).group(1).split()]
    assert [round(sums[i] - score, 2) for i in (0, 1, 2, 4)] == [0.0] * 4
    # 5. A fresh batch, eval mode: the first ratio is exactly 1; exercise 4, dropout on: it is not.
    first_updates = re.findall(r"update 0: ratio in \[([\d.]+), ([\d.]+)\]", out)
    assert first_updates[0] == ("1.0000", "1.0000") and first_updates[-1] != ("1.0000", "1.0000")
    assert re.search(r"update 3: ratio in \[0\.\d+, 1\.\d+\]", out)  # after 3 steps it has moved both ways
    # Exercise 3: with EOS forbidden the KL estimate of the EOS-loving policy is negative.
    allowed = float(re.search(r"EOS allowed: +([-+.\d]+)", out).group(1))
    forbidden = float(re.search(r"min_new_tokens=15: ([-+.\d]+)", out).group(1))
    assert forbidden < 0 < allowed
    # 6. and the exercises trained real runs; 2. 3. 6. drew their figures.
    for run in ("sparse", "abc", "abc-beta0", "abc-beta1", "abc-40-60"):
        assert [row["step"] for row in read_metrics(tmp_path / run / "seed0")] == [0, 1]
    for fig in ("attention.png", "credit.png", "sparse_vs_abc.png"):
        assert (tmp_path / fig).stat().st_size > 10_000
