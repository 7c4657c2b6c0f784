"""Reward schemes: turn one reward-model score per completion into per-token rewards.

Every function is pure tensor code and returns float rewards r of shape [B, T] with
    r[b, t] = 0 where mask[b, t] = 0,   and   sum_t r[b, t] = score[b]   (red: score[b] - s_0[b]).
`mask` is 1 on real completion tokens and 0 on padding or on anything after the end
of the completion. Each function takes only the signals it needs (score, mask, attention,
beta, prefix_scores, policy_attention); abc_ppo.per_token_rewards calls the chosen one.
"""
import torch


def _last_token(mask):
    """One-hot of the last real token of each row: [B, T] -> [B, T]."""
    T = mask.shape[1]
    pos = torch.arange(T, device=mask.device)
    last = (mask.long() * pos).argmax(dim=1)  # [B] largest index with mask 1
    return torch.nn.functional.one_hot(last, T).to(torch.float32) * mask


def _check(score, mask):
    if score.dim() != 1 or mask.dim() != 2 or score.shape[0] != mask.shape[0]:
        raise ValueError(f"expected score [B] and mask [B, T], got {tuple(score.shape)} and {tuple(mask.shape)}")
    if not bool((mask.sum(1) > 0).all()):
        raise ValueError("every row of mask needs at least one completion token")


def sparse(score, mask):
    """Classic RLHF: the whole score on the last completion token.
        r_t = score * [t = last]
    """
    _check(score, mask)
    return score.float()[:, None] * _last_token(mask)


def uniform(score, mask):
    """The score split evenly over the n completion tokens.
        r_t = score / n
    """
    _check(score, mask)
    m = mask.float()
    return score.float()[:, None] * m / m.sum(1, keepdim=True)


def abc(score, attention, mask, beta):
    """Attention Based Credit (Chan et al., 2024).
    `attention` [B, T] is the reward model's last-layer attention, averaged over heads,
    from the position where the score is read to each completion token. Renormalised
    over the completion tokens only,
        a_t = attention_t * mask_t / sum_s attention_s * mask_s,
    the score is spread as
        r_t = beta * score * a_t + (1 - beta) * score * [t = last].
    beta = 0 is `sparse`; beta = 1 puts all credit where the reward model looked.
    """
    _check(score, mask)
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if attention.shape != mask.shape:
        raise ValueError(f"attention {tuple(attention.shape)} must match mask {tuple(mask.shape)}")
    a = attention.float().clamp(min=0) * mask.float()
    total = a.sum(1, keepdim=True)
    # A row with no attention mass at all (possible only in degenerate models) falls back to uniform.
    a = torch.where(total > 0, a / total.clamp(min=1e-30), mask.float() / mask.float().sum(1, keepdim=True))
    s = score.float()[:, None]
    return beta * s * a + (1.0 - beta) * s * _last_token(mask)


def red(prefix_scores, mask):
    """Reward redistribution (RED, Li et al. 2024): each token earns what it adds to the score.
    `prefix_scores` [B, T+1] holds s_0, the RM score at the last prompt token, then s_t, the
    score read at completion token t (one RM forward gives all of them). Then
        r_t = s_t - s_{t-1},   and the sum telescopes:  sum_t r_t = s_last - s_0 = score - s_0.
    So rows sum to score - s_0, not to score, and credit can be negative inside a positive
    completion: a token that lowers the score is penalised.
    """
    if prefix_scores.shape != (mask.shape[0], mask.shape[1] + 1):
        raise ValueError(f"prefix_scores {tuple(prefix_scores.shape)} must be [B, T+1] for mask {tuple(mask.shape)}")
    _check(prefix_scores[:, 0], mask)
    s = prefix_scores.float()
    return (s[:, 1:] - s[:, :-1]) * mask.float()


def abcd(score, policy_attention, mask, beta):
    """ABC-D, the paper's Figure 3 ablation: `abc` with the *policy's* last-layer attention, as the
    authors read it during generation. `policy_attention` [B, T, T] holds A[q, j], the head-averaged
    attention from completion token q (a query) to completion token j. In generation, completion
    token q is fed in only to produce token q+1, so the final token is never a query: with
    n real tokens the queries are q = 0 .. n-2. Each column is averaged over the later queries,
        c_j = mean_{q = j .. n-2} A[q, j],
    and, as in the authors' code, the map is shifted right by one, so a token is credited with
    the attention paid to the position that produced it, and token 0 gets none:
        a_0 = 0,   a_t = c_{t-1} (renormalised over the completion),
        r_t = beta * score * a_t + (1 - beta) * score * [t = last].
    """
    if policy_attention.shape != (*mask.shape, mask.shape[1]):
        raise ValueError(f"policy_attention {tuple(policy_attention.shape)} must be [B, T, T] for mask {tuple(mask.shape)}")
    m = mask.float()
    query = torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], 1)  # [B, T]: q is a query iff token q+1 is real
    A = policy_attention.float() * query[:, :, None]  # [B, T, T], rows of non-queries zeroed
    later = torch.tril(torch.ones_like(A[0]))  # [T, T]: 1 where q >= j (causal)
    count = torch.einsum("bq,qj->bj", query, later)  # [B, T]: queries at or after each column
    c = A.sum(1) / count.clamp(min=1)  # [B, T]
    a = torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], 1)  # shift right by one
    return abc(score, a, mask, beta)


REWARDS = {"sparse": sparse, "uniform": uniform, "abc": abc, "red": red, "abcd": abcd}
