"""<out_dir>/config.json: every resolved flag, the versions, the commit and the models' fingerprints;
--resume holds a run to its flags and its models."""
import json

import pytest
from conftest import read_metrics, tiny_args

import abc_ppo
from plumbing import mini
from conftest import load_script

report = load_script("tools/report.py")
beta_study = load_script("studies/beta/beta.py")


def test_config_json_records_the_resolved_run(tiny, tmp_path):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--reward", "abc", "--beta", "0.3", "--steps", "1", "--prompt_len", "3"))
    config = json.loads((tmp_path / "config.json").read_text())
    flags = config["flags"]
    assert set(flags) == set(vars(abc_ppo.parse_args(tiny_args(tiny, tmp_path))))  # every flag
    assert (flags["reward"], flags["beta"], flags["prompt_len"], flags["preset"]) == ("abc", 0.3, [3, 3], "paper")
    assert flags["device"] == "cpu"  # resolved from auto
    assert {"python", "torch", "transformers", "datasets"} <= set(config["versions"])
    assert config["git"] is None or len(config["git"].removesuffix("-dirty")) == 40
    fp = {k: mini.fingerprint(tiny[k]) for k in ("policy", "reward_model")}
    assert config["models"] == fp and all(len(v) == 16 for v in fp.values()) and fp["policy"] != fp["reward_model"]
    assert mini.fingerprint("gpt2") is None  # a hub name: nothing local to hash


def test_resume_refuses_other_models(tiny, tmp_path, capsys):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "1"))
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["models"]["reward_model"] = "0123456789abcdef"  # as if the run began on another machine's build
    path.write_text(json.dumps(config))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "2", "--resume"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "the models here" in err and "0123456789abcdef" in err
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]


def test_resume_refuses_a_changed_experiment_and_allows_a_longer_run(tiny, tmp_path, capsys):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--beta", "0.5", "--steps", "1"))
    capsys.readouterr()  # the first run's progress bar
    with pytest.raises(SystemExit) as e:
        abc_ppo.main(tiny_args(tiny, tmp_path, "--beta", "0.8", "--steps", "2", "--resume"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err
    assert "--beta is 0.8 here but 0.5 in" in err and "config.json" in err
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]  # nothing was touched
    # --steps only extends the run, and --log_samples only adds a log.
    abc_ppo.main(tiny_args(tiny, tmp_path, "--beta", "0.5", "--steps", "2", "--log_samples", "1", "--resume"))
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    assert json.loads((tmp_path / "config.json").read_text())["flags"]["steps"] == 2


def write_run(out, scheme, seed, reward, beta, models=None):
    d = out / scheme / f"seed{seed}"
    d.mkdir(parents=True)
    row = dict(step=0, reward_mean=1.0, reward_std=0.0, kl=0.0, kl_coef=0.2, policy_loss=0.0, value_loss=0.0,
               entropy=1.0, clip_frac=0.0, approx_kl=0.0, completion_len=10.0, time_generate=1.0, time_score=1.0,
               time_optimize=1.0)
    (d / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    (d / "config.json").write_text(json.dumps(dict(flags=dict(reward=reward, beta=beta), models=models)))


def test_plot_names_runs_by_their_config(tmp_path):
    write_run(tmp_path, "abc-beta0.25", 0, "abc", 0.25)
    write_run(tmp_path, "sparse", 0, "sparse", 0.8)
    report.main([str(tmp_path)])
    md = (tmp_path / "results.md").read_text()
    assert "| abc-beta0.25 (β 0.25) | 1 |" in md and "| sparse | 1 |" in md  # β only where the scheme uses it
    write_run(tmp_path, "abc-beta0.25", 1, "abc", 0.5)  # a seed of another experiment in the same folder
    with pytest.raises(SystemExit, match="differ in --reward or --beta"):
        report.main([str(tmp_path)])


def test_plot_refuses_to_pair_runs_on_different_models(tmp_path):
    build = lambda rm: dict(policy="aaaaaaaaaaaaaaaa", reward_model=rm)
    write_run(tmp_path, "sparse", 0, "sparse", 0.8, build("bbbbbbbbbbbbbbbb"))
    write_run(tmp_path, "abc", 0, "abc", 0.8, build("bbbbbbbbbbbbbbbb"))
    write_run(tmp_path, "abc", 1, "abc", 0.8)  # a run that predates fingerprints pairs with either
    report.main([str(tmp_path)])
    write_run(tmp_path, "sparse", 1, "sparse", 0.8, build("cccccccccccccccc"))  # resumed on another build
    with pytest.raises(SystemExit, match="2 different models"):
        report.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="2 different models"):
        beta_study.main([str(tmp_path), "--out", str(tmp_path / "beta")])
