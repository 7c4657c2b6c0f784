"""A run's record, and how a run stops without losing it.

<out_dir>/config.json holds every resolved flag, the library versions, the git commit and a fingerprint
of the models the run started from.
<out_dir>/checkpoint holds the policy and tokenizer (save_pretrained) and trainer_state.pt:
the value head, Adam's state, the KL coefficient and every random generator's state.
A run stops with one line on stderr and an exit code: 2 bad input (presets.fail), DIVERGED when a
step turns a loss, the KL, a reward or a weight non-finite (check_finite), and 128 + the signal
number after SIGTERM (143) or SIGINT (130), once the step is saved (StopOnSignal).
"""
import contextlib
import json
import math
import os
import random
import platform
import shutil
import signal
import subprocess
import sys

import torch

from plumbing import credit, mini
from plumbing.presets import fail, first_line


# Flags that only extend or place a run. Any other flag changes the experiment, so --resume refuses it.
PLACE = {"steps", "out_dir", "resume", "save_every", "log_samples", "device", "mini_dir"}


class Logs:
    """A run's logs in --out_dir: config.json (write_config), written first; metrics.jsonl, one JSON line a
    step; and with --log_samples, samples.jsonl (credit.write_samples), then credit.html at the end. Each
    line is flushed at once. Appended to on --resume, else written anew. An unwritable folder stops in one line."""

    def __init__(self, args):
        self.args = args
        try:
            os.makedirs(args.out_dir, exist_ok=True)
            write_config(args)
            mode = "a" if args.resume else "w"
            self.metrics = open(os.path.join(args.out_dir, "metrics.jsonl"), mode)
            self.samples = open(os.path.join(args.out_dir, "samples.jsonl"), mode) if args.log_samples else None
        except OSError as e:
            fail(f"cannot write to --out_dir '{args.out_dir}': {e.strerror}")

    def write(self, row, tok, exp):
        """One step: its metrics row, and --log_samples of its samples with their credit."""
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        if self.samples:
            credit.write_samples(self.samples, row["step"], tok, exp, self.args.log_samples)

    def close(self):
        self.metrics.close()
        if self.samples:
            self.samples.close()
            credit.write_credit_html(self.args.out_dir, self.args.reward)


def write_config(args):
    """Write <out_dir>/config.json. With --resume, first compare the flags and the models with the run's
    own config.json and stop, with one line, at one that changes the experiment."""
    path = os.path.join(args.out_dir, "config.json")
    flags = vars(args)
    models = dict(policy=mini.fingerprint(args.policy), reward_model=mini.fingerprint(args.reward_model))
    if args.resume and os.path.exists(path):
        before = read_config(path, args.out_dir)
        for k, v in flags.items():
            if k not in PLACE and k in before["flags"] and before["flags"][k] != v:
                fail(f"--resume: --{k} is {v} here but {before['flags'][k]} in {path}, a different experiment; "
                     f"resume with the run's own flags or start a new --out_dir")
        if before.get("models", models) != models:
            fail(f"--resume: the models here ({models}) are not the ones in {path} ({before['models']}); "
                 f"the mini preset builds other weights on another CPU (docs/mini.md): start a new --out_dir")
    import datasets
    import transformers

    versions = dict(python=platform.python_version(), torch=torch.__version__,
                    transformers=transformers.__version__, datasets=datasets.__version__)
    with open(path, "w") as f:
        json.dump(dict(flags=flags, versions=versions, git=git_commit(), models=models), f, indent=1)


def read_config(path, out_dir):
    """A run's config.json as write_config wrote it, or one line that says what is wrong with it."""
    try:
        with open(path) as f:
            text = f.read()
        before = json.loads(text)
        why = None if isinstance(before, dict) and isinstance(before.get("flags"), dict) else "it has no 'flags'"
    except (OSError, UnicodeDecodeError) as e:
        why = first_line(e)
    except ValueError:
        why = "it is empty" if not text.strip() else "it is not whole JSON: truncated or edited"
    if why:
        fail(f"--resume: {path} is not a config.json that abc_ppo.py wrote ({why}); move {out_dir} aside and "
             f"start again, or run without --resume")
    return before


def git_commit():
    """The commit of the code that runs, with '-dirty' if it has uncommitted changes; None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode:
            return None
        return head.stdout.strip() + ("-dirty" if run("status", "--porcelain", "--untracked-files=no").stdout else "")
    except (OSError, subprocess.SubprocessError):
        return None


def save(out_dir, step, models, value_head, opt, kl_ctl, data_rng, credit_rng):
    """Write the policy (models.policy, with models.tok) and the trainer's state to a temporary folder, then
    swap it in, so that a crash never leaves half a checkpoint."""
    policy, tok = models.policy, models.tok
    final, tmp = os.path.join(out_dir, "checkpoint"), os.path.join(out_dir, "checkpoint.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    torch.save(dict(step=step, value_head=value_head.state_dict(), opt=opt.state_dict(), kl_coef=kl_ctl.value,
                    gen=data_rng.get_state(), credit_gen=credit_rng.get_state(), torch_rng=torch.get_rng_state(), py_rng=random.getstate(),
                    cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
               os.path.join(tmp, "trainer_state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def resume(out_dir, logs, models, value_head, opt, kl_ctl, data_rng, credit_rng):
    """Restore the state saved above into models.policy and the rest, and drop the log lines (of Logs) of
    steps after it (a crash), so that each step is logged once. Returns the next step to run."""
    policy = models.policy
    from transformers import AutoModelForCausalLM

    path = os.path.join(out_dir, "checkpoint")
    try:
        # weights_only: a checkpoint is data, never code to run; tensors, numbers, tuples and
        # dicts are all it holds (random.getstate() is a tuple of ints).
        state = torch.load(os.path.join(path, "trainer_state.pt"), map_location="cpu", weights_only=True)
        policy.load_state_dict(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict())
        value_head.load_state_dict(state["value_head"])
        opt.load_state_dict(state["opt"])
        kl_ctl.value = state["kl_coef"]
        data_rng.set_state(state["gen"])
        if "credit_gen" in state:  # checkpoints from before shapley have none, and no run that needs it
            credit_rng.set_state(state["credit_gen"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    except Exception as e:  # missing, truncated, from another version or another model: one line, not a traceback
        fail(f"--resume: no usable checkpoint in {path} ({first_line(e)}); move {out_dir} aside and start again, "
             f"or run without --resume")
    for f in (logs.metrics, logs.samples):
        if f:
            drop_steps_from(f.name, state["step"] + 1)
    return state["step"] + 1


def drop_steps_from(path, start):
    """Keep only the JSON lines of steps before `start`. A hard kill can leave the last line
    half-written; it belongs to a step after the checkpoint (saved only once its lines are
    flushed), so it goes too."""
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for i, line in enumerate(lines):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            if i == len(lines) - 1:
                break
            fail(f"--resume: {path}, line {i + 1}, is not a JSON line with a step; remove it or the file")
        if step < start:
            keep.append(line if line.endswith("\n") else line + "\n")
    with open(path, "w") as f:
        f.writelines(keep)


# Stopping without losing anything ------------------------------------------------------------------
DIVERGED = 3  # the exit code of a run that a non-finite value stopped


def check_finite(step, args, bar, stats, tensors, **models):
    """Stop the run with one line and exit code DIVERGED at the first non-finite value among the step's
    statistics (losses, KL, ...), tensors (the rewards) and the models' parameters. It runs before the
    step is logged or saved, so the last checkpoint stays the last finite state. One sum per parameter,
    read back once: a sum is finite only if every element is (a finite tensor whose sum overflows
    float32 would need entries near 1e38)."""
    bad = next((k for k, v in stats.items() if not math.isfinite(v)), None)
    bad = bad or next((k for k, t in tensors.items() if not torch.isfinite(t).all()), None)
    for name, model in models.items():
        if bad is None and not torch.isfinite(torch.stack([p.detach().sum() for p in model.parameters()]).sum()):
            bad = next(f"{name} parameter {n}" for n, p in model.named_parameters() if not torch.isfinite(p).all())
    if bad:
        diverged(step, bad, args, bar)


def diverged(step, what, args, bar):
    bar.close()
    hint = f"lower --lr (now {args.lr:g}) in a new --out_dir" + (", or drop --bf16" if args.bf16 else "")
    print(f"abc_ppo.py: error: diverged at step {step}: {what} is not finite. Nothing of this step was logged or "
          f"saved; {os.path.join(args.out_dir, 'checkpoint')}, if there is one, is from a finite step. {hint}",
          file=sys.stderr)
    sys.exit(DIVERGED)


@contextlib.contextmanager
def sampling_diverged(step, args, bar):
    """A policy whose logits are already inf or nan fails in generate's sampling: say so in one line."""
    try:
        yield
    except RuntimeError as e:
        if "probability tensor contains" not in str(e):
            raise
        diverged(step, "the policy's sampling distribution", args, bar)


def check_scores(score, step, tok, seq, prompt_mask, bar):
    """A non-finite RM score is the reward model's fault, not divergence: bad input, named by sample."""
    bad = (~torch.isfinite(score)).nonzero()
    if len(bad):
        b = int(bad[0])
        bar.close()
        prompt = tok.decode(seq[b, :prompt_mask.shape[1]][prompt_mask[b].bool()])
        fail(f"the reward model returned a non-finite score ({score[b].item()}) for sample {b} of step {step} "
             f"(prompt {prompt!r}); check the reward model, its dtype and its inputs")


class StopOnSignal:
    """Inside `with`, SIGTERM (a scheduler's preemption, docker stop, kill) and SIGINT (Ctrl-C) only set
    `signum`: the loop finishes its step, saves a checkpoint (atomically, so a signal during the save
    leaves the last one whole) and calls exit. A second signal exits at once."""

    def __init__(self):
        self.signum = None
        self.before = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def handle(self, signum, frame):
        if self.signum is not None:
            print("\nabc_ppo.py: second signal: exiting at once, without saving this step", file=sys.stderr)
            os._exit(128 + signum)
        self.signum = signum

    def __enter__(self):
        return self

    def __exit__(self, *exc):  # whatever ends the loop, a finished run or a stop in one line
        for s, handler in self.before.items():
            signal.signal(s, handler)

    def exit_if_signalled(self, step, bar):
        """After a step is saved: exit if a signal came during it."""
        if self.signum is None:
            return
        bar.close()
        print(f"abc_ppo.py: stopped at step {step}; continue with --resume", file=sys.stderr)
        sys.exit(128 + self.signum)
