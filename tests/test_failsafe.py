"""A run that fails safe: divergence stops in one line and keeps the last finite checkpoint, a stop
signal saves first, a damaged run directory gets one line, and nothing bad is ever logged."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, read_metrics, tiny_args

import abc_ppo
from plumbing import checkpoints
from conftest import load_script
import reward

report = load_script("tools/report.py")


def without_timings(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def last_line(capsys):
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_divergence_stops_in_one_line_and_keeps_the_last_finite_checkpoint(tiny, tmp_path, capsys):
    argv = tiny_args(tiny, tmp_path, "--lr", "3e3", "--steps", "6", "--save_every", "1")  # Adam at lr 3000 blows up
    with pytest.raises(SystemExit) as e:
        abc_ppo.main(argv)
    line = last_line(capsys)
    rows = read_metrics(tmp_path)
    assert e.value.code == checkpoints.DIVERGED == 3
    assert f"diverged at step {len(rows)}: " in line and "is not finite" in line and "--lr (now 3000)" in line
    assert 1 <= len(rows) < 6 and all(math.isfinite(v) for r in rows for v in r.values())  # only finite rows
    # The checkpoint on disk is the last finite step's, and --resume from it repeats the same stop.
    saved = checkpoints.torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=True)["step"]
    assert saved == len(rows) - 1
    with pytest.raises(SystemExit) as again:
        abc_ppo.main(argv + ["--resume"])
    assert again.value.code == 3 and last_line(capsys) == line
    assert read_metrics(tmp_path) == rows


def test_a_non_finite_rm_score_is_named_as_bad_input(tiny, tmp_path, capsys, monkeypatch):
    real = reward.score_completions

    def nan_for_sample_3(*a, **k):
        s, attention, prefix = real(*a, **k)
        s = s.clone()
        s[3] = float("nan")
        return s, attention, prefix

    monkeypatch.setattr(reward, "score_completions", nan_for_sample_3)
    with pytest.raises(SystemExit) as e:
        abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "2"))
    line = last_line(capsys)
    assert e.value.code == 2 and "reward model returned a non-finite score (nan) for sample 3 of step 0" in line
    assert read_metrics(tmp_path) == []


def test_the_checks_change_no_result(tiny, tmp_path, monkeypatch):
    abc_ppo.main(tiny_args(tiny, tmp_path / "checked", "--steps", "3", "--seed", "4"))
    monkeypatch.setattr(checkpoints, "check_finite", lambda *a, **k: None)
    monkeypatch.setattr(checkpoints, "check_scores", lambda *a, **k: None)
    abc_ppo.main(tiny_args(tiny, tmp_path / "unchecked", "--steps", "3", "--seed", "4"))
    assert without_timings(read_metrics(tmp_path / "checked")) == without_timings(read_metrics(tmp_path / "unchecked"))


def start(tiny, out, *extra):
    """A training process on the tiny models, and a wait until it has logged two steps."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.Popen([sys.executable, "abc_ppo.py", *tiny_args(tiny, out, "--steps", "200", "--save_every", "1000",
                                                                    "--seed", "5", *extra)],
                         cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(out / "metrics.jsonl") and len(read_metrics(out)) >= 2:
            return p
        time.sleep(0.2)
    raise AssertionError(f"no two steps logged: {p.communicate()[1][-2000:]}")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_saves_the_step_and_resume_continues_exactly(tiny, tmp_path, sig, code):
    p = start(tiny, tmp_path / "stopped")
    p.send_signal(sig)
    err = p.communicate(timeout=300)[1]
    rows = read_metrics(tmp_path / "stopped")
    n = len(rows)
    assert p.returncode == code and err.strip().splitlines()[-1] == (
        f"abc_ppo.py: stopped at step {n - 1}; continue with --resume")
    state = checkpoints.torch.load(tmp_path / "stopped" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == n - 1  # the checkpoint is the last logged step, with --save_every 1000
    if sig == signal.SIGTERM:  # resumed, the run is the uninterrupted one, step for step
        abc_ppo.main(tiny_args(tiny, tmp_path / "stopped", "--steps", str(n + 2), "--seed", "5", "--resume"))
        abc_ppo.main(tiny_args(tiny, tmp_path / "whole", "--steps", str(n + 2), "--seed", "5"))
        assert without_timings(read_metrics(tmp_path / "stopped")) == without_timings(read_metrics(tmp_path / "whole"))


def test_a_second_signal_exits_at_once(monkeypatch, capsys):
    exits = []
    monkeypatch.setattr(checkpoints.os, "_exit", exits.append)  # in place of leaving the test process
    with checkpoints.StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next line
        assert stop.signum == signal.SIGTERM and exits == []
        os.kill(os.getpid(), signal.SIGINT)
        assert exits == [130] and "second signal: exiting at once" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # pytest's Ctrl-C works again


@pytest.mark.parametrize("config, why", [("", "it is empty"), ("{}", "it has no 'flags'"),
                                         ('{"flags": {"reward": "ab', "not whole JSON"), ("[1, 2]", "no 'flags'")])
def test_resume_on_a_damaged_config_says_what_is_wrong(tiny, tmp_path, capsys, config, why):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "1"))
    (tmp_path / "config.json").write_text(config)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "2", "--resume"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and why in err and "move" in err and "without --resume" in err


@pytest.mark.parametrize("damage", ["truncate", "garbage", "old"])
def test_resume_on_a_damaged_checkpoint_says_what_is_wrong(tiny, tmp_path, capsys, damage):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "1"))
    state = tmp_path / "checkpoint" / "trainer_state.pt"
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "garbage":
        state.write_bytes(b"not a checkpoint")
    else:  # an older version's trainer state, without the value head
        s = checkpoints.torch.load(state, weights_only=True)
        del s["value_head"]
        checkpoints.torch.save(s, state)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "2", "--resume"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "no usable checkpoint" in err and "move" in err


def test_plot_skips_a_damaged_run_and_says_why(tmp_path, capsys):
    row = dict(step=0, reward_mean=1.0, reward_std=0.0, kl=0.0, kl_coef=0.2, policy_loss=0.0, value_loss=0.0,
               entropy=1.0, clip_frac=0.0, approx_kl=0.0, completion_len=10.0, time_generate=1.0, time_score=1.0,
               time_optimize=1.0)
    for scheme, seed, metrics, config in (("sparse", 0, json.dumps(row), '{"flags": {"reward": "sparse", "beta": 0.8}}'),
                                          ("sparse", 1, '{"step": 0, "rew', None),  # truncated metrics
                                          ("abc", 0, json.dumps(row), "{}")):  # a config without flags
        d = tmp_path / scheme / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text(metrics + "\n")
        if config is not None:
            (d / "config.json").write_text(config)
    report.main([str(tmp_path)])
    err = capsys.readouterr().err
    assert "skipped" in err and "sparse/seed1" in err and "abc/seed0" in err
    md = (tmp_path / "results.md").read_text()
    assert "| sparse | 1 |" in md and "| abc |" not in md and "Read 1 runs" in md
