"""Benchmark: training throughput of candidate proxy nets for a CPU-scale study.

Images/s of one fp32 training step (forward, backward, SGD step) at batch 256 on
random CIFAR-shaped data, with torch limited to a few threads, for small
ResNets and AirbenchNets built by `models.build`, and for two of them again
with ghost BatchNorm (the cost of GhostBatchNorm2d over plain BatchNorm).

A memory-write probe runs before and after: an in-place add on a 2.8 MB
tensor takes ~0.1 ms normally; a machine in a slow state takes ~8 ms and
every number in the table is then invalid.

    python bench/proxy_nets.py --rounds 3 --steps 2 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import models  # noqa: E402
import probe  # noqa: E402  (bench/probe.py)

# (arch, width, ghost_batch_size); AirbenchNet width w has blocks w, 4w, 4w.
CANDIDATES = [
    ("ResNet18", 8, 0),
    ("ResNet18", 16, 0),
    ("ResNet8", 16, 0),
    ("ResNet20", 16, 0),
    ("AirbenchNet", 16, 0),
    ("AirbenchNet", 24, 0),
    ("AirbenchNet", 32, 0),
    ("AirbenchNet", 64, 0),
    ("ResNet18", 8, 32),
    ("AirbenchNet", 32, 32),
]


class Trial:
    """One candidate's model, optimizer and batch, and the times of its training steps."""

    def __init__(self, arch: str, width: int, ghost_batch_size: int, batch_size: int) -> None:
        torch.manual_seed(0)
        self.model = models.build(arch, width=width, ghost_batch_size=ghost_batch_size).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                         weight_decay=5e-4)
        self.images = torch.randn(batch_size, 3, 32, 32)
        self.labels = torch.randint(0, 10, (batch_size,))
        self.params = sum(p.numel() for p in self.model.parameters())
        self.step_seconds: list[float] = []

    def step(self) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.images), self.labels, label_smoothing=0.1).backward()
        self.optimizer.step()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per candidate per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    probe_before = probe.memory_write_ms()
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, fp32, "
          f"{args.rounds} rounds of {args.steps} steps per candidate after {args.warmup} warm-up")
    print(f"memory-write probe before: {probe_before:.3f} ms")
    trials = [Trial(arch, width, ghost, args.batch_size) for arch, width, ghost in CANDIDATES]
    for trial in trials:
        for _ in range(args.warmup):
            trial.step()
    # Round-robin, so that load from other processes on shared cores hits every candidate.
    for _ in range(args.rounds):
        for trial in trials:
            trial.step_seconds += [trial.step() for _ in range(args.steps)]
    print("images/s from the median step and from the fastest (the least disturbed by other load)")
    print(f"{'arch':<12} {'width':>5} {'ghost':>5} {'params':>10} {'median':>7} {'best':>7}")
    for (arch, width, ghost), trial in zip(CANDIDATES, trials):
        median = args.batch_size / statistics.median(trial.step_seconds)
        best = args.batch_size / min(trial.step_seconds)
        print(f"{arch:<12} {width:>5} {ghost or '-':>5} {trial.params:>10,} {median:>7.0f} {best:>7.0f}")
    probe_after = probe.memory_write_ms()
    print(f"memory-write probe after: {probe_after:.3f} ms")
    if max(probe_before, probe_after) > probe.SLOW_MS:
        print(f"WARNING: a memory-write probe took over {probe.SLOW_MS} ms: the machine is in a slow "
              "state and these numbers are invalid")


if __name__ == "__main__":
    main()
