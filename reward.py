"""The reward side of RLHF: the schemes that spread a reward model's one score over the completion tokens.

A reward model (RM) reads prompt + completion and returns one score s. Each scheme below turns it into a
per-token reward r [B, T] over the T completion columns, with
    r[b, t] = 0 where mask[b, t] = 0,   and   sum_t r[b, t] = score[b]   (red: score[b] - s_0[b]).
`mask` [B, T] is 1 on real completion tokens and 0 on padding or after the completion's end.

Read in order: the schemes, each with its formula; `per_token_rewards`, the one place that picks a scheme
by its --reward name; `score`, the RM's one forward pass that gives the score and every signal the free
schemes read. What a first reading may skip lives in plumbing/: the attention-row kernel (attention.py),
the Shapley coalitions and the integrated gradients' passes (estimators.py), an RM with a tokenizer of its own (retokenize.py).
"""
import torch
import torch.nn.functional as F

from plumbing import estimators, retokenize
from plumbing.attention import attention_paid, attention_row, attention_rows
from plumbing.models import is_decoder, last_index, logit_score, positions


# The schemes -----------------------------------------------------------------------------------------
def last_token(mask):
    """One-hot of each row's last real token: [B, T] -> [B, T]."""
    return F.one_hot(last_index(mask), mask.shape[1]).float() * mask


def sparse(score, mask):
    """Classic RLHF: the whole score on the last completion token.
        r_t = score * [t = last]
    """
    return score.float()[:, None] * last_token(mask)


def uniform(score, mask):
    """The score split evenly over the n completion tokens.
        r_t = score / n
    """
    return score.float()[:, None] * mask / mask.sum(1, keepdim=True)


def abc(score, attention, mask, beta):
    """Attention Based Credit (Chan et al., 2024). `attention` [B, T] is the RM's last-layer attention,
    averaged over heads, from the position where the score is read to each completion token.
    Renormalised over the completion tokens,
        a_t = attention_t * mask_t / sum_j attention_j * mask_j,
    the score is spread as
        r_t = beta * score * a_t + (1 - beta) * score * [t = last].
    beta = 0 is `sparse`; beta = 1 puts all credit where the RM looked. Every token's credit has the
    score's sign: none is ever negative inside a positive completion.
    """
    a = attention.float().clamp(min=0) * mask
    total = a.sum(1, keepdim=True)
    # A row with no attention mass at all (possible only in degenerate models) falls back to uniform.
    a = torch.where(total > 0, a / total.clamp(min=1e-30), mask / mask.sum(1, keepdim=True))
    return beta * score.float()[:, None] * a + (1 - beta) * sparse(score, mask)


def red(prefix_scores, mask):
    """Reward redistribution (RED, Li et al. 2024): each token earns what it adds to the score.
    `prefix_scores` [B, T+1] holds s_0, the RM's score read at the last prompt token, then s_t, the
    score read at completion token t (the same RM pass gives all of them). Then
        r_t = s_t - s_{t-1},   which telescopes:  sum_t r_t = score - s_0.
    Credit can be negative inside a positive completion: a token that lowers the score is penalised.
    """
    s = prefix_scores.float()
    return (s[:, 1:] - s[:, :-1]) * mask


def abcd(score, policy_attention, mask, beta):
    """ABC-D, the paper's Figure 3 ablation: `abc` with the *policy's* last-layer attention, as the authors
    read it during generation. `policy_attention` [B, T, T] holds A[q, j], the head-averaged attention
    from completion token q to completion token j. Token q is fed in only to produce token q+1, so the
    final token is never a query: with n real tokens the queries are q = 0 .. n-2. Each column is
    averaged over the later queries, and, as in the authors' code, shifted right by one, so that a token
    is credited with the attention paid to the position that produced it (attention_paid):
        c_j = mean_{q = j .. n-2} A[q, j],   a_0 = 0,   a_t = c_{t-1},   then `abc` with a.
    """
    return abc(score, attention_paid(policy_attention, mask), mask, beta)


def shapley(score, phi, v_empty, mask, beta):
    """Shapley credit (SCAR, Cao et al. 2025). phi [B, T] holds each completion token's Shapley value in
    the game v(S) = the RM's score of the prompt followed by the completion tokens in S
    (estimators.shapley_values), which sums to score - v(empty); v(empty) [B] is the prompt's own score.
    That remainder and the sparse share go to the last token, so that rows sum to the score:
        r_t = beta * (phi_t + v(empty) * [t = last]) + (1 - beta) * score * [t = last].
    Credit can be negative, as in RED.
    """
    return beta * (phi.float() * mask + v_empty.float()[:, None] * last_token(mask)) + (1 - beta) * sparse(score, mask)


def ig(score, phi, v_zero, mask, beta):
    """Integrated-gradients credit: phi [B, T] holds each completion token's integrated gradient of the RM's
    score with respect to its input embedding, from the baseline 0 (estimators.integrated_gradients), the
    continuous counterpart of `shapley`'s phi; v_zero [B] is the score with the completion's embeddings
    zeroed. The m-point rule misses eps = score - v_zero - sum_t phi_t; it goes to the last token with
    v_zero, so that rows sum to the score:
        r_t = beta * (phi_t + (v_zero + eps) * [t = last]) + (1 - beta) * score * [t = last].
    Signed, as shapley's, at m forward and m backward RM passes instead of thousands of coalitions.
    """
    phi = phi.float() * mask
    eps = score.float() - v_zero.float() - phi.sum(1)  # [B]
    return beta * (phi + (v_zero.float() + eps)[:, None] * last_token(mask)) + (1 - beta) * sparse(score, mask)


# The dispatch ----------------------------------------------------------------------------------------
SCHEMES = ("sparse", "uniform", "abc", "red", "abcd", "shapley", "ig")  # --reward's choices
READS_POLICY_ATTENTION = ("abcd",)  # the schemes whose credit needs the policy's attention
USES_BETA = ("abc", "abcd", "shapley", "ig")  # the schemes that blend their credit with sparse by --beta


def per_token_rewards(args, models, seq, prompt_mask, comp_mask, policy_attention=None, generator=None):
    """The RM's score [B], the credit r_t [B, G] of the scheme that args.reward names (before the KL
    penalty), and how many sequences the RM scored: the one place where the schemes differ.
    args: the flags reward, beta, score_eos, shapley_units, shapley_perms, ig_steps. models: tok, rm and rm_tok
    (abc_ppo.Models). policy_attention [B, G, G]: the policy's, for READS_POLICY_ATTENTION. generator:
    for a scheme that samples (shapley's orders)."""
    s, attention, prefix_scores = score_completions(models.rm, models.rm_tok, models.tok, seq, prompt_mask, comp_mask,
                                                    args.score_eos)  # [B], [B, G], [B, G+1]
    mask, rm_rows = comp_mask.float(), len(seq)
    if args.reward == "sparse":
        credit = sparse(s, mask)  # all on the last token
    elif args.reward == "uniform":
        credit = uniform(s, mask)  # score / n on each token
    elif args.reward == "abc":
        credit = abc(s, attention, mask, args.beta)  # by the RM's attention
    elif args.reward == "red":
        credit = red(prefix_scores, mask)  # s_t - s_{t-1}
    elif args.reward == "abcd":
        credit = abcd(s, policy_attention, mask, args.beta)  # by the policy's attention
    elif args.reward == "shapley":  # by each token's Shapley value; the RM scores every coalition (or 2K orders)
        rm_mask = read_mask(models.tok, seq, prompt_mask.shape[1], comp_mask, args.score_eos)
        phi, v_empty, coalitions = estimators.shapley_values(models.rm, seq, prompt_mask, rm_mask, s, args.shapley_units,
                                                             args.shapley_perms, generator)  # [B, G], [B]
        credit, rm_rows = shapley(s, phi, v_empty, mask, args.beta), rm_rows + coalitions
    elif args.reward == "ig":  # by each token's integrated gradient; the RM runs m points forward and backward
        rm_mask = read_mask(models.tok, seq, prompt_mask.shape[1], comp_mask, args.score_eos)
        phi, v_zero, rows = estimators.integrated_gradients(models.rm, seq, prompt_mask, rm_mask, args.ig_steps)
        credit, rm_rows = ig(s, phi, v_zero, mask, args.beta), rm_rows + rows
    else:
        raise ValueError(f"unknown reward scheme {args.reward!r}")
    return s, credit, rm_rows


# The reward model's one forward pass -----------------------------------------------------------------
@torch.no_grad()
def score(rm, seq, attn_mask):
    """Score each row at the position its RM reads, i (the last real token of a decoder, 0 for an
    encoder), and return that position's last-layer attention row:
        score = logit_1 - logit_0, read at i
        attention_j = mean over heads of softmax_j(q_i . k_j / sqrt(d))
    Works under left or right padding and with an EOS inside the completion. A decoder's score head
    also runs at every position, which costs nothing and gives RED its prefix scores.
    Returns score [B], attention [B, L] and prefix scores [B, L] (None for an encoder)."""
    if not is_decoder(rm):
        with attention_rows(rm, torch.zeros_like(seq[:, :1])) as rows:
            out = rm(input_ids=seq, attention_mask=attn_mask)
        return logit_score(out.logits), attention_row(rows), None
    last = last_index(attn_mask)  # [B]
    with attention_rows(rm, last[:, None]) as rows:
        out = rm.base_model(input_ids=seq, attention_mask=attn_mask, position_ids=positions(attn_mask))
    scores = logit_score(rm.score(out.last_hidden_state))  # [B, L]
    return scores[torch.arange(len(last)), last], attention_row(rows), scores


def score_completions(rm, rm_tok, tok, seq, prompt_mask, comp_mask, score_eos):
    """`score` on prompt + completion: the score [B], the RM's attention over the completion [B, G] and
    RED's prefix scores [B, G+1] (None for an encoder RM). On the policy's token ids when the RM shares
    its tokenizer (rm_tok None), else through text (plumbing/retokenize.py, which drops EOS). With
    score_eos 0 a final EOS stays the policy's action, but the RM scores the text before it."""
    if rm_tok is not None:
        ids, am, W = retokenize.to_rm_tokens(rm_tok, tok, seq, prompt_mask, comp_mask)
        s, attention, scores = score(rm, ids, am)
        return s, *retokenize.to_policy_tokens(attention, scores, am, W, comp_mask)
    P = prompt_mask.shape[1]
    rm_mask = read_mask(tok, seq, P, comp_mask, score_eos)  # [B, G]
    s, attention, scores = score(rm, seq, torch.cat([prompt_mask, rm_mask], 1))
    prefix = scores[:, P - 1:]  # [B, G+1]
    # An EOS the RM does not read adds nothing to RED: its prefix score is the one before it.
    hidden = (comp_mask - rm_mask).bool()
    prefix = torch.cat([prefix[:, :1], torch.where(hidden, prefix[:, :-1], prefix[:, 1:])], 1)
    return s, attention[:, P:] * rm_mask, prefix


def read_mask(tok, seq, P, comp_mask, score_eos):
    """The completion tokens the RM reads: comp_mask less a final EOS when score_eos is 0. [B, G]"""
    return comp_mask if score_eos else comp_mask * (seq[:, P:] != tok.eos_token_id)
