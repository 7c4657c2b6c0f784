"""run_imdb.sh end to end on a mini preset built from a reduced corpus: every run, then the report."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, read_metrics

from plumbing import mini
import reward


def script_env(tmp_path, **settings):
    """The script's settings, with PYTHON the interpreter running the tests; a `python` on PATH
    that fails catches any call that ignores PYTHON."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text("#!/bin/sh\necho 'not the PYTHON interpreter' >&2\nexit 3\n")
    (bin_dir / "python").chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable, **settings)


def run_script(env):
    return subprocess.run(["bash", os.path.join(ROOT, "run_imdb.sh")], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory):
    """A mini preset built in seconds from a reduced corpus."""
    root = tmp_path_factory.mktemp("reduced")
    texts, labels = mini.read_reviews(mini.CORPUS)
    data = root / "reduced.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in zip(texts[:300], labels[:300])))
    mini.build(str(data), str(root / "mini"), lm_steps=30, rm_steps=30,
               size=dict(n_layer=2, n_embd=32, n_head=2, n_positions=64), gold={})
    return str(root / "mini")


def test_run_imdb_mini_one_seed_three_steps(tmp_path, mini_dir):
    out = tmp_path / "out"
    env = script_env(tmp_path, PRESET="mini", SEEDS="1", STEPS="3", OUT=str(out), GEN_LEN="3 4",
                     EXTRA=f"--mini_dir {mini_dir}")
    r = run_script(env)
    assert r.returncode == 0, r.stderr[-2000:]
    schemes = list(reward.SCHEMES)
    assert schemes == ["sparse", "uniform", "abc", "red", "abcd", "shapley", "ig"]  # the reproduction runs every scheme
    step0 = set()
    for s in schemes:
        run_dir = out / s / "seed0"
        assert (run_dir / "done").exists() and not (run_dir / "checkpoint").exists()  # done: its checkpoint goes
        rows = read_metrics(run_dir)
        assert [x["step"] for x in rows] == [0, 1, 2]
        assert all(1 <= x["completion_len"] <= 4 for x in rows)  # GEN_LEN="3 4", not the default 8-15
        step0.add((rows[0]["reward_mean"], rows[0]["kl"], rows[0]["completion_len"]))
    assert len(step0) == 1  # shared seeds: step 0 is identical for every scheme
    for f in ("reward.png", "kl.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    # Each run's config.json gives its beta, shown for the schemes that use it.
    assert all(f"| {s} | 1 |" in table for s in ("sparse", "uniform", "red"))
    assert all(f"| {s} (β 0.8) | 1 |" in table for s in ("abc", "abcd", "shapley", "ig"))
    # A second start finds every run finished and only remakes the report.
    again = run_script(env)
    assert again.returncode == 0 and again.stdout.count("(done)") == len(schemes)
    # KEEP_CHECKPOINTS=1 keeps a finished run's checkpoint.
    (out / "abc" / "seed0" / "done").unlink()
    kept = run_script(dict(env, KEEP_CHECKPOINTS="1", REWARDS="abc"))
    assert kept.returncode == 0 and (out / "abc" / "seed0" / "checkpoint" / "trainer_state.pt").exists()


def test_run_imdb_fails_loudly(tmp_path):
    env = script_env(tmp_path, PRESET="mini", SEEDS="1", STEPS="2", OUT=str(tmp_path), REWARDS="abc",
                     EXTRA=f"--mini_dir {tmp_path / 'mini'} --batch_size 3 --mini_batch_size 2")
    r = run_script(env)
    assert r.returncode != 0 and "must be a multiple of --mini_batch_size" in r.stderr


def test_a_stop_signal_leaves_every_run_resumable(tmp_path, mini_dir):
    out = tmp_path / "out"
    env = script_env(tmp_path, PRESET="mini", SEEDS="1", STEPS="500", OUT=str(out), GEN_LEN="3 4", JOBS="2",
                     REWARDS="sparse abc", EXTRA=f"--mini_dir {mini_dir}")
    p = subprocess.Popen(["bash", os.path.join(ROOT, "run_imdb.sh")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    runs = [out / s / "seed0" for s in ("sparse", "abc")]
    deadline = time.time() + 300
    while not all((d / "metrics.jsonl").exists() and read_metrics(d) for d in runs):
        assert time.time() < deadline and p.poll() is None, p.communicate()[1][-2000:]
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)  # to the script alone, as `kill` or `docker stop` sends it
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 143, stderr[-2000:]
    assert "stopping: each running run finishes its step" in stderr and "run the same command again" in stderr
    steps = []
    for d in runs:  # each run stopped at a saved step, not done
        assert f"stopped {d.parent.name} seed 0 at a checkpoint" in stdout
        assert not (d / "done").exists() and "continue with --resume" in (d / "log.txt").read_text()
        steps.append(len(read_metrics(d)))
        assert steps[-1] >= 1
    # The same command, asked for one step more than the longest run has, resumes both and finishes them.
    again = subprocess.run(["bash", os.path.join(ROOT, "run_imdb.sh")], env=dict(env, STEPS=str(max(steps) + 1)),
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    for d in runs:
        assert (d / "done").exists() and [r["step"] for r in read_metrics(d)] == list(range(max(steps) + 1))
