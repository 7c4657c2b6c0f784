#!/usr/bin/env bash
# Issue 25's mechanism tables on the reference build (data/mini): seed 0 of each study again, with 16
# completions a step logged (samples.jsonl, under runs/, not committed), then credit.py --mechanism on
# them. Each rerun must equal the committed study run (same flags, one thread, as run_imdb.sh ran it);
# the script checks that before it tabulates.
#   bash studies/builds/seed0/mechanism.sh     # writes studies/builds/seed0/mechanism.md
set -euo pipefail
cd "$(dirname "$0")/../../.."
A=studies/builds/seed0 R=runs/mech25
rerun() {  # rerun <study folder under $A> <reward> <flags...>
    local study=$1 reward=$2; shift 2
    [ -e "$R/$study/$reward/done" ] && return 0
    OMP_NUM_THREADS=1 python abc_ppo.py --preset mini --mini_dir data/mini --reward "$reward" --beta 0.8 --seed 0 \
        --log_samples 16 --out_dir "$R/$study/$reward" "$@" > /dev/null 2>&1
    python - "$A/$study/$reward/seed0/metrics.jsonl" "$R/$study/$reward/metrics.jsonl" <<'PY' || return 1
import json, sys
a, b = ([{k: v for k, v in json.loads(l).items() if not k.startswith("time_")} for l in open(p)] for p in sys.argv[1:])
sys.exit(0 if a == b else f"mechanism.sh: {sys.argv[2]} differs from the study's run {sys.argv[1]}")
PY
    touch "$R/$study/$reward/done"
}
jobs=()
for spec in "8-15 --gen_len 8 15" "forced-90-110 --gen_len 90 110 --min_new_tokens"; do
    set -- $spec
    for r in sparse abc shapley; do jobs+=("$1 $r ${*:2}"); done
done
for lam in 0.5 1; do
    for spec in "8-15 --gen_len 8 15" "forced-90-110 --gen_len 90 110 --min_new_tokens" "90-110 --gen_len 90 110"; do
        set -- $spec
        for r in sparse abc; do jobs+=("lam-$lam/$1 $r ${*:2} --lam $lam"); done
    done
done
export -f rerun; export A R
printf '%s\n' "${jobs[@]}" | xargs -P 2 -L 1 bash -c 'rerun "$@"' _
{
    echo "# The mechanism on the reference build (issue 25): do the advantages follow the occlusion effect?"
    echo
    echo "Seed 0 of each study on data/mini (policy b6814e1c, RM 008d8776) again, with samples logged; each"
    echo "rerun's metrics equal the committed study run's, checked by the script. Made by"
    echo
    echo "    bash studies/builds/seed0/mechanism.sh"
    echo
    python credit.py --mechanism $(printf "$R/%s\n" "${jobs[@]}" | awk '{print $1"/"$2}')
} > $A/mechanism.md
echo "wrote $A/mechanism.md"
