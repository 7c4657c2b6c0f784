"""Where one PPO update of the mini policy spends its time: torch.profiler over ppo_update's own calls.

    python bench/bench_profile.py [--mini_dir DIR] [--tokens 5 12] [--updates 64]

One sequence of PROMPT + COMPLETION tokens (mini-batch 1, as the paper), `--updates` times:
forward with the PPO loss, backward, fused Adam, exactly as ppo_update runs them. Prints the wall
time per update, how much of it the profiled operators account for (the rest is Python: module
calls, argument handling, the autograd engine's bookkeeping), how many operators one update
launches, and the operators that take the most time. Not collected by pytest.
"""
import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import abc_ppo  # noqa: E402
from plumbing import mini  # noqa: E402
from plumbing import speed  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mini_dir", default=mini.MINI_DIR)
    p.add_argument("--tokens", type=int, nargs=2, default=[5, 12], metavar=("PROMPT", "COMPLETION"))
    p.add_argument("--updates", type=int, default=64, help="updates profiled (after 8 of warm-up)")
    args = p.parse_args()
    from transformers import AutoModelForCausalLM

    mini.ensure(args.mini_dir)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(os.path.join(args.mini_dir, "policy"), dtype=torch.float32).eval()
    speed.keep_freed_memory()
    speed.sparse_embedding_grad(policy)
    speed.fused_gelu(policy)
    value_head = abc_ppo.ValueHead(policy.config.hidden_size)
    opt = torch.optim.Adam(list(policy.parameters()) + list(value_head.parameters()), lr=1e-4, fused=True)
    P, G = args.tokens
    seq = torch.randint(policy.config.vocab_size, (1, P + G))
    attn, mask = torch.ones_like(seq), torch.ones(1, G)
    with torch.no_grad():
        old = abc_ppo.forward(policy, value_head, seq, attn, P)
    adv, ret = torch.randn(1, G), torch.randn(1, G)

    def update():
        new = abc_ppo.forward(policy, value_head, seq, attn, P)
        loss, _ = abc_ppo.ppo_loss(new.logp, old.logp, new.values, old.values, adv, ret, mask, 0.2, 0.2, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(8):
        update()
    t0 = time.perf_counter()
    for _ in range(args.updates):
        update()
    plain = (time.perf_counter() - t0) / args.updates
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.updates):
            update()
    events = prof.key_averages()
    ops = sum(e.count for e in events) / args.updates
    # Self time of every operator: their sum is the time spent inside ATen; overlapping ranges
    # (an op calling another) are counted once because self time excludes children.
    aten = sum(e.self_cpu_time_total for e in events) / 1e6 / args.updates
    print(f"mini policy, {P} + {G} tokens, {torch.get_num_threads()} thread(s): {plain * 1e3:.2f} ms per update "
          f"unprofiled; {ops:.0f} operator calls per update; operators' self time {aten * 1e3:.2f} ms "
          f"(the profiler adds its own cost per call, so read this as an upper bound)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
