"""run_imdb.sh end to end on a mini preset built from a reduced corpus: every run, then the report."""
import json
import os
import subprocess

from conftest import ROOT

import mini
import reward


def test_run_imdb_mini_one_seed_three_steps(tmp_path):
    texts, labels = mini.read_reviews(mini.CORPUS)
    data = tmp_path / "reduced.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in zip(texts[:300], labels[:300])))
    mini_dir = str(tmp_path / "mini")
    mini.build(str(data), mini_dir, lm_steps=30, rm_steps=30, size=dict(n_layer=2, n_embd=32, n_head=2, n_positions=64))
    out = tmp_path / "out"
    env = dict(os.environ, PRESET="mini", SEEDS="1", STEPS="3", OUT=str(out), EXTRA=f"--mini_dir {mini_dir}")
    run = lambda: subprocess.run(["bash", os.path.join(ROOT, "run_imdb.sh")], env=env, capture_output=True, text=True)
    r = run()
    assert r.returncode == 0, r.stderr[-2000:]
    schemes = list(reward.REWARDS)
    assert schemes == ["sparse", "uniform", "abc", "red", "abcd"]  # the reproduction runs every scheme
    step0 = set()
    for s in schemes:
        run_dir = out / s / "seed0"
        assert (run_dir / "done").exists() and (run_dir / "checkpoint" / "trainer_state.pt").exists()
        rows = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
        assert [x["step"] for x in rows] == [0, 1, 2]
        step0.add((rows[0]["reward_mean"], rows[0]["kl"], rows[0]["completion_len"]))
    assert len(step0) == 1  # shared seeds: step 0 is identical for every scheme
    for f in ("reward.png", "kl.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert all(f"| {s} | 1 |" in table for s in schemes)
    # A second start finds every run finished and only remakes the report.
    again = run()
    assert again.returncode == 0 and again.stdout.count("(done)") == len(schemes)


def test_run_imdb_fails_loudly(tmp_path):
    env = dict(os.environ, PRESET="mini", SEEDS="1", STEPS="2", OUT=str(tmp_path), REWARDS="abc",
               EXTRA=f"--mini_dir {tmp_path / 'mini'} --batch_size 3 --mini_batch_size 2")
    r = subprocess.run(["bash", os.path.join(ROOT, "run_imdb.sh")], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "must be a multiple of --mini_batch_size" in r.stderr
