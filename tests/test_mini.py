"""The offline mini preset: build, auto fallback, cache reuse, corrupt cache, learning."""
import json
import os

import pytest
from conftest import SMALL, read_jsonl, read_metrics
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import abc_ppo
from plumbing import mini, presets


def test_build_on_a_reduced_corpus_gives_loadable_checkpoints(tmp_path):
    texts, labels = mini.read_reviews(mini.CORPUS)
    data = tmp_path / "small.csv"  # CSV input, as `python tools/build_mini.py --data my.csv` takes
    rows = list(zip(texts[:200], labels[:200])) + [("Great.", 1), (" ".join(["long"] * 150) + " and dull.", 0)]
    data.write_text("text,label\n" + "".join(f'"{t}",{l}\n' for t, l in rows))  # one tiny, one over 128 tokens
    out = str(tmp_path / "mini")
    gold = dict(A=("reviews", 20), B=("policy", 20))  # two members, as GOLD's four, briefly trained
    manifest = mini.build(str(data), out, lm_steps=20, rm_steps=20, size=SMALL, gold=gold)
    assert manifest["reviews"] == 202 and 0 <= manifest["rm_heldout_accuracy"] <= 1
    # The gold: its members fingerprinted beside the policy and the RM, its accuracy beside the RM's.
    assert set(manifest["fingerprints"]) == {"policy", "reward_model", "gold_rm/A", "gold_rm/B"}
    assert mini.check(out)["fingerprints"] == manifest["fingerprints"] and manifest["gold"] == gold
    assert 0 <= manifest["gold_heldout_accuracy"] <= 1 and 0 <= manifest["gold_long_accuracy"] <= 1
    args = abc_ppo.parse_args(["--preset", "mini", "--mini_dir", out])
    assert args.gold_rm == f"{out}/gold_rm" and len(presets.gold_members(args.gold_rm)) == 2
    assert set(manifest) >= {"corpus_sha256", "policy_params", "rm_params", "torch", "transformers", "tokenizers"}
    # What the recipe is chosen by: how early the policy's samples end, accuracy and faithfulness at two lengths.
    shares = manifest["policy_ends_before"]
    assert list(shares) == ["20", "40", "90"] and all(0 <= v <= 1 for v in shares.values())  # 128 positions: to 122
    assert list(shares.values()) == sorted(shares.values())  # a share that ends before 20 ends before 40 too
    assert 0 <= manifest["rm_long_accuracy"] <= 1
    assert manifest["faithfulness_long"]["max_completion_tokens"] == 124 and manifest["faithfulness"]["texts"] > 0
    assert AutoModelForCausalLM.from_pretrained(os.path.join(out, "policy")).config.n_layer == 2
    rm = AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "reward_model"))
    assert rm.config.num_labels == 2
    tok = AutoTokenizer.from_pretrained(os.path.join(out, "reward_model"))
    assert tok.decode(tok("a great film")["input_ids"]) == "a great film"
    held = [r["text"] for r in read_jsonl(os.path.join(out, "prompts.jsonl"))]
    assert held and set(held) <= {t for t, _ in rows}


def test_small_mini_reward_model_is_accurate(mini_dir):
    # The small test build; the default build reaches higher (see README).
    assert json.load(open(os.path.join(mini_dir, "manifest.json")))["rm_heldout_accuracy"] > 0.75


def test_auto_falls_back_to_mini_when_the_hub_is_unreachable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = abc_ppo.parse_args(["--mini_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert args.preset == "mini" and args.policy == f"{tmp_path}/policy" and args.prompt_len == [2, 5]
    assert err.count("\n") == 1 and "'mini' preset" in err and "--preset paper" in err


def test_explicit_flags_win_over_the_preset(tmp_path):
    args = abc_ppo.parse_args(["--preset", "mini", "--mini_dir", str(tmp_path), "--steps", "7", "--lr", "0.5"])
    assert (args.steps, args.lr, args.dataset) == (7, 0.5, f"{tmp_path}/prompts.jsonl")


def test_second_run_reuses_the_cache(mini_dir, monkeypatch, capsys):
    def no_build(*a, **k):
        raise AssertionError("rebuilt a sound cache")

    monkeypatch.setattr(mini, "build", no_build)
    assert mini.ensure(mini_dir)["reviews"] >= 600
    assert capsys.readouterr().err == ""


def test_truncated_checkpoint_is_detected_and_rebuilt(mini_dir, tmp_path, monkeypatch, capsys):
    import shutil

    broken = str(tmp_path / "mini")
    shutil.copytree(mini_dir, broken)
    weights = os.path.join(broken, "policy", "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(ValueError):
        mini.check(broken)
    monkeypatch.setattr(mini, "build", lambda data, out, gold: shutil.copytree(mini_dir, out, dirs_exist_ok=True))
    mini.ensure(broken)
    assert "cache is corrupt or partial" in capsys.readouterr().err
    mini.check(broken)  # sound again


def test_cache_of_an_older_recipe_is_rebuilt(mini_dir, tmp_path, monkeypatch, capsys):
    import shutil

    old = str(tmp_path / "mini")
    shutil.copytree(mini_dir, old)
    path = os.path.join(old, "manifest.json")
    manifest = json.load(open(path))
    json.dump(dict(manifest, recipe=mini.RECIPE - 1), open(path, "w"))
    built = []
    monkeypatch.setattr(mini, "build", lambda data, out, gold: built.append((data, out, gold)))
    mini.ensure(old)
    # Rebuilt without the gold, which would take 20 minutes (tools/build_mini.py --add_gold adds it).
    assert built == [(os.path.join(mini.HERE, manifest["data"]), old, {})] and "older recipe" in capsys.readouterr().err


def test_short_mini_run_increases_the_reward(mini_dir, tmp_path):
    abc_ppo.main(["--preset", "mini", "--mini_dir", mini_dir, "--out_dir", str(tmp_path), "--steps", "60", "--lr", "3e-4",
                  "--seed", "0"])
    rewards = [r["reward_mean"] for r in read_metrics(tmp_path)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"mini: first 5 steps {first:.2f}, last 5 steps {last:.2f}")
    assert last > first + 1.0, rewards


def test_the_default_models_are_the_committed_reference(monkeypatch):
    # The same policy and RM on every machine: the default --mini_dir is the committed build, whose
    # weights must hash to the fingerprints in plumbing/mini.py, and it is loaded, never rebuilt.
    def no_build(*a, **k):
        raise AssertionError("rebuilt the reference")

    monkeypatch.setattr(mini, "build", no_build)
    args = abc_ppo.parse_args(["--preset", "mini"])
    assert args.policy == os.path.join(mini.REFERENCE, "policy")
    members = presets.gold_members(args.gold_rm)
    assert {k: mini.fingerprint(getattr(args, k)) for k in mini.MODELS} | {
        os.path.relpath(m, mini.REFERENCE): mini.fingerprint(m) for m in members} == mini.REFERENCE_FINGERPRINTS
    assert mini.ensure(args.mini_dir)["fingerprints"] == mini.REFERENCE_FINGERPRINTS
    # Recipe 3's policy and RM, unchanged by the gold that recipe 4 added.
    assert {k: mini.REFERENCE_FINGERPRINTS[k] for k in mini.MODELS} == dict(policy="b6814e1cd5a5462f",
                                                                           reward_model="008d87767ef1d082")


def flip_a_byte(path):
    """Change one byte near the end of a weight file: it still loads, as another build would."""
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        b = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([b[0] ^ 1]))


def test_a_changed_reference_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    import shutil

    ref = str(tmp_path / "mini")
    shutil.copytree(mini.REFERENCE, ref)
    monkeypatch.setattr(mini, "REFERENCE", ref)
    mini.ensure(ref)  # the copy is sound
    flip_a_byte(os.path.join(ref, "reward_model", "model.safetensors"))
    with pytest.raises(SystemExit) as e:
        abc_ppo.main(["--preset", "mini", "--mini_dir", ref, "--out_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "reward_model weights have fingerprint" in err and "git checkout" in err


def test_a_cache_whose_weights_changed_is_rebuilt(mini_dir, tmp_path, monkeypatch, capsys):
    import shutil

    cache = str(tmp_path / "mini")
    shutil.copytree(mini_dir, cache)
    flip_a_byte(os.path.join(cache, "policy", "model.safetensors"))
    built = []
    monkeypatch.setattr(mini, "build", lambda data, out, gold: built.append(out))
    mini.ensure(cache)
    assert built == [cache] and "policy weights have fingerprint" in capsys.readouterr().err
