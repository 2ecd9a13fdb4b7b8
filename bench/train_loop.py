"""The training loop's speed: train.py with --malloc reuse against --malloc system, and with --compile.

    python bench/train_loop.py                     # CPU: ResNet18 width 8, 2048 synthetic images, batch 256
    python bench/train_loop.py --rounds 1 --epochs 2 --images 512 --no-compile     # a smoke run (~1 min)
    OMP_NUM_THREADS=1 python bench/train_loop.py --arch AirbenchNet --width 16 --batch_size 512 --images 4096 \
        --epochs 3 --rounds 2 --no-compile          # (a) as the CPU study ran its trials (one thread each)

Every run is `train.py` in a subprocess with the same flags on synthetic CIFAR-format files
(synthetic_cifar.write_tiny_cifar), and its speed is the `images_per_s` of its epoch rows (training phase
only: no evaluation, no checkpoint) in the epochs after the first: the median and the best of those epochs
over all rounds are reported (the best is the least disturbed by other load on a shared machine).
  (a) --malloc: train.py with its default `--malloc reuse` against `--malloc system` (under glibc's defaults
      the epochs of one run spread by 10-25 %). Every round runs each side once, the order rotating from round
      to round.
  (b) --compile: one run of train.py with --compile, on a fresh inductor cache. Compile time = first epoch's
      seconds minus the median of the later epochs'; steady-state ratio = compiled / eager images/s (eager:
      the default runs of (a)).
  (c) a memory-write probe (in-place add_ on a 2.8 MB tensor) before and after: ~0.1 ms on a quiet machine;
      several ms means the machine is in a slow state and the ratios are invalid (a warning says so).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import models  # noqa: E402
import probe  # noqa: E402  (bench/probe.py)
import store  # noqa: E402
from synthetic_cifar import write_tiny_cifar  # noqa: E402


def run_train_py(flags, logroot, name, env=None):
    """Run train.py; returns its epoch rows (dicts), oldest first."""
    command = [sys.executable, os.path.join(ROOT, "train.py"), name, *flags, "--logroot", logroot]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                           f"\n{done.stderr[-3000:]}")
    (trial,) = store.list_trials(logroot, name)
    rows = store.result_rows(logroot, name, trial["trial_id"])
    return sorted((r for r in rows if r.get("kind") == "epoch"), key=lambda r: r["epoch"])


def steady_values(rows, key):
    """`key` of the epochs after the first (the first pays for warm-up or compilation)."""
    return [r[key] for r in (rows[1:] or rows)]


def steady(rows, key):
    return statistics.median(steady_values(rows, key))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ResNet18", choices=models.ARCHS, help="the net")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--images", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--test_images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the epochs after the first are timed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one run per side, the order rotating")
    parser.add_argument("--no-compile", dest="compiled", action="store_false", help="skip part (b)")
    cfg = parser.parse_args()

    probe_before = probe.memory_write_ms()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; "
          f"{cfg.arch} width {cfg.width}, batch {cfg.batch_size}, {cfg.images} synthetic images, "
          f"{cfg.epochs} epochs per run", flush=True)
    print(f"memory-write probe before: {probe_before:.3f} ms (add_ on 2.8 MB; quiet machine ~0.1 ms)", flush=True)
    flags = ["--arch", cfg.arch, "--width", str(cfg.width), "--epochs", str(cfg.epochs),
             "--batch_size", str(cfg.batch_size), "--max_samples_per_gpu", str(cfg.batch_size),
             "--eval_batch_size", "1024"]
    sides = {"--malloc system": ["--malloc", "system"], "--malloc reuse": []}  # the second: train.py's default
    rates = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        dataroot = os.path.join(tmp, "data")
        write_tiny_cifar(dataroot, n_train=cfg.images, n_test=cfg.test_images)
        flags += ["--dataroot", dataroot]
        new_rows = []
        names = list(sides)
        for r in range(cfg.rounds):
            for side in names[r % len(names):] + names[:r % len(names)]:  # the order rotates
                experiment = f"side{names.index(side)}_round{r}"
                rows = run_train_py(flags + sides[side], os.path.join(tmp, "logs"), experiment)
                rates[side] += steady_values(rows, "images_per_s")
                if side == "--malloc reuse":
                    new_rows.append(rows)
                print(f"  round {r + 1}: {side:<22} {steady(rows, 'images_per_s'):8.1f} images/s", flush=True)
        compiled_rows = None
        if cfg.compiled:
            # a fresh inductor cache: the compile time of a first run, not of a cache hit
            compiled_rows = run_train_py(flags + ["--compile"], os.path.join(tmp, "logs"), "compiled",
                                         env={"TORCHINDUCTOR_CACHE_DIR": os.path.join(tmp, "inductor_cache")})
    probe_after = probe.memory_write_ms()

    print(f"\n(a) train.py images/s over the epochs 2..{cfg.epochs} of {cfg.rounds} round(s) "
          f"({len(rates['--malloc reuse'])} epochs each)")
    print(f"  {'':<20}{'median':>10}{'best':>10}")
    for side, values in rates.items():
        print(f"  {side:<20}{statistics.median(values):10.1f}{max(values):10.1f}")
    reuse, system = rates["--malloc reuse"], rates["--malloc system"]
    print(f"  --malloc reuse / system: median {statistics.median(reuse) / statistics.median(system):.3f}, "
          f"best {max(reuse) / max(system):.3f}")
    for side, values in rates.items():
        print(f"  epochs, {side}: {', '.join(f'{v:.0f}' for v in values)}")
    new = statistics.median(reuse)
    if compiled_rows is not None:
        eager_epoch = statistics.median(steady(rows, "epoch_seconds") for rows in new_rows)
        first, later = compiled_rows[0]["epoch_seconds"], steady(compiled_rows, "epoch_seconds")
        rate = steady(compiled_rows, "images_per_s")
        print("\n(b) --compile (model + LARS.compile())")
        print(f"  compile time ~{first - later:.1f} s, cold cache (first epoch {first:.1f} s - steady epoch "
              f"{later:.2f} s; eager steady epoch {eager_epoch:.2f} s)")
        print(f"  steady-state images/s compiled {rate:.1f} vs eager {new:.1f}: ratio compiled/eager "
              f"{rate / new:.3f}")
    print(f"\n(c) memory-write probe: before {probe_before:.3f} ms, after {probe_after:.3f} ms")
    probe.warn_if_slow(probe_before, probe_after)


if __name__ == "__main__":
    main()
