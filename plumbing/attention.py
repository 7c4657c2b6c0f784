"""The attention-row kernel: rows of a layer's attention, read without building the attention map.

reward.score (ABC) and abc_ppo.forward (ABC-D) read them through `attention_rows`; the comment below says
how, and docs/speed.md what it saves. Then the rows' helpers: `attention_row`, `completion_attention`,
`attention_paid`.
"""
import contextlib
import threading
from types import SimpleNamespace

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


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
# pass calls attention in the thread that runs it and two threads may score at once (tools/verl_reward.py).
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


def attention_row(rows, layer=-1):
    """One layer's (the last by default) attention row, averaged over heads, from `attention_rows`
    asked for one query position per batch row: [B, L]."""
    return rows[layer][:, 0]


def completion_attention(rows, P):
    """ABC-D's signal, from `attention_rows` of a policy pass asked for the query rows P, P+1, ..., the
    completion tokens: the policy's last-layer attention among the completion tokens, averaged over
    heads, A[q, j] from completion token q to token j: [B, G, G]. Causal attention makes it equal to
    the attention the policy paid while generating."""
    return rows[-1][:, :, P:]


def attention_paid(policy_attention, mask):
    """ABC-D's row (reward.abcd has the formula): from A [B, T, T] among the completion tokens, each column's
    mean over the later queries q = j .. n-2 (the final token is never a query while generating), shifted
    right by one, so that token t gets c_{t-1} and token 0 none: [B, T]."""
    query = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1).float()  # [B, T]: q is a query iff q+1 is real
    A = policy_attention.float() * query[:, :, None]  # [B, T, T]
    count = torch.einsum("bq,qj->bj", query, torch.tril(torch.ones_like(A[0])))  # [B, T]: queries q >= j
    c = A.sum(1) / count.clamp(min=1)  # [B, T]
    return torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], 1)
