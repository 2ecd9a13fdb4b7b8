"""Benchmark: the step of ``LARS.compile()`` against SGD(foreach), and what a compiled call costs per tensor.

On the parameters of the project's CIFAR ResNet18 (one param group), each variant's ``step()`` is timed alone
in blocks of steps (caches warm), the variants taking turns block by block; reported: the best step of each
variant's best block and its ratio to SGD(foreach) in the same run.  Variants: eager LARS, ``LARS.compile()``
(static shapes), and ``LARS.compile(dynamic=None)`` (torch.compile's automatic dynamic shapes) compiled after
another configuration, as a trainer's second param group is.

Then the cost of getting tensors into a compiled call: ``torch._foreach_add_`` on n tensors of 16 elements,
compiled with torch.compile's defaults, for n = 1, 62, 124, 186 (the update of ResNet18 passes 187).

The process takes train.py's host-memory setting (``--malloc``, default ``reuse``; see bench/optimizer_step.py).
A memory-write probe runs before and after (see bench/probe.py).

    python bench/compiled_step.py --width 16        # a few minutes on 2 cores with a cold Inductor cache
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import probe  # noqa: E402  (bench/probe.py)
from lars import LARS  # noqa: E402
from optimizer_step import resnet18_params  # noqa: E402  (bench/optimizer_step.py)

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def compiled_lars(params, **compile_options) -> LARS:
    """A LARS whose update is compiled (traced at its first step)."""
    opt = LARS(params, foreach=True, **HYPER)
    opt.compile(**compile_options)
    opt.step()
    return opt


def best_of_blocks(steps: dict, blocks: int, per_block: int) -> dict:
    best = {name: float("inf") for name in steps}
    names = list(steps)
    for block in range(blocks):
        for name in names[block % len(names):] + names[:block % len(names)]:
            step = steps[name]
            for _ in range(per_block):
                start = time.perf_counter()
                step()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def per_input_cost(blocks: int, per_block: int) -> None:
    def add_one(tensors):
        torch._foreach_add_(tensors, 1.0)

    print("\ncompiled _foreach_add_ on n tensors of 16 elements")
    previous = None
    for n in (1, 62, 124, 186):
        tensors = [torch.zeros(16) for _ in range(n)]
        call = torch.compile(add_one, fullgraph=True, dynamic=False)
        call(tensors)
        seconds = best_of_blocks({n: lambda: call(tensors)}, blocks, per_block)[n]
        extra = "" if previous is None else \
            f"  (+{(seconds - previous[1]) / (n - previous[0]) * 1e6:.2f} us per added tensor)"
        print(f"  n = {n:>3}: {seconds * 1e6:7.1f} us{extra}")
        previous = (n, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=16, help="ResNet18 width")
    ap.add_argument("--blocks", type=int, default=4, help="blocks per variant, taking turns")
    ap.add_argument("--per_block", type=int, default=200, help="timed steps per block")
    probe.add_malloc_argument(ap)
    args = ap.parse_args()
    malloc = probe.use_malloc(args.malloc)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"ResNet18 width {args.width}, --malloc {malloc}")
    probes = [probe.memory_write_ms()]
    params = resnet18_params(args.width)
    started = time.perf_counter()
    # automatic dynamic shapes: another configuration (width 8) traced first, then this one, nothing in between
    compiled_lars(resnet18_params(8), dynamic=None)
    dynamic_shapes = compiled_lars(params, dynamic=None)
    steps = {
        "SGD foreach": torch.optim.SGD(params, foreach=True, **HYPER).step,
        "LARS eager": LARS(params, foreach=True, **HYPER).step,
        "LARS.compile()": compiled_lars(params).step,
        "automatic dynamic shapes": dynamic_shapes.step,
    }
    print(f"compiled {len(steps)} updates (the variants, and the width-8 one traced first) in {time.perf_counter() - started:.0f} s")
    best = best_of_blocks(steps, args.blocks, args.per_block)
    base = best["SGD foreach"]
    print(f"{'step':<28}{'best ms':>9}{'/SGD':>7}")
    for name, seconds in best.items():
        print(f"{name:<28}{seconds * 1e3:>9.3f}{seconds / base:>6.2f}x")
    per_input_cost(args.blocks, args.per_block)
    probes.append(probe.memory_write_ms())
    print(f"memory-write probe before/after: {probes[0]:.3f} / {probes[1]:.3f} ms")
    probe.warn_if_slow(*probes)


if __name__ == "__main__":
    main()
