"""The attention ABC and ABC-D read, on SDPA (plumbing.attention.KERNEL), equals eager attention's full maps.

Tiny random GPT-2 and Llama models (RoPE, grouped-query attention), built from their configs. Each
is compared with a copy of itself on eager attention, read the way the code did before: every
layer's [B, heads, L, L] map with output_attentions=True, then one row of the last."""
import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification)

import abc_ppo
from plumbing import credit
import reward
import plumbing.attention
import plumbing.models

EOS = 0
TOK = SimpleNamespace(eos_token_id=EOS)  # all score_completions reads of a tokenizer shared with the RM
TOL = dict(atol=1e-5, rtol=0)


def build(arch, head):
    """A tiny random model of one architecture, as a reward model ("rm") or a causal LM ("lm")."""
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=64, vocab_size=50, num_labels=2,
                         bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS)
        cls = GPT2ForSequenceClassification if head == "rm" else GPT2LMHeadModel
    else:  # RoPE, and 4 query heads sharing 2 key/value heads
        cfg = LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=64, vocab_size=50, num_labels=2, eos_token_id=EOS, pad_token_id=EOS)
        cls = LlamaForSequenceClassification if head == "rm" else LlamaForCausalLM
    model = cls(cfg).eval()
    model.set_attn_implementation(plumbing.attention.KERNEL)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    return model, eager


def batch():
    """Left-padded prompts (P = 4) and right-padded completions. Row 2's completion ends as a rollout
    does, an EOS action at position 2, then padding; row 0 has an EOS id among real tokens."""
    g = torch.Generator().manual_seed(1)
    prompt_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
    comp_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    seq = torch.randint(1, 50, (3, 10), generator=g)
    seq[:, :4][prompt_mask == 0] = EOS  # GPT-2 pads with EOS
    seq[:, 4:][comp_mask == 0] = EOS
    seq[2, 4 + 2] = seq[0, 4 + 1] = EOS
    return seq, prompt_mask, comp_mask


def eager_score(rm, seq, attn_mask):
    """reward.score as it was: eager attention, every layer's full map, one row of the last."""
    out = rm.base_model(input_ids=seq, attention_mask=attn_mask, position_ids=plumbing.models.positions(attn_mask),
                        output_attentions=True)
    scores = plumbing.models.logit_score(rm.score(out.last_hidden_state))
    last = plumbing.models.last_index(attn_mask)
    b = torch.arange(len(last))
    return scores[b, last], out.attentions[-1][b, :, last].mean(1), scores


class CountCalls:
    """Counts SDPA calls and forbids a full map: a stand-in for transformers' sdpa_attention_forward."""

    def __init__(self, monkeypatch):
        self.n, self.sdpa = 0, plumbing.attention.sdpa_attention_forward
        monkeypatch.setattr(plumbing.attention, "sdpa_attention_forward", self)

    def __call__(self, *args, **kwargs):
        assert not kwargs.get("output_attentions")
        self.n += 1
        return self.sdpa(*args, **kwargs)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("padding", ["left", "right", "none"])
def test_rm_row_equals_eager(arch, padding, monkeypatch):
    rm, eager = build(arch, "rm")
    seq, prompt_mask, comp_mask = batch()
    mask = {"left": torch.cat([prompt_mask, torch.ones_like(comp_mask)], 1),
            "right": torch.cat([torch.ones_like(prompt_mask), comp_mask], 1),
            "none": torch.ones_like(seq)}[padding]
    calls = CountCalls(monkeypatch)
    s, row, prefix = reward.score(rm, seq, mask)
    assert calls.n == rm.config.num_hidden_layers  # every layer on SDPA, the row computed beside the last
    s_eager, row_eager, prefix_eager = eager_score(eager, seq, mask)
    assert row.shape == mask.shape and row.dtype == torch.float32
    torch.testing.assert_close(row, row_eager, **TOL)
    torch.testing.assert_close(s, s_eager, **TOL)
    real = mask.bool()
    torch.testing.assert_close(prefix[real], prefix_eager[real], **TOL)
    torch.testing.assert_close(row.sum(1), torch.ones(len(seq)))  # a softmax row
    assert (row[~real] == 0).all()  # nothing on padding


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("score_eos", [0, 1])
def test_score_completions_with_an_eos_inside_equals_eager(arch, score_eos, monkeypatch):
    rm, eager = build(arch, "rm")
    seq, prompt_mask, comp_mask = batch()
    new = reward.score_completions(rm, None, TOK, seq, prompt_mask, comp_mask, score_eos)
    monkeypatch.setattr(reward, "score", eager_score)
    old = reward.score_completions(eager, None, TOK, seq, prompt_mask, comp_mask, score_eos)
    for a, b in zip(new, old):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_policy_completion_attention_equals_eager(arch, monkeypatch):
    """ABC-D: the policy's last-layer map among the completion tokens, from the last layer alone."""
    policy, eager = build(arch, "lm")
    seq, prompt_mask, comp_mask = batch()
    mask, P = torch.cat([prompt_mask, comp_mask], 1), prompt_mask.shape[1]
    out = eager.base_model(input_ids=seq, attention_mask=mask, position_ids=plumbing.models.positions(mask),
                           output_attentions=True)
    expect = out.attentions[-1][:, :, P:, P:].mean(1)  # [B, G, G]
    calls = CountCalls(monkeypatch)
    got = abc_ppo.forward(policy, None, seq, mask, P, attention=True)
    assert calls.n == policy.config.num_hidden_layers
    torch.testing.assert_close(got.attention, expect, **TOL)
    torch.testing.assert_close(credit.policy_attention(policy, seq, mask, P), expect, **TOL)
    # The same log-probs as without the read-out, bit for bit: reading changes no kernel.
    assert torch.equal(got.logp, abc_ppo.forward(policy, None, seq, mask, P).logp)


def test_a_model_on_another_kernel_is_read_and_given_back():
    rm, eager = build("gpt2", "rm")
    seq, prompt_mask, comp_mask = batch()
    mask = torch.cat([prompt_mask, comp_mask], 1)
    torch.testing.assert_close(reward.score(eager, seq, mask)[1], reward.score(rm, seq, mask)[1], **TOL)
    assert eager.config._attn_implementation == "eager" and plumbing.attention._local.reading is None
    last = plumbing.models.last_index(mask)[:, None]
    with plumbing.attention.attention_rows(eager, last, every_layer=True) as rows:
        eager.base_model(input_ids=seq, attention_mask=mask, position_ids=plumbing.models.positions(mask))  # on SDPA now
    expect = eager_score(eager, seq, mask)  # on eager again: every layer's map
    assert len(rows) == 3 and rows[-1].shape == (3, 1, 10)
    torch.testing.assert_close(rows[-1][:, 0], expect[1], **TOL)
    with pytest.raises(RuntimeError, match="6 attention calls .* for 3 layers"):
        with plumbing.attention.attention_rows(rm, last):
            rm.base_model(input_ids=seq, attention_mask=mask)
            rm.base_model(input_ids=seq, attention_mask=mask)  # one pass, not two
