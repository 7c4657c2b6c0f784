#!/usr/bin/env bash
# Multi-seed reproduction of the paper's IMDb experiment (Chan et al. 2024, Figure 3):
# every reward scheme x every seed, then a figure and a results table made by tools/report.py.
#
#   PRESET=mini ./run_imdb.sh     # offline, small models; docs/results.md has measured times
#   PRESET=paper ./run_imdb.sh    # the paper's GPT-2 models and IMDb; needs the hub, ideally a GPU
#
# Settings, from the environment:
#   PRESET   paper | mini | auto           (default auto: paper if the hub or its cache has it)
#   SEEDS    seeds 0..SEEDS-1, shared by all schemes, so step 0 is identical across schemes (default 5)
#   STEPS    PPO steps per run             (default: the preset's, 150 paper / 80 mini)
#   REWARDS  schemes to run                (default: every scheme in reward.py)
#   BETA     beta for abc                  (default 0.8, as in the paper's Figure 3)
#   OUT      output folder                 (default runs/imdb-<preset>)
#   JOBS     runs at once                  (default: one per CPU core for mini, 1 for paper)
#   GEN_LEN  completion lengths MIN MAX for every run, e.g. "40 60" (default: abc_ppo.py's, 8 15)
#   EXTRA    more flags for every abc_ppo.py run, e.g. "--device cuda --bf16" or "--mini_dir DIR"
#   KEEP_CHECKPOINTS  1: keep each finished run's checkpoint (default: removed once the run is done)
#   PYTHON   Python interpreter for every step (default python)
#
# Finished runs (OUT/<reward>/seed<k>/done) are skipped, and an interrupted run resumes from its
# last checkpoint, so the script can simply be started again. Any failed run stops it with an error.
# SIGTERM or SIGINT (Ctrl-C) stops it without losing work: no new run starts, every running one
# finishes its step, saves a checkpoint and exits, then the script exits 143 (130). A second signal
# stops the runs at once, from their last checkpoints.
# A finished run's checkpoint (policy and Adam state, ~1.5 GB for GPT-2 124M) is removed unless
# KEEP_CHECKPOINTS=1: a done run is skipped, never resumed.
set -euo pipefail
cd "$(dirname "$0")"
start=$(date +%s)

PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-5}
BETA=${BETA:-0.8}
GEN_LEN=${GEN_LEN:-}
REWARDS=${REWARDS:-$("$PYTHON" -c 'import reward; print(" ".join(reward.SCHEMES))')}
# Resolve auto once, and build the mini cache once, before runs start in parallel; bad flags fail here.
PRESET=$("$PYTHON" -c 'import sys, abc_ppo
from plumbing import mini
a = abc_ppo.parse_args(sys.argv[1:])
if a.preset == "mini": mini.ensure(a.mini_dir)
print(a.preset)' --preset "${PRESET:-auto}" ${GEN_LEN:+--gen_len $GEN_LEN} ${EXTRA:-})
OUT=${OUT:-runs/imdb-$PRESET}
if [ "$PRESET" = mini ]; then JOBS=${JOBS:-$(nproc)}; else JOBS=${JOBS:-1}; fi
THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))
echo "run_imdb.sh: preset $PRESET, rewards [$REWARDS], seeds $SEEDS, steps ${STEPS:-default}, beta $BETA," \
    "gen_len ${GEN_LEN:-default}, $JOBS job(s) -> $OUT"

# Each run's python is in a session of its own, so a Ctrl-C reaches it once, through stop() below, and
# registers its pid in $RUNNING while it runs; $RUNNING/stop says a stop signal came.
RUNNING=$(mktemp -d)
run() {  # run <reward> <seed>
    local dir="$OUT/$1/seed$2" resume="" pid rc
    [ -e "$dir/done" ] && { echo "skip $1 seed $2 (done)"; return 0; }
    [ -e "$RUNNING/stop" ] && return 0  # stopping: start nothing new
    [ -e "$dir/checkpoint/trainer_state.pt" ] && resume=--resume
    mkdir -p "$dir"
    echo "start $1 seed $2 $resume"
    trap : INT TERM  # a signal to this shell is for its run, which saves first: wait for it
    OMP_NUM_THREADS=$THREADS setsid "$PYTHON" abc_ppo.py --preset "$PRESET" --reward "$1" --beta "$BETA" --seed "$2" \
        --out_dir "$dir" ${STEPS:+--steps "$STEPS"} ${GEN_LEN:+--gen_len $GEN_LEN} $resume ${EXTRA:-} \
        > "$dir/log.txt" 2>&1 &
    pid=$!
    touch "$RUNNING/$pid"
    [ -e "$RUNNING/stop" ] && kill -TERM "$pid"  # the stop came while this run was starting
    while wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null; do :; done  # wait returns early on a signal
    rm -f "$RUNNING/$pid"
    if [ "$rc" = 0 ]; then
        touch "$dir/done"
        [ "${KEEP_CHECKPOINTS:-0}" = 1 ] || rm -rf "$dir/checkpoint"  # done runs are skipped, never resumed
        echo "done  $1 seed $2"
    elif [ "$rc" = 143 ] || [ "$rc" = 130 ]; then
        echo "stopped $1 seed $2 at a checkpoint; run again to resume"
    else
        echo "run_imdb.sh: FAILED: $1 seed $2; last lines of $dir/log.txt:" >&2
        tail -n 5 "$dir/log.txt" | tr '\r' '\n' | tail -n 3 >&2
        return 1
    fi
}
stop() {  # stop <signal number>: tell every running run to save its step and exit, wait for them, exit
    local f
    if [ -e "$RUNNING/stop" ]; then echo "run_imdb.sh: second signal: stopping the runs at once" >&2
    else echo "run_imdb.sh: stopping: each running run finishes its step and saves a checkpoint" >&2; fi
    touch "$RUNNING/stop"
    for f in "$RUNNING"/[0-9]*; do [ -e "$f" ] && kill -TERM "${f##*/}" 2>/dev/null; done
    while compgen -G "$RUNNING/[0-9]*" > /dev/null; do sleep 0.2; done
    echo "run_imdb.sh: stopped; run the same command again to resume" >&2
    rm -rf "$RUNNING"
    exit $((128 + $1))
}
trap 'stop 2' INT
trap 'stop 15' TERM
export -f run
export OUT PRESET BETA STEPS GEN_LEN EXTRA THREADS PYTHON KEEP_CHECKPOINTS RUNNING

# In the background, so that a signal runs stop() at once rather than after every run has finished.
for seed in $(seq 0 $((SEEDS - 1))); do for r in $REWARDS; do echo "$r $seed"; done; done |
    xargs -P "$JOBS" -L 1 bash -c 'run "$0" "$1"' &
wait $! ||
    { echo "run_imdb.sh: some runs failed (see above); finished runs are kept, run again to resume" >&2; exit 1; }
rm -rf "$RUNNING"

"$PYTHON" tools/report.py "$OUT" --order $REWARDS
echo "run_imdb.sh: finished in $(( $(date +%s) - start )) s; see $OUT/results.md, $OUT/reward.png, $OUT/kl.png"
