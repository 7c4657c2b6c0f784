"""The sampler draws from the pi that PPO trains: rollout ignores a checkpoint's own sampling settings,
and a model whose logits abc_ppo.forward cannot reproduce is refused in one line."""
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_args
from transformers import GenerationConfig

import abc_ppo


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["policy"])


def llama(tok, path=None, **gen):
    """A tiny Llama-shaped policy (RoPE, 4 query heads sharing 2 KV heads) whose generation config sets `gen`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)).eval()
    model.generation_config = GenerationConfig(do_sample=True, **gen)
    return model


def sampled_logp(policy, tok, rollout):
    """rollout's samples and the log-probs of the sampled tokens under the distribution generate sampled
    them from, read from generate's processed scores: seq [B, P+G], comp_mask [B, G], logp [B, G]."""
    scores, generate = [], policy.generate

    def recording(**kw):
        out = generate(**kw, output_scores=True, return_dict_in_generate=True)
        scores.extend(out.scores)
        return out.sequences

    policy.generate = recording
    torch.manual_seed(1)
    prompts = [tok(t)["input_ids"][:3] for t in ("the film was", "a movie is", "the plot was")]
    seq, comp_mask = rollout(policy, tok, torch.tensor(prompts), torch.ones(3, 3, dtype=torch.long),
                             torch.tensor([12, 12, 12]))
    del policy.generate
    P = 3
    logp = torch.stack([F.log_softmax(s.float(), -1).gather(1, seq[:, P + t, None])[:, 0] for t, s in enumerate(scores)], 1)
    return seq, comp_mask, logp


def test_rollout_samples_from_the_pi_that_forward_computes(tok):
    # The checkpoint asks for temperature 0.6, a repetition penalty and an n-gram ban; rollout must not listen.
    policy = llama(tok, temperature=0.6, repetition_penalty=1.3, no_repeat_ngram_size=2)
    seq, comp_mask, sampled = sampled_logp(policy, tok, abc_ppo.rollout)
    pi = abc_ppo.forward(policy, None, seq, torch.cat([torch.ones(3, 3, dtype=torch.long), comp_mask], 1), 3).logp
    m = comp_mask.bool()
    torch.testing.assert_close(sampled[m], pi[m], atol=1e-5, rtol=1e-5)
    # The check can fail: generate under the checkpoint's own settings samples from another distribution.
    own = GenerationConfig(do_sample=True, temperature=0.6, repetition_penalty=1.3, no_repeat_ngram_size=2, top_k=0)

    def as_the_checkpoint_says(policy, tok, ids, mask, lengths):
        out = policy.generate(input_ids=ids, attention_mask=mask, generation_config=own, max_new_tokens=12,
                              pad_token_id=tok.eos_token_id)
        return out, torch.ones_like(out[:, 3:])

    seq, comp_mask, sampled = sampled_logp(llama(tok), tok, as_the_checkpoint_says)
    pi = abc_ppo.forward(llama(tok), None, seq, torch.ones_like(seq), 3).logp
    assert (sampled - pi).abs().max() > 0.1


def test_a_policy_whose_logits_forward_cannot_reproduce_is_refused(tiny, tok, tmp_path, capsys):
    # Cohere multiplies its logits by logit_scale after the output embedding. (Gemma-2's soft-capping is
    # the other case; transformers cannot run Gemma-2 with SDPA, so loading refuses it already.)
    from transformers import CohereConfig, CohereForCausalLM

    torch.manual_seed(0)
    model = CohereForCausalLM(CohereConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                           logit_scale=0.0625, bos_token_id=tok.eos_token_id,
                                           eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id))
    for p in model.parameters():  # random weights everywhere, so the logits are not all zero
        p.data.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "cohere")
    tok.save_pretrained(tmp_path / "cohere")
    argv = tiny_args(tiny, tmp_path / "run", "--steps", "1")
    argv[argv.index("--policy") + 1] = str(tmp_path / "cohere")
    with pytest.raises(SystemExit) as e:
        abc_ppo.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "transforms its logits after the output embedding" in err


def test_score_eos_with_an_rm_of_its_own_tokenizer_warns(tiny, encoder_dir, tmp_path, capsys):
    argv = tiny_args(tiny, tmp_path, "--steps", "1", "--score_eos", "1")
    argv[argv.index("--reward_model") + 1] = encoder_dir
    abc_ppo.main(argv)
    assert "warning: --score_eos 1 has no effect" in capsys.readouterr().err
