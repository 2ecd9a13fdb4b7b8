#!/usr/bin/env bash
# Runs (or continues) the scaling study (docs/scaling_study.md). Safe to stop and re-run at any time: the sweep
# skips finished trials and resumes unfinished ones (from scratch on a fresh machine: checkpoints are not
# committed). Two one-thread trials at a time (one per optimizer). Results go to results/scaling_study/scaling_{lars,sgd}/.
#   bash configs/scaling_study/run_study.sh            # from the repository root
#   bash configs/scaling_study/run_study.sh --commit   # also commit results/scaling_study every 10 minutes
set -uo pipefail
cd "$(dirname "$0")/../.."
[ -d data/cifar-10-batches-py ] || python ../shared/data/make_cifar10.py data || exit 1
trials=()
# (git add retried: a trial stopped before its first checkpoint removes its files while git lists them)
commit() {
    git add results/scaling_study || { sleep 5; git add results/scaling_study; } || return
    git commit -q -m "scaling study: results so far" -- results/scaling_study
}
if [ "${1:-}" = --commit ]; then
    (while sleep 600; do commit; done) &
    committer=$!
    # the last commit after the trials have closed their files (also on Ctrl-C)
    trap 'wait "${trials[@]}"; kill $committer; commit' EXIT
fi
# The two optimizers side by side, one one-thread trial each, both from the largest batch down: a study cut
# short then has both optimizers' grids at the same batch sizes.
export OMP_NUM_THREADS=1
status=0
# Every trial logs the gradient noise scale and reads the test set once, at its end; LARS trials also log each
# layer's trust ratio.
# A lane reads its config when a pass starts: entries appended during the pass (next_trials.py's rules) run in
# a next pass, which it starts while its config keeps changing.
lane() {
    local optimizer=$1 config="configs/scaling_study/$1.yaml" extra=() stamp
    [ "$optimizer" = lars ] && extra=(--log_trust_ratios)
    while :; do
        stamp=$(stat -c %Y "$config")
        python train.py --config "$config" --dataroot data --logroot results/scaling_study \
            --noise_scale --test_eval end "${extra[@]}" "scaling_$optimizer" || return
        [ "$(stat -c %Y "$config")" = "$stamp" ] && return
    done
}
for optimizer in lars sgd; do
    lane $optimizer &
    trials+=($!)
done
for optimizer in lars sgd; do wait -n || status=1; done
exit $status
