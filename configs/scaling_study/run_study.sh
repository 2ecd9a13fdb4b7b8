#!/usr/bin/env bash
# Runs (or continues) the scaling study (docs/scaling_study.md). Safe to stop and re-run at any time: the sweep
# skips finished trials and resumes unfinished ones (from scratch on a fresh machine: checkpoints are not
# committed). Two one-thread trials at a time. Results go to results/scaling_study/scaling_{lars,sgd}/.
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
# Two lanes, one one-thread trial each, both from the largest batch down. A lane runs its own optimizer's config,
# then the other's: sweeps over one config share its trials (each is claimed by the sweep that runs it), so a
# lane whose own config is done helps with the other's instead of standing idle.
export OMP_NUM_THREADS=1
status=0
# Every trial logs the gradient noise scale and reads the test set once, at its end; LARS trials also log each
# layer's trust ratio.
# A sweep reads its config when it starts: entries appended meanwhile (next_trials.py's rules) run in a next
# round, which a lane starts while either config keeps changing.
configs=(configs/scaling_study/lars.yaml configs/scaling_study/sgd.yaml)
lane() {
    local optimizer extra stamps
    while :; do
        stamps=$(stat -c %Y "${configs[@]}")
        for optimizer in "$@"; do
            extra=()
            [ "$optimizer" = lars ] && extra=(--log_trust_ratios)
            python train.py --config "configs/scaling_study/$optimizer.yaml" --dataroot data \
                --logroot results/scaling_study --noise_scale --test_eval end "${extra[@]}" "scaling_$optimizer" || return
        done
        [ "$(stat -c %Y "${configs[@]}")" = "$stamps" ] && return
    done
}
lane lars sgd &
trials+=($!)
lane sgd lars &
trials+=($!)
for _ in 1 2; do wait -n || status=1; done
exit $status
