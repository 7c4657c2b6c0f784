"""The `mini` preset: a small GPT-2 policy and reward model built offline from our own reviews.

    python tools/build_mini.py                       # build from data/reviews.jsonl into ~/.cache/abc-ppo/mini
    python tools/build_mini.py --data my.jsonl --mini_dir DIR   # any labelled .jsonl/.csv with text and label

It trains, on 2 CPU cores in a few minutes:
  1. a byte-level BPE tokenizer on the review texts;
  2. a tiny GPT2LMHeadModel with 256 positions, pretrained as a language model on paragraphs of
     LM_REVIEWS same-label reviews (the policy), so it writes completions of up to 160 tokens, as
     the paper's length study needs;
  3. a GPT2ForSequenceClassification with two labels and one block, initialised from a second
     language model of the same size pretrained on single reviews, and fine-tuned on the labels of
     paragraphs of RM_REVIEWS reviews (the reward model, score = logit[1] - logit[0] as in the paper).
     One block, because in this small model only then does the last layer's attention point at the
     tokens that earned the score, the premise ABC rests on;
  4. the gold RM, which evaluation reads and PPO never trains against: four classifiers of the
     policy's size (GOLD), whose mean score is the gold's; about 20 minutes more, so a cache that
     abc_ppo.py builds on its own goes without it (`tools/build_mini.py --no_gold`, `--add_gold`).
The manifest records what the recipe was chosen by (docs/mini.md): how early the policy's own
samples end, the RM's and the gold's accuracy on held-out single reviews and long paragraphs, and the RM's
credit faithfulness at 8-15 and at 140-160 tokens.
All are ordinary Hugging Face checkpoints, loaded by abc_ppo.py with from_pretrained.
This is a small model trained on ~2600 project-written reviews, not GPT-2 124M on IMDb.
"""
import csv
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from plumbing.presets import fail

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository's root
CORPUS = os.path.join(HERE, "data", "reviews.jsonl")
# The reference build, committed with the code, is the default --mini_dir: the same policy and RM on
# every machine. The recipe alone cannot promise that: another kind of CPU adds floats in another
# order and trains other weights from the same seed (docs/mini.md). So the preset loads these files,
# checks them against the fingerprints below, and never rebuilds them; `python tools/build_mini.py`
# builds anew into CACHE (or --mini_dir), for another seed or corpus. Made by `--seed 0` on the CPU
# that data/mini/manifest.json names.
REFERENCE = os.path.join(HERE, "data", "mini")
REFERENCE_FINGERPRINTS = {"policy": "b6814e1cd5a5462f", "reward_model": "008d87767ef1d082", "gold_rm/A": "9f80cff1e5be10fc",
                          "gold_rm/B": "d36ed4f816ca2e7f", "gold_rm/C": "7760bbd7e102e907", "gold_rm/D": "b64f8abfa613d29a"}
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "abc-ppo", "mini")
MINI_DIR = REFERENCE
EOS = "<|endoftext|>"
SIZE = dict(n_layer=4, n_embd=128, n_head=4, n_positions=256)  # ~1.3M parameters with a 4096 vocab
# An LM training text joins 12..24 same-label reviews (a review runs 11-18 tokens), cut at n_positions
# as a long IMDb review would be, so the policy writes on for the 140-160 token completions of the
# length study and seldom ends a text early.
LM_REVIEWS = (12, 24)
# The reward model: one block, started from an LM of the same size pretrained on single reviews (not
# the policy), then trained on paragraphs of 1..10 reviews, so that it reads 160-token completions.
# Chosen among candidates by the rule in docs/mini.md alone, before any PPO run.
RM_LAYERS, RM_REVIEWS, RM_STEPS, RM_LR = 1, (1, 10), 1200, 5e-4
# The gold RM, the judge evaluation reads and PPO never trains against: the mean score of four
# classifiers of the policy's size, each fine-tuned as the RM is (paragraphs of 1..10 reviews), from a
# start ("reviews": an LM pretrained on single reviews; "paragraphs": on the policy's paragraphs;
# "policy": the policy itself) for some steps. Chosen by the rule in docs/mini.md, committed before any
# candidate was built (candidate H of round 3).
GOLD = dict(A=("reviews", 2400), B=("paragraphs", 2400), C=("policy", 2400), D=("reviews", 4800))
# Bumped whenever build() changes what it makes, so that a cache from an older recipe is rebuilt.
RECIPE = 4  # 4: the gold RM; the policy and the RM are recipe 3's
LONG = 160  # the longest completion the preset is built for
MODELS = ("policy", "reward_model")  # and "gold_rm/A" ... where a build has a gold


def read_reviews(path):
    """(texts, labels) from a .jsonl or .csv file with 'text' and 'label' (1 positive, 0 negative)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f)) if path.endswith(".csv") else [json.loads(l) for l in f if l.strip()]
    try:
        texts, labels = [str(r["text"]).strip() for r in rows], [int(r["label"]) for r in rows]
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: every row needs a 'text' and an integer 'label' ({e!r})") from None
    if len(texts) < 20 or set(labels) != {0, 1}:
        raise ValueError(f"{path}: need at least 20 rows with both labels 0 and 1")
    return texts, labels


def heldout(texts):
    """Deterministic held-out split: a review is held out if its hash falls in the last 15%."""
    return [int(hashlib.sha1(t.encode()).hexdigest(), 16) % 100 >= 85 for t in texts]


def train_tokenizer(texts, vocab_size=4096):
    """GPT-2 style byte-level BPE trained on `texts`, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS)


def gpt2_config(tok, **kw):
    from transformers import GPT2Config

    eos = tok.eos_token_id
    return GPT2Config(**{"vocab_size": len(tok), "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos, **SIZE, **kw})


def fit(model, loss_fn, steps, lr, desc):
    """AdamW with a one-cycle learning-rate schedule: `steps` updates on loss_fn(), a fresh batch each."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    model.train()
    bar = tqdm(range(steps), desc=desc)
    for _ in bar:
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.2f}")
    return model.eval()


def paragraphs(texts, labels, rng, n_reviews, reviews=32):
    """A batch of (text, label) paragraphs, each n same-label reviews joined, with n drawn from
    n_reviews = (lo, hi) once per batch and `reviews` // n paragraphs, so that every batch holds about
    the same number of tokens with little padding. A review runs only 11-18 tokens; paragraphs let
    the policy write, and the reward model read, completions of 40-60 tokens."""
    by_label = {l: [t for t, m in zip(texts, labels) if m == l] for l in sorted(set(labels))}
    n = rng.randint(*n_reviews)
    out = []
    for _ in range(max(1, reviews // n)):
        l = rng.choice(labels)
        out.append((" ".join(rng.choice(by_label[l]) for _ in range(n)), l))
    return out


def pretrain_lm(lm, tok, texts, labels=None, steps=400, bs=32, lr=2e-3, seed=0, n_reviews=LM_REVIEWS):
    """Next-token cross-entropy on paragraph + EOS (bs reviews a batch), so the policy learns to end a text too."""
    rng = random.Random(seed)
    labels = labels or [0] * len(texts)

    def loss():
        batch = [t + EOS for t, _ in paragraphs(texts, labels, rng, n_reviews, bs)]
        enc = tok(batch, padding=True, truncation=True, max_length=lm.config.n_positions, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        return lm(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss

    return fit(lm, loss, steps, lr, "policy LM")


def right_pad(rows, tok, max_len):
    """Token-id lists, each cut to its last max_len tokens (the RM reads the end), right-padded:
    ids [B, L] and mask [B, L]."""
    rows = [r[-max_len:] for r in rows]
    L = max(map(len, rows))
    return (torch.tensor([r + [tok.eos_token_id] * (L - len(r)) for r in rows]),
            torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows]))


def rm_logits(rm, ids, mask):
    """Two-label logits read at the last real token of right-padded rows: [B, 2]."""
    h = rm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    last = mask.sum(1) - 1
    return rm.score(h[torch.arange(len(ids)), last])


def train_rm(rm, tok, texts, labels, steps=RM_STEPS, bs=32, lr=RM_LR, seed=0, prefix_share=0.2,
             n_reviews=RM_REVIEWS):
    """Cross-entropy on the labels of paragraphs. A share of the examples is cut to a random prefix
    (the rest end in EOS), because the policy's completions are scored after 8-15 tokens, often
    mid-sentence."""
    rng = random.Random(seed)

    def loss():
        batch = paragraphs(texts, labels, rng, n_reviews, bs)
        rows = [tok(t)["input_ids"] for t, _ in batch]
        rows = [r[:rng.randint(min(4, len(r)), len(r))] if rng.random() < prefix_share else r + [tok.eos_token_id]
                for r in rows]
        return F.cross_entropy(rm_logits(rm, *right_pad(rows, tok, rm.config.n_positions)),
                               torch.tensor([l for _, l in batch]))

    return fit(rm, loss, steps, lr, "reward model")


@torch.no_grad()
def accuracy(rm, tok, texts, labels, max_tokens=None):
    """Share of texts whose score logit[1] - logit[0] has the label's sign: each text + EOS, or with
    max_tokens its first max_tokens tokens as they stand, as a completion cut at its length limit.
    rm may be a list of models, an ensemble, whose score is the mean of theirs."""
    rows = [tok(t)["input_ids"][:max_tokens] if max_tokens else tok(t)["input_ids"] + [tok.eos_token_id]
            for t in texts]
    members = rm if isinstance(rm, list) else [rm]
    logits = [rm_logits(m, *right_pad(rows, tok, m.config.n_positions)) for m in members]
    score = sum(l[:, 1] - l[:, 0] for l in logits) / len(members)
    return ((score > 0).long() == torch.tensor(labels)).float().mean().item()


@torch.no_grad()
def length_shares(lm, tok, texts, max_new, n=128, seed=0, before=(20, 40, 90, 140)):
    """The share of the policy's own samples (prompts: the first 2-5 tokens of `texts`, mini's
    --prompt_len; up to max_new new tokens, full-distribution sampling) that end with EOS before
    each length in `before`: {length: share}."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    prompts = [tok(rng.choice(texts))["input_ids"][:rng.randint(2, 5)] for _ in range(n)]
    P = max(map(len, prompts))
    ids = torch.tensor([[tok.eos_token_id] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=True, top_k=0, top_p=1.0,
                      pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)[:, P:]
    is_eos = out == tok.eos_token_id
    ends = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full((n,), max_new + 1))  # tokens incl. EOS
    return {str(t): round((ends < t).float().mean().item(), 3) for t in before if t <= max_new}  # str: JSON keys


def reward_model(lm, tok, n_layer=RM_LAYERS):
    """A two-label GPT2ForSequenceClassification holding the LM's embeddings and first n_layer blocks,
    as the paper's RM starts from GPT-2."""
    from transformers import GPT2ForSequenceClassification

    c = lm.config
    rm = GPT2ForSequenceClassification(gpt2_config(tok, num_labels=2, n_layer=n_layer, n_embd=c.n_embd, n_head=c.n_head,
                                                   n_positions=c.n_positions))
    own = rm.transformer.state_dict()
    rm.transformer.load_state_dict({k: v for k, v in lm.transformer.state_dict().items() if k in own})
    return rm


def splits(texts, labels, seed=0):
    """The training split, the held-out reviews (by hash), and 200 held-out paragraphs of 12-14 same-label
    reviews for the long accuracy: lists of (text, label)."""
    held = heldout(texts)
    train = [(t, l) for t, l, h in zip(texts, labels, held) if not h]
    test = [(t, l) for t, l, h in zip(texts, labels, held) if h]
    rng = random.Random(seed)
    return train, test, [paragraphs(*zip(*test), rng, (12, 14), 1)[0] for _ in range(200)]


def train_gold(tok, train, policy, seed=0, lm_steps=400, init="reviews", steps=2400, reviews=RM_REVIEWS):
    """One member of the gold RM: `reward_model` with all the policy's blocks, started from `init` (see
    GOLD), then `train_rm` for `steps` on the training split, on a random stream of its own (seed + 2),
    drawn after the policy and the RM are made, so that neither changes, and reset for each member, so
    that each is the same whichever others are built."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed + 2)
    if init == "policy":
        base = policy
    else:
        base = pretrain_lm(GPT2LMHeadModel(policy.config), tok, *zip(*train), steps=lm_steps, seed=seed + 2,
                           n_reviews=dict(reviews=(1, 1), paragraphs=LM_REVIEWS)[init])
    return train_rm(reward_model(base, tok, policy.config.n_layer), tok, *zip(*train), steps=steps, seed=seed + 2,
                    n_reviews=reviews)


def train_golds(tok, train, policy, seed, lm_steps, gold, out):
    """Train the gold's members, gold = {name: (start, steps)}, into out/gold_rm/<name>; return them."""
    members = {name: train_gold(tok, train, policy, seed, lm_steps, init, steps) for name, (init, steps) in gold.items()}
    for name, member in members.items():
        member.save_pretrained(os.path.join(out, "gold_rm", name))
        tok.save_pretrained(os.path.join(out, "gold_rm", name))
    return list(members.values())


def gold_record(members, tok, test, long_test, long_len, gold):
    """The manifest's lines on the gold (the mean score of its members): its held-out accuracies, beside
    the RM's, and its recipe; none for a build without one."""
    if not members:
        return {}
    return dict(gold=gold, gold_heldout_accuracy=round(accuracy(members, tok, *zip(*test)), 4),
                gold_long_accuracy=round(accuracy(members, tok, *zip(*long_test), max_tokens=3 + long_len), 4),
                gold_params=sum(p.numel() for member in members for p in member.parameters()))


def fingerprints(out, gold):
    return {k: fingerprint(os.path.join(out, k)) for k in (*MODELS, *(f"gold_rm/{name}" for name in gold))}


def add_gold(out, gold=GOLD):
    """Train the gold RM into an existing build at `out` (the committed reference, made before the gold
    existed), from the build's own tokenizer, policy and corpus; the policy and the RM are untouched.
    One thread, as `build`. Returns the updated manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = check(out, only=MODELS)  # the gold is not there yet
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(os.path.join(out, "policy"))
    policy = AutoModelForCausalLM.from_pretrained(os.path.join(out, "policy"), dtype=torch.float32)
    long_len = min(LONG, manifest["size"]["n_positions"] - 4)
    train, test, long_test = splits(*read_reviews(os.path.join(HERE, manifest["data"])), manifest["seed"])
    members = train_golds(tok, train, policy, manifest["seed"], 400, gold, out)
    torch.set_num_threads(threads)
    # What recipe 4 builds: recipe 3's policy and RM, and the gold.
    manifest |= gold_record(members, tok, test, long_test, long_len, gold) | dict(recipe=RECIPE, gold_cpu=cpu_name())
    manifest["fingerprints"] = fingerprints(out, gold)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def build(data=CORPUS, out=MINI_DIR, seed=0, lm_steps=400, rm_steps=RM_STEPS, size=SIZE, rm_layers=RM_LAYERS,
          lm_reviews=LM_REVIEWS, rm_reviews=RM_REVIEWS, gold=GOLD):
    """Train tokenizer, policy, reward model and the gold's members (gold = {name: (start, steps)}, see
    GOLD; {} for none) on `data`; measure how early the policy's samples end, the RM's and the gold's
    held-out accuracy on single reviews and on long paragraphs, and the RM's credit faithfulness at both
    lengths; write models, prompts and manifest.json to `out`."""
    import tokenizers
    import transformers
    from transformers import GPT2LMHeadModel

    from plumbing import credit

    t0 = time.time()
    # One thread: the float sums then run in one order, so the same recipe gives the same models
    # whatever the machine's core count (with two threads the RM's accuracy moved by 1.5 points).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    texts, labels = read_reviews(data)
    long_len = min(LONG, size["n_positions"] - 4)
    train, test, long_test = splits(texts, labels, seed)
    tok = train_tokenizer([t for t, _ in train])
    lm = pretrain_lm(GPT2LMHeadModel(gpt2_config(tok, **size)), tok, *zip(*train), steps=lm_steps, seed=seed,
                     n_reviews=lm_reviews)
    torch.manual_seed(seed + 1)  # the RM's own random stream: it does not change with the policy's recipe
    rm_base = pretrain_lm(GPT2LMHeadModel(gpt2_config(tok, **size)), tok, *zip(*train), steps=lm_steps, seed=seed,
                          n_reviews=(1, 1))
    rm = train_rm(reward_model(rm_base, tok, rm_layers), tok, *zip(*train), steps=rm_steps, seed=seed,
                  n_reviews=rm_reviews)
    # Long texts: held-out paragraphs of 12-14 same-label reviews, cut to a 3-token prompt and a
    # completion of up to LONG tokens (fewer where the positions do not allow it).
    acc = accuracy(rm, tok, *zip(*test))
    long_acc = accuracy(rm, tok, *zip(*long_test), max_tokens=3 + long_len)
    shares = length_shares(lm, tok, [t for t, _ in test], max_new=min(LONG, size["n_positions"] - 6))
    for m in (lm, rm):
        m.set_attn_implementation("eager")  # attention weights for the faithfulness measure
    # Prompt = the first 3 tokens (the middle of mini's 2-5), completion = up to 15 more (the longest default).
    # No shapley row here: its coalitions would add a minute to every build (--faithfulness prints it).
    faith = credit.faithfulness(rm, tok, [t for t, _ in test], k=3, max_len=15, policy=lm, shapley=False)
    faith_long = credit.faithfulness(rm, tok, [t for t, _ in long_test[:100]], k=3, max_len=long_len, policy=lm,
                                     shapley=False)
    for m in (lm, rm):
        m.set_attn_implementation("sdpa")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    members = train_golds(tok, train, lm, seed, lm_steps, gold, tmp)  # last, on its own stream: policy and RM stay
    torch.set_num_threads(threads)
    for name, model in (("policy", lm), ("reward_model", rm)):
        model.save_pretrained(os.path.join(tmp, name))
        tok.save_pretrained(os.path.join(tmp, name))
    with open(os.path.join(tmp, "prompts.jsonl"), "w") as f:  # held-out reviews: the preset's prompts
        f.writelines(json.dumps({"text": t, "label": l}) + "\n" for t, l in test)
    # The corpus's path relative to the repository when it lies in it, so that a build committed with
    # the repository still finds its corpus in another clone.
    data = os.path.abspath(data)
    if data.startswith(HERE + os.sep):
        data = os.path.relpath(data, HERE)
    manifest = dict(recipe=RECIPE, data=data, corpus_sha256=sha256(data), reviews=len(texts), heldout=len(test),
                    lm_reviews=lm_reviews, rm_reviews=rm_reviews, policy_ends_before=shares,
                    rm_heldout_accuracy=round(acc, 4), rm_long_accuracy=round(long_acc, 4), rm_layers=rm_layers,
                    faithfulness=faith, faithfulness_long=faith_long, **gold_record(members, tok, test, long_test, long_len, gold),
                    vocab_size=len(tok), size=size,
                    policy_params=sum(p.numel() for p in lm.parameters()), rm_params=sum(p.numel() for p in rm.parameters()),
                    seed=seed, build_seconds=round(time.time() - t0, 1), torch=torch.__version__,
                    transformers=transformers.__version__, tokenizers=tokenizers.__version__,
                    cpu=cpu_name(), fingerprints=fingerprints(tmp, gold))
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # the cache appears whole or not at all
    top1 = lambda f: next(v for k, v in f["schemes"].items() if k.endswith("(last)"))[1]
    last = list(shares)[-1]
    print(f"mini: built {out} in {manifest['build_seconds']}s; reward model held-out accuracy {acc:.1%} on "
          f"{len(test)} reviews, {long_acc:.1%} on {len(long_test)} long paragraphs; last-layer attention top-1 "
          f"agreement with occlusion {top1(faith):.2f} (up to 15 tokens), {top1(faith_long):.2f} (up to {long_len}); "
          f"policy samples ending before {last} tokens: {shares[last]:.0%}", file=sys.stderr)
    return manifest


def check(out, only=None):
    """Raise ValueError if the build at `out` is missing, partial or corrupt, or its weights are not the
    ones its manifest (for the reference: REFERENCE_FINGERPRINTS) names, or only those of the models
    `only` names; else return its manifest."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        with open(os.path.join(out, "manifest.json")) as f:
            manifest = json.load(f)
        AutoModelForCausalLM.from_pretrained(os.path.join(out, "policy"))
        AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "reward_model"))
        if not os.path.getsize(os.path.join(out, "prompts.jsonl")):
            raise ValueError("prompts.jsonl is empty")
        want = REFERENCE_FINGERPRINTS if is_reference(out) else manifest.get("fingerprints", {})
        for k, fp in want.items() if only is None else ((k, want[k]) for k in only):
            if fingerprint(os.path.join(out, k)) != fp:
                raise ValueError(f"the {k} weights have fingerprint {fingerprint(os.path.join(out, k))}, not {fp}")
    except Exception as e:
        raise ValueError(f"{out}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    return manifest


def is_reference(out):
    return os.path.realpath(out) == os.path.realpath(REFERENCE)


def ensure(out=MINI_DIR):
    """A build committed in the repository (the reference, or a study's under studies/) is checked,
    never rebuilt: another CPU would build other weights. A damaged one raises ValueError. Any other
    folder is a cache: reuse a sound one; rebuild a missing or corrupt one, one made by an older
    recipe, or one whose corpus file has changed, without the gold (`tools/build_mini.py --add_gold`)."""
    if is_reference(out) or any(os.path.realpath(out).startswith(os.path.realpath(os.path.join(HERE, d)) + os.sep)
                                for d in ("data", "studies")):
        try:
            return check(out)
        except ValueError as e:
            raise ValueError(f"{e}; a build committed with the code is never rebuilt: restore it with "
                             f"`git checkout -- {os.path.relpath(out)}`") from None
    data = CORPUS
    if os.path.exists(out):
        try:
            manifest = check(out)
            data = os.path.join(HERE, manifest["data"])  # a relative path is the repository's
            if manifest.get("recipe") != RECIPE:
                print(f"mini: {out} was built by an older recipe; rebuilding", file=sys.stderr)
            elif not os.path.exists(data) or sha256(data) == manifest["corpus_sha256"]:
                return manifest
            else:
                print(f"mini: {data} changed since {out} was built; rebuilding", file=sys.stderr)
        except ValueError as e:
            print(f"mini: cache is corrupt or partial ({e}); rebuilding", file=sys.stderr)
    # Without the gold, which would take the build from 2 minutes to 20; evaluation then says it has none.
    return build(data, out, gold={})


def ensure_preset(args):
    """abc_ppo.main: under --preset mini, `ensure` the build in --mini_dir, or stop in one line."""
    if args.preset == "mini":
        try:
            ensure(args.mini_dir)
        except (OSError, ValueError) as e:
            fail(f"the mini preset in {args.mini_dir} is not usable: {e}")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fingerprint(name):
    """The first 16 hex digits of sha256 over a local model folder's weight files; None for a hub name.
    The same recipe and seed builds other weights on another kind of CPU (docs/mini.md), so a build
    records its models' fingerprints and every run the ones it started from."""
    if not os.path.isdir(name):
        return None
    files = sorted(f for f in os.listdir(name) if f.endswith((".safetensors", ".bin")))
    if not files:
        return None
    h = hashlib.sha256()
    for file in files:
        with open(os.path.join(name, file), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def cpu_name():
    """The CPU's model name and the vector instructions torch runs on: what a build's float order depends on."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), platform.processor())
    except OSError:
        name = platform.processor()
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"
