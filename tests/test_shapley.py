"""--reward shapley (plumbing.estimators.shapley_values, reward.shapley) on reward models whose Shapley values are
known by hand: a bag of words, where a token's value is its own weight, and a squashed bag of words,
where the tokens interact but two of the same weight are alike and a weight of 0 is a dummy."""
import pytest
import torch
from conftest import BagOfWords, pad, read_metrics, tiny_args

import abc_ppo
import reward
import plumbing.estimators

W = torch.tensor([0.0, 1.0, -2.0, 0.5, 3.0, 0.0, 1.0, -0.5, 2.0, -1.0, 0.25, 1.5])  # token 5 weighs 0, like pad 0


def batch(prompts, completions):
    """Left-padded prompts and right-padded completions, as rollout returns them: seq [B, P+G],
    prompt_mask [B, P], comp_mask [B, G]."""
    p, pm = pad(prompts, 0, "left")
    c, cm = pad(completions, 0, "right")
    return torch.cat([p, c], 1), pm, cm


def values(rm, prompts, completions, **kw):
    """phi [B, G], v(empty) [B], the number of coalitions, the score [B] and comp_mask [B, G]."""
    seq, pm, cm = batch(prompts, completions)
    s = plumbing.estimators.kept_scores(rm, seq, torch.cat([pm, cm], 1))
    return (*plumbing.estimators.shapley_values(rm, seq, pm, cm, s, **kw), s, cm)


def test_a_bag_of_words_token_is_worth_its_weight_exactly_and_sampled():
    rm = BagOfWords(W)
    short, long_ = [3, 4, 1, 2, 8], [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 3, 4, 2]  # 5 tokens: exact; 13: sampled
    phi, v0, n, s, cm = values(rm, [[4], [2, 6]], [short, long_], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(phi[0, :5], W[short])
    torch.testing.assert_close(phi[1, :13], W[long_])  # additive: every order gives every token its weight
    torch.testing.assert_close(v0, torch.tensor([3.0, -1.0]))  # the prompt alone
    assert (phi * (1 - cm)).abs().sum() == 0
    # coalitions: all 2^5 - 1 but the full set; for 13 units 8 orders and their reverses, 13 prefixes each,
    # the empty one shared, a few prefixes of an order and its reverse shared too
    assert 31 < n <= 31 + 16 * 12 + 1


def squashed(w=W):
    return BagOfWords(w, f=torch.tanh)  # v(S) = tanh(prompt + sum of S): the tokens interact


def test_monte_carlo_converges_to_the_exact_values(monkeypatch):
    rm = squashed()
    comp = [[1, 3, 4, 6, 8, 10, 11, 2, 7, 9, 3, 1]]  # 12 tokens
    monkeypatch.setattr(plumbing.estimators, "EXACT_UNITS", 12)
    exact = values(rm, [[9]], comp)[0]
    monkeypatch.setattr(plumbing.estimators, "EXACT_UNITS", 10)
    err = {}
    for k in (1, 4, 16, 64, 256):
        runs = [values(rm, [[9]], comp, perms=k, generator=torch.Generator().manual_seed(seed))[0] for seed in range(4)]
        err[k] = sum((r - exact).pow(2).mean().sqrt().item() for r in runs) / len(runs)
    ks = sorted(err)
    assert all(err[a] > err[b] for a, b in zip(ks, ks[1:])), err  # falls with every 4x more orders
    assert err[256] < 0.1 * err[1], err  # about 1 / sqrt(K): 16x fewer at 256x the orders


@pytest.mark.parametrize("perms", [None, 3])  # exact; sampled (the units then exceed EXACT_UNITS)
def test_efficiency_symmetry_dummy(perms, monkeypatch):
    rm = squashed()
    comp = [[1, 4, 6, 5, 3], [6, 2, 1, 8, 5, 9, 4]]
    if perms:
        monkeypatch.setattr(plumbing.estimators, "EXACT_UNITS", 2)
    phi, v0, _, s, cm = values(rm, [[9], [3, 10]], comp, perms=perms or 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(phi.sum(1), s - v0, atol=1e-5, rtol=0)  # efficiency, exact or sampled
    credit = reward.shapley(s, phi, v0, cm.float(), 0.8)
    torch.testing.assert_close(credit.sum(1), s, atol=1e-5, rtol=0)  # rows sum to the score, as for abc
    assert phi[0, 3] == 0 and phi[1, 4] == 0  # dummy: token 5 weighs 0, so it changes no coalition's score
    if perms is None:  # symmetry: tokens 1 and 6 both weigh 1.0; exact values are equal
        torch.testing.assert_close(phi[0, 0], phi[0, 2])
        torch.testing.assert_close(phi[1, 0], phi[1, 2])
        assert phi[0, 0] != phi[1, 0]  # ... yet the value of a token depends on its company


def test_the_seed_decides_the_sampled_credit(monkeypatch):
    monkeypatch.setattr(plumbing.estimators, "EXACT_UNITS", 2)
    run = lambda seed: values(squashed(), [[9]], [[1, 4, 6, 3, 8, 2]], perms=2,
                              generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_spans_split_their_value_evenly():
    # 7 tokens and at most 3 units: spans [0, 1, 2], [3, 4], [5, 6] (plumbing.estimators.units)
    assert plumbing.estimators.units(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2] and plumbing.estimators.units(3, 16).tolist() == [0, 1, 2]
    comp = [2, 4, 1, 3, 8, 9, 11]
    phi, v0, n, s, _ = values(BagOfWords(W), [[1]], [comp], max_units=3)
    spans = [W[comp[:3]].sum() / 3] * 3 + [W[comp[3:5]].sum() / 2] * 2 + [W[comp[5:]].sum() / 2] * 2
    torch.testing.assert_close(phi[0], torch.stack(spans))
    torch.testing.assert_close(phi.sum(1), s - v0)
    assert n == 2 ** 3 - 1  # a game of 3 players


def test_a_row_is_valued_as_if_alone():
    # Padding of the batch, left for prompts and right for completions, changes nobody's value.
    rm = squashed()
    prompts, comps = [[9], [3, 10, 2], [4, 4]], [[1, 4, 6, 5, 3], [6, 2], [8, 8, 1, 2, 3, 4, 7, 11]]
    together = values(rm, prompts, comps)[0]
    for b in range(3):
        alone = values(rm, [prompts[b]], [comps[b]])[0]
        torch.testing.assert_close(together[b, :len(comps[b])], alone[0], atol=1e-6, rtol=0)


def test_a_final_eos_the_rm_does_not_read_gets_no_shapley_value():
    class Tok:
        eos_token_id = 11

    seq, pm, cm = batch([[9]], [[1, 4, 11]])
    rm_mask = reward.read_mask(Tok, seq, 1, cm, score_eos=0)
    s = plumbing.estimators.kept_scores(BagOfWords(W), seq, torch.cat([pm, rm_mask], 1))
    phi, v0, _ = plumbing.estimators.shapley_values(BagOfWords(W), seq, pm, rm_mask, s)
    torch.testing.assert_close(phi, torch.tensor([[1.0, 3.0, 0.0]]))
    credit = reward.shapley(s, phi, v0, cm.float(), 1.0)  # the last token, the EOS, gets v(empty) only
    torch.testing.assert_close(credit, torch.tensor([[1.0, 3.0, -1.0]]))


def test_a_completion_the_rm_reads_none_of_gets_the_score_on_its_last_token():
    # An EOS-only completion at score_eos 0: no unit to value, no coalition to score; v(empty) = the score.
    seq, pm = torch.tensor([[3, 1, 2, 0], [3, 3, 0, 0]]), torch.ones(2, 2, dtype=torch.long)
    rm_mask = torch.tensor([[1, 1], [0, 0]])
    s = plumbing.estimators.kept_scores(BagOfWords(W), seq, torch.cat([pm, rm_mask], 1))
    phi, v0, n = plumbing.estimators.shapley_values(BagOfWords(W), seq, pm, rm_mask, s)
    torch.testing.assert_close(phi, torch.tensor([[-2.0, 0.0], [0.0, 0.0]]))  # row 0 reads tokens 2 and 0
    assert v0[1] == s[1] and n == 3  # row 0's 2^2 - 1 coalitions only


def test_shapley_trains_and_logs_its_rm_rows(tiny, tmp_path):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--reward", "shapley", "--beta", "0.8", "--steps", "2"))
    rows = read_metrics(tmp_path)
    assert len(rows) == 2 and all(r["rm_rows"] > 8 * 10 for r in rows)  # B rows, and every coalition
