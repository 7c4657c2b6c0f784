"""Scoring positions, GAE, PPO clipping, rollout masks, and short end-to-end runs of abc_ppo.py."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, pad, read_jsonl, read_metrics, tiny_args
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import abc_ppo
from plumbing import presets
import reward
from plumbing import speed

KEYS = {"step", "reward_mean", "reward_std", "kl", "kl_coef", "policy_loss", "value_loss", "entropy", "clip_frac",
        "value_clip_frac", "explained_variance", "approx_kl", "completion_len", "rm_rows", "time_generate", "time_score",
        "time_optimize"}


# --- Scoring: the score position and the ABC attention row agree under any padding ----------
def alone(rm, prompt, completion):
    """Score and completion attention of one unpadded sequence: the reference values."""
    ids = torch.tensor([prompt + completion])
    s, a, _ = reward.score(rm, ids, torch.ones_like(ids))
    return s[0], a[0, len(prompt):]


def test_score_and_attention_agree_under_left_and_right_padding(tiny_rm, policy_tok):
    rm, tok = tiny_rm, policy_tok
    pairs = [(tok("the film was")["input_ids"], tok(" very good and long")["input_ids"]),
             (tok("a")["input_ids"], tok(" slow story")["input_ids"])]
    for side in ("left", "right"):
        ids, mask = pad([p + c for p, c in pairs], tok.eos_token_id, side)
        s, a, _ = reward.score(rm, ids, mask)
        for b, (p, c) in enumerate(pairs):
            start = ids.shape[1] - len(c) if side == "left" else len(p)  # the completion's first column
            s1, a1 = alone(rm, p, c)
            torch.testing.assert_close(s[b], s1, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a[b, start:start + len(c)], a1, atol=1e-5, rtol=1e-5)


def test_score_is_read_at_an_eos_inside_the_completion(tiny_rm, policy_tok):
    rm, tok = tiny_rm, policy_tok
    p, c = tok("the plot")["input_ids"], tok(" was good")["input_ids"] + [tok.eos_token_id]
    junk = tok(" bad bad dull")["input_ids"]
    ids = torch.tensor([[tok.eos_token_id] + p + c + junk])  # one left pad, then junk after the EOS
    mask = torch.tensor([[0] + [1] * (len(p) + len(c)) + [0] * len(junk)])
    s, a, _ = reward.score(rm, ids, mask)
    s1, a1 = alone(rm, p, c)
    torch.testing.assert_close(s[0], s1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[0, 1 + len(p):1 + len(p) + len(c)], a1, atol=1e-5, rtol=1e-5)
    assert a[0, -len(junk):].abs().max() == 0  # nothing after the EOS is attended to


def test_score_eos_0_scores_the_text_before_a_final_eos(tiny_rm, policy_tok):
    rm, tok = tiny_rm, policy_tok
    p, c = tok("the plot")["input_ids"], tok(" was good")["input_ids"]
    seq = torch.tensor([p + c + [tok.eos_token_id], p + c + [tok.eos_token_id]])
    prompt_mask, mask = torch.ones(2, len(p), dtype=torch.long), torch.tensor([[1] * (len(c) + 1), [1] * len(c) + [0]])
    s, a, prefix = reward.score_completions(rm, None, tok, seq, prompt_mask, mask, score_eos=0)
    s1, a1 = alone(rm, p, c)
    torch.testing.assert_close(s, torch.stack([s1, s1]), atol=1e-5, rtol=1e-5)  # EOS or not: the same text
    torch.testing.assert_close(a[0, :-1], a1, atol=1e-5, rtol=1e-5)
    assert a[0, -1] == 0 and prefix[0, -1] == prefix[0, -2]  # the EOS gets no attention and no RED credit
    s_eos, _, _ = reward.score_completions(rm, None, tok, seq, prompt_mask, mask, score_eos=1)
    assert s_eos[0] != s[0] and s_eos[1] == s[1]  # with score_eos=1 the RM reads the EOS itself


def test_test_reward_model_prefers_the_known_token(tiny):
    assert tiny["accuracy"] > 0.9


# --- Rollout ---------------------------------------------------------------------------------
def test_rollout_masks_lengths_and_eos(tiny, policy_tok):
    tok = policy_tok
    policy = AutoModelForCausalLM.from_pretrained(tiny["policy"]).eval()
    # A raised EOS logit makes rows end early at an EOS (about half of them here), not by chance alone.
    eos_bias = torch.zeros(policy.config.vocab_size)
    eos_bias[tok.eos_token_id] = 2.0
    policy.get_output_embeddings().register_forward_hook(lambda module, inputs, logits: logits + eos_bias)
    torch.manual_seed(0)
    prompts = ["the film", "a slow movie was", "the"]
    prompt_ids, prompt_mask = pad([tok(t)["input_ids"] for t in prompts], tok.eos_token_id, "left")
    P = prompt_ids.shape[1]
    lengths = torch.tensor([3, 9, 6])
    ended = {"eos": 0, "limit": 0}
    for _ in range(5):
        seq, mask = abc_ppo.rollout(policy, tok, prompt_ids, prompt_mask, lengths)
        assert torch.equal(seq[:, :P], prompt_ids)  # completion is cut at the prompt length
        comp = seq[:, P:]
        for b in range(3):
            eos = (comp[b, :lengths[b]] == tok.eos_token_id).nonzero()
            n = int(eos[0]) + 1 if len(eos) else int(lengths[b])  # up to and including the first EOS
            assert mask[b, :n].all() and not mask[b, n:].any()
            ended["eos" if len(eos) and n < lengths[b] else "limit"] += 1
    assert ended["eos"] and ended["limit"]  # both ways a row ends were exercised
    # --min_new_tokens: with the same raised EOS logit, no row ends before its drawn length.
    for _ in range(5):
        seq, mask = abc_ppo.rollout(policy, tok, prompt_ids, prompt_mask, lengths, min_new_tokens=True)
        assert mask.sum(1).tolist() == lengths.tolist()
        assert not (seq[:, P:][mask.bool()] == tok.eos_token_id).any()


# --- GAE and the PPO loss, against values worked by hand -------------------------------------
def test_gae_hand_example():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = abc_ppo.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    # t=2: 1 - 0.5 = 0.5; t=1: 0 + 0.5 - 0.5 + 0.5 * 0.5 = 0.25; t=0: 0.5 * 0.25 = 0.125
    torch.testing.assert_close(adv, torch.tensor([[0.125, 0.25, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[0.625, 0.75, 1.0]]))


def test_gae_treats_masked_tail_as_terminal():
    rewards, values = torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.5, 0.5, 9.0]])
    adv, ret = abc_ppo.gae(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=0.5)
    # t=1: 1 + 0.9 * 0 - 0.5 = 0.5; t=0: 0 + 0.9 * 0.5 - 0.5 + 0.45 * 0.5 = 0.175
    torch.testing.assert_close(adv, torch.tensor([[0.175, 0.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.675, 1.0, 0.0]]))


def test_whiten_uses_real_tokens_only():
    x, m = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(abc_ppo.whiten(x, m), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def ppo(logp, adv, values=None, returns=None):
    n = len(logp)
    logp = torch.tensor(logp, requires_grad=True)
    values = torch.tensor(values or [0.0] * n, requires_grad=True)
    loss, stats = abc_ppo.ppo_loss(logp[None], torch.zeros(1, n), values[None], torch.zeros(1, n),
                                   torch.tensor([adv]), torch.tensor([returns or [0.0] * n]), torch.ones(1, n),
                                   cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    loss.backward()
    return loss.item(), stats, logp.grad, values.grad


def test_ppo_clips_the_ratio_only_in_the_direction_that_helps():
    up = math.log(1.5)
    loss, stats, grad, _ = ppo([up], [1.0])  # ratio 1.5 > 1.2 with A > 0: clipped, no gradient
    assert loss == pytest.approx(-1.2) and grad.item() == 0 and stats["clip_frac"] == 1
    loss, _, grad, _ = ppo([up], [-1.0])  # A < 0: the pessimistic unclipped term is kept
    assert loss == pytest.approx(1.5) and grad.item() == pytest.approx(1.5)
    loss, stats, grad, _ = ppo([0.0], [2.0])  # ratio 1: plain policy gradient
    assert loss == pytest.approx(-2.0) and grad.item() == pytest.approx(-2.0) and stats["clip_frac"] == 0


def test_value_loss_is_clipped_around_the_old_value():
    # V moves 1.0 from old 0 toward return 1.0: clipped V = 0.2, loss = 0.5 * max(0, 0.64) = 0.32.
    _, stats, _, vgrad = ppo([0.0], [0.0], values=[1.0], returns=[1.0])
    assert stats["value_loss"] == pytest.approx(0.32) and vgrad.item() == 0 and stats["value_clip_frac"] == 1


def test_value_clip_fraction_counts_only_values_outside_the_range():
    # Inside the range, old + (V - old) rounds to V or next to it: the two loss terms tie, not clipped.
    old, v = torch.tensor([[0.1] * 4]), torch.tensor([[0.1 + 1e-7, 0.2 + 1e-7, 0.25, 0.29]])
    _, stats = abc_ppo.ppo_loss(torch.zeros(1, 4), torch.zeros(1, 4), v, old, torch.zeros(1, 4), torch.full((1, 4), 5.0),
                                torch.ones(1, 4), cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    assert stats["value_clip_frac"] == 0  # every V is within 0.2 of its old value
    v = torch.tensor([[0.4, -0.2, 0.25, 0.29]])  # 0.4 moved toward the return 5 by 0.3: clipped; -0.2 away: not
    _, stats = abc_ppo.ppo_loss(torch.zeros(1, 4), torch.zeros(1, 4), v, old, torch.zeros(1, 4), torch.full((1, 4), 5.0),
                                torch.ones(1, 4), cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    assert stats["value_clip_frac"] == 0.25


# --- End to end ------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["sparse", "uniform", "abc", "red", "abcd"])
def test_few_steps_write_well_formed_metrics(tiny, tmp_path, scheme):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--reward", scheme, "--steps", "3"))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["kl"] == 0  # policy and reference are the same model, computed the same way
    for r in rows:
        assert set(r) == KEYS and all(math.isfinite(v) for v in r.values())
        assert 1 <= r["completion_len"] <= 15 and r["reward_std"] >= 0 and r["entropy"] > 0
    assert os.path.exists(tmp_path / "checkpoint" / "trainer_state.pt")


def without_timings(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def test_same_seed_repeats_and_resume_continues_exactly(tiny, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    abc_ppo.main(tiny_args(tiny, a, "--steps", "4", "--seed", "3"))
    abc_ppo.main(tiny_args(tiny, b, "--steps", "4", "--seed", "3"))
    assert without_timings(read_metrics(a)) == without_timings(read_metrics(b))
    abc_ppo.main(tiny_args(tiny, c, "--steps", "2", "--seed", "3", "--save_every", "2"))  # stopped after 2 steps
    with open(c / "metrics.jsonl", "a") as f:  # a step logged after the checkpoint, then a crash
        f.write(json.dumps(dict(read_metrics(c)[-1], step=2)) + "\n")
    abc_ppo.main(tiny_args(tiny, c, "--steps", "4", "--seed", "3", "--resume"))
    assert without_timings(read_metrics(c)) == without_timings(read_metrics(a))


def test_sparse_embedding_gradient_changes_no_result(tiny, tmp_path, monkeypatch):
    # plumbing/speed.py gives the tied embedding a sparse gradient, added into the head's dense one; the sums
    # are the same up to float rounding, so the run is too.
    seen, real = [], speed.sparse_embedding_grad
    monkeypatch.setattr(speed, "sparse_embedding_grad", lambda policy: seen.append(real(policy) or
                                                                                  policy.get_input_embeddings().sparse))
    abc_ppo.main(tiny_args(tiny, tmp_path / "sparse", "--steps", "3", "--seed", "2"))
    assert seen == [True]  # the tiny GPT-2 ties its embedding, so the sparse path ran
    monkeypatch.setattr(speed, "sparse_embedding_grad", lambda policy: None)
    abc_ppo.main(tiny_args(tiny, tmp_path / "dense", "--steps", "3", "--seed", "2"))
    sparse, dense = without_timings(read_metrics(tmp_path / "sparse")), without_timings(read_metrics(tmp_path / "dense"))
    assert [r["step"] for r in sparse] == [0, 1, 2]
    for a, b in zip(sparse, dense):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def test_fused_gelu_changes_no_result(tiny, tmp_path, monkeypatch):
    # speed.fused_gelu swaps GPT-2's eight-op GELU for PyTorch's one-kernel one, the same formula.
    swapped, real = [], speed.fused_gelu
    monkeypatch.setattr(speed, "fused_gelu", lambda model: swapped.append(real(model)))
    abc_ppo.main(tiny_args(tiny, tmp_path / "fused", "--steps", "3", "--seed", "2"))
    assert swapped == [2, 2]  # policy and reference, one per block of the tiny GPT-2
    monkeypatch.setattr(speed, "fused_gelu", lambda model: None)
    abc_ppo.main(tiny_args(tiny, tmp_path / "plain", "--steps", "3", "--seed", "2"))
    fused, plain = without_timings(read_metrics(tmp_path / "fused")), without_timings(read_metrics(tmp_path / "plain"))
    for a, b in zip(fused, plain):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def test_padding_columns_change_no_forward_result(tiny, policy_tok):
    # ppo_update drops the columns that are padding in every row of a mini-batch; they change nothing.
    policy = AutoModelForCausalLM.from_pretrained(tiny["policy"]).eval()
    value_head = abc_ppo.ValueHead(policy.config.hidden_size)
    p, c = policy_tok("the film")["input_ids"], policy_tok(" was very good")["input_ids"]
    pad = policy_tok.eos_token_id
    seq, mask = torch.tensor([[pad, pad] + p + c + [pad] * 3]), torch.tensor([[0, 0] + [1] * (len(p) + len(c)) + [0] * 3])
    padded = abc_ppo.forward(policy, value_head, seq, mask, 2 + len(p))
    trimmed = abc_ppo.forward(policy, value_head, seq[:, 2:-3], mask[:, 2:-3], len(p))
    for a, b in ((padded.logp, trimmed.logp), (padded.values, trimmed.values)):
        torch.testing.assert_close(a[:, :len(c)], b, atol=1e-5, rtol=1e-5)


def test_resume_drops_a_half_written_last_line(tiny, tmp_path):
    # A hard kill mid-write leaves a line without its end; --resume must drop it, not crash on it.
    abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "2", "--save_every", "2", "--log_samples", "2"))
    for name in ("metrics.jsonl", "samples.jsonl"):
        with open(tmp_path / name, "a") as f:
            f.write('{"step": 2, "reward_mean": 0.3')
    abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "3", "--log_samples", "2", "--resume"))
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    assert [r["step"] for r in read_jsonl(tmp_path / "samples.jsonl")] == [0, 0, 1, 1, 2, 2]


class RunsCodeOnLoad:
    """Unpickling this calls open(path, "w"): what a hostile trainer_state.pt could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_resume_loads_trainer_state_as_data_only(tiny, tmp_path, capsys):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "1"))
    capsys.readouterr()  # the first run's progress bar
    state_file = tmp_path / "checkpoint" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=True)  # what we save loads under weights_only ...
    marker = tmp_path / "code_ran"
    torch.save(dict(state, payload=RunsCodeOnLoad(marker)), state_file)
    expect_error(capsys, tiny_args(tiny, tmp_path, "--steps", "2", "--resume"), "no usable checkpoint")
    assert not marker.exists()  # ... and a checkpoint that carries code is refused, its code never run


def test_value_head_has_nn_linear_default_init():
    # nn.Linear's default (as TRL's value head): w, b ~ U(-1/sqrt(H), 1/sqrt(H)), std 1/sqrt(3H).
    value_head = abc_ppo.ValueHead(32)
    bound = 1 / math.sqrt(value_head.in_features)
    w, b = value_head.weight, value_head.bias
    assert w.abs().max() <= bound and 0 < b.abs().item() <= bound
    assert w.std() > 0.3 * bound  # N(0, 0.01) would give 0.01, against 0.1 here


def test_bf16_checkpoints_load_as_float32(tiny, tmp_path, monkeypatch):
    for name, cls in (("policy", AutoModelForCausalLM), ("reward_model", AutoModelForSequenceClassification)):
        cls.from_pretrained(tiny[name]).to(torch.bfloat16).save_pretrained(tmp_path / name)
        AutoTokenizer.from_pretrained(tiny[name]).save_pretrained(tmp_path / name)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "policy").dtype == torch.bfloat16  # a real bf16 checkpoint
    loaded, real = [], abc_ppo.load_models
    monkeypatch.setattr(abc_ppo, "load_models", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
    abc_ppo.main(tiny_args(tiny, tmp_path / "out", "--policy", str(tmp_path / "policy"),
                           "--reward_model", str(tmp_path / "reward_model"), "--steps", "2"))
    rows = read_metrics(tmp_path / "out")
    assert [r["step"] for r in rows] == [0, 1] and all(math.isfinite(r["reward_mean"]) for r in rows)
    (m,) = loaded  # the models the run trained and scored with, not just what the checkpoint says
    for model in (m.policy, m.ref, m.rm):
        assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_bf16_autocast_leaves_the_reward_model_in_float32(tiny, tmp_path, monkeypatch):
    # --bf16 needs CUDA; a CPU bfloat16 autocast in its place runs the same code path.
    monkeypatch.setattr(speed, "bf16_autocast", lambda device, enabled: torch.autocast("cpu", dtype=torch.bfloat16))
    seen = {"rm": [], "policy": []}

    def spy(key, fn):
        def wrapped(*a, **k):
            seen[key].append(torch.is_autocast_enabled("cpu"))
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(reward, "score_completions", spy("rm", reward.score_completions))
    monkeypatch.setattr(abc_ppo, "forward", spy("policy", abc_ppo.forward))
    abc_ppo.main(tiny_args(tiny, tmp_path, "--steps", "2"))
    assert seen["policy"] and all(seen["policy"])  # the policy's passes ran under autocast ...
    assert seen["rm"] == [False, False]  # ... the RM's, one per step, did not


# --- Bad input: one clear line and a non-zero exit ------------------------------------------
def run_cli(*args, **env):
    """abc_ppo.py in a fresh interpreter, offline, with env added to the environment."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **env)
    return subprocess.run([sys.executable, os.path.join(ROOT, "abc_ppo.py"), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)


def test_cli_bad_beta_is_one_line_no_traceback():
    r = run_cli("--beta", "1.5")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--beta must be in [0, 1]" in r.stderr


def test_cli_offline_hub_says_what_to_do(tmp_path):
    r = run_cli("--out_dir", str(tmp_path), "--dataset", "stanfordnlp/imdb")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot load dataset 'stanfordnlp/imdb'" in r.stderr and "--dataset" in r.stderr


def expect_error(capsys, argv, text):
    with pytest.raises(SystemExit) as e:
        abc_ppo.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and text in err and "\n" not in err, err


def only_short_texts(tiny, tmp_path):
    data = tmp_path / "short.jsonl"
    data.write_text(json.dumps({"text": "short"}) + "\n")
    return tiny_args(tiny, tmp_path, "--dataset", str(data), "--min_chars", "200")


def gold_members_with_two_tokenizers(tiny, tmp_path):
    import shutil

    for name in ("a", "b"):
        shutil.copytree(tiny["reward_model"], tmp_path / "gold" / name)
    tok = AutoTokenizer.from_pretrained(tmp_path / "gold" / "b")
    tok.add_tokens(["zebra"])
    tok.save_pretrained(tmp_path / "gold" / "b")
    return tiny_args(tiny, tmp_path / "run", "--eval_every", "1", "--gold_rm", str(tmp_path / "gold"))


def out_dir_inside_a_file(tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    return tiny_args(tiny, blocker / "out")


# Each case: its flags, built from the tiny models and a fresh tmp_path, and the line it must print.
BAD_INPUTS = [
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--reward", "nope"), "invalid choice: 'nope'",
                 id="unknown-reward"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--prompt_len", "5", "3"), "--prompt_len takes MIN [MAX]",
                 id="prompt-len-reversed"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--gen_len", "0", "4"), "--gen_len takes MIN [MAX]",
                 id="gen-len-zero"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--batch_size", "6"), "must be a multiple of --mini_batch_size",
                 id="batch-not-multiple"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--log_samples", "99"), "--log_samples must be in [0,",
                 id="too-many-samples"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--faithfulness", "0"), "--faithfulness takes a number",
                 id="faithfulness-zero"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--bf16", "--device", "cpu"), "--bf16 needs a CUDA device",
                 id="bf16-on-cpu"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--reward_model", tiny["policy"]),
                 "is not a sequence classifier", id="not-a-classifier"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--policy", tiny["reward_model"]),
                 "is not a causal language model", id="policy-not-a-causal-lm"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--lr", "-1"), "--lr must be positive, got -1.0",
                 id="negative-lr"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--gamma", "1.5"), "--gamma must be in [0, 1], got 1.5",
                 id="gamma-above-one"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--lam", "-0.1"), "--lam must be in [0, 1], got -0.1",
                 id="negative-lam"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--init_kl_coef", "-1"), "--init_kl_coef must be >= 0",
                 id="negative-kl-coef"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--vf_coef", "-1"), "--vf_coef must be >= 0",
                 id="negative-vf-coef"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--cliprange", "0"), "--cliprange must be positive",
                 id="zero-cliprange"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--cliprange_value", "-0.2"),
                 "--cliprange_value must be positive", id="negative-cliprange-value"),
    pytest.param(only_short_texts, "no text longer than", id="no-long-text"),
    pytest.param(out_dir_inside_a_file, "cannot write to --out_dir", id="unwritable-out-dir"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--policy", str(tmp / "missing")), "cannot load policy",
                 id="missing-policy"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--resume"), "no usable checkpoint",
                 id="resume-without-checkpoint"),
    # Prompts up to 4 tokens + completions up to 80 > the tiny models' 64 positions: fail before training.
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--gen_len", "70", "80"),
                 "--gen_len MAX 80 needs 84 positions, but the policy has 64", id="context-too-long"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--reward", "shapley", "--shapley_units", "0"),
                 "--shapley_units, --shapley_perms", id="zero-shapley-units"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--reward", "ig", "--ig_steps", "0"), "--ig_steps, --target_kl",
                 id="zero-ig-steps"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--kl_coef", "-1"), "--kl_coef must be >= 0", id="negative-kl-coef"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--eval_every", "-1"), "--eval_every must be >= 0 (0: off)",
                 id="negative-eval-every"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--eval_samples", "0"), "--eval_prompts and --eval_samples >= 1",
                 id="zero-eval-samples"),
    pytest.param(lambda tiny, tmp: tiny_args(tiny, tmp, "--eval_every", "1", "--gold_rm", str(tmp)),
                 "cannot load gold reward model", id="unreadable-gold-rm"),
    pytest.param(gold_members_with_two_tokenizers, "its members do not share one tokenizer", id="gold-tokenizers-differ"),
]


def test_every_bad_input_is_in_the_table():
    table = open(os.path.join(ROOT, "docs", "options.md")).read()
    table = table[table.index("## How a run stops"):]
    missing = [p.values[1] for p in BAD_INPUTS if re.sub(r"\d", "N", p.values[1]) not in re.sub(r"\d", "N", table)]
    assert not missing, missing


@pytest.mark.parametrize("argv, text", BAD_INPUTS)
def test_bad_input_fails_with_one_line(tiny, tmp_path, capsys, argv, text):
    expect_error(capsys, argv(tiny, tmp_path), text)
    assert not any(tmp_path.rglob("checkpoint"))  # it stopped before training


def test_lengths_are_trls_length_sampler_ranges(tiny):
    # TRL's LengthSampler(a, b) excludes b: the paper's prompts are 2-7 tokens, completions 8-15.
    args = abc_ppo.parse_args(["--preset", "paper", "--policy", tiny["policy"], "--reward_model", tiny["reward_model"],
                               "--dataset", tiny["data"]])  # all named: no hub needed
    assert (args.prompt_len, args.gen_len) == ([2, 7], [8, 15])
    assert abc_ppo.parse_args(["--preset", "mini"]).prompt_len == [2, 5]


def fake_hub_cache(root, names):
    """The layout huggingface_hub's cache gives a downloaded repo: refs/main -> snapshots/<sha>/file."""
    for name, kind, file in names:
        repo = root / f"{kind}s--{name.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("abc123")
        (repo / "snapshots" / "abc123").mkdir(parents=True)
        (repo / "snapshots" / "abc123" / file).write_text("{}")


def test_forced_paper_preset_probes_the_hub_once_then_uses_the_cache(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    paper = dict(policy="lvwerra/gpt2-imdb", reward_model="XanderJC/gpt2-rm-imdb", dataset="stanfordnlp/imdb")
    fake_hub_cache(tmp_path, [(paper["policy"], "model", "config.json"), (paper["reward_model"], "model", "config.json")])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def no_hub(*a, **k):
        calls.append(a)
        raise OSError("unreachable")

    monkeypatch.setattr(presets.socket, "create_connection", no_hub)
    # The dataset is not cached: one line at once, and no probe when HF_HUB_OFFLINE is set.
    expect_error(capsys, ["--preset", "paper"], "hub is unreachable and not all of lvwerra/gpt2-imdb, "
                 "XanderJC/gpt2-rm-imdb, stanfordnlp/imdb are in the local cache")
    assert len(calls) == 1 and os.environ["HF_HUB_OFFLINE"] == "1"
    expect_error(capsys, ["--preset", "paper"], "hub is unreachable")
    assert len(calls) == 1
    # With all three cached, the run goes on offline from the cache.
    fake_hub_cache(tmp_path, [(paper["dataset"], "dataset", "README.md")])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    args = abc_ppo.parse_args(["--preset", "paper"])
    assert args.preset == "paper" and args.policy == paper["policy"] and os.environ["HF_HUB_OFFLINE"] == "1"
    assert len(calls) == 2


def test_cli_forced_paper_preset_without_hub_fails_at_once(tmp_path):
    r = run_cli("--preset", "paper", "--out_dir", str(tmp_path / "out"), HF_HUB_CACHE=str(tmp_path / "empty"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "hub is unreachable" in r.stderr and "--preset mini" in r.stderr
    assert not (tmp_path / "out").exists()  # it stopped while reading the flags, before any loading


# --- Seeing the credit ---------------------------------------------------------------------
def test_explain_prints_each_schemes_credit(tiny, policy_tok, tmp_path, capsys):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--explain", "the film was very good and long", "--prompt_len", "2"))
    lines = capsys.readouterr().out.splitlines()
    score = float(lines[0].split("RM score")[1].split()[0])
    s0 = float(lines[0].split("s_0 =")[1])
    assert lines[1].split()[1:] == ["sparse", "uniform", "abc", "b=0.5", "red", "abcd", "b=0.5", "shapley", "b=0.5",
                                    "ig", "b=0.5"]
    body, total = lines[2:-1], lines[-1].split()
    assert len(body) == len(policy_tok("the film was very good and long")["input_ids"]) - 2
    sums = [float(x) for x in total[1:]]
    assert sums[:3] == pytest.approx([score] * 3, abs=2e-3) and sums[4:] == pytest.approx([score] * 3, abs=2e-3)
    assert sums[3] == pytest.approx(score - s0, abs=2e-3)  # red telescopes to score - s_0
    assert "\x1b[" not in "".join(lines)  # no colour codes when stdout is not a terminal


def test_log_samples_and_credit_html(tiny, tmp_path):
    import xml.etree.ElementTree as ET

    abc_ppo.main(tiny_args(tiny, tmp_path, "--reward", "red", "--steps", "2", "--log_samples", "3"))
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert [x["step"] for x in samples] == [0, 0, 0, 1, 1, 1]
    assert all(len(x["tokens"]) == len(x["credit"]) >= 1 for x in samples)
    page = (tmp_path / "credit.html").read_text()
    root = ET.fromstring(page[page.index("<html"):])  # well-formed: parses as XML
    rows = root.findall(".//tr")
    assert len(rows) == 1 + len(samples)
    spans = rows[1].findall(".//td/span")
    assert len(spans) == 1 + len(samples[0]["tokens"])  # the prompt, then one span per token
    assert [float(s.get("title")) for s in spans[1:]] == pytest.approx(samples[0]["credit"], abs=1e-4)


def test_min_new_tokens_is_opt_in_and_warns_in_one_line(capsys):
    assert not abc_ppo.parse_args(["--preset", "mini"]).min_new_tokens and not capsys.readouterr().err
    assert abc_ppo.parse_args(["--preset", "mini", "--min_new_tokens"]).min_new_tokens
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and "negative" in err[0]
