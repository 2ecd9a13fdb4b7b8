"""The CUDA path: run by bench/gpu_check.sh on a lent GPU, skipped cleanly on a CPU-only machine."""
import os

import pytest
import torch

import data
import store
from conftest import result_rows
import train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_gpu_batches_equal_cpu_batches():
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (256,))
    cpu = data.TrainBatches(x, y, 64, seed=3)
    gpu = data.TrainBatches(x, y, 64, seed=3, device=torch.device("cuda"))
    for (a, la), (b, lb) in zip(cpu.epoch(1), gpu.epoch(1)):
        assert b.is_cuda and torch.equal(la, lb.cpu())
        assert torch.allclose(a, b.cpu(), atol=1e-6)


def test_train_py_on_cuda_bf16_channels_last(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["cuda_run", "--cuda", "--amp", "bf16", "--channels_last", "on", "--width", "8", "--epochs", "2",
                "--batch_size", "50", "--max_samples_per_gpu", "25", "--dataroot", root, "--logroot", str(tmp_path)])
    (trial,) = store.list_trials(str(tmp_path), "cuda_run")
    rows = result_rows(str(tmp_path), "cuda_run", trial["trial_id"])  # read directly: no skeletor on the GPU image
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]


def test_train_py_on_cuda_fp16_with_grad_scaler(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["fp16_run", "--cuda", "--amp", "fp16", "--width", "8", "--epochs", "1", "--batch_size", "50",
                "--dataroot", root, "--logroot", str(tmp_path)])
    (trial,) = store.list_trials(str(tmp_path), "fp16_run")
    state = torch.load(os.path.join(tmp_path, "fp16_run", trial["trial_id"], "last.pt"), weights_only=True)
    assert state["scaler"]["scale"] > 0 and trial["finished"]
