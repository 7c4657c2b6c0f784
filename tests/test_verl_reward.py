"""tools/verl_reward.py against the real verl 0.9.1: the manager built by verl's own loaders from the
overrides in docs/verl.md, run through verl's RewardLoopManager.compute_rm_score on a DataProto laid
out as verl lays out a batch. verl lives in its own environment (requirements-verl.txt); without it
these tests skip, and .ci/run runs them there."""
import asyncio
import importlib.util
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, pad, synthetic_texts
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2ForSequenceClassification

from plumbing import mini
import reward

needs_verl = pytest.mark.skipif(importlib.util.find_spec("verl") is None,
                                reason="verl is not installed here; .ci/run runs this file in .venv-verl "
                                       "(requirements-verl.txt)")
ITEMS = [("the film", " was a good movie"), ("a slow", " story and very long music is bad"), ("the", " good"),
         ("a very", " dull plot")]
EOS_ROWS = (0, 3)  # these responses end with EOS, as a response that stopped does


def test_import_without_verl_says_what_to_install():
    code = "import sys; sys.modules['verl'] = None; sys.path.insert(0, 'tools'); import verl_reward"  # None in sys.modules: import verl fails
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: tools/verl_reward.py needs verl 0.9.1")
    assert "pip install -r requirements-verl.txt" in last


def doc_overrides():
    """The command-line overrides of docs/verl.md's main_ppo command: {key: value}."""
    text = open(os.path.join(ROOT, "docs", "verl.md")).read()
    command = text[text.index("python -m verl.trainer.main_ppo"):].split("```")[0]
    return dict(re.findall(r"^\s*(\+?[\w.]+)=(\S+)", command, re.M))


def verl_config(policy, rm, **changes):
    """verl's ppo_trainer config with docs/verl.md's overrides, local models in place of hub names,
    and `changes` ({override key: value}) on top."""
    from hydra import compose, initialize_config_module

    over = doc_overrides() | {"actor_rollout_ref.model.path": policy, "critic.model.path": policy,
                              "reward.reward_model.model_path": rm} | changes
    args = [f"{k}={v.replace('$REPO', ROOT)}" for k, v in over.items()]
    with initialize_config_module("verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=args)


@needs_verl
def test_the_yaml_in_the_docs_is_the_same_config_as_the_overrides(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    text = open(os.path.join(ROOT, "docs", "verl.md")).read()
    (tmp_path / "abc.yaml").write_text(text.split("```yaml\n")[1].split("```")[0].replace("/path/to/abc-ppo", ROOT))
    with initialize_config_dir(str(tmp_path), version_base=None):
        from_yaml = compose("abc")
    from_overrides = verl_config("lvwerra/gpt2-imdb", "XanderJC/gpt2-rm-imdb")
    for key in ("algorithm", "reward", "actor_rollout_ref.model.path", "actor_rollout_ref.actor.use_kl_loss",
                "critic.model.path"):
        assert OmegaConf.select(from_yaml, key) == OmegaConf.select(from_overrides, key), key


def verl_batch(tok, pairs, prompt_side="left"):
    """A DataProto as verl's agent loop lays a batch out: prompts padded to a width (left, or right
    as the v1 trainer sends them to the reward model), responses right-padded, both with room to
    spare, the attention mask over both, position ids and the response mask."""
    from verl import DataProto
    from verl.utils.model import compute_position_id_with_mask

    def fill(rows, width, side):  # ids and mask [B, width]
        gaps = [width - len(r) for r in rows]
        if side == "left":
            return (torch.tensor([[tok.pad_token_id] * g + r for r, g in zip(rows, gaps)]),
                    torch.tensor([[0] * g + [1] * len(r) for r, g in zip(rows, gaps)]))
        return (torch.tensor([r + [tok.pad_token_id] * g for r, g in zip(rows, gaps)]),
                torch.tensor([[1] * len(r) + [0] * g for r, g in zip(rows, gaps)]))

    prompts, prompt_mask = fill([p for p, _ in pairs], max(len(p) for p, _ in pairs) + 2, prompt_side)  # [B, P]
    responses, response_mask = fill([r for _, r in pairs], max(len(r) for _, r in pairs) + 3, "right")  # [B, R]
    attention_mask = torch.cat([prompt_mask, response_mask], 1)  # [B, P + R]
    return DataProto.from_dict(
        tensors=dict(prompts=prompts, responses=responses, input_ids=torch.cat([prompts, responses], 1),
                     attention_mask=attention_mask, position_ids=compute_position_id_with_mask(attention_mask),
                     response_mask=response_mask),
        non_tensors=dict(uid=np.array([str(i // 2) for i in range(len(pairs))], dtype=object),
                         data_source=np.array(["imdb"] * len(pairs), dtype=object)))


def token_pairs(tok):
    """ITEMS as (prompt ids, response ids), with EOS ending the responses in EOS_ROWS."""
    return [(tok(p)["input_ids"], tok(c)["input_ids"] + [tok.eos_token_id] * (i in EOS_ROWS))
            for i, (p, c) in enumerate(ITEMS)]


class Local:
    """A RewardLoopWorker in this process, called the way RewardLoopManager calls a Ray actor:
    handle.compute_score_batch.remote(chunk)."""

    def __init__(self, worker):
        self.compute_score_batch = types.SimpleNamespace(remote=worker.compute_score_batch)


def compute_rm_score(config, data, monkeypatch, workers=3):
    """verl's RewardLoopManager.compute_rm_score, run as it is, on verl's RewardLoopWorkers built from
    the config, in this process instead of as Ray actors (3 of them by default, so that verl pads the
    batch to a multiple of 3 and drops the padding again). Returns rm_scores [B, R] and the DataProto."""
    from verl.experimental.reward_loop import reward_loop
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    manager = object.__new__(reward_loop.RewardLoopManager)  # __init__ would start Ray and verl's RM server
    manager.config, manager.reward_model_manager = config, None
    manager.reward_loop_workers = [Local(reward_loop.RewardLoopWorker(config, None)) for _ in range(workers)]
    manager.reward_manager_cls = resolve_reward_manager_cls(config)
    # ray.get on the list of calls: here, each call is a coroutine to run.
    monkeypatch.setattr(reward_loop, "ray", types.SimpleNamespace(get=lambda calls: [asyncio.run(c) for c in calls]))
    out = manager.compute_rm_score(data)
    return out.batch["rm_scores"], out


def project_credit(rm, rm_tok, tok, pairs, scheme, beta, score_eos=0):
    """The same texts scored the project's way, as abc_ppo.experience does: one padded batch through
    reward.per_token_rewards. Returns credit [B, G] and score [B]."""
    prompts, prompt_mask = pad([p for p, _ in pairs], tok.eos_token_id, "left")
    comps, mask = pad([c for _, c in pairs], tok.eos_token_id, "right")
    seq = torch.cat([prompts, comps], 1)
    # shapley_units 10: every game exact, so the batch and verl's one sample at a time agree
    flags = types.SimpleNamespace(reward=scheme, beta=beta, score_eos=score_eos, shapley_units=10, shapley_perms=8,
                                  ig_steps=16)
    s, credit, _ = reward.per_token_rewards(flags, types.SimpleNamespace(tok=tok, rm=rm, rm_tok=rm_tok), seq, prompt_mask,
                                            mask)
    return credit, s


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A policy tokenizer and an untrained tiny GPT-2 RM that shares it, saved as verl loads them:
    the reward loop reads only the tokenizer at actor_rollout_ref.model.path, so no policy is built."""
    root = tmp_path_factory.mktemp("verl")
    tok = mini.train_tokenizer(synthetic_texts(800)[0], vocab_size=512)
    torch.manual_seed(0)
    rm = GPT2ForSequenceClassification(mini.gpt2_config(tok, num_labels=2, **TINY))
    rm.save_pretrained(root / "reward_model")
    for name in ("policy", "reward_model"):
        tok.save_pretrained(root / name)
    return {name: str(root / name) for name in ("policy", "reward_model")}


@pytest.fixture(scope="module")
def shared(paths):
    """The policy's tokenizer and the RM, which shares it."""
    tok = AutoTokenizer.from_pretrained(paths["policy"])
    rm = AutoModelForSequenceClassification.from_pretrained(paths["reward_model"], attn_implementation="eager").eval()
    return tok, rm


@needs_verl
@pytest.mark.parametrize("scheme", ["sparse", "uniform", "abc", "red", "shapley", "ig"])
def test_rm_scores_are_the_schemes_credit(paths, shared, scheme, monkeypatch):
    tok, rm = shared
    pairs = token_pairs(tok)
    data = verl_batch(tok, pairs)
    config = verl_config(paths["policy"], paths["reward_model"], **{"+reward.reward_kwargs.scheme": scheme,
                                                                   "+reward.reward_kwargs.shapley_units": "10"})
    rm_scores, out = compute_rm_score(config, data, monkeypatch)
    assert rm_scores.shape == data.batch["responses"].shape and rm_scores.dtype == torch.float32
    mask = data.batch["response_mask"].bool()  # [B, R]
    assert (rm_scores[~mask] == 0).all()
    credit, s = project_credit(rm, None, tok, pairs, scheme, 0.5)  # [B, G], [B]
    G = credit.shape[1]
    torch.testing.assert_close(rm_scores[:, :G], credit, atol=1e-5, rtol=1e-5)  # e.g. reward.abc, on the same texts
    logged = torch.tensor(out.non_tensor_batch["rm_score"], dtype=torch.float32)  # reward_extra_info, per sample
    torch.testing.assert_close(logged, s, atol=1e-5, rtol=1e-5)
    if scheme != "red":  # red's rows sum to score - s_0
        torch.testing.assert_close(rm_scores.sum(1), s, atol=1e-5, rtol=1e-5)
    if scheme == "abc":  # dense: more than one token of each longer response is credited
        assert ((rm_scores != 0).sum(1)[mask.sum(1) > 1] > 1).all()


@needs_verl
def test_v1_layout_with_right_padded_prompts_gives_the_same_rows(paths, shared, monkeypatch):
    tok, _ = shared
    config = verl_config(paths["policy"], paths["reward_model"])
    left, _ = compute_rm_score(config, verl_batch(tok, token_pairs(tok), "left"), monkeypatch)
    right, _ = compute_rm_score(config, verl_batch(tok, token_pairs(tok), "right"), monkeypatch, workers=1)
    torch.testing.assert_close(left, right, atol=1e-6, rtol=1e-6)


@needs_verl
def test_beta_zero_puts_the_score_where_the_naive_manager_does(paths, shared, monkeypatch):
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    tok, _ = shared
    data = verl_batch(tok, token_pairs(tok))
    config = verl_config(paths["policy"], paths["reward_model"], **{"+reward.reward_kwargs.beta": "0.0"})
    rm_scores, out = compute_rm_score(config, data, monkeypatch)
    # verl's base class, which its naive manager uses: the score at the last valid response token.
    naive = RewardManagerBase.assemble_rm_scores(data, list(out.non_tensor_batch["rm_score"]))
    assert torch.equal(rm_scores, naive)
    assert ((rm_scores != 0).sum(1) == 1).all()


@needs_verl
def test_a_reward_model_with_its_own_tokenizer(paths, shared, encoder_dir, monkeypatch):
    tok, _ = shared
    rm = AutoModelForSequenceClassification.from_pretrained(encoder_dir, attn_implementation="eager").eval()
    rm_tok = AutoTokenizer.from_pretrained(encoder_dir)
    assert rm_tok.get_vocab() != tok.get_vocab()
    pairs = token_pairs(tok)
    data = verl_batch(tok, pairs)
    rm_scores, _ = compute_rm_score(verl_config(paths["policy"], encoder_dir), data, monkeypatch)
    credit, s = project_credit(rm, rm_tok, tok, pairs, "abc", 0.5)
    torch.testing.assert_close(rm_scores[:, :credit.shape[1]], credit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rm_scores.sum(1), s, atol=1e-5, rtol=1e-5)
    assert (rm_scores[~data.batch["response_mask"].bool()] == 0).all()


@needs_verl
def test_kl_penalty_and_gae_see_the_dense_credit_and_grpo_sums_it(paths, shared, monkeypatch):
    from verl.trainer.ppo import core_algos

    tok, _ = shared
    data = verl_batch(tok, token_pairs(tok))
    mask = data.batch["response_mask"].float()  # [B, R]
    rows = {scheme: compute_rm_score(verl_config(paths["policy"], paths["reward_model"],
                                                 **{"+reward.reward_kwargs.scheme": scheme}), data, monkeypatch)[0]
            for scheme in ("sparse", "abc")}
    torch.manual_seed(0)
    old, ref, values = torch.randn(3, *mask.shape) * 0.1  # log pi_old, log pi_ref, V: [B, R] each
    kld = core_algos.kl_penalty(old, ref, kl_penalty="kl") * mask  # what apply_kl_penalty computes, then
    adv = {}
    for scheme, scores in rows.items():
        rewards = scores - 0.2 * kld  # token_level_rewards = token_level_scores - kl_coef * kld
        gae, _ = core_algos.compute_gae_advantage_return(rewards, values, mask, gamma=1.0, lam=0.95)
        grpo, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask, index=data.non_tensor_batch["uid"])
        adv[scheme] = gae, grpo
    assert not torch.allclose(adv["sparse"][0], adv["abc"][0], atol=1e-3)  # GAE reads r_t token by token
    torch.testing.assert_close(adv["sparse"][1], adv["abc"][1], atol=1e-5, rtol=1e-5)  # GRPO: sum_t r_t alone


@needs_verl
@pytest.mark.parametrize("changes, message", [
    ({"reward.reward_model.enable": "False"}, "reward.reward_model.enable=True"),
    ({"reward.reward_model.enable_resource_pool": "True"}, "enable_resource_pool=False"),
    ({"reward.custom_reward_function.path": "null"}, "custom_reward_function.path"),
    ({"+reward.reward_kwargs.scheme": "abcd"}, "scheme must be one of sparse, uniform, abc, red"),
])
def test_bad_settings_stop_with_one_line(paths, changes, message):
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    with pytest.raises(ValueError, match=re.escape(message)):
        RewardLoopWorker(verl_config(paths["policy"], paths["reward_model"], **changes), None)


@needs_verl
def test_red_needs_a_decoder(paths, encoder_dir):
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    with pytest.raises(ValueError, match="red needs a decoder"):
        RewardLoopWorker(verl_config(paths["policy"], encoder_dir, **{"+reward.reward_kwargs.scheme": "red"}), None)
    for scheme in ("shapley", "ig"):
        with pytest.raises(ValueError, match=f"{scheme} needs a decoder reward model that shares"):
            RewardLoopWorker(verl_config(paths["policy"], encoder_dir, **{"+reward.reward_kwargs.scheme": scheme}), None)


@needs_verl
def test_the_rm_runs_off_the_event_loop(paths, shared, monkeypatch):
    # run_single hands the RM's forward to an executor, so the loop's thread (here the test's) never runs it;
    # test_rm_scores_are_the_schemes_credit shows the rows are the same as before.
    import threading

    threads, score = [], reward.score_completions  # verl loads tools/verl_reward.py by path, but reward.py is this one

    def recording(*a, **k):
        threads.append(threading.get_ident())
        return score(*a, **k)

    monkeypatch.setattr(reward, "score_completions", recording)
    tok, _ = shared
    data = verl_batch(tok, token_pairs(tok))
    compute_rm_score(verl_config(paths["policy"], paths["reward_model"]), data, monkeypatch)
    assert len(threads) >= len(data) and threading.get_ident() not in threads  # every sample, none on the loop
