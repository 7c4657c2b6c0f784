"""Invariants of the reward schemes in reward.py (their flags are checked in plumbing/presets.py: test_ppo)."""
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
    assert list(reward.SCHEMES) == ["sparse", "uniform", "abc", "red", "abcd", "shapley", "ig"]


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


# --- abcd: the paper's ABC-D, from the policy's attention during generation -------------------
POLICY_ATTN = torch.tensor([[[0.5, 0.0, 0.0, 0.0, 0.0],   # query 0
                             [0.2, 0.4, 0.0, 0.0, 0.0],   # query 1
                             [0.1, 0.3, 0.6, 0.0, 0.0],   # query 2 (the last query: token 3 is the final one)
                             [0.1, 0.1, 0.1, 0.7, 0.0],   # token 3 is never fed in as a query
                             [0.2, 0.2, 0.2, 0.2, 0.2]]])  # padding
ONE_MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])


def test_abcd_by_hand():
    # Column means over the queries at or after each column: c = [0.8/3, 0.35, 0.6, -], shifted right by one.
    a = torch.tensor([[0.0, 0.8 / 3, 0.35, 0.6, 0.0]])
    torch.testing.assert_close(reward.abcd(torch.tensor([2.0]), POLICY_ATTN, ONE_MASK, 1.0), 2.0 * a / a.sum())


def test_abcd_matches_a_generation_loop():
    """The authors' construction, one generation step at a time: step k feeds completion token k-1
    and attends to tokens 0..k-1; that row goes into columns 1..k; columns average their nonzero rows."""
    torch.manual_seed(0)
    B, T = 3, 6
    att = torch.rand(B, T, T).tril()
    att = att / att.sum(-1, keepdim=True)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4]).float()
    score = torch.tensor([1.0, -2.0, 0.5])
    expect = torch.zeros(B, T)
    for b in range(B):
        n = int(mask[b].sum())
        M = torch.zeros(n, n)
        for k in range(1, n):
            M[k, 1:k + 1] = att[b, k - 1, :k]
        a = (M.sum(0) / (M != 0).sum(0).clamp(min=1))
        expect[b, :n] = score[b] * a / a.sum()
    torch.testing.assert_close(reward.abcd(score, att, mask, 1.0), expect)


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_abcd_sums_and_beta(beta):
    r = reward.abcd(SCORE, POLICY_ATTN.expand(3, 5, 5), MASK, beta)
    torch.testing.assert_close(r.sum(1), SCORE)
    assert (r[:, 0] == 0).all()  # token 0 produced no position that a later query could attend to
    if beta == 0:
        torch.testing.assert_close(r, reward.sparse(SCORE, MASK))
