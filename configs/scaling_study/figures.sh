#!/usr/bin/env bash
# Regenerates every figure and table of the scaling study (docs/scaling_study.md) from the committed logs under
# results/scaling_study/, without training: steps_to_target (figure, tables with the final test top-1 at each
# batch size's best setting, S_SGD / S_LARS at each batch size, the B_crit fits), noise_scale, trust_ratios, and
# the per-setting curves and table.
#   bash configs/scaling_study/figures.sh              # from the repository root; writes images/scaling_study/
#   bash configs/scaling_study/figures.sh OUT_DIR      # writes elsewhere
set -euo pipefail
out=$(realpath -m "${1:-$(dirname "$0")/../../images/scaling_study}")  # OUT_DIR: relative to where it is run
cd "$(dirname "$0")/../.."
case "$out" in "$PWD"/*) out=${out#"$PWD"/} ;; esac  # figures name the folder as the repository does
# The validation top-1 target fixed after the pilot, before the grid (docs/scaling_study.md)
TARGET=72.5
python plot_results.py results/scaling_study/scaling_lars results/scaling_study/scaling_sgd \
    --out "$out" --target "$TARGET" --title "Scaling study (AirbenchNet width 16, CIFAR-10)" \
    --note "2-core CPU (AMD EPYC), fp32, torch 2.14.1, one thread per trial"
