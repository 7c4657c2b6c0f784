# Sourced by each studies/<name>/study.sh: `study <folder> <seeds> <rewards> <beta> <gen_len> [extra flags]`
# is one run_imdb.sh call, its runs under studies/<name>/<folder>/<reward>/seed<k>/. Finished runs
# (with a `done` file) are skipped, so a study script resumes where it stopped. Each finished run's
# config.json, metrics.jsonl, eval files and done are committed as they finish, by
# `bash studies/commit_runs.sh studies/<name>` beside the study (checkpoints are removed, log.txt is ignored).
#   bash studies/<name>/study.sh            # every setting of the study, in its order
#   bash studies/<name>/study.sh 90-110     # only the settings whose folder contains this
#   STUDIES=DIR bash studies/<name>/study.sh   # write the runs under DIR/<name>/ instead
NAME=$(basename "$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)")
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ONLY=${1:-}
study() {
    [[ "$1" == *"$ONLY"* ]] || return 0
    echo "=== $NAME/$1 ($(date -u +%H:%M))"
    PRESET=mini OUT=${STUDIES:-studies}/$NAME/$1 SEEDS=$2 REWARDS=$3 BETA=$4 GEN_LEN=$5 EXTRA=${6:-} JOBS=${JOBS:-2} \
        ./run_imdb.sh
}
