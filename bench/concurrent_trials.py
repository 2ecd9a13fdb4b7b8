"""Trials at once on a CPU (--trials_per_gpu N): each with its share of the threads, against each with all of them.

    python bench/concurrent_trials.py                # 2 AirbenchNet trials, 4096 synthetic images, 3 epochs (~2 min)

A grid of N seeds (the CPU study's trial shape: AirbenchNet width 16, batch 512) runs as one sweep of
`train.py --config` in a subprocess, three ways, on synthetic CIFAR-format files (synthetic_cifar.write_tiny_cifar):
  split   --trials_per_gpu N, each trial with 1/N of the torch threads (the default, sweep._threads_per_trial);
  all     --trials_per_gpu N with OMP_NUM_THREADS set to all of them: each trial takes every thread, as every
          trial did before the split (the cores oversubscribed);
  in turn one trial after another, each with every thread.
Reported: the sweep's wall time and the median `images_per_s` of the trials' epochs after the first, with ratios
to `all` and to `in turn` measured in the same run. A memory-write probe runs before and after (bench/probe.py).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import probe  # noqa: E402  (bench/probe.py)
import store  # noqa: E402
from synthetic_cifar import write_tiny_cifar  # noqa: E402
from train_loop import steady_values  # noqa: E402  (bench/train_loop.py)


def run_sweep(flags, logroot, name, env):
    """Wall seconds of one `train.py --config` sweep, and its trials' images/s (epochs after the first)."""
    command = [sys.executable, os.path.join(ROOT, "train.py"), name, *flags, "--logroot", logroot]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rates = []
    for trial in store.list_trials(logroot, name):
        rows = sorted((r for r in store.result_rows(logroot, name, trial["trial_id"]) if r.get("kind") == "epoch"),
                      key=lambda r: r["epoch"])
        rates += steady_values(rows, "images_per_s")
    return seconds, rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2, help="N: the grid's seeds, all at once")
    parser.add_argument("--arch", default="AirbenchNet")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--images", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--epochs", type=int, default=3, help="per trial; the epochs after the first are timed")
    cfg = parser.parse_args()

    all_threads = torch.get_num_threads()
    probe_before = probe.memory_write_ms()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {all_threads} torch threads; {cfg.trials} trials of "
          f"{cfg.arch} width {cfg.width}, batch {cfg.batch_size}, {cfg.images} synthetic images, {cfg.epochs} epochs",
          flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        dataroot = os.path.join(tmp, "data")
        write_tiny_cifar(dataroot, n_train=cfg.images, n_test=256)
        grid = os.path.join(tmp, "grid.yaml")
        with open(grid, "w") as f:
            f.write(f"seed: {list(range(1, cfg.trials + 1))}\n")
        flags = ["--config", grid, "--arch", cfg.arch, "--width", str(cfg.width), "--batch_size",
                 str(cfg.batch_size), "--max_samples_per_gpu", str(cfg.batch_size), "--eval_batch_size", "1024",
                 "--epochs", str(cfg.epochs), "--dataroot", dataroot]
        at_once = ["--trials_per_gpu", str(cfg.trials)]
        base_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the split needs it unset
        ways = {"split": (at_once, base_env), "all": (at_once, {**base_env, "OMP_NUM_THREADS": str(all_threads)}),
                "in turn": ([], base_env)}
        for way, (extra, env) in ways.items():
            results[way] = run_sweep(flags + extra, os.path.join(tmp, "logs"), way.replace(" ", "_"), env)
            print(f"  {way:<8} {results[way][0]:6.1f} s, {statistics.median(results[way][1]):7.1f} images/s "
                  f"per trial", flush=True)
    probe_after = probe.memory_write_ms()

    print(f"\n{'':<10}{'wall s':>8}{'images/s':>10}{'per trial':>10}{'wall vs all':>13}{'vs in turn':>12}")
    for way, (seconds, rates) in results.items():
        rate = statistics.median(rates)
        print(f"{way:<10}{seconds:8.1f}{rate * (cfg.trials if way != 'in turn' else 1):10.1f}{rate:10.1f}"
              f"{results['all'][0] / seconds:12.2f}x{results['in turn'][0] / seconds:11.2f}x")
    print("(images/s: all trials together; wall vs all / vs in turn: that way's wall time over this one's)")
    print(f"\nmemory-write probe: before {probe_before:.3f} ms, after {probe_after:.3f} ms")
    probe.warn_if_slow(probe_before, probe_after)


if __name__ == "__main__":
    main()
