"""The credit a real run uses is the chosen scheme's, from reward.py, on that run's own signals.

Each scheme trains one step on the tiny models and logs its samples with their token ids. Each sample
is then scored again, alone, and the scheme's function in reward.py is called on those signals. Swap
any two branches of the dispatch and a scheme's logged credit stops matching its function."""
import itertools

import pytest
import torch
from conftest import read_jsonl, tiny_args
from transformers import AutoModelForCausalLM

import abc_ppo
from plumbing import credit
import reward
import plumbing.estimators

BETA = 0.5
SCHEMES = {  # name -> its function in reward.py, on the signals of one sample
    "sparse": lambda x: reward.sparse(x["score"], x["mask"]),
    "uniform": lambda x: reward.uniform(x["score"], x["mask"]),
    "abc": lambda x: reward.abc(x["score"], x["attention"], x["mask"], BETA),
    "red": lambda x: reward.red(x["prefix_scores"], x["mask"]),
    "abcd": lambda x: reward.abcd(x["score"], x["policy_attention"], x["mask"], BETA),
    "shapley": lambda x: reward.shapley(x["score"], *x["shapley_values"], x["mask"], BETA),
    "ig": lambda x: reward.ig(x["score"], *x["integrated_gradients"], x["mask"], BETA),
}


@pytest.fixture(scope="module")
def logged(tiny, tmp_path_factory):
    """{scheme: the 8 samples its one-step run logged}."""
    out = {}
    for name in reward.SCHEMES:
        d = tmp_path_factory.mktemp(name)
        # --shapley_units 10: every completion's game exact, so a sample scored alone gets the same values
        abc_ppo.main(tiny_args(tiny, d, "--reward", name, "--beta", str(BETA), "--steps", "1", "--log_samples", "8",
                               "--shapley_units", "10"))
        out[name] = read_jsonl(d / "samples.jsonl")
    return out


def signals(sample, tok, policy, rm):
    """Everything a scheme reads, for one logged sample scored on its own (no padding)."""
    P = len(sample["prompt_ids"])
    seq = torch.tensor([sample["prompt_ids"] + sample["token_ids"]])
    prompt_mask, comp_mask = torch.ones(1, P, dtype=torch.long), torch.ones_like(seq[:, P:])
    s, attention, prefix = reward.score_completions(rm, None, tok, seq, prompt_mask, comp_mask, score_eos=0)
    rm_mask = reward.read_mask(tok, seq, P, comp_mask, 0)
    phi, v_empty, _ = plumbing.estimators.shapley_values(rm, seq, prompt_mask, rm_mask, s, max_units=10)
    return dict(score=s, mask=comp_mask.float(), attention=attention, prefix_scores=prefix,
                policy_attention=credit.policy_attention(policy, seq, torch.ones_like(seq), P),
                shapley_values=(phi, v_empty),
                integrated_gradients=plumbing.estimators.integrated_gradients(rm, seq, prompt_mask, rm_mask)[:2])


def test_every_scheme_logs_its_own_functions_credit(logged, tiny, policy_tok, tiny_rm):
    assert set(SCHEMES) == set(reward.SCHEMES)
    policy = AutoModelForCausalLM.from_pretrained(tiny["policy"], attn_implementation="eager").eval()  # as at step 0
    for name, samples in logged.items():
        assert len(samples) == 8
        for sample in samples:
            x = signals(sample, policy_tok, policy, tiny_rm)
            assert sample["score"] == pytest.approx(x["score"].item(), abs=2e-4)
            expected = {n: f(x)[0] for n, f in SCHEMES.items()}
            torch.testing.assert_close(torch.tensor(sample["credit"]), expected[name], atol=2e-4, rtol=0)
    # The check can tell the schemes apart: on the samples of one run, any two differ somewhere.
    xs = [signals(sample, policy_tok, policy, tiny_rm) for sample in logged["abc"]]
    for a, b in itertools.combinations(SCHEMES, 2):
        gap = max((SCHEMES[a](x) - SCHEMES[b](x)).abs().max().item() for x in xs)
        assert gap > 1e-2, (a, b, gap)


def test_sparse_logs_credit_on_the_last_token_only(logged):
    for sample in logged["sparse"]:
        *rest, last = sample["credit"]
        assert rest == [0.0] * len(rest) and last == sample["score"]
