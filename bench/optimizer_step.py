"""Benchmark: time of one optimizer ``step()`` on the parameters of the project's CIFAR ResNet18.

Compares, on the CPU, torch.optim.SGD(momentum=0.9, weight_decay=5e-4, foreach=True), the baseline, with
SGD(fused=True) (torch's fused kernel: the fastest SGD step, for context) and LARS: the multi-tensor path
(the default), the update compiled by ``LARS.compile()``, and the single-tensor path, at the given widths.
The optimizers share the parameter and gradient tensors (each keeps its own momentum buffers); their steps
are interleaved, one step of each per round, so that drift of a shared machine affects all alike, in an order
shuffled every round (``--fixed-order`` keeps the table's order).  The single-tensor path runs in rounds of its
own (against SGD again): its step is nearly all small single-threaded ops, the second core idles, and the step
after an idle gap pays to wake it.  ``--cold`` writes a 64 MB buffer before every timed step (untimed), as a
training loop's forward and backward do.  Ratios are to SGD(foreach) in the same run: min over rounds (the
quietest step) and median, and "paired": the median over rounds of the ratio of the two steps of one round.

The process takes train.py's host-memory setting (``--malloc``, default ``reuse``: glibc serves every block
from its heap, see ``trainer.use_malloc``).  With glibc's defaults SGD's step at width 64 varied 10-28 ms from
run to run (its 45 MB temporary ``g + wd * w`` landed on reused or freshly mapped memory).

A memory-write probe (bench/probe.py) runs before and after each width: when the machine is slowed the
timings are not comparable and a warning says so.

    python bench/optimizer_step.py --rounds 40 --widths 16 64
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import models  # noqa: E402
import probe  # noqa: E402  (bench/probe.py)
from lars import LARS  # noqa: E402


def resnet18_params(width: int, seed: int = 0):
    """Parameters with the shapes of models.build("ResNet18", width=width), with gradients."""
    shapes = [p.shape for p in models.build("ResNet18", width=width).parameters()]
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).mul_(0.1).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).mul_(0.01)
    return params


def timed_rounds(optimizers: dict, rounds: int, warmup: int, shuffle: bool, flush, seed: int) -> dict:
    """Seconds of each optimizer's steps, one step of each per round (after ``warmup`` untimed rounds)."""
    times = {name: [] for name in optimizers}
    order = random.Random(seed)
    names = list(optimizers)
    for it in range(warmup + rounds):
        if shuffle:
            order.shuffle(names)
        for name in names:
            opt = optimizers[name]
            for group in opt.param_groups:  # a changing lr, as under a scheduler
                group["lr"] = 0.1 + 1e-3 * (it % 7)
            if flush is not None:
                flush.fill_(float(it))
            t0 = time.perf_counter()
            opt.step()
            t1 = time.perf_counter()
            if it >= warmup:
                times[name].append(t1 - t0)
    return times


def bench_width(width: int, rounds: int, warmup: int, compiled: bool, shuffle: bool, cold: bool) -> None:
    params = resnet18_params(width)
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    sgd = torch.optim.SGD(params, foreach=True, **hyper)
    optimizers = {
        "SGD foreach": sgd,
        "SGD fused": torch.optim.SGD(params, fused=True, **hyper),
        "LARS foreach": LARS(params, foreach=True, **hyper),
    }
    compile_s = {}
    if compiled:
        opt = LARS(params, foreach=True, **hyper)
        opt.compile()
        t0 = time.perf_counter()
        opt.step()  # compiles
        compile_s["LARS compiled"] = time.perf_counter() - t0
        optimizers["LARS compiled"] = opt

    flush = torch.empty(16 << 20) if cold else None  # 64 MB: more than this CPU's 32 MB L3
    times = timed_rounds(optimizers, rounds, warmup, shuffle, flush, seed=width)
    # the single-tensor step leaves the second core idle long enough that the next step pays to wake it
    single_times = timed_rounds({"SGD foreach": sgd, "LARS single": LARS(params, foreach=False, **hyper)},
                                max(rounds // 3, 1), warmup, shuffle, flush, seed=width)

    numel = sum(p.numel() for p in params)
    print(f"\nResNet18 width {width}: {numel:,} params in {len(params)} tensors "
          f"(rounds={rounds}, warmup={warmup}, threads={torch.get_num_threads()}, "
          f"{'shuffled' if shuffle else 'fixed'} order{', cold caches' if cold else ''})")
    for name, seconds in compile_s.items():
        print(f"{name}: first step (compilation) {seconds:.1f} s")
    print(f"{'optimizer':<23}{'min ms':>9}{'median ms':>11}{'min/SGD':>9}{'median/SGD':>12}{'paired':>9}")
    for table, names in ((times, list(times)), (single_times, ["LARS single"])):
        base = table["SGD foreach"]
        base_min, base_med = min(base), statistics.median(base)
        for name in names:
            t_min, t_med = min(table[name]), statistics.median(table[name])
            paired = statistics.median(t / b for t, b in zip(table[name], base))
            print(f"{name:<23}{t_min * 1e3:>9.3f}{t_med * 1e3:>11.3f}{t_min / base_min:>8.2f}x"
                  f"{t_med / base_med:>11.2f}x{paired:>8.2f}x")
    print(f"(LARS single: in {len(single_times['SGD foreach'])} rounds of its own, against SGD's steps in them)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40, help="timed rounds (one step of each optimizer)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64], help="ResNet18 widths")
    ap.add_argument("--no-compile", dest="compiled", action="store_false",
                    help="skip LARS.compile() (about a minute of compilation per width)")
    ap.add_argument("--fixed-order", dest="shuffle", action="store_false",
                    help="step the optimizers in the table's order every round (default: shuffled)")
    ap.add_argument("--cold", action="store_true",
                    help="write a 64 MB buffer before every step (untimed): caches cold, as in a training loop")
    probe.add_malloc_argument(ap)
    args = ap.parse_args()
    malloc = probe.use_malloc(args.malloc)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, --malloc {malloc}")
    probes = [probe.memory_write_ms()]
    print(f"memory-write probe before: {probes[0]:.3f} ms (add_ on 2.8 MB; quiet machine ~0.1 ms)")
    for width in args.widths:
        bench_width(width, args.rounds, args.warmup, args.compiled, args.shuffle, args.cold)
        probes.append(probe.memory_write_ms())
        print(f"memory-write probe after width {width}: {probes[-1]:.3f} ms")
    if max(probes) > probe.SLOW_MS:
        print(f"WARNING: the machine was slowed (probe above {probe.SLOW_MS} ms): "
              "these timings are not valid, run again")


if __name__ == "__main__":
    main()
