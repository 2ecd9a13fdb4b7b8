"""The cost of one checkpoint write, against the epoch time it is amortised over (--checkpoint_every).

    python bench/checkpoint_cost.py                          # ResNet18 width 64, LARS, vs a 3 s GPU epoch
    python bench/checkpoint_cost.py --epoch_seconds 2 --dir /path/on/the/training/disk
    python bench/checkpoint_cost.py --width 4 --writes 2     # a smoke run

The state is what the trainer writes (trainer.checkpoint_state: model, LARS momentum, scheduler, scaler, RNG
states), written as the trainer writes it (store.write_atomically: torch.save to a temporary file, fsync,
rename). Prints the size, the seconds per write (median of --writes) and that as a fraction of
--epoch_seconds. With --cuda the state lives on the GPU and the write includes the copy to the host.
An epoch whose test top-1 improves writes twice (last.pt and best.pt).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import config  # noqa: E402
import store  # noqa: E402
import trainer  # noqa: E402


def checkpoint_parts(width, device):
    """(parts, recipe): ResNet18 with LARS, after one step (so the momentum buffers exist)."""
    recipe = config.resolve(config.Recipe(width=width), config.Runtime(cuda=device.type == "cuda"))
    plan = config.plan(recipe, 50_000)
    parts = trainer.build(recipe, plan, device)
    for p in parts.model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    parts.optimizer.step()
    parts.scheduler.step()
    return parts, recipe


def write_seconds(parts, recipe, folder, writes):
    path = os.path.join(folder, "last.pt")
    times = []
    for _ in range(writes):
        started = time.perf_counter()
        state = trainer.checkpoint_state(parts, recipe, 1, 1, 0.0, False)
        store.write_atomically(path, lambda f: torch.save(state, f))
        times.append(time.perf_counter() - started)
    return times, os.path.getsize(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--writes", type=int, default=5)
    parser.add_argument("--epoch_seconds", type=float, default=3.0,
                        help="the epoch time to compare with (H200, batch 16384: estimated 2-4 s)")
    parser.add_argument("--dir", default=None, help="folder to write in (default: a temporary folder)")
    parser.add_argument("--cuda", action="store_true")
    cfg = parser.parse_args()
    device = torch.device("cuda" if cfg.cuda else "cpu")
    parts, recipe = checkpoint_parts(cfg.width, device)
    with tempfile.TemporaryDirectory(dir=cfg.dir) as folder:
        times, size = write_seconds(parts, recipe, folder, cfg.writes)
    median = statistics.median(times)
    print(f"checkpoint of ResNet18 width {cfg.width} + LARS on {device}: {size / 2**20:.1f} MiB, "
          f"{median:.3f} s per write (median of {cfg.writes}; min {min(times):.3f}, max {max(times):.3f}), "
          f"{size / 2**20 / median:.0f} MiB/s")
    fraction = median / cfg.epoch_seconds
    print(f"vs a {cfg.epoch_seconds:g} s epoch: {100 * fraction:.1f}% per write with --checkpoint_every 1 "
          f"({200 * fraction:.1f}% in an epoch that also writes best.pt)")
    for every in (1, 2, 5, 10):
        print(f"  --checkpoint_every {every:>2}: {100 * fraction / every:5.1f}% of training time in last.pt writes")


if __name__ == "__main__":
    main()
