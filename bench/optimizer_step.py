"""Benchmark: median time of one optimizer ``step()`` on ResNet18 parameter shapes.

Compares torch.optim.SGD(momentum=0.9, weight_decay=5e-4, foreach=True), LARS
(multi-tensor and single-tensor paths) and, when importable, timm's ``Lars``.
Parameter/gradient tensors are random with the shapes of a CIFAR ResNet18 of a
given width (no dependency on the project's models/ package).  Repetitions of
the optimizers are interleaved round-robin so that drift affects all equally.

    python bench/optimizer_step.py --reps 50 --widths 64 16
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lars import LARS  # noqa: E402


def resnet18_param_shapes(width: int = 64, num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of a CIFAR ResNet18 (3x3 stem, BasicBlocks 2-2-2-2)."""
    shapes: list[tuple[int, ...]] = [(width, 3, 3, 3), (width,), (width,)]  # stem conv + BN
    in_c = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        out_c = width * 2 ** stage
        for block in range(2):
            s = stride if block == 0 else 1
            shapes += [(out_c, in_c, 3, 3), (out_c,), (out_c,)]  # conv1, bn1
            shapes += [(out_c, out_c, 3, 3), (out_c,), (out_c,)]  # conv2, bn2
            if s != 1 or in_c != out_c:
                shapes += [(out_c, in_c, 1, 1), (out_c,), (out_c,)]  # shortcut conv + BN
            in_c = out_c
    shapes += [(num_classes, 8 * width), (num_classes,)]  # linear with bias
    return shapes


def _numel(shapes) -> int:
    n = 0
    for s in shapes:
        k = 1
        for d in s:
            k *= d
        n += k
    return n


def make_optimizers(params):
    opts = {
        "SGD foreach": torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True),
        "LARS multi-tensor": LARS(params, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True),
        "LARS single-tensor": LARS(params, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=False),
        # MLPerf grouping: ndim <= 1 tensors (BN, biases) neither adapted nor decayed
        "LARS multi, grouped": LARS(
            [{"params": [p for p in params if p.ndim > 1]},
             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lars_adapt": False}],
            lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True),
    }
    try:
        from timm.optim import Lars as TimmLars  # type: ignore
    except Exception:  # ImportError or a broken install
        TimmLars = None
    if TimmLars is not None:
        opts["timm Lars"] = TimmLars(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    return opts, TimmLars is not None


def bench_width(width: int, reps: int, warmup: int) -> None:
    shapes = resnet18_param_shapes(width)
    if width == 64:
        assert len(shapes) == 62, len(shapes)
        assert _numel(shapes) == 11_173_962, _numel(shapes)
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).mul_(0.1).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).mul_(0.01)
    opts, have_timm = make_optimizers(params)

    names = list(opts)
    times = {n: [] for n in names}
    for it in range(warmup + reps):
        for n in names:  # round-robin interleaving
            t0 = time.perf_counter()
            opts[n].step()
            t1 = time.perf_counter()
            if it >= warmup:
                times[n].append(t1 - t0)

    base = statistics.median(times["SGD foreach"])
    print(f"\nResNet18 width {width}: {_numel(shapes):,} params in {len(shapes)} tensors "
          f"(reps={reps}, warmup={warmup}, threads={torch.get_num_threads()})")
    print(f"{'optimizer':<22}{'median ms':>11}{'vs SGD':>9}")
    for n in names:
        med = statistics.median(times[n])
        print(f"{n:<22}{med * 1e3:>11.3f}{med / base:>8.2f}x")
    if not have_timm:
        print("timm Lars: timm not installed, skipped")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50, help="timed repetitions per optimizer")
    ap.add_argument("--warmup", type=int, default=5, help="untimed warm-up iterations")
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 16], help="ResNet18 widths")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    for w in args.widths:
        bench_width(w, args.reps, args.warmup)


if __name__ == "__main__":
    main()
