#!/usr/bin/env bash
# The gold-reward-KL frontier (issue 33; docs/results.md, "The gold-reward–KL frontier"): five credit
# schemes, each at four fixed KL coefficients, read by evaluation every 10 steps (the gold RM and the
# sequence KL on the fixed prompts). Runs: studies/frontier/<setting>/kl-<C>/<reward>/seed<k>/.
# The budgets, the estimator and the predictions were committed before the first of these runs.
#
# Phase 1 runs sparse alone at every coefficient; its final KLs decide, by the rule committed in
# docs/results.md, whether the coefficients are widened (once) before phase 2 runs the other schemes.
# All 200 runs (and phase 1's 20 more, at 0.05 and 0.2) used the code of commit 26f9df5, from a worktree; to rerun or resume:
#   git worktree add /work/frontier 26f9df5 && cd /work/frontier &&
#   STUDIES=/work/main/studies COEFS="0.025 0.1 0.4 1.6" JOBS=2 bash studies/frontier/study.sh
# (that commit's script still lists the first coefficients, hence COEFS), and, from /work/main,
#   bash studies/commit_runs.sh studies/frontier &
source "$(dirname "$0")/../common.sh"
# Phase 1 at 0.05 0.1 0.2 0.4 failed the rule in both settings (results.md), so the study reads the
# widened set; sparse's runs at 0.05 and 0.2 stay committed, outside every estimate.
COEFS=${COEFS:-"0.025 0.1 0.4 1.6"}
R="--mini_dir data/mini --eval_every 10"
for c in $COEFS; do study 8-15/kl-$c          6 "sparse" 0.8 "8 15"   "$R --kl_coef $c"; done
for c in $COEFS; do study forced-90-110/kl-$c 4 "sparse" 0.8 "90 110" "$R --kl_coef $c --min_new_tokens"; done
[ "${PHASE:-2}" = 1 ] && exit 0
# Phase 2: the other four (ig m 16 and shapley K 8 are their defaults, --ig_steps and --shapley_perms).
for c in $COEFS; do study 8-15/kl-$c          6 "abc red ig shapley" 0.8 "8 15"   "$R --kl_coef $c"; done
for c in $COEFS; do study forced-90-110/kl-$c 4 "abc red ig shapley" 0.8 "90 110" "$R --kl_coef $c --min_new_tokens"; done
