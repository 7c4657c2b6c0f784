#!/usr/bin/env bash
# The beta study on mini recipe 3 (docs/results.md, "The β study"): abc at beta 0, 0.25, 0.5 and 1 at
# 8-15 tokens beside the length study's beta 0.8 and sparse, which beta 0 must repeat exactly.
source "$(dirname "$0")/../common.sh"
for b in 0 0.25 0.5 1; do
    study beta-8-15/beta-$b  6 abc         $b   "8 15"
done
# The "also at 90-110 if time allows", run on 2026-12-02 on a machine whose CPU builds another mini
# than the one the 8-15 runs ran on: so it runs its own sparse and beta 0.8 beside the other betas,
# all on that one build.
study beta-90-110/sparse    6 sparse       0.8  "90 110"
for b in 0 0.25 0.5 0.8 1; do
    study beta-90-110/beta-$b 6 abc        $b   "90 110"
done
