#!/usr/bin/env bash
# The length and forced-length studies on mini recipe 3 (docs/results.md, "The length study"):
# sparse, uniform and abc (beta 0.8) by completion length, EOS free or forced (--min_new_tokens).
source "$(dirname "$0")/../common.sh"
S="sparse uniform abc"
study length-8-15          10 "$S"         0.8  "8 15"
study length-90-110         6 "$S"         0.8  "90 110"
study forced-90-110         6 "sparse abc" 0.8  "90 110"  --min_new_tokens
study length-40-60         10 "$S"         0.8  "40 60"
study length-140-160        6 "$S"         0.8  "140 160"
study forced-140-160        6 "sparse abc" 0.8  "140 160" --min_new_tokens
study length-20-30         10 "$S"         0.8  "20 30"
