#!/usr/bin/env bash
# Commit each finished run of a study as it finishes, so that a study of hours resumes on a new machine:
# every 5 minutes, each run folder under DIR with a `done` file not yet in git gets its done, config.json,
# metrics.jsonl, eval.jsonl and eval_samples.jsonl committed (only those paths: other staged work is left
# alone). Stops when the file STOP exists.
#   bash studies/commit_runs.sh studies/frontier [STOP]      # from the checkout that receives the runs
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: commit_runs.sh DIR [STOP]} STOP=${2:-/tmp/stop_commit_runs}
while [ ! -e "$STOP" ]; do
    new=() files=()
    for d in $(find "$DIR" -name done -printf '%h\n'); do [ -z "$(git ls-files "$d/done")" ] && new+=("$d"); done
    for d in "${new[@]}"; do for f in done config.json metrics.jsonl eval.jsonl eval_samples.jsonl; do
        [ -e "$d/$f" ] && files+=("$d/$f"); done; done
    if [ ${#new[@]} -gt 0 ] && git add -- "${files[@]}" &&
        git commit -q -m "$(basename "$DIR"): ${#new[@]} finished run(s): ${new[*]#"$DIR"/}" -- "${files[@]}"; then
        echo "$(date -u +%H:%M) committed ${#new[@]} run(s)"
    fi
    sleep 300
done
