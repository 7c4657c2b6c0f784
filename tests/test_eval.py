"""Evaluation (--eval_every, abc_ppo.evaluate, plumbing/evaluation.py): it never changes training, it writes
every field at the steps it should, its prompts are the preset's and not the run's, it resumes, and a gold
RM is read the way the proxy is. Also --kl_coef, the fixed KL coefficient."""
import json

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from conftest import read_jsonl, read_metrics, tiny_args

import abc_ppo
from plumbing import mini

EVAL = ("--eval_every", "2", "--eval_prompts", "4", "--eval_samples", "3")
FIELDS = {"step", "proxy_mean", "proxy_se", "gold_mean", "gold_se", "kl", "kl_se", "completion_len", "distinct_2",
          "completions", "rm_rows", "train_seconds", "eval_seconds"}
untimed = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time_") and not k.endswith("_seconds")}
                        for r in rows]


def test_evaluation_leaves_training_bit_identical_and_writes_every_field(tiny, encoder_dir, tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    # A gold with a tokenizer of its own (DistilBERT, word level): it scores the decoded text.
    abc_ppo.main(tiny_args(tiny, on, "--steps", "3", "--reward", "abc", *EVAL, "--gold_rm", encoder_dir))
    abc_ppo.main(tiny_args(tiny, off, "--steps", "3", "--reward", "abc"))
    assert untimed(read_metrics(on)) == untimed(read_metrics(off))  # to the bit: floats compare exactly
    assert not (off / "eval.jsonl").exists()
    rows, metrics = read_jsonl(on / "eval.jsonl"), read_metrics(on)
    assert [r["step"] for r in rows] == [0, 2, 3]  # before the first update, every 2 steps, after the last
    assert all(set(r) == FIELDS and r["completions"] == 12 and r["gold_mean"] is not None for r in rows)
    assert rows[0]["kl"] == 0.0 and rows[0]["rm_rows"] == 0 and rows[0]["train_seconds"] == 0.0  # pi = pi_ref
    assert rows[1]["kl"] != 0.0
    for r in rows:  # the cost of the steps before each evaluation, evaluation excluded
        done = metrics[:r["step"]]
        assert r["rm_rows"] == sum(m["rm_rows"] for m in done)
        assert r["train_seconds"] == pytest.approx(sum(m["time_generate"] + m["time_score"] + m["time_optimize"]
                                                       for m in done))
    samples = read_jsonl(on / "eval_samples.jsonl")  # the last evaluation's completions
    assert len(samples) == 12 and {s["step"] for s in samples} == {3}
    tok = AutoTokenizer.from_pretrained(tiny["policy"])
    assert all(tok.decode(s["completion_ids"]) == s["completion"] and s["completion_ids"] for s in samples)
    assert sum(s["gold"] for s in samples) / 12 == pytest.approx(rows[-1]["gold_mean"], abs=1e-5)
    assert sum(s["kl"] for s in samples) / 12 == pytest.approx(rows[-1]["kl"], abs=1e-5)
    prompts = json.load(open(on / "config.json"))["eval"]["prompts"]
    assert len(prompts) == 4 and all(s["prompt"] in prompts for s in samples)


def test_the_prompts_are_the_presets_and_the_samples_are_paired_by_seed(tiny, tmp_path):
    runs = {(reward, seed): tmp_path / f"{reward}{seed}" for reward, seed in (("sparse", 0), ("red", 0), ("sparse", 1))}
    for (reward, seed), out in runs.items():
        abc_ppo.main(tiny_args(tiny, out, "--steps", "1", "--reward", reward, "--seed", str(seed), *EVAL))
    configs = [json.load(open(out / "config.json"))["eval"] for out in runs.values()]
    assert configs[0] == configs[1] == configs[2]  # one prompt set, whatever the seed or the scheme
    first = {key: untimed(read_jsonl(out / "eval.jsonl"))[0] for key, out in runs.items()}
    assert first[("sparse", 0)] == first[("red", 0)]  # step 0, the same policy and seed: the same samples
    assert first[("sparse", 0)] != first[("sparse", 1)]  # another seed samples others


def test_resumed_evaluation_is_the_uninterrupted_one(tiny, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    abc_ppo.main(tiny_args(tiny, straight, "--steps", "4", *EVAL))
    abc_ppo.main(tiny_args(tiny, resumed, "--steps", "3", "--save_every", "3", *EVAL))
    abc_ppo.main(tiny_args(tiny, resumed, "--steps", "4", "--resume", *EVAL))
    rows = read_jsonl(resumed / "eval.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 3, 4]  # the evaluation after the old last step stays, once
    assert untimed(rows[:2] + rows[3:]) == untimed(read_jsonl(straight / "eval.jsonl"))
    assert rows[3]["rm_rows"] == sum(m["rm_rows"] for m in read_metrics(resumed))  # the cost read back


def test_a_gold_that_is_the_proxy_scores_as_the_proxy(tiny, tmp_path, capsys):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "1", *EVAL, "--gold_rm", tiny["reward_model"]))
    for r in read_jsonl(tmp_path / "eval.jsonl"):
        assert r["gold_mean"] == pytest.approx(r["proxy_mean"]) and r["gold_se"] == pytest.approx(r["proxy_se"])
    abc_ppo.main(tiny_args(tiny, tmp_path / "none", "--steps", "1", *EVAL))
    assert capsys.readouterr().err.count("evaluation has no gold reward model") == 1
    assert all(r["gold_mean"] is None for r in read_jsonl(tmp_path / "none" / "eval.jsonl"))


def test_an_ensemble_gold_scores_the_mean_of_its_members(tiny, tmp_path):
    """A --gold_rm folder with a classifier in each subfolder, as mini's gold: each completion's gold score
    is the mean of its members' scores, and config.json records each member's fingerprint."""
    gold = tmp_path / "gold"
    for name, scale in (("a", 1.0), ("b", -3.0)):  # b scores -3 times a: their mean is -a
        member = AutoModelForSequenceClassification.from_pretrained(tiny["reward_model"])
        member.score.weight.data *= scale
        member.save_pretrained(gold / name)
        AutoTokenizer.from_pretrained(tiny["reward_model"]).save_pretrained(gold / name)
    for name, judge in (("a", gold / "a"), ("b", gold / "b"), ("both", gold)):
        abc_ppo.main(tiny_args(tiny, tmp_path / name, "--steps", "1", *EVAL, "--gold_rm", str(judge)))
    a, b, both = (read_jsonl(tmp_path / name / "eval_samples.jsonl") for name in ("a", "b", "both"))
    assert [s["completion"] for s in a] == [s["completion"] for s in both]  # the same completions, whatever the judge
    assert [s["gold"] for s in both] == pytest.approx([(x["gold"] + y["gold"]) / 2 for x, y in zip(a, b)], abs=1e-5)
    assert [s["gold"] for s in both] == pytest.approx([-x["gold"] for x in a], abs=1e-5)
    record = json.load(open(tmp_path / "both" / "config.json"))["eval"]["gold_rm"]
    assert record == {str(gold / name): mini.fingerprint(str(gold / name)) for name in ("a", "b")}


def test_kl_coef_holds_the_coefficient_fixed(tiny, tmp_path):
    abc_ppo.main(tiny_args(tiny, tmp_path / "fixed", "--steps", "3", "--kl_coef", "0.3"))
    abc_ppo.main(tiny_args(tiny, tmp_path / "adaptive", "--steps", "3", "--init_kl_coef", "0.3"))
    assert [r["kl_coef"] for r in read_metrics(tmp_path / "fixed")] == [0.3] * 3
    assert [r["kl_coef"] for r in read_metrics(tmp_path / "adaptive")][1:] != [0.3] * 2  # the controller moves it
