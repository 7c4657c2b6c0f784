"""Reward models with a tokenizer of their own: re-tokenise, score, and map credit back exactly."""
import pytest
import torch
from conftest import WORDS, pad, read_metrics, tiny_args
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2ForSequenceClassification

import abc_ppo
from plumbing import mini
import reward


@pytest.fixture(scope="module")
def encoder(encoder_dir):
    return (AutoModelForSequenceClassification.from_pretrained(encoder_dir, attn_implementation="eager").eval(),
            AutoTokenizer.from_pretrained(encoder_dir))


@pytest.fixture(scope="module")
def other_decoder(tmp_path_factory):
    """A tiny GPT-2 classifier whose BPE tokenizer (trained on other text, smaller vocab) differs from the policy's."""
    tok = mini.train_tokenizer(["a movie with a good story and slow music"] * 3 + WORDS, vocab_size=270)
    torch.manual_seed(1)
    model = GPT2ForSequenceClassification(mini.gpt2_config(tok, num_labels=2, n_layer=2, n_embd=32, n_head=2))
    path = tmp_path_factory.mktemp("decoder")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return (AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval(),
            AutoTokenizer.from_pretrained(path))


def batch(tok, pairs):
    """Left-padded prompts and right-padded completions from lists of policy token ids."""
    prompts, prompt_mask = pad([p for p, _ in pairs], tok.eos_token_id, "left")
    completions, mask = pad([c for _, c in pairs], tok.eos_token_id, "right")
    return torch.cat([prompts, completions], 1), prompt_mask, mask


def texts_to_pairs(tok, items):
    return [(tok(p)["input_ids"], tok(c)["input_ids"]) for p, c in items]


ITEMS = [("the film", " was a good movie"), ("a slow", " story and very long music is bad"), ("the", " good")]


@pytest.mark.parametrize("which", ["encoder", "other_decoder"])
def test_credit_sums_are_exact(which, request, policy_tok):
    rm, rm_tok = request.getfixturevalue(which)
    seq, prompt_mask, mask = batch(policy_tok, texts_to_pairs(policy_tok, ITEMS))
    s, attention, prefix = reward.score_completions(rm, rm_tok, policy_tok, seq, prompt_mask, mask, 1)
    assert attention.shape == mask.shape and (attention[mask == 0] == 0).all() and (attention > 0).any()
    for beta in (0.0, 0.5, 1.0):
        torch.testing.assert_close(reward.abc(s, attention, mask, beta).sum(1), s)
    if which == "encoder":
        assert prefix is None
        # The encoder reads position 0 ([CLS]): the score is the model's own output on the text.
        P = prompt_mask.shape[1]
        text = [policy_tok.decode(torch.cat([seq[b, :P][prompt_mask[b].bool()], seq[b, P:][mask[b].bool()]]))
                for b in range(len(ITEMS))]
        enc = rm_tok(text, padding=True, return_tensors="pt")
        logits = rm(**enc).logits
        torch.testing.assert_close(s, logits[:, 1] - logits[:, 0])
    else:
        # RED: the credit telescopes to the score minus the score at the last prompt-only RM token.
        r = reward.red(prefix, mask)
        torch.testing.assert_close(r.sum(1), s - prefix[:, 0], atol=1e-5, rtol=1e-5)
        assert (r[mask == 0] == 0).all()


def test_one_rm_token_over_two_policy_tokens_splits_its_credit(encoder, policy_tok):
    rm, rm_tok = encoder
    # The policy wrote " mov" + "ie" as separate tokens; the word-level RM sees one token "movie".
    prompt, part1, part2 = policy_tok("the film")["input_ids"], policy_tok(" mov")["input_ids"], policy_tok("ie")["input_ids"]
    seq, prompt_mask, mask = batch(policy_tok, [(prompt, part1 + part2)])
    _, attention, _ = reward.score_completions(rm, rm_tok, policy_tok, seq, prompt_mask, mask, 1)
    enc = rm_tok(["the film movie"], return_tensors="pt")
    att = rm(**enc, output_attentions=True).attentions[-1][0, :, 0].mean(0)  # from [CLS]
    movie = att[3]  # [CLS] the film movie [SEP]
    # " mov" holds 3 of movie's 5 characters (its space is not part of the RM token), "ie" 2.
    n1 = len(part1)
    got1, got2 = attention[0, :n1].sum(), attention[0, n1:].sum()
    torch.testing.assert_close(got1 + got2, movie)
    torch.testing.assert_close(got1 / movie, torch.tensor(3 / 5), atol=1e-6, rtol=1e-6)


def test_identical_tokenizers_match_the_fast_path(tiny_rm, policy_tok):
    rm = tiny_rm
    seq, prompt_mask, mask = batch(policy_tok, texts_to_pairs(policy_tok, ITEMS))
    (s_fast, a_fast, p_fast) = reward.score_completions(rm, None, policy_tok, seq, prompt_mask, mask, 1)
    (s_slow, a_slow, p_slow) = reward.score_completions(rm, policy_tok, policy_tok, seq, prompt_mask, mask, 1)
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_fast, s_slow, **close)
    torch.testing.assert_close(a_fast * mask, a_slow * mask, **close)
    keep = torch.cat([torch.ones(len(mask), 1), mask.float()], 1)  # s_0 and the real positions
    torch.testing.assert_close(p_fast * keep, p_slow * keep, **close)


def test_training_and_explain_with_an_encoder_reward_model(tiny, encoder_dir, tmp_path, capsys):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--reward_model", encoder_dir, "--reward", "abc", "--steps", "2"))
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    abc_ppo.main(tiny_args(tiny, tmp_path, "--reward_model", encoder_dir, "--explain", "the film was good", "--prompt_len", "2"))
    out = capsys.readouterr().out
    assert "red" not in out.splitlines()[1] and "abc b=0.5" in out  # red needs a decoder RM
    assert "ig" not in out.splitlines()[1].split() and "shapley" not in out.splitlines()[1]  # and the policy's tokens
    with pytest.raises(SystemExit):
        abc_ppo.main(tiny_args(tiny, tmp_path, "--reward_model", encoder_dir, "--reward", "red"))
    assert "needs a decoder reward model" in capsys.readouterr().err
    for scheme in ("shapley", "ig"):  # they delete or scale the policy's tokens in the RM's input
        with pytest.raises(SystemExit) as e:
            abc_ppo.main(tiny_args(tiny, tmp_path, "--reward_model", encoder_dir, "--reward", scheme))
        assert e.value.code == 2 and f"--reward {scheme} needs a decoder reward model that shares" in capsys.readouterr().err
