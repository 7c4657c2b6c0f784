"""Credit faithfulness (plumbing/credit.py) and the policy attention that ABC-D reads."""
import pytest
import torch
from conftest import GOOD, BagOfWords, synthetic_texts, tiny_args
from transformers import AutoModelForCausalLM

import abc_ppo
from plumbing import credit
from conftest import load_script

mechanism = load_script("tools/mechanism.py")


def test_mechanism_by_hand():
    # Deleting token y_t moves BagOfWords' score by w[y_t], so d_t = w[y_t]. An advantage that is an
    # increasing function of it ranks the tokens as d does (Spearman 1, same top token); a credit that
    # is a decreasing one ranks them backwards (-1). The final EOS (token 0) is dropped at score_eos 0.
    w = torch.tensor([0.0, 1.0, 3.0, 0.5, 2.0])
    sample = dict(step=7, prompt_ids=[1], token_ids=[2, 3, 4, 1, 0], advantage=[4.0, 0.0, 2.0, 1.0, 9.0],
                  credit=[0.1, 2.0, 0.5, 1.0, 0.0])
    (r,) = mechanism.mechanism(BagOfWords(w), 0, 0, [sample, dict(sample, step=8)], [7]).values()
    assert r["samples"] == 1 and r["top1"] == 1.0
    assert (r["adv"][0], r["signed"][0], r["credit"][0]) == pytest.approx((1.0, 1.0, -1.0))


def test_mechanism_report_names_each_run(tiny, tmp_path, capsys):
    # One table row per run and step, each run named by what sets it apart: its scheme and beta,
    # a lambda other than the default, and forced lengths.
    abc_ppo.main(tiny_args(tiny, tmp_path, "--reward", "shapley", "--beta", "0.8", "--lam", "0.5", "--min_new_tokens",
                           "--gen_len", "4", "6", "--steps", "2", "--log_samples", "3"))
    capsys.readouterr()
    mechanism.mechanism_report([str(tmp_path)], [0, 1])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 4–6 ")]
    assert [r.split(" | ")[1:4] for r in rows] == [["shapley (β 0.8), λ 0.5, forced, seed 0", str(s), "3"] for s in (0, 1)]


def test_occlusion_by_hand():
    w = torch.tensor([0.0, 1.0, -3.0, 0.5, 2.0])
    ids = torch.tensor([[1, 2, 3, 4, 0], [4, 4, 1, 0, 0]])  # right-padded with token 0
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    e = credit.occlusion(BagOfWords(w), ids, mask, k=1, chunk=3)  # chunk < rows: batches are joined back
    torch.testing.assert_close(e, torch.tensor([[3.0, 0.5, 2.0, 0.0], [2.0, 1.0, 0.0, 0.0]]))


class WordTok:
    """Tokenizer stand-in: one id per word."""
    pad_token_id = eos_token_id = 0
    ids = dict(a=1, b=2, c=3, d=4)

    def __call__(self, text):
        return {"input_ids": [self.ids[w] for w in text.split()]}


def test_faithfulness_by_hand():
    rm = BagOfWords(torch.tensor([0.0, 1.0, -3.0, 0.5, 2.0]))
    result = credit.faithfulness(rm, WordTok(), ["a b c d", "d d a", "b a"], k=1, max_len=15)
    s = result["schemes"]
    assert result["texts"] == 2  # "b a" has one completion token and is left out
    # Occlusion effects |w|: [3, 0.5, 2] and [2, 1]; both tops are the first completion token.
    assert s["red"] == pytest.approx((1.0, 1.0))  # RED's |s_t - s_{t-1}| = |w[y_t]|, the occlusion effect itself
    assert s["sparse"][1] == 0.0  # the last token is neither row's top
    assert s["uniform (chance)"] == (None, pytest.approx((1 / 3 + 1 / 2) / 2))
    assert s["shapley"] == pytest.approx((1.0, 1.0))  # in a bag of words a token's Shapley value is its weight
    assert s["ig"] == pytest.approx((1.0, 1.0))  # ... and its integrated gradient too
    assert set(s) == {"uniform (chance)", "sparse", "abc, layer 0 (last)", "red", "ig", "shapley"}  # no policy: no abcd


def test_ranks_average_ties():
    r = credit.ranks(torch.tensor([[1.0, 2.0, 2.0, 4.0, 9.0]]), torch.tensor([[1, 1, 1, 1, 0]]))
    torch.testing.assert_close(r, torch.tensor([[1.0, 2.5, 2.5, 4.0, 0.0]]))
    rho = credit.spearman(torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]), torch.tensor([[3.0, 2.0, 1.0]] * 2),
                          torch.ones(2, 3))
    assert rho[0] == pytest.approx(-1.0) and rho[1].isnan()  # a constant row has no ranking


def test_occlusion_ranks_good_first_for_the_model_that_prefers_good(tiny_rm, policy_tok):
    rm, tok = tiny_rm, policy_tok
    texts = [t for t in synthetic_texts(200, seed=5)[0] if f" {GOOD} " in t[t.index(" ", 12):]][:30]
    k = 3
    ids, mask = credit.encode(tok, texts, k, 15)
    top = credit.top1(credit.occlusion(rm, ids, mask, k), mask[:, k:])
    hits = [tok.decode(ids[b, k + t]) == f" {GOOD}" for b, t in enumerate(top.tolist())]
    assert len(hits) >= 20 and sum(hits) / len(hits) >= 0.8


def test_faithfulness_cli(tiny, tmp_path, capsys):
    result = abc_ppo.main(tiny_args(tiny, tmp_path, "--faithfulness", "40"))
    out = capsys.readouterr().out
    assert "| abc, layer 1 (last) |" in out and "| abcd |" in out and "| red |" in out
    assert result["texts"] == 40 and result["prompt_tokens"] == 3  # the middle of --prompt_len 2 4
    assert all(-1 <= rho <= 1 for rho, _ in result["schemes"].values() if rho is not None)


def test_policy_attention_is_the_attention_paid_while_generating(tiny, policy_tok):
    """forward's completion-to-completion attention (one pass, causal) equals the generation-time
    attention that the authors' ABC-D reads, step by step."""
    policy = AutoModelForCausalLM.from_pretrained(tiny["policy"], attn_implementation="eager").eval()
    tok = policy_tok
    prompt = torch.tensor([tok("the film was")["input_ids"]])
    P = prompt.shape[1]
    torch.manual_seed(0)
    out = policy.generate(input_ids=prompt, max_new_tokens=6, min_new_tokens=6, do_sample=True, top_k=0,
                          output_attentions=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    seq = out.sequences
    A = abc_ppo.forward(policy, None, seq, torch.ones_like(seq), P, attention=True).attention  # [1, G, G]
    for k in range(1, 6):  # step k feeds completion token k-1
        step = out.attentions[k][-1].mean(1)[0, -1]  # [P + k] keys
        torch.testing.assert_close(A[0, k - 1, :k], step[P:], atol=1e-5, rtol=1e-4)
