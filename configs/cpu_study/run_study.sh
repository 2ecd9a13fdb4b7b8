#!/usr/bin/env bash
# Runs (or continues) the whole CPU-scale study (docs/cpu_study.md). Safe to stop and re-run at any
# time: the sweep skips finished trials and resumes unfinished ones (from scratch on a fresh machine, since
# checkpoints are not committed). Seed 1 of every arm first, so that an interrupted study already covers every
# comparison once; then the remaining seeds. Results go to results/cpu_study/EXPERIMENT/.
#   bash configs/cpu_study/run_study.sh            # from the repository root; about 6-7 h on 2 cores
# Two trials at a time with one thread each: 7-11 % more images/s than one trial with two threads here.
#   bash configs/cpu_study/run_study.sh --commit   # also commit results/cpu_study every 10 minutes
set -uo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
[ -d data/cifar-10-batches-py ] || python ../shared/data/make_cifar10.py data || exit 1
if [ "${1:-}" = --commit ]; then
    (while sleep 600; do
        git add results/cpu_study && git commit -q -m "CPU study: results so far" -- results/cpu_study
    done) &
    committer=$!
    trap 'kill $committer; git add results/cpu_study && git commit -q -m "CPU study: results so far" -- results/cpu_study' EXIT
fi
for seeds in "--seed 1" ""; do
    for arm in seed lars_tuned sgd_nesterov_tuned seed_lr ghost_bn; do
        python train.py --config "configs/cpu_study/$arm.yaml" $seeds --dataroot data --logroot results/cpu_study \
            --log_interval 25 --trials_per_gpu 2 "cpu_$arm"
    done
done
