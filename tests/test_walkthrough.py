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
    # 5. A fresh batch, eval mode: the first ratio is exactly 1; exercise 5, dropout on: it is not.
    first_updates = re.findall(r"update 0: ratio in \[([\d.]+), ([\d.]+)\]", out)
    assert first_updates[0] == ("1.0000", "1.0000") and first_updates[-1] != ("1.0000", "1.0000")
    assert re.search(r"update 3: ratio in \[0\.\d+, 1\.\d+\]", out)  # after 3 steps it has moved both ways
    # Exercise 4: with EOS forbidden the KL estimate of the EOS-loving policy is negative.
    allowed = float(re.search(r"EOS allowed: +([-+.\d]+)", out).group(1))
    forbidden = float(re.search(r"min_new_tokens=15: ([-+.\d]+)", out).group(1))
    assert forbidden < 0 < allowed
    # 6. The mechanism: r_t, V_t and A_t per token, sparse beside abc; A_0 of a lone sparse reward is 0.95^(n-1) s.
    assert re.search(r"token +r sparse +r abc +V +A sparse +A abc", out)
    a0, formula = re.search(r"A_0 = ([-+.\d]+) = 0\.95\^\d+ \* score = ([-+.\d]+)", out).groups()
    assert a0 == formula
    # Exercises 1 and 2: beta 0 repeats sparse exactly; the unwritten my_gae falls back to the project's.
    assert "abc at beta 0 against sparse, first 2 steps of seed 0: exact" in out
    assert "my_gae is not written yet" in out
    # 7. and the exercises trained real runs; the figures were drawn.
    for run, steps in (("sparse", 2), ("abc", 2), ("abc-beta0", 2), ("abc-beta1", 2), ("abc-40-60", 1)):
        assert [row["step"] for row in read_metrics(tmp_path / run / "seed0")] == list(range(steps))
    for fig in ("attention.png", "credit.png", "mechanism.png", "sparse_vs_abc.png", "mechanism-40-60.png"):
        assert (tmp_path / fig).stat().st_size > 10_000
