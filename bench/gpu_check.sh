#!/usr/bin/env bash
# The project's GPU check, for ONE call of at most 9 minutes on a lent GPU machine (an H200). How to run it:
#
#   1. here, before the call (builds .gpu_data/cifar10-subset.zip, ~41 MB, git-ignored: 30,000 train + all
#      10,000 test JPEG images of CIFAR-10, class-balanced, from a zip of CIFAR-10 JPEGs: $CIFAR_JPEG_ZIP, by default
#      ../shared/data/cifar10-jpeg.zip beside the repository):
#          bash bench/gpu_check.sh prepare
#   2. optionally, here, the same check on the CPU at tiny sizes (~1-2 minutes; catches typos):
#          bash bench/gpu_check.sh --dry-run        # PYTHON=... picks the interpreter (default python3)
#   3. the device tool call:
#          run(command="bash bench/gpu_check.sh", carry=[".gpu_data"], timeout_s=600)
#
# The report goes to $OUT/gpu_check.txt when OUT is set (the device tool brings it back) and to stdout; the
# measured numbers (JSON), compile logs and the accuracy run's result rows to $OUT/gpu_check_files/.
# bench/gpu_check.py runs each section in its own subprocess with its own timeout inside a 530 s deadline,
# printing as it goes: env, CUDA-marked tests, eager throughput (ResNet18 width 64: batch 64, and 16384 as
# 32 x 512; fp32 and bf16 + channels_last), host syncs per step, LARS vs SGD step time and kernels per step,
# a real-data accuracy run (30k-image subset, tuned LARS recipe, bf16), 1 vs 3 concurrent trials, the cost of
# a checkpoint write, compiled throughput, and a projection of the seed table's wall time. Training needs only
# torch, numpy, yaml and tqdm (+ pytest, and Pillow for the JPEG rebuild): no extra wheels. Exit status 1 if any section failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [ "${1:-}" = prepare ]; then
    mkdir -p .gpu_data
    "$PY" bench/cifar_jpeg.py subset "${CIFAR_JPEG_ZIP:-../shared/data/cifar10-jpeg.zip}" \
        .gpu_data/cifar10-subset.zip --train 30000 --test 10000 || exit 1
    du -sh .gpu_data
    exit
fi

report=/dev/null
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    report="$OUT/gpu_check.txt"
fi
export PYTHONUNBUFFERED=1
# torch 2.11 (preinstalled on the lent H200, 2026-12-04) fails an assertion in inductor's loop reordering when it
# compiles LARS's update (results/gpu_check/h200_2026-12-04/); the pinned 2.14.1 compiles it on the CPU as is.
if "$PY" -c 'import sys, torch; sys.exit(tuple(map(int, torch.__version__.split("+")[0].split(".")[:2])) >= (2, 14))'; then
    echo "torch older than 2.14: TORCHINDUCTOR_LOOP_ORDERING_AFTER_FUSION=0 (an inductor bug of 2.11)" | tee "$report"
    export TORCHINDUCTOR_LOOP_ORDERING_AFTER_FUSION=0
    report_mode=-a
fi
timeout -k 10 560 "$PY" bench/gpu_check.py "$@" 2>&1 | tee ${report_mode:-} "$report"
exit "${PIPESTATUS[0]}"
