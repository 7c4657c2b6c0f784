"""One PPO update of GPT-2 124M (batch 1): measured split, and this machine's floor for it.

    python bench/bench_floor.py [--tokens 24] [--completion 16] [--plain]

Times forward, backward and Adam of abc_ppo.py's update on a random-weight GPT-2 124M, with
plumbing/speed.py's settings as abc_ppo.py runs them (or without, --plain).

Measures matmul throughput (float32, the update's own shapes and a large square one) and memory
bandwidth (a large copy), then bounds one update from below:
    compute: forward + backward = 6 * params_in_matmuls * T  +  6 * vocab * width * completion FLOPs
    memory:  Adam reads param, grad, m, v and writes param, m, v: 7 * 4 bytes * params;
             the forward and backward read the weights twice and the backward writes the gradients.
Not collected by pytest.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import abc_ppo  # noqa: E402
from plumbing import speed  # noqa: E402

V, D, L = 50257, 768, 12  # GPT-2 124M
PARAMS = V * D + 1024 * D + L * (12 * D * D + 13 * D) + 2 * D  # 124.4M (tied head)
MATMUL = L * 12 * D * D  # weights used in the blocks' matmuls, once per token


def time_update(T, G, faster, repeats=10):
    """Seconds of forward (with the PPO loss), backward and Adam step, averaged after 2 warm-up updates."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    policy = GPT2LMHeadModel(GPT2Config(n_layer=L, n_embd=D, n_head=12, vocab_size=V)).eval()
    if faster:
        speed.sparse_embedding_grad(policy)
    value_head = abc_ppo.ValueHead(D)
    opt = torch.optim.Adam(list(policy.parameters()) + list(value_head.parameters()), lr=1e-5, fused=True)
    seq, P = torch.randint(V, (1, T)), T - G
    attn_mask, mask, adv, returns = torch.ones_like(seq), torch.ones(1, G), torch.randn(1, G), torch.randn(1, G)
    with torch.no_grad():
        old = abc_ppo.forward(policy, value_head, seq, attn_mask, P)
    total = dict(forward=0.0, backward=0.0, adam=0.0)
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        new = abc_ppo.forward(policy, value_head, seq, attn_mask, P)
        loss, _ = abc_ppo.ppo_loss(new.logp, old.logp, new.values, old.values, adv, returns, mask, 0.2, 0.2, 0.1)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= 2:
            for k, dt in zip(total, (t1 - t0, t2 - t1, t3 - t2)):
                total[k] += dt / repeats
    return total


def rate(fn, work, repeats=5):
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return work * repeats / (time.perf_counter() - t)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=24, help="prompt + completion tokens of the sequence")
    p.add_argument("--completion", type=int, default=16, help="tokens the vocabulary head runs on")
    p.add_argument("--plain", action="store_true", help="without plumbing/speed.py's settings, as before them")
    a = p.parse_args()
    T, G = a.tokens, a.completion
    if not a.plain:
        speed.keep_freed_memory()
    split = time_update(T, G, faster=not a.plain)
    print(f"one update ({'plain' if a.plain else 'with plumbing/speed.py'}): "
          + "  ".join(f"{k} {v:.3f}" for k, v in split.items()) + f"  total {sum(split.values()):.3f} s")
    x, w = torch.randn(T, D), torch.randn(D, 4 * D)
    big = torch.randn(2048, 2048)
    flops_small = rate(lambda: x @ w, 2 * T * D * 4 * D, 50)
    flops_big = rate(lambda: big @ big, 2 * 2048 ** 3)
    src = torch.randn(256 * 2 ** 20 // 4)  # 256 MB
    dst = torch.empty_like(src)
    bandwidth = rate(lambda: dst.copy_(src), 2 * src.numel() * 4)  # bytes read + written
    compute = 6 * MATMUL * T + 6 * V * D * G
    memory = 7 * 4 * PARAMS + 3 * 4 * PARAMS
    print(f"threads {torch.get_num_threads()}: matmul {flops_big / 1e9:.0f} GFLOP/s (2048^2), "
          f"{flops_small / 1e9:.0f} GFLOP/s ([{T}, {D}] x [{D}, {4 * D}]); copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"one update, {T} tokens ({G} through the vocabulary head), {PARAMS / 1e6:.1f}M parameters:")
    print(f"  compute {compute / 1e9:.1f} GFLOP -> {compute / flops_big:.3f} s at the large-matmul rate, "
          f"{compute / flops_small:.3f} s at the update's own shape")
    print(f"  memory  {memory / 1e9:.2f} GB (Adam {7 * 4 * PARAMS / 1e9:.2f}) -> {memory / bandwidth:.3f} s")
    floor = max(compute / flops_big, memory / bandwidth)
    print(f"  floor   {floor:.3f} s per update (the larger of the two); 64 updates per PPO step: {64 * floor:.1f} s")
