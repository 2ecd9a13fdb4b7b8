"""Overhead of train.py's loop, measured against a bare loop in the same run.

    python bench/train_loop.py                  # CPU, ResNet18 width 8, 1024 synthetic images, batch 256
    python bench/train_loop.py --cuda --width 64 --images 25600 --batch_size 512

Three timings of the training phase (images/s; train.py's own `images_per_s`, which excludes evaluation):
  bare      forward + backward + LARS step over data.TrainBatches, nothing else;
  train.py  train.train(): micro-batch weighting, per-step logging through track, schedule, the loss
            check, one micro-batch per step;
  train.py with 8 micro-batches per step (gradient accumulation).
Each is run --rounds times, interleaved, and the median of the last epoch of each run is reported.
Ratios: train.py / bare (target >= 0.95) and 8 micro-batches / 1 (target >= 0.97).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import models  # noqa: E402
import tracking  # noqa: E402
import train  # noqa: E402
from lars import LARS  # noqa: E402


def synthetic_cifar(n_train, n_test, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # noqa: E731
    labels = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    return images(n_train), labels(n_train), images(n_test), labels(n_test)


def bare_images_per_s(cfg, arrays, device):
    train_x, train_y, _, _ = arrays
    torch.manual_seed(0)
    model = models.build("ResNet18", width=cfg.width).to(device)
    optimizer = LARS(model.parameters(), lr=0.1)
    batches = data.TrainBatches(train_x, train_y, cfg.batch_size, seed=0, device=device)
    for epoch in range(cfg.epochs):
        model.train()
        sync(device)
        started = time.perf_counter()
        for x, y in batches.epoch(epoch):
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        seconds = time.perf_counter() - started
    return batches.steps_per_epoch * cfg.batch_size / seconds


def train_py_images_per_s(cfg, micro_batch, logroot, name):
    args = train.make_parser().parse_args([
        name, "--width", str(cfg.width), "--epochs", str(cfg.epochs), "--batch_size", str(cfg.batch_size),
        "--max_samples_per_gpu", str(micro_batch), "--eval_batch_size", "1024", "--logroot", logroot,
        *(["--cuda"] if cfg.cuda else [])])
    train.train(args)
    df = tracking.read_results(os.path.join(logroot, name))
    return float(df[df["kind"] == "epoch"].sort_values("epoch")["images_per_s"].iloc[-1])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--images", type=int, default=1024, help="synthetic training images")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="per run; the last epoch is timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cuda", action="store_true")
    cfg = parser.parse_args()
    device = torch.device("cuda" if cfg.cuda else "cpu")
    arrays = synthetic_cifar(cfg.images, 256)
    data.load_cifar = lambda *args, **kwargs: arrays  # the bench measures the loop, not file reading

    timings = {"bare": [], "train.py": [], "train.py, 8 micro-batches": []}
    with tempfile.TemporaryDirectory() as logroot:
        for r in range(cfg.rounds):
            timings["bare"].append(bare_images_per_s(cfg, arrays, device))
            timings["train.py"].append(train_py_images_per_s(cfg, cfg.batch_size, logroot, f"one_{r}"))
            timings["train.py, 8 micro-batches"].append(
                train_py_images_per_s(cfg, cfg.batch_size // 8, logroot, f"eight_{r}"))
    median = {k: statistics.median(v) for k, v in timings.items()}
    print(f"\ndevice {device}, ResNet18 width {cfg.width}, batch {cfg.batch_size}, {cfg.images} images, "
          f"median of {cfg.rounds} rounds, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'loop':<28}{'images/s':>10}{'ratio':>8}")
    print(f"{'bare':<28}{median['bare']:>10.1f}{1.0:>8.3f}")
    print(f"{'train.py':<28}{median['train.py']:>10.1f}{median['train.py'] / median['bare']:>8.3f}   (target >= 0.95)")
    eight = median["train.py, 8 micro-batches"]
    print(f"{'train.py, 8 micro-batches':<28}{eight:>10.1f}{eight / median['train.py']:>8.3f}   "
          f"(vs train.py with 1; target >= 0.97)")


if __name__ == "__main__":
    main()
