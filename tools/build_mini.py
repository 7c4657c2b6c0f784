"""Build the mini preset (tokenizer, policy, reward model, gold RM) with plumbing/mini.py's recipe.

    python tools/build_mini.py                                # data/reviews.jsonl into ~/.cache/abc-ppo/mini
    python tools/build_mini.py --seed 5 --mini_dir DIR        # another seed
    python tools/build_mini.py --data my.jsonl --mini_dir DIR # any labelled .jsonl/.csv with text and label
    python tools/build_mini.py --no_gold                      # without the gold: 2 min, not 20
    python tools/build_mini.py --add_gold --mini_dir DIR      # train the gold into a build without one

Then train on it with `python abc_ppo.py --preset mini --mini_dir DIR`. The committed reference build,
data/mini, is never rebuilt: another kind of CPU would build other weights (docs/mini.md).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's root
from plumbing import mini  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=mini.CORPUS, help="labelled .jsonl or .csv with 'text' and 'label' columns")
    p.add_argument("--mini_dir", default=mini.CACHE, help="where to build (the committed reference is data/mini)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_gold", action="store_true", help="no gold RM: evaluation then reads the proxy and the KL alone")
    p.add_argument("--add_gold", action="store_true", help="train the gold RM into the build in --mini_dir "
                                                           "(how data/mini, made before the gold, got its own)")
    a = p.parse_args()
    try:
        if a.add_gold:
            mini.add_gold(a.mini_dir)
        else:
            mini.build(a.data, a.mini_dir, a.seed, gold={} if a.no_gold else mini.GOLD)
    except (OSError, ValueError) as e:
        sys.exit(f"build_mini.py: error: {e}")
