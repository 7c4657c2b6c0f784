"""The gold RM's four candidates (docs/mini.md, "The gold reward model"), trained on the reference build's
tokenizer, policy and training split, and measured on its held-out sets beside the proxy RM; then the
committed rule picks one. One thread, as the build, so the chosen candidate is the one `mini.add_gold`
then builds, to the bit.

    python studies/gold/candidates.py A B        # train these candidates (two processes can share the list)
    python studies/gold/candidates.py --save A B # ... and keep their weights in studies/gold/models/ (not committed)
    python studies/gold/candidates.py --ensemble H   # round 3: H, the mean score of the saved A-D
    python studies/gold/candidates.py --pick     # the table and the rule's choice, from candidates.jsonl
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from plumbing import mini  # noqa: E402

# name -> (start, fine-tuning steps, reviews per paragraph, LM pretraining steps). Round 1: A-D; none qualified.
# Round 2, fixed before it ran: E-G (docs/mini.md).
CANDIDATES = dict(A=("reviews", 2400, (1, 10), 400), B=("paragraphs", 2400, (1, 10), 400), C=("policy", 2400, (1, 10), 400),
                  D=("reviews", 4800, (1, 10), 400),
                  E=("reviews", 4800, (1, 4), 400), F=("reviews", 2400, (1, 4), 400), G=("reviews", 4800, (1, 10), 1200))
HERE = os.path.dirname(os.path.abspath(__file__))
OUT, MODELS = os.path.join(HERE, "candidates.jsonl"), os.path.join(HERE, "models")
ENSEMBLES = dict(H=("A", "B", "C", "D"))  # round 3: the mean score of round 1's four


def held_out_sets():
    manifest = mini.check(mini.REFERENCE)
    return manifest, *mini.splits(*mini.read_reviews(mini.CORPUS), manifest["seed"]), \
        min(mini.LONG, manifest["size"]["n_positions"] - 4)


def write(row):
    with open(OUT, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(row)


def train(name, save=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(os.path.join(mini.REFERENCE, "policy"))
    policy = AutoModelForCausalLM.from_pretrained(os.path.join(mini.REFERENCE, "policy"), dtype=torch.float32)
    manifest, train_split, test, long_test, long_len = held_out_sets()
    init, steps, reviews, lm_steps = CANDIDATES[name]
    gold = mini.train_gold(tok, train_split, policy, manifest["seed"], lm_steps, init, steps, reviews)
    if save:
        gold.save_pretrained(os.path.join(MODELS, name))
        tok.save_pretrained(os.path.join(MODELS, name))
    row = dict(candidate=name, init=init, steps=steps, reviews=reviews, lm_steps=lm_steps, heldout_accuracy=round(mini.accuracy(gold, tok, *zip(*test)), 4),
               long_accuracy=round(mini.accuracy(gold, tok, *zip(*long_test), max_tokens=3 + long_len), 4),
               seconds=round(time.time() - t0, 1), cpu=mini.cpu_name())
    write(row)


def ensemble(name):
    """An ensemble candidate from the saved members: its score is the mean of theirs."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest, _, test, long_test, long_len = held_out_sets()
    members = [AutoModelForSequenceClassification.from_pretrained(os.path.join(MODELS, m)).eval() for m in ENSEMBLES[name]]
    tok = AutoTokenizer.from_pretrained(os.path.join(MODELS, ENSEMBLES[name][0]))
    write(dict(candidate=name, init="ensemble of " + " ".join(ENSEMBLES[name]), steps=None,
               heldout_accuracy=round(mini.accuracy(members, tok, *zip(*test)), 4),
               long_accuracy=round(mini.accuracy(members, tok, *zip(*long_test), max_tokens=3 + long_len), 4),
               fingerprints={m: mini.fingerprint(os.path.join(MODELS, m)) for m in ENSEMBLES[name]}, cpu=mini.cpu_name()))


def pick():
    """The rule: beat the proxy on single reviews, no more mistakes on paragraphs; then the best single-review
    accuracy, then the best paragraph accuracy, then the earlier letter."""
    manifest = mini.check(mini.REFERENCE)
    proxy, proxy_long = manifest["rm_heldout_accuracy"], manifest["rm_long_accuracy"]
    # A candidate retrained (round 3 saved A-D's weights) has a row per run; its latest stands.
    rows = sorted({r["candidate"]: r for r in map(json.loads, open(OUT))}.values(), key=lambda r: r["candidate"])
    print("| candidate | started from | steps | single reviews | paragraphs | qualifies | seconds |\n|---|---|---|---|---|---|---|")
    print(f"| proxy RM | (1 block) | {mini.RM_STEPS} | {proxy:.3f} | {proxy_long:.3f} | | |")
    ok = [r for r in rows if r["heldout_accuracy"] > proxy and r["long_accuracy"] >= proxy_long]
    for r in rows:
        print(f"| {r['candidate']} | {r['init']} | {r['steps'] or '—'} | {r['heldout_accuracy']:.3f} "
              f"| {r['long_accuracy']:.3f} | {'yes' if r in ok else 'no'} | {r.get('seconds', '—')} |")
    best = max(ok, key=lambda r: (r["heldout_accuracy"], r["long_accuracy"], -ord(r["candidate"])), default=None)
    print(f"\nthe rule picks: {best['candidate'] if best else 'none (mini ships no gold)'}")


if __name__ == "__main__":
    flag, names = (sys.argv[1], sys.argv[2:]) if sys.argv[1].startswith("--") else (None, sys.argv[1:])
    if flag == "--pick":
        pick()
    for name in names:
        ensemble(name) if flag == "--ensemble" else train(name, save=flag == "--save")
