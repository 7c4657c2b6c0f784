"""Time and memory of one reward-model pass, three ways: SDPA alone (all sparse needs), eager attention
with every layer's map (how ABC read its row before), and SDPA with the row read from the last
layer's query and keys (reward.score now).

    python bench/bench_rm.py                           # GPT-2 124M at 128, 512, 1024 tokens; Llama-shaped at 2048
    python bench/bench_rm.py --archs gpt2 --lengths 1024 --repeats 3

Not collected by pytest. Random weights, float32, batch 4, one thread. Row b of the batch has b * L/8
tokens of left padding, so every mode sees a padding mask, as in training. Each measurement runs in
a process of its own, modes alternating, so that drift in the machine's speed hits all alike and each
peak is its own: `peak` is the process's peak resident memory (getrusage ru_maxrss), `added` what
the first pass adds to the resident memory of the loaded model and inputs (the peak is reset before
the pass through /proc/self/clear_refs). The processes run with glibc's mmap threshold fixed at
128 KiB (MALLOC_MMAP_THRESHOLD_), so that every large tensor is mapped when made and unmapped when
freed: resident memory then follows the live tensors, and `added` repeats to 1 MB. Time is the process's CPU time for one pass, the least of
--passes passes: with one thread it is the work done, and it hardly moves when other jobs share the
machine, where wall time does.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reward  # noqa: E402
import plumbing.attention  # noqa: E402
import plumbing.models  # noqa: E402

MODES = ("sdpa", "eager", "rows")
B = 4
ENV = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # see the docstring


def model(arch):
    """A random-weight sequence classifier: GPT-2 124M, or a Llama of similar size (RoPE, 12 query
    heads sharing 4 key/value heads, SwiGLU, 32000 tokens; 101M parameters)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2ForSequenceClassification(GPT2Config(num_labels=2, pad_token_id=50256))
    return LlamaForSequenceClassification(LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=4, max_position_embeddings=4096, num_labels=2, pad_token_id=0))


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(arch, mode, L, passes):
    """`passes` passes in this process: {seconds, wall, peak, added (MiB, of the first pass), row}."""
    torch.set_num_threads(1)
    rm = model(arch).eval().requires_grad_(False)
    rm.set_attn_implementation("eager" if mode == "eager" else plumbing.attention.KERNEL)
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(1, 30000, (B, L), generator=g)
    mask = (torch.arange(L) >= torch.arange(B)[:, None] * (L // 8)).long()  # [B, L], left padding
    pos = plumbing.models.positions(mask)
    process_peak = peak_mb()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident memory to what is resident now
    base = rss_mb()
    cpu, wall = [], []
    for n in range(passes):
        t0, w0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            if mode == "sdpa":  # the score alone: no attention read
                s = rm.score(rm.base_model(input_ids=seq, attention_mask=mask, position_ids=pos).last_hidden_state)
            elif mode == "eager":  # every layer's [B, heads, L, L] map, then one row of the last
                out = rm.base_model(input_ids=seq, attention_mask=mask, position_ids=pos, output_attentions=True)
                s = rm.score(out.last_hidden_state)
                row = out.attentions[-1][torch.arange(B), :, L - 1].mean(1)
                del out
            else:
                s, row, _ = reward.score(rm, seq, mask)
        cpu.append(time.process_time() - t0)
        wall.append(time.perf_counter() - w0)
        if n == 0:
            added, peak = peak_mb() - base, max(process_peak, peak_mb())
    return dict(seconds=min(cpu), wall=min(wall), peak=peak, added=added, row=None if mode == "sdpa" else row.tolist())


def table(archs, lengths, repeats, passes):
    runs = [(a, L) for a in archs for L in (lengths if a == "gpt2" else [2048])]
    res = {}
    for r in range(repeats):
        for arch, L in runs:
            for mode in MODES[r % 3:] + MODES[:r % 3]:  # rotate the order between repeats
                out = subprocess.run([sys.executable, __file__, "--one", arch, mode, str(L), "--passes", str(passes)],
                                     capture_output=True, text=True, check=True, env=ENV).stdout
                res.setdefault((arch, L, mode), []).append(json.loads(out.splitlines()[-1]))
                print(arch, L, mode, {k: v for k, v in res[arch, L, mode][-1].items() if k != "row"}, file=sys.stderr,
                      flush=True)
    print(f"batch {B}, one thread, float32; {repeats} process(es) per row, {passes} passes each; CPU seconds per "
          "pass (the least), wall seconds (the least), memory in GB (the mean)")
    print("| model | tokens | mode | CPU s | wall s | peak | added by the pass | time / sdpa | added / sdpa | row − eager's |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch, L in runs:
        best = lambda m, k: min(x[k] for x in res[arch, L, m])
        mean = lambda m, k: sum(x[k] for x in res[arch, L, m]) / repeats
        row = {m: torch.tensor(res[arch, L, m][0]["row"]) for m in ("eager", "rows")}
        gap = f"{(row['rows'] - row['eager']).abs().max().item():.1e}"  # the largest difference, over the batch
        for mode in MODES:
            print(f"| {arch} | {L} | {mode} | {best(mode, 'seconds'):.2f} | {best(mode, 'wall'):.2f} "
                  f"| {mean(mode, 'peak') / 1024:.2f} "
                  f"| {mean(mode, 'added') / 1024:.3f} | {best(mode, 'seconds') / best('sdpa', 'seconds'):.3f} "
                  f"| {mean(mode, 'added') / mean('sdpa', 'added'):.3f} | {gap if mode == 'rows' else ''} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["gpt2", "llama"], choices=["gpt2", "llama"])
    p.add_argument("--lengths", nargs="+", type=int, default=[128, 512, 1024], help="for GPT-2; Llama runs 2048")
    p.add_argument("--repeats", type=int, default=1, help="processes per model, length and mode")
    p.add_argument("--passes", type=int, default=3, help="passes per process")
    p.add_argument("--one", nargs=3, metavar=("ARCH", "MODE", "L"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], int(a.one[2]), a.passes)))
    else:
        table(a.archs, a.lengths, a.repeats, a.passes)
