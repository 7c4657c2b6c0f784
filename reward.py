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
import math
import threading
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


# Inside `attention_rows`: what to compute, and the attention calls seen so far. Per thread, since a
# pass calls attention in the thread that runs it and two threads may score at once (verl_reward.py).
_local = threading.local()


def sdpa_rows(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """KERNEL: transformers' SDPA attention, unchanged; inside `attention_rows` the last layer's call
    (every layer's, with every_layer) also computes the rows asked for."""
    r = getattr(_local, "reading", None)
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
    kernel, layers = model.config._attn_implementation, model.config.num_hidden_layers
    if kernel != KERNEL:
        model.set_attn_implementation(KERNEL)
    _local.reading = r = SimpleNamespace(i=i, every_layer=every_layer, layers=layers, calls=0, rows=[])
    try:
        yield r.rows
    finally:
        _local.reading = None
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


@torch.no_grad()
def kept_scores(rm, ids, keep, chunk=512):
    """The decoder RM's score of each row with only its kept tokens, in their order: the others are
    deleted and the rest close up (what occlusion does to one token, and SHAP to a coalition).
    ids, keep [N, L], keep 1 on the tokens to keep (padding is never kept). Rows are scored in
    batches of `chunk`, each cut to its longest kept row. Returns [N]."""
    order = torch.sort((keep == 0).to(torch.int8), dim=1, stable=True).indices  # kept tokens first, in order
    ids, keep = ids.gather(1, order), keep.gather(1, order)
    out = []
    for i in range(0, len(ids), chunk):
        m = keep[i:i + chunk]
        L = int(m.sum(1).max())
        x, m = ids[i:i + chunk, :L], m[:, :L]
        h = rm.base_model(input_ids=x, attention_mask=m, position_ids=positions(m)).last_hidden_state  # [n, L, H]
        out.append(logit_score(rm.score(h[torch.arange(len(x)), last_index(m)])))  # the head on the read token only
    return torch.cat(out)


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


def shapley(score, phi, v_empty, mask, beta):
    """Shapley credit (SCAR, Cao et al. 2025). phi [B, T] holds each completion token's Shapley value
    in the game v(S) = the RM's score of the prompt and the completion tokens in S (shapley_values),
    which sums to score - v(empty); v(empty) [B] is the prompt's own score. That remainder and the
    sparse share go to the last token, so that rows sum to the score, as for abc:
        r_t = beta * (phi_t + v(empty) * [t = last]) + (1 - beta) * score * [t = last].
    Credit can be negative, as in RED: a token that lowers the score is penalised.
    """
    _check(score, mask)
    if phi.shape != mask.shape:
        raise ValueError(f"phi {tuple(phi.shape)} must match mask {tuple(mask.shape)}")
    last = _last_token(mask)
    return beta * (phi.float() * mask.float() + v_empty.float()[:, None] * last) + (1.0 - beta) * score.float()[:, None] * last


EXACT_UNITS = 10  # up to here every coalition is scored: 2^10 - 1 RM rows for a completion of 10 units


def units(n, max_units):
    """The players of a completion's game, as the unit index of each of its n tokens [n]: the tokens
    themselves while n <= max_units, else max_units contiguous spans of n // max_units or one more
    tokens (SCAR's spans, cut by count, not by sentence: our completions are cut mid-sentence)."""
    return torch.arange(n) * min(max_units, n) // max(n, 1)


@torch.no_grad()
def shapley_values(rm, seq, prompt_mask, rm_mask, score, max_units=16, perms=8, generator=None, chunk=512):
    """Each completion token's Shapley value in the game v(S) = the RM's score of the prompt followed by
    the units in S, in their order, the other units deleted (kept_scores); v(all) = score, v(empty) = the
    prompt's score. For unit i of n,
        phi_i = sum over S without i of |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S)),
    exactly, over all 2^n coalitions, for n <= EXACT_UNITS; above, the mean over `perms` random orders,
    each with its reverse (antithetic: a unit early in one is late in the other), of v(units up to and
    including i) - v(units before i). Along any order these telescope to v(all) - v(empty), so
    sum_i phi_i = score - v(empty) exactly, for any number of orders. A span's value is split evenly over
    its tokens: the game cannot tell them apart, and by Shapley's symmetry axiom players it cannot tell
    apart share alike. All coalitions of the batch go through the RM together, in chunks.
    seq [B, P+G] (prompt left-padded), prompt_mask [B, P], rm_mask [B, G] (the tokens the RM reads),
    score [B]. Returns phi [B, G], v(empty) [B] and the number of coalitions scored."""
    B, P = prompt_mask.shape
    keeps, plans = [], []
    for b in range(B):  # per row: its coalitions over units, and how they make phi
        tokens = rm_mask[b].nonzero().squeeze(1).cpu()  # [n_tok] completion columns the RM reads
        u = units(len(tokens), max_units)
        n = int(u.max()) + 1 if len(tokens) else 0
        orders = None
        if n <= EXACT_UNITS:  # coalition c holds unit i iff bit i of c is set; all but the full set
            coalitions = (torch.arange(2 ** n - 1)[:, None] >> torch.arange(n)) & 1  # [2^n - 1, n]
        else:
            orders = torch.stack([torch.randperm(n, generator=generator) for _ in range(perms)])
            orders = torch.cat([orders, orders.flip(1)])  # [2K, n], each order beside its reverse
            place = orders.argsort(1)  # [2K, n]: where each unit comes in each order
            coalitions = (place[:, None, :] < torch.arange(n)[None, :, None]).flatten(0, 1).long()  # [2K*n, n]: the first j
        if n:  # each distinct coalition scored once (n = 0: an EOS-only completion the RM does not read)
            coalitions, index = coalitions.unique(dim=0, return_inverse=True)
        else:
            index = torch.zeros(0, dtype=torch.long)
        comp = torch.zeros(len(coalitions), rm_mask.shape[1], dtype=prompt_mask.dtype)
        comp[:, tokens] = coalitions[:, u].to(comp)  # a unit's coalition membership -> its tokens
        keeps.append(torch.cat([prompt_mask[b].cpu().expand(len(comp), -1), comp], 1))
        plans.append((tokens, u, n, index, orders))
    rows = torch.cat([torch.full((len(k),), b, dtype=torch.long) for b, k in enumerate(keeps)]).to(seq.device)
    v_scored = kept_scores(rm, seq[rows], torch.cat(keeps).to(seq.device), chunk).float().cpu()
    phi, v_empty, start = torch.zeros(rm_mask.shape), score.float().cpu().clone(), 0
    for b, (tokens, u, n, index, orders) in enumerate(plans):
        v = v_scored[start:start + int(index.max()) + 1 if len(index) else start]
        start += len(v)
        if n == 0:  # nothing the RM reads: the score is the prompt's own
            continue
        s = score[b].float().cpu()
        if orders is None:
            v = torch.cat([v[index], s[None]])  # [2^n]: v of coalition c, the full set (all bits) last
            c = torch.arange(2 ** n)
            without = (c[:, None] >> torch.arange(n)) & 1 == 0  # [2^n, n]: c lacks unit i
            size = (~without).sum(1)  # [2^n]
            k = torch.arange(n, dtype=torch.float32)
            w = (torch.lgamma(k + 1) + torch.lgamma(n - k) - math.lgamma(n + 1)).exp()  # [n]: |S|! (n-|S|-1)! / n!
            gain = v[c[:, None] | (1 << torch.arange(n))] - v[:, None]  # [2^n, n]: v(S + i) - v(S)
            phi_u = (w[size.clamp(max=n - 1)][:, None] * gain * without).sum(0)  # [n]
            v_empty[b] = v[0]
        else:
            v = torch.cat([v[index].view(len(orders), n), s.expand(len(orders), 1)], 1)  # [2K, n+1]: after 0..n units
            phi_u = torch.zeros(len(orders), n).scatter_(1, orders, v[:, 1:] - v[:, :-1]).mean(0)  # [n]
            v_empty[b] = v[0, 0]
        phi[b, tokens] = phi_u[u] / torch.bincount(u)[u]  # a span's value, split evenly over its tokens
    return phi.to(seq.device), v_empty.to(seq.device), len(rows)


REWARDS = {"sparse": sparse, "uniform": uniform, "abc": abc, "red": red, "abcd": abcd, "shapley": shapley}


def per_token_rewards(scheme, beta, score, mask, attention, prefix_scores, policy_attention, shapley_values=None):
    """The RM's credit r_t for each completion token [B, G], before the KL penalty: the only lines
    where the schemes' rewards differ. shapley_values: (phi, v_empty) from shapley_values, for shapley."""
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
    if scheme == "shapley":
        return shapley(score, *shapley_values, mask, beta)  # by each token's Shapley value
    raise ValueError(f"unknown reward scheme {scheme!r}")
