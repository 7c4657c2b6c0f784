"""Around abc_ppo.evaluate: the fixed evaluation prompts, the training cost so far, and the files.

Every --eval_every steps, before the first update and after the last, abc_ppo.evaluate samples
--eval_samples completions of each of --eval_prompts fixed prompts and scores them; `Evaluation.write`
adds one line to <out_dir>/eval.jsonl and rewrites <out_dir>/eval_samples.jsonl (the last evaluation's
completions). The fields are in docs/options.md. Evaluation draws from streams of its own and never from
training's, so that a run's metrics.jsonl is the same, to the bit, with evaluation on or off.
"""
import contextlib
import json
import os
import sys

import torch

from plumbing import mini, presets
from plumbing.checkpoints import drop_steps_from

# The evaluation prompts' stream: one fixed prompt set per preset, whatever the run's seed or scheme.
PROMPT_SEED = 1_000_003


def prompt_stream():
    return torch.Generator().manual_seed(PROMPT_SEED)


@contextlib.contextmanager
def own_stream(seed, device):
    """Sample with the global generator (generate() knows no other) seeded here, then give it back its
    state: the training stream goes on as if evaluation had not run."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def mean_se(x):
    """The mean of x [n] and its standard error, std / sqrt(n)."""
    x = x.double()
    return x.mean().item(), (x.std() / len(x) ** 0.5).item() if len(x) > 1 else 0.0


def distinct_2(seq, comp_mask):
    """Distinct bigrams over all bigrams of the completions, pooled: 1 when no bigram repeats anywhere."""
    pairs = [(a, b) for row, mask in zip(seq.tolist(), comp_mask.tolist())
             for (a, b, real) in zip(row, row[1:], mask[1:]) if real]
    return len(set(pairs)) / len(pairs) if pairs else 0.0


class Evaluation:
    """The fixed prompts (ids [N, P], mask [N, P], completion lengths [N], from abc_ppo.sample_prompts on
    prompt_stream), eval.jsonl and eval_samples.jsonl, and the cost of training so far: the steps, the RM's
    rows and the seconds of the training steps alone. config.json records the fingerprints of the gold's
    members, as it does the policy's and the RM's. On --resume the lines after the checkpoint go, and the
    cost is read back from metrics.jsonl."""

    def __init__(self, args, prompts, tok, start, has_gold):
        self.args, self.prompts, self.tok = args, prompts, tok
        self.rm_rows, self.train_seconds = 0, 0.0
        if not args.eval_every:
            return
        self.path = os.path.join(args.out_dir, "eval.jsonl")
        if args.resume:  # the cost so far is in metrics.jsonl, which checkpoints.resume has cut at the checkpoint
            if os.path.exists(self.path):
                drop_steps_from(self.path, start + 1)  # evaluations after `start` steps belong to lost steps
            with open(os.path.join(args.out_dir, "metrics.jsonl")) as f:
                for line in f:
                    self.count(json.loads(line))
        elif os.path.exists(self.path):
            os.remove(self.path)  # a new run in an old folder
        ids, mask, lengths = prompts
        gold = presets.gold_members(args.gold_rm) if has_gold else []
        self.record = dict(prompt_seed=PROMPT_SEED, gold_rm={path: mini.fingerprint(path) for path in gold},
                           lengths=lengths.tolist(),
                           prompts=[tok.decode(row[m.bool()]) for row, m in zip(ids.cpu(), mask.cpu())])
        config = os.path.join(args.out_dir, "config.json")
        with open(config) as f:
            written = json.load(f)
        with open(config, "w") as f:
            json.dump(written | dict(eval=self.record), f, indent=1)
        if not has_gold:
            print("abc_ppo.py: evaluation has no gold reward model (--gold_rm): eval.jsonl reports the proxy RM "
                  "and the KL alone", file=sys.stderr)

    def due(self, done):
        """Whether to evaluate after `done` steps: every --eval_every, and after the last."""
        return bool(self.args.eval_every) and (done % self.args.eval_every == 0 or done == self.args.steps)

    def seed(self, done):
        """Evaluation after `done` steps samples from its own seed: the run's seed and the step decide it."""
        return PROMPT_SEED * (self.args.seed + 1) + done

    def count(self, row):
        """Add a step's cost, from its metrics row."""
        self.rm_rows += row["rm_rows"]
        self.train_seconds += row["time_generate"] + row["time_score"] + row["time_optimize"]

    def write(self, done, seq, comp_mask, proxy, gold, kl, seconds):
        """One line of eval.jsonl after `done` steps, from N K completions seq [N K, P+G] with comp_mask
        [N K, G], their proxy and gold scores [N K] (gold None without one) and sequence KLs [N K]."""
        P = seq.shape[1] - comp_mask.shape[1]
        (proxy_mean, proxy_se), (kl_mean, kl_se) = mean_se(proxy), mean_se(kl)
        gold_mean, gold_se = mean_se(gold) if gold is not None else (None, None)
        row = dict(step=done, proxy_mean=proxy_mean, proxy_se=proxy_se, gold_mean=gold_mean, gold_se=gold_se,
                   kl=kl_mean, kl_se=kl_se, completion_len=comp_mask.sum(1).float().mean().item(),
                   distinct_2=distinct_2(seq[:, P:], comp_mask), completions=len(seq), rm_rows=self.rm_rows,
                   train_seconds=self.train_seconds, eval_seconds=seconds)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        samples = os.path.join(self.args.out_dir, "eval_samples.jsonl")
        with open(samples + ".tmp", "w") as f:
            for b in range(len(seq)):
                n = int(comp_mask[b].sum())
                f.write(json.dumps(dict(step=done, prompt=self.record["prompts"][b // self.args.eval_samples],
                                        completion=self.tok.decode(seq[b, P:P + n]),
                                        completion_ids=seq[b, P:P + n].tolist(), proxy=proxy[b].item(),
                                        gold=None if gold is None else gold[b].item(), kl=kl[b].item())) + "\n")
        os.replace(samples + ".tmp", samples)  # the last evaluation's, whole
