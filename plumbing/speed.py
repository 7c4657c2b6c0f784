"""Speed: bfloat16 autocast on a GPU, two CPU settings for the PPO update's memory, and a fused GELU.

Timings and the reasoning behind them: docs/speed.md.
"""
import ctypes
import ctypes.util

import torch


def tune(policy, ref):
    """What abc_ppo.main sets once its models are loaded: keep freed memory, a sparse gradient for a tied
    embedding, and the one-kernel GELU, in the policy and the reference alike, so that at step 0
    log p - log p_ref is exactly 0."""
    keep_freed_memory()
    sparse_embedding_grad(policy)
    for model in (policy, ref):
        fused_gelu(model)


def bf16_autocast(device, enabled):
    """--bf16: bfloat16 autocast for the policy's passes; weights and Adam stay float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def keep_freed_memory():
    """Keep freed memory in the process instead of handing it back to the OS.

    Every PPO update allocates fresh gradients (0.5 GB for GPT-2 124M; zero_grad sets them to
    None) and frees them before the next one. glibc serves blocks over 32 MB with mmap and unmaps
    them when freed, and gives a freed heap top back too, so each update touched all its gradient
    pages anew: ~120k page faults, each a kernel zero-fill of 4 KB, about half of a GPT-2 124M
    backward on 2 cores. With mmap off and no trimming, the next update reuses the same pages.
    Returns False where libc has no mallopt (macOS, Windows, musl): nothing changes there."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


def sparse_embedding_grad(policy):
    """Let a tied input embedding (GPT-2's) return a sparse gradient: only the rows of the tokens in
    the mini-batch. By default its backward zero-fills a dense vocab x width tensor (50257 x 768,
    154 MB) to scatter a few rows into, then adds all of it to the vocabulary head's gradient, the
    same weight's other use. The sparse rows are added into that dense gradient instead, so the
    optimizer still sees a dense gradient. Untied embeddings keep dense gradients: fused Adam takes
    no sparse ones."""
    emb = policy.get_input_embeddings()
    emb.sparse = emb.weight is policy.get_output_embeddings().weight


def fused_gelu(model):
    """Swap GPT-2's GELU, written out as eight elementwise ops (transformers' NewGELUActivation), for
    PyTorch's one-kernel tanh GELU, the same formula
        gelu(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
    up to float rounding. In a small model's PPO update those eight ops and their backward are a
    large share of the work (a third of the mini preset's update at 110 tokens). Returns how many
    activations were swapped; a model without NewGELU is left as it is."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(parent, name, GELUTanh())
                swapped += 1
    return swapped
