"""Benchmark: the eager CPU norms of LARS (``lars._NormPlan``) against one ``torch._foreach_norm``.

The 2-norms of the weights and gradients of the project's CIFAR ResNet18, as the multi-tensor step takes them,
for two param groups: all 62 tensors adapted (124 norms; the configuration of bench/optimizer_step.py), and the
weights that ``lars_param_groups`` adapts (21 tensors, 42 norms; the trainer's configuration, where BatchNorm
weights and biases are not adapted).  ``_NormPlan.norms`` (BLAS ``dot`` for tensors of at least
``_DOT_NORM_NUMEL`` elements, one segmented sum for 1-d tensors under ``_SEGMENTED_NORM_NUMEL``, one
``_foreach_norm`` for the rest) vs ``torch.stack(torch._foreach_norm(...))`` (what LARS used before
2026-11-30).  The two take turns, block by block; reported: the best call of each and the ratio, per width and
group, and each one's largest relative error against norms computed in float64.  A memory-write probe runs
before and after (see bench/probe.py).

    python bench/eager_norms.py --widths 8 16 64
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lars as lars_module  # noqa: E402
import probe  # noqa: E402  (bench/probe.py)
from optimizer_step import resnet18_params  # noqa: E402  (bench/optimizer_step.py)


def best_times(calls: dict, blocks: int, per_block: int) -> dict:
    best = {name: float("inf") for name in calls}
    for _ in range(blocks):
        for name, call in calls.items():
            for _ in range(per_block):
                start = time.perf_counter()
                call()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 64], help="ResNet18 widths")
    ap.add_argument("--blocks", type=int, default=6, help="blocks per variant, taking turns")
    ap.add_argument("--per_block", type=int, default=100, help="timed calls per block")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    probes = [probe.memory_write_ms()]
    groups = {"all 62 adapted": lambda params: params,
              "lars_param_groups": lambda params: [p for p in params if p.ndim > 1]}
    for width in args.widths:
        for group, adapted in groups.items():
            params = adapted(resnet18_params(width))
            tensors = [p.detach() for p in params] + [p.grad for p in params]
            plan = lars_module._NormPlan(tensors)
            calls = {"_foreach_norm": lambda: torch.stack(torch._foreach_norm(tensors)),
                     "_NormPlan": lambda: plan.norms(tensors)}
            exact = torch.stack([t.double().square().sum().sqrt() for t in tensors])
            errors = {name: ((call().double() - exact).abs() / exact).max().item() for name, call in calls.items()}
            best = best_times(calls, args.blocks, args.per_block)
            print(f"width {width}, {group}: {len(tensors)} tensors ({len(plan.by_dot)} by dot, "
                  f"{len(plan.by_segment)} segmented, {len(plan.by_foreach)} by _foreach_norm), "
                  f"_foreach_norm {best['_foreach_norm'] * 1e3:.3f} ms, _NormPlan {best['_NormPlan'] * 1e3:.3f} ms: "
                  f"{best['_NormPlan'] / best['_foreach_norm']:.2f}x; largest relative error against float64: "
                  f"{errors['_foreach_norm']:.1e} and {errors['_NormPlan']:.1e}")
    probes.append(probe.memory_write_ms())
    print(f"memory-write probe before/after: {probes[0]:.3f} / {probes[1]:.3f} ms")
    probe.warn_if_slow(*probes)


if __name__ == "__main__":
    main()
