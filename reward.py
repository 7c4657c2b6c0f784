"""The reward side of RLHF: what the reward model (RM) says about a completion, and the schemes
that turn its one score into per-token rewards.

One RM forward pass gives everything every scheme needs (`score`, `score_completions`): the score,
read at the last real token; that token's last-layer attention over the completion (ABC); and the
score read at every prefix (RED). The schemes then return float rewards r [B, T] with
    r[b, t] = 0 where mask[b, t] = 0,   and   sum_t r[b, t] = score[b]   (red: score[b] - s_0[b]).
`mask` is 1 on real completion tokens and 0 on padding or on anything after the end of the
completion. `per_token_rewards` picks the scheme that --reward names.
"""
import contextlib
from types import SimpleNamespace

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import retokenize


# The reward model's signals: one forward pass -------------------------------------------------------
def positions(mask):
    """Position ids that ignore padding, so a left-padded row is read as if unpadded: [B, L]."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def is_decoder(rm):
    """Decoder classifiers (GPT-2, Llama, ...) put a `score` head on every position and read the
    last token; encoder classifiers (BERT, DistilBERT, ...) read position 0."""
    return getattr(rm, "score", None) is not None


def last_index(attn_mask):
    """Index of each row's last real token, found from the mask, not from pad ids (GPT-2 pads
    with EOS): [B, L] -> [B]."""
    return (attn_mask * torch.arange(attn_mask.shape[1], device=attn_mask.device)).argmax(1)


def attention_row(rows, layer=-1):
    """One layer's (the last by default) attention row, averaged over heads, from `attention_rows`
    asked for one query position per batch row: [B, L]."""
    return rows[layer][:, 0]


def logit_score(logits):
    """The paper's score: logit_1 - logit_0 for two labels, the single logit for one: [..., C] -> [...]."""
    logits = logits.float()
    return logits[..., 1] - logits[..., 0] if logits.shape[-1] == 2 else logits[..., 0]


# Reading attention without the attention map ---------------------------------------------------------
# ABC needs one row of the RM's last-layer attention, ABC-D the policy's last-layer rows among the
# completion tokens. Eager attention gives them only by building every layer's full [B, heads, L, L]
# map: memory quadratic in L, and no fast kernel. Instead every model runs KERNEL, PyTorch's SDPA
# (which itself takes a flash or memory-efficient kernel where the device has one), and inside
# `attention_rows` the last layer's call also computes the rows asked for from that layer's query
# and keys, then lets them go. It is an attention function registered with transformers, not a patch
# on a model class, because Hugging Face models hand every layer's query and keys (after RoPE, before
# the grouped-query repeat) to that one function: one place, any decoder. Its own name leaves a
# plain "sdpa" model elsewhere in the process alone.
KERNEL = "sdpa_rows"


def softmax_rows(query, key, mask, scaling, causal, i):
    """Head-averaged attention rows of one layer at query positions i [B, R] (or [R] for every row):
        A[b, r, j] = mean over heads of softmax_j(scaling * q_{i[b, r]} . k_j + mask)      [B, R, L]
    from query [B, heads, L, d] and key [B, kv heads, L, d], R x L scores per head, never the L x L
    map. mask is what SDPA gets: [B or 1, 1, L, L] boolean (True: may attend), or None, which means
    causal when `causal`, else no mask."""
    (B, H, Lq, d), (Hkv, Lk) = query.shape, key.shape[1:3]
    i = i.expand(B, -1)  # [B, R]
    b = torch.arange(B, device=i.device)[:, None]  # [B, 1]
    with torch.autocast(query.device.type, enabled=False):  # float32 rows, also under --bf16
        q = query[b, :, i].float().unflatten(2, (Hkv, H // Hkv))  # [B, R, kv heads, group, d]: GQA
        s = torch.einsum("brgnd,bgkd->brgnk", q, key.float()).flatten(2, 3) * (scaling or d ** -0.5)  # [B, R, H, Lk]
    if mask is None and causal:  # key j is seen from query i iff j <= i
        mask = torch.arange(Lk, device=i.device) <= i[:, :, None, None] + (Lk - Lq)  # [B, R, 1, Lk]
    elif mask is not None:
        mask = mask.expand(B, -1, -1, -1)[b, :, i]  # [B, R, 1, Lk]: the mask's rows i
    if mask is not None:  # the smallest float, not -inf, as eager attention: a fully masked row stays finite
        s = s.masked_fill(~mask, torch.finfo(s.dtype).min) if mask.dtype == torch.bool else s + mask.float()
    return s.softmax(-1).mean(2)  # [B, R, Lk]


_reading = None  # inside `attention_rows`: what to compute, and the attention calls seen so far


def sdpa_rows(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """KERNEL: transformers' SDPA attention, unchanged; inside `attention_rows` the last layer's call
    (every layer's, with every_layer) also computes the rows asked for."""
    r = _reading
    if r is not None:
        r.calls += 1  # a pass calls attention once per layer, in order
        if r.every_layer or r.calls == r.layers:
            causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
            r.rows.append(softmax_rows(query, key, attention_mask, scaling, causal, r.i))
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


AttentionInterface.register(KERNEL, sdpa_rows)
AttentionMaskInterface.register(KERNEL, sdpa_mask)  # the masks SDPA gets: boolean, or None when causal alone will do


@contextlib.contextmanager
def attention_rows(model, i, every_layer=False):
    """Run the one pass inside on KERNEL, and yield a list that then holds the last layer's attention
    rows at query positions i [B, R] (or [R]), [B, R, L] (softmax_rows); every layer's with every_layer.
    A model loaded with another kernel (eager, plain sdpa) is switched to KERNEL for the pass, then back."""
    global _reading
    kernel, layers = model.config._attn_implementation, model.config.num_hidden_layers
    if kernel != KERNEL:
        model.set_attn_implementation(KERNEL)
    _reading = r = SimpleNamespace(i=i, every_layer=every_layer, layers=layers, calls=0, rows=[])
    try:
        yield r.rows
    finally:
        _reading = None
        if kernel != KERNEL:
            model.set_attn_implementation(kernel)
    if r.calls != layers:
        raise RuntimeError(f"{r.calls} attention calls through {KERNEL} for {layers} layers: run one pass, "
                           "on a model whose every layer calls its attention through transformers' AttentionInterface")


@torch.no_grad()
def score(rm, seq, attn_mask):
    """Score each row at the position its RM reads, i (the last real token of a decoder, 0 for an
    encoder), and return that position's attention row:
        score = logit_1 - logit_0, read at i
        attention_j = mean over heads of the last layer's softmax(q_i . k_j / sqrt(d))
    Works under left or right padding and with an EOS inside the completion. A decoder's score
    head also runs at every position, which costs nothing and gives RED its prefix scores.
    Returns score [B], attention [B, L] and prefix scores [B, L] (None for an encoder)."""
    if not is_decoder(rm):
        with attention_rows(rm, torch.zeros_like(seq[:, :1])) as rows:  # SDPA; the row of the last layer
            out = rm(input_ids=seq, attention_mask=attn_mask)
        return logit_score(out.logits), attention_row(rows), None
    last = last_index(attn_mask)
    with attention_rows(rm, last[:, None]) as rows:
        out = rm.base_model(input_ids=seq, attention_mask=attn_mask, position_ids=positions(attn_mask))
    scores = logit_score(rm.score(out.last_hidden_state))  # [B, L]
    return scores[torch.arange(len(last)), last], attention_row(rows), scores


def score_completions(rm, rm_tok, tok, seq, prompt_mask, comp_mask, score_eos):
    """Score, RM attention over the completion [B, G] and RED prefix scores [B, G+1] (None for an
    encoder RM): on the policy's token ids when the RM shares its tokenizer (rm_tok is None), through
    text (retokenize.py, which drops EOS) when it does not. With score_eos = 0 a final EOS stays the
    policy's action but the RM scores the text before it."""
    if rm_tok is not None:
        ids, am, W = retokenize.to_rm_tokens(rm_tok, tok, seq, prompt_mask, comp_mask)
        s, attention, scores = score(rm, ids, am)
        return s, *retokenize.to_policy_tokens(attention, scores, am, W, comp_mask)
    P = prompt_mask.shape[1]
    rm_mask = comp_mask if score_eos else comp_mask * (seq[:, P:] != tok.eos_token_id)  # [B, G]
    s, attention, scores = score(rm, seq, torch.cat([prompt_mask, rm_mask], 1))
    prefix = scores[:, P - 1:]  # [B, G+1]
    # An EOS the RM does not read adds nothing to RED: its prefix score is the one before it.
    hidden = (comp_mask - rm_mask).bool()
    prefix = torch.cat([prefix[:, :1], torch.where(hidden, prefix[:, :-1], prefix[:, 1:])], 1)
    return s, attention[:, P:] * rm_mask, prefix


def completion_attention(rows, P):
    """ABC-D's signal, from `attention_rows` of a policy pass asked for the query rows P, P+1, ..., the
    completion tokens: the policy's last-layer attention among the completion tokens, averaged over
    heads, A[q, j] from completion token q to token j: [B, G, G]. Causal attention makes it equal to
    the attention the policy paid while generating."""
    return rows[-1][:, :, P:]


# The schemes ------------------------------------------------------------------------------------
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


def per_token_rewards(scheme, beta, score, mask, attention, prefix_scores, policy_attention):
    """The RM's credit r_t for each completion token [B, G], before the KL penalty: the only lines
    where the schemes' rewards differ."""
    if scheme == "sparse":
        return sparse(score, mask)  # all on the last token
    if scheme == "uniform":
        return uniform(score, mask)  # score / n on each token
    if scheme == "abc":
        return abc(score, attention, mask, beta)  # by the RM's attention
    if scheme == "red":
        return red(prefix_scores, mask)  # s_t - s_{t-1}
    if scheme == "abcd":
        return abcd(score, policy_attention, mask, beta)  # by the policy's attention
    raise ValueError(f"unknown reward scheme {scheme!r}")
