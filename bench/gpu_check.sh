#!/usr/bin/env bash
# The project's GPU check, for ONE call on a lent GPU machine (about 6-8 minutes). Two steps:
#   here:      bash bench/gpu_check.sh prepare     # wheels the GPU image lacks -> .whl/ (git-ignored)
#   device:    run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
# The report goes to $OUT/gpu_check.txt when OUT is set (the device tool returns it), else to stdout.
# It prints: CUDA and GPU; the CUDA-marked tests; ResNet18 throughput in fp32 / bf16 / bf16+channels_last
# with the GPU-resident loader vs a torchvision DataLoader, and peak memory; a 3-epoch train.py run on
# synthetic CIFAR-shaped files (real CIFAR is too large to travel) with its epoch seconds; LARS vs SGD
# step time on CUDA.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .whl skeletor-ml==0.1.4 track-ml==0.1.1
    exit
fi

report=/dev/stdout
[ -n "${OUT:-}" ] && report="$OUT/gpu_check.txt"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
# The GPU image has torch, pandas, yaml, tqdm, matplotlib and pytest, but no ray: see bench/gpu_stubs.
export PYTHONPATH="/tmp/site:$PWD/bench/gpu_stubs:${PYTHONPATH:-}"

{
    echo "== gpu_check $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
    echo "== CUDA-marked tests"
    timeout 180 python3 -m pytest -q -m cuda tests -p no:cacheprovider 2>&1 | tail -15
    echo "== throughput (bench/gpu_throughput.py)"
    timeout 240 python3 bench/gpu_throughput.py 2>&1
    echo "== train.py, 3 epochs on synthetic CIFAR-shaped files (50000 train / 10000 test), bf16 + channels_last"
    python3 -c "import sys; sys.path.insert(0, 'tests'); from conftest import write_tiny_cifar; \
write_tiny_cifar('/tmp/synthetic', n_train=50000, n_test=10000)"
    timeout 200 python3 train.py gpu_check --cuda --amp bf16 --channels_last --epochs 3 --batch_size 512 \
        --dataroot /tmp/synthetic --logroot /tmp/gpu_check_logs 2>&1 | grep -E "^(trial|epoch|train.py)"
} 2>&1 | tee "$report"
