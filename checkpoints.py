"""A run's record: its config, and checkpoints with everything needed to continue it exactly.

<out_dir>/config.json holds every resolved flag, the library versions, the git commit and a fingerprint
of the models the run started from.
<out_dir>/checkpoint holds the policy and tokenizer (save_pretrained) and trainer_state.pt:
the value head, Adam's state, the KL coefficient and every random generator's state.
"""
import hashlib
import json
import os
import random
import platform
import shutil
import subprocess

import torch

import mini
from presets import fail, first_line


# Flags that only extend or place a run. Any other flag changes the experiment, so --resume refuses it.
PLACE = {"steps", "out_dir", "resume", "save_every", "log_samples", "device", "mini_dir"}


def write_config(args):
    """Write <out_dir>/config.json. With --resume, first compare the flags and the models with the run's
    own config.json and stop, with one line, at one that changes the experiment."""
    path = os.path.join(args.out_dir, "config.json")
    flags = vars(args)
    models = dict(policy=mini.fingerprint(args.policy), reward_model=mini.fingerprint(args.reward_model))
    if args.resume and os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
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


def save(out_dir, step, policy, tok, value_head, opt, kl_ctl, data_rng, credit_rng):
    """Write to a temporary folder, then swap it in, so a crash never leaves half a checkpoint."""
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


def resume(out_dir, logs, policy, value_head, opt, kl_ctl, data_rng, credit_rng):
    """Restore the state saved above and drop the log lines of steps after it (a crash), so each
    step is logged once. Returns the next step to run."""
    from transformers import AutoModelForCausalLM

    path = os.path.join(out_dir, "checkpoint")
    try:
        # weights_only: a checkpoint is data, never code to run; tensors, numbers, tuples and
        # dicts are all it holds (random.getstate() is a tuple of ints).
        state = torch.load(os.path.join(path, "trainer_state.pt"), map_location="cpu", weights_only=True)
        policy.load_state_dict(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict())
    except Exception as e:
        fail(f"--resume: no usable checkpoint in {path} ({first_line(e)})")
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
    for f in logs:
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
