"""Invariants of the reward schemes in reward.py."""
import pytest
import torch

import reward

SCORE = torch.tensor([2.0, -1.5, 0.7])
MASK = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]).float()
ATTN = torch.tensor([[0.1, 0.4, 0.2, 0.3, 5.0], [0.5, 0.5, 9.0, 9.0, 9.0], [1.0, 0.0, 1.0, 0.0, 2.0]])


def all_schemes(beta=0.5):
    return {"sparse": reward.sparse(SCORE, MASK), "uniform": reward.uniform(SCORE, MASK),
            "abc": reward.abc(SCORE, ATTN, MASK, beta)}


def test_registry_names_every_scheme():
    assert list(reward.REWARDS) == ["sparse", "uniform", "abc", "red", "abcd"]


@pytest.mark.parametrize("name", ["sparse", "uniform", "abc"])
def test_rows_sum_to_score_and_masked_positions_are_zero(name):
    r = all_schemes()[name]
    assert r.shape == MASK.shape and r.dtype == torch.float32
    torch.testing.assert_close(r.sum(1), SCORE)
    assert (r[MASK == 0] == 0).all()


def test_sparse_puts_everything_on_the_last_real_token():
    r = reward.sparse(SCORE, MASK)
    expected = torch.zeros_like(MASK)
    expected[0, 3], expected[1, 1], expected[2, 4] = 2.0, -1.5, 0.7
    torch.testing.assert_close(r, expected)


def test_uniform_is_even():
    r = reward.uniform(SCORE, MASK)
    torch.testing.assert_close(r[1, :2], torch.tensor([-0.75, -0.75]))
    torch.testing.assert_close(r[0, :4], torch.full((4,), 0.5))


def test_abc_beta_zero_is_sparse():
    torch.testing.assert_close(reward.abc(SCORE, ATTN, MASK, 0.0), reward.sparse(SCORE, MASK))


def test_abc_beta_one_follows_attention_renormalised_over_the_mask():
    r = reward.abc(SCORE, ATTN, MASK, 1.0)
    # Row 0: attention on masked position 4 (5.0) is ignored; 0.1+0.4+0.2+0.3 = 1, so a = attention.
    torch.testing.assert_close(r[0], 2.0 * torch.tensor([0.1, 0.4, 0.2, 0.3, 0.0]))
    # Row 1: 0.5 / (0.5 + 0.5) each; nothing extra lands on the last token.
    torch.testing.assert_close(r[1], torch.tensor([-0.75, -0.75, 0, 0, 0]))
    # Row 2: last token has attention 2 of 4: with beta = 1 it gets exactly that share, no bonus.
    torch.testing.assert_close(r[2], 0.7 * torch.tensor([0.25, 0.0, 0.25, 0.0, 0.5]))


def test_abc_mixes_attention_and_sparse_by_beta():
    beta = 0.3
    mix = beta * reward.abc(SCORE, ATTN, MASK, 1.0) + (1 - beta) * reward.sparse(SCORE, MASK)
    torch.testing.assert_close(reward.abc(SCORE, ATTN, MASK, beta), mix)


def test_abc_is_invariant_to_attention_scale():
    torch.testing.assert_close(reward.abc(SCORE, 7 * ATTN, MASK, 0.5), reward.abc(SCORE, ATTN, MASK, 0.5))


@pytest.mark.parametrize("beta", [-0.1, 1.01])
def test_abc_rejects_beta_outside_unit_interval(beta):
    with pytest.raises(ValueError, match="beta"):
        reward.abc(SCORE, ATTN, MASK, beta)


def test_empty_row_is_rejected():
    with pytest.raises(ValueError, match="at least one"):
        reward.sparse(SCORE, torch.zeros_like(MASK))


# --- red: r_t = s_t - s_{t-1} -----------------------------------------------------------------
PREFIX = torch.tensor([[0.5, 1.0, 3.0, 2.5, 2.0, 9.0],  # s_0 = 0.5, then s_1..s_4 real, s_5 masked
                       [-1.0, 0.0, -1.5, 7.0, 7.0, 7.0],
                       [0.0, 0.2, 0.1, 0.4, 0.3, 0.7]])


def test_red_telescopes_to_score_minus_s0():
    r = reward.red(PREFIX, MASK)
    last = torch.tensor([PREFIX[0, 4], PREFIX[1, 2], PREFIX[2, 5]])  # score read at the last real token
    torch.testing.assert_close(r.sum(1), last - PREFIX[:, 0])
    torch.testing.assert_close(r[0], torch.tensor([0.5, 2.0, -0.5, -0.5, 0.0]))
    assert (r[MASK == 0] == 0).all()


def test_red_credit_can_be_negative_inside_a_positive_completion():
    r = reward.red(PREFIX, MASK)
    assert r[0].sum() > 0 and (r[0] < 0).any()


def test_red_checks_the_prefix_shape():
    with pytest.raises(ValueError, match="T\\+1"):
        reward.red(PREFIX[:, 1:], MASK)


# --- abcd: abc with the policy's attention -------------------------------------------------
@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_abcd_sums_and_beta(beta):
    r = reward.abcd(SCORE, ATTN, MASK, beta)
    torch.testing.assert_close(r.sum(1), SCORE)
    torch.testing.assert_close(r, reward.abc(SCORE, ATTN, MASK, beta))
    if beta == 0:
        torch.testing.assert_close(r, reward.sparse(SCORE, MASK))
    with pytest.raises(ValueError, match="beta"):
        reward.abcd(SCORE, ATTN, MASK, 2.0)
