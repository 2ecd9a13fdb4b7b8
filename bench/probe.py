"""The memory-write probe every benchmark runs before and after timing, and the host-memory setting of the
benchmarks that compare optimizer steps (train.py's --malloc).

This machine sometimes slows memory writes 50-90x for minutes, which drags every ratio towards 1.0: an
in-place add_ on a 2.8 MB float32 tensor takes ~0.1 ms on a quiet machine and ~8 ms in that state.
"""
import statistics
import time

import torch

SLOW_MS = 1.0  # ~10x a quiet machine's probe


def memory_write_ms(reps=50):
    """Median time of an in-place add_ on 700,000 float32 (2.8 MB), in ms (after untimed warm-up calls)."""
    tensor = torch.zeros(700_000)
    for _ in range(5):
        tensor.add_(1.0)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        tensor.add_(1.0)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def warn_if_slow(*probes_ms):
    """A warning line when any probe shows the slowed state (the timings beside it are not comparable)."""
    if max(probes_ms) > SLOW_MS:
        print(f"WARNING: a memory-write probe took {max(probes_ms):.2f} ms (> {SLOW_MS} ms): the machine was in its "
              f"slow state; discard these ratios and run again")


def add_malloc_argument(parser):
    """--malloc for a benchmark that compares optimizer steps: the host memory of train.py's trials by default."""
    import config  # the project root is on sys.path in every bench script
    parser.add_argument("--malloc", choices=config.MALLOC_MODES, default="reuse",
                        help="host memory as train.py's --malloc (default: reuse, as train.py)")


def use_malloc(mode):
    """Apply train.py's --malloc MODE to this process (host_memory.use_malloc); returns what is in effect, in words."""
    import host_memory  # the project root is on sys.path in every bench script
    return "reuse" if host_memory.use_malloc(mode) else "system" if mode == "system" else "system (not glibc)"
