"""--reward ig (plumbing.estimators.integrated_gradients, reward.ig): exact on a linear reward model, complete
as the rule refines, rows that sum to the score, nothing for a token the RM does not read, and the same
attributions as Captum's LayerIntegratedGradients, an independent implementation, on the tiny RM."""
import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import pad, read_metrics, tiny_args

import abc_ppo
import reward
from plumbing import estimators


class LinearRM(torch.nn.Module):
    """score = w . sum_j e_j over every token it reads, prompt and completion: then s(alpha) is linear in
    alpha, and token t's integrated gradient is w . e_t exactly, for any number of steps."""
    config = SimpleNamespace(num_hidden_layers=1)

    def __init__(self, embeddings, w):
        super().__init__()
        self.embed = torch.nn.Embedding.from_pretrained(embeddings)
        self.score = torch.nn.Linear(len(w), 1, bias=False)
        self.score.weight.data[:] = w
        self.requires_grad_(False)

    def get_input_embeddings(self):
        return self.embed

    def base_model(self, inputs_embeds, attention_mask, position_ids):
        return SimpleNamespace(last_hidden_state=(inputs_embeds * attention_mask[..., None]).cumsum(1))  # [B, L, H]


def batch(prompts, completions):
    p, pm = pad(prompts, 0, "left")
    c, cm = pad(completions, 0, "right")
    return torch.cat([p, c], 1), pm, cm


def linear_rm():
    torch.manual_seed(0)
    embeddings = torch.randn(12, 5)
    embeddings[7] = 0  # token 7's embedding is 0: nothing to scale, so the RM cannot tell it from the baseline
    return LinearRM(embeddings, torch.randn(5)), embeddings


@pytest.mark.parametrize("steps", [1, 3, 16])
def test_a_linear_rm_credits_each_token_w_dot_its_embedding_exactly(steps):
    rm, e = linear_rm()
    seq, pm, cm = batch([[3, 4], [5]], [[1, 7, 2, 6], [8, 9, 10]])
    phi, v_zero, rows = estimators.integrated_gradients(rm, seq, pm, cm, steps)
    w = rm.score.weight[0]
    torch.testing.assert_close(phi, (e[seq[:, pm.shape[1]:]] @ w) * cm)
    torch.testing.assert_close(v_zero, torch.stack([e[[3, 4]].sum(0) @ w, e[5] @ w]))  # the prompt's own score
    assert phi[0, 1] == 0  # the token the RM cannot tell from the baseline gets nothing
    assert rows == 2 * steps + 2


@pytest.fixture
def tiny_batch(policy_tok):
    """Three tiny-data texts as prompt + completion; the last ends in an EOS the RM does not read."""
    rows = [policy_tok(t)["input_ids"] for t in ("the film was very good and long", "a dull plot and a slow actor",
                                                  "music is quite good")]
    seq, pm, cm = batch([r[:2] for r in rows], [r[2:] for r in rows[:2]] + [rows[2][2:] + [policy_tok.eos_token_id]])
    return seq, pm, cm, reward.read_mask(policy_tok, seq, pm.shape[1], cm, score_eos=0)


def test_completeness_improves_with_steps_and_rows_sum_to_the_score(tiny_rm, tiny_batch):
    seq, pm, cm, rm_mask = tiny_batch
    s = reward.score(tiny_rm, seq, torch.cat([pm, rm_mask], 1))[0]
    gap = {}
    for steps in (1, 4, 16, 64):
        phi, v_zero, _ = estimators.integrated_gradients(tiny_rm, seq, pm, rm_mask, steps)
        gap[steps] = (s - v_zero - phi.sum(1)).abs().max().item()
        credit = reward.ig(s, phi, v_zero, cm.float(), 0.8)
        torch.testing.assert_close(credit.sum(1), s, atol=1e-5, rtol=0)  # whatever the rule misses
        assert phi[2, rm_mask[2].sum():].abs().sum() == 0  # the final EOS the RM does not read: 0
    assert gap[1] > gap[4] > gap[16] > gap[64], gap
    assert gap[64] < 0.2 * gap[1], gap  # slowly: this RM's score turns near alpha = 0, where the few points are


@pytest.mark.parametrize("steps", [4, 16])
def test_equals_captum_layer_integrated_gradients(tiny_rm, tiny_batch, steps):
    """Captum interpolates the embedding layer's output between a baseline input's and the input's. The
    baseline input is the same prompt and, on the completion, a token whose embedding is 0: b = 0 there,
    b = e on the prompt, the game of estimators.integrated_gradients."""
    from captum.attr import LayerIntegratedGradients

    seq, pm, cm, rm_mask = tiny_batch
    ours = estimators.integrated_gradients(tiny_rm, seq, pm, rm_mask, steps)[0]
    rm = copy.deepcopy(tiny_rm)  # with one token more
    V = rm.config.vocab_size
    rm.resize_token_embeddings(V + 1)
    with torch.no_grad():
        rm.get_input_embeddings().weight[V] = 0  # the zero token, for the baseline alone
    P, attn_mask = pm.shape[1], torch.cat([pm, rm_mask], 1)
    baseline = torch.cat([seq[:, :P], torch.full_like(seq[:, P:], V)], 1)
    theirs = LayerIntegratedGradients(lambda ids: score_with_grad(rm, ids, attn_mask), rm.get_input_embeddings()).attribute(
        seq, baselines=baseline, n_steps=steps, method="riemann_middle", internal_batch_size=len(seq) * steps)
    torch.testing.assert_close(ours, theirs.sum(-1)[:, P:] * rm_mask, atol=1e-4, rtol=0)
    assert ours.abs().max() > 1e-2  # the check compares something


def score_with_grad(rm, ids, attn_mask):
    """reward.score's read, with gradients: the score at the last token the RM reads. Captum repeats the batch
    n_steps times, so the mask is repeated alike."""
    from plumbing.models import last_index, logit_score, positions

    mask = attn_mask.repeat(len(ids) // len(attn_mask), 1)
    h = rm.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
    return logit_score(rm.score(h[torch.arange(len(ids)), last_index(mask)]))


def test_ig_trains_on_the_tiny_models(tiny, tmp_path):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--reward", "ig", "--beta", "0.8", "--steps", "2", "--ig_steps", "4"))
    rows = read_metrics(tmp_path)
    assert [r["rm_rows"] for r in rows] == [8 + 8 * 4 + 8] * 2  # the batch, m points a row, and the baseline
