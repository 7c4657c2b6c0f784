"""The attribution estimators that a scheme's formula in reward.py calls: the batched reward-model passes
behind Shapley credit (every coalition of a completion, or sampled orders) and behind integrated gradients.
"""
import math

import torch

from plumbing.models import last_index, logit_score, positions


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
        L = int(keep[i:i + chunk].sum(1).max())
        x, kept = ids[i:i + chunk, :L], keep[i:i + chunk, :L]  # [n, L]
        h = rm.base_model(input_ids=x, attention_mask=kept, position_ids=positions(kept)).last_hidden_state  # [n, L, H]
        out.append(logit_score(rm.score(h[torch.arange(len(x)), last_index(kept)])))  # the head on the read token only
    return torch.cat(out)


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
    owner = torch.cat([torch.full((len(k),), b, dtype=torch.long) for b, k in enumerate(keeps)]).to(seq.device)
    v_scored = kept_scores(rm, seq[owner], torch.cat(keeps).to(seq.device), chunk).float().cpu()  # each coalition's row
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
    return phi.to(seq.device), v_empty.to(seq.device), len(owner)


def integrated_gradients(rm, seq, prompt_mask, rm_mask, steps=16, chunk_tokens=8192):
    """Each completion token's integrated gradient (Sundararajan, Taly, Yan 2017; the Aumann-Shapley
    value of the game in which token t's input embedding e_t is scaled to alpha * e_t, baseline b = 0):
        phi_t = e_t . (1/m) sum_{k=1..m} grad_{e_t} s(alpha_k),   alpha_k = (k - 1/2) / m   (midpoint rule)
    where s(alpha) is the decoder RM's score, read at the last token it reads, with every completion token's
    embedding scaled by alpha; the prompt's embeddings and all position embeddings stay as they are.
    v_0 = s(0) is the score with the completion's embeddings zeroed. m = 1 is the one-backward Taylor
    estimate, phi_t = e_t . grad s(1/2). Completeness, sum_t phi_t = s(1) - v_0, holds as m grows; what the
    rule misses is left to the caller (reward.ig). All m points of the batch go through the RM together,
    in chunks of about chunk_tokens tokens, with gradients for the input embeddings only.
    seq [B, P+G] (prompt left-padded), prompt_mask [B, P], rm_mask [B, G] (the tokens the RM reads).
    Returns phi [B, G], v_0 [B] and the number of rows the RM ran (B m with a backward, and B)."""
    B, P = prompt_mask.shape
    attn_mask = torch.cat([prompt_mask, rm_mask], 1)  # [B, L]
    position_ids, last = positions(attn_mask), last_index(attn_mask)  # [B, L], [B]
    scaled = torch.cat([torch.zeros_like(prompt_mask), rm_mask], 1).float()[..., None]  # [B, L, 1]: the completion's
    embeds = rm.get_input_embeddings()(seq).detach().float()  # [B, L, H] e, before the position embeddings

    def scores(x, rows):  # the RM's score of input embeddings x [n, L, H] for batch rows `rows` [n]
        h = rm.base_model(inputs_embeds=x, attention_mask=attn_mask[rows], position_ids=position_ids[rows]).last_hidden_state
        return logit_score(rm.score(h[torch.arange(len(rows)), last[rows]]))  # [n]

    with torch.no_grad():
        v_zero = scores(embeds * (1 - scaled), torch.arange(B, device=seq.device))  # [B]
    alphas = (torch.arange(steps, dtype=torch.float32, device=seq.device) + 0.5) / steps  # [m]
    rows = torch.arange(B, device=seq.device).repeat_interleave(steps)  # [B m]: row b's m points together
    alpha = alphas.repeat(B)[:, None, None]  # [B m, 1, 1]
    grads = torch.zeros_like(embeds)  # [B, L, H]: the sum over the m points
    n = max(1, chunk_tokens // seq.shape[1])
    with torch.enable_grad():  # experience() runs under no_grad; the RM's weights stay frozen
        for i in range(0, len(rows), n):
            r, a = rows[i:i + n], alpha[i:i + n]
            x = (embeds[r] * (1 - scaled[r] + a * scaled[r])).requires_grad_(True)  # b + alpha (e - b) on the completion
            (grad,) = torch.autograd.grad(scores(x, r).sum(), x)  # rows are independent: the sum's gradient is each row's
            grads.index_add_(0, r, grad)
    phi = ((embeds * grads / steps).sum(-1) * scaled[..., 0])[:, P:]  # [B, G]
    return phi.detach(), v_zero.float(), B * steps + B
