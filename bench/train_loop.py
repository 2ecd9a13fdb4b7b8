"""The training loop's speed: the restructured train.py against the pre-restructure one, --malloc, --compile.

    python bench/train_loop.py                     # CPU: ResNet18 width 8, 2048 synthetic images, batch 256
    python bench/train_loop.py --rounds 1 --epochs 2 --images 512 --no-compile     # a smoke run (~1 min)
    OMP_NUM_THREADS=1 python bench/train_loop.py --arch AirbenchNet --width 16 --batch_size 512 --images 4096 \
        --epochs 3 --rounds 2 --no-compile          # (b) as the CPU study ran its trials (one thread each)

Every run is `train.py` in a subprocess with the same flags on synthetic CIFAR-format files
(synthetic_cifar.write_tiny_cifar), and its speed is the `images_per_s` of its epoch rows (training phase
only: no evaluation, no checkpoint) in the epochs after the first: the median and the best of those epochs
over all rounds are reported (the best is the least disturbed by other load on a shared machine).
  (a) new vs old: this checkout's train.py (trainer.run_trial: host sync every --log_interval steps) against
      train.py at git revision 07e9aa6 (before the restructure: a host sync and a track row every step),
      extracted with `git archive` into a temporary folder, both with the allocator of `--malloc reuse` (the
      old one, which has no such flag, through glibc's environment variables MALLOC_MMAP_MAX_ and
      MALLOC_TRIM_THRESHOLD_: under glibc's defaults the epochs of one run spread by 10-25 %). Ratio new/old:
      target >= 1.0 within noise. Skipped (and said so) without the revision. On the CPU a host sync costs
      nothing (the CPU computes synchronously): the new loop saves only the per-step row writes there; what it
      saves on a GPU, bench/gpu_check.py measures (host syncs per step).
  (b) --malloc: the new train.py with its default `--malloc reuse` against `--malloc system`, same rounds.
      Every round runs each side once, the order rotating from round to round.
  (c) --compile: one run of the new train.py with --compile, on a fresh inductor cache. Compile time = first
      epoch's seconds minus the median of the later epochs'; steady-state ratio = compiled / eager images/s
      (eager: the default runs of (b)).
  (d) a memory-write probe (in-place add_ on a 2.8 MB tensor) before and after: ~0.1 ms on a quiet machine;
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
import host_memory  # noqa: E402
import models  # noqa: E402
import probe  # noqa: E402  (bench/probe.py)
import store  # noqa: E402
from synthetic_cifar import write_tiny_cifar  # noqa: E402

OLD_REVISION = "07e9aa6"
OLD_ARCHS = ("ResNet18", "ResNet34", "ResNet50")  # the nets of OLD_REVISION


def extract_old(revision, into):
    """The pre-restructure tree in `into`, or None (with the reason) when git or the revision is missing."""
    try:
        archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"git unavailable ({type(e).__name__})"
    if archive.returncode != 0:
        lines = archive.stderr.decode(errors="replace").strip().splitlines()
        return None, lines[-1] if lines else "git archive failed"
    os.makedirs(into, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return into, None


def run_train_py(code_dir, flags, logroot, name, env=None):
    """Run code_dir/train.py; returns its epoch rows (dicts), oldest first."""
    command = [sys.executable, os.path.join(code_dir, "train.py"), name, *flags, "--logroot", logroot]
    done = subprocess.run(command, cwd=code_dir, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                           f"\n{done.stderr[-3000:]}")
    (trial,) = store.list_trials(logroot, name)  # the old revision wrote the same (track-ml) layout
    rows = store.result_rows(logroot, name, trial["trial_id"])
    return sorted((r for r in rows if r.get("kind") == "epoch"), key=lambda r: r["epoch"])


def steady_values(rows, key):
    """`key` of the epochs after the first (the first pays for warm-up or compilation)."""
    return [r[key] for r in (rows[1:] or rows)]


def steady(rows, key):
    return statistics.median(steady_values(rows, key))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ResNet18", choices=models.ARCHS,
                        help=f"the net; (a) needs one the old revision has: {', '.join(OLD_ARCHS)}")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--images", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--test_images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the epochs after the first are timed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one run per side, the order rotating")
    parser.add_argument("--no-compile", dest="compiled", action="store_false", help="skip part (c)")
    cfg = parser.parse_args()

    probe_before = probe.memory_write_ms()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; "
          f"{cfg.arch} width {cfg.width}, batch {cfg.batch_size}, {cfg.images} synthetic images, "
          f"{cfg.epochs} epochs per run", flush=True)
    print(f"memory-write probe before: {probe_before:.3f} ms (add_ on 2.8 MB; quiet machine ~0.1 ms)", flush=True)
    flags = ["--arch", cfg.arch, "--width", str(cfg.width), "--epochs", str(cfg.epochs),
             "--batch_size", str(cfg.batch_size), "--max_samples_per_gpu", str(cfg.batch_size),
             "--eval_batch_size", "1024"]
    # side: (code folder, extra flags, environment); the old train.py has no --malloc: glibc reads the same
    # settings from its environment at start. --amp none and no --channels_last are its defaults, as the new
    # one's on the CPU
    reuse_env = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(host_memory.KEEP_BYTES)}
    sides = {"old": (None, [], reuse_env), "new, --malloc system": (ROOT, ["--malloc", "system"], None),
             "new": (ROOT, [], None)}
    rates = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        dataroot = os.path.join(tmp, "data")
        write_tiny_cifar(dataroot, n_train=cfg.images, n_test=cfg.test_images)
        flags += ["--dataroot", dataroot]
        if cfg.arch in OLD_ARCHS:
            old_dir, why = extract_old(OLD_REVISION, os.path.join(tmp, "old"))
            if old_dir is None:
                print(f"(a) skipped: revision {OLD_REVISION} is not available here ({why})", flush=True)
        else:
            old_dir = None
            print(f"(a) skipped: revision {OLD_REVISION} has no {cfg.arch}", flush=True)
        if old_dir is None:
            del sides["old"], rates["old"]
        else:
            sides["old"] = (old_dir, [], reuse_env)
        new_rows = []
        names = list(sides)
        for r in range(cfg.rounds):
            for side in names[r % len(names):] + names[:r % len(names)]:  # the order rotates
                code_dir, extra, env = sides[side]
                experiment = f"side{names.index(side)}_round{r}"
                rows = run_train_py(code_dir, flags + extra, os.path.join(tmp, "logs"), experiment, env)
                rates[side] += steady_values(rows, "images_per_s")
                if side == "new":
                    new_rows.append(rows)
                print(f"  round {r + 1}: {side:<22} {steady(rows, 'images_per_s'):8.1f} images/s", flush=True)
        compiled_rows = None
        if cfg.compiled:
            # a fresh inductor cache: the compile time of a first run, not of a cache hit
            compiled_rows = run_train_py(ROOT, flags + ["--compile"], os.path.join(tmp, "logs"), "compiled",
                                         env={"TORCHINDUCTOR_CACHE_DIR": os.path.join(tmp, "inductor_cache")})
    probe_after = probe.memory_write_ms()

    print(f"\n(a, b) train.py images/s over the epochs 2..{cfg.epochs} of {cfg.rounds} round(s) "
          f"({len(rates['new'])} epochs each)")
    print(f"  {'':<50}{'median':>10}{'best':>10}")
    labels = {"old": f"old ({OLD_REVISION}, sync + row every step), reuse",
              "new, --malloc system": "new (sync every --log_interval), --malloc system",
              "new": "new (default: --malloc reuse)"}
    for side, values in rates.items():
        print(f"  {labels[side]:<50}{statistics.median(values):10.1f}{max(values):10.1f}")
    for (a, b), what in ((("new", "old"), "(a) new/old, both reuse (target >= 1.0 within noise)"),
                         (("new", "new, --malloc system"), "(b) --malloc reuse / system")):
        if a in rates and b in rates:
            print(f"  {what}: median {statistics.median(rates[a]) / statistics.median(rates[b]):.3f}, "
                  f"best {max(rates[a]) / max(rates[b]):.3f}")
    for side, values in rates.items():
        print(f"  epochs, {side}: {', '.join(f'{v:.0f}' for v in values)}")
    new = statistics.median(rates["new"])
    if compiled_rows is not None:
        eager_epoch = statistics.median(steady(rows, "epoch_seconds") for rows in new_rows)
        first, later = compiled_rows[0]["epoch_seconds"], steady(compiled_rows, "epoch_seconds")
        rate = steady(compiled_rows, "images_per_s")
        print("\n(c) --compile (model + LARS.compile())")
        print(f"  compile time ~{first - later:.1f} s, cold cache (first epoch {first:.1f} s - steady epoch "
              f"{later:.2f} s; eager steady epoch {eager_epoch:.2f} s)")
        print(f"  steady-state images/s compiled {rate:.1f} vs eager {new:.1f}: ratio compiled/eager "
              f"{rate / new:.3f}")
    print(f"\n(d) memory-write probe: before {probe_before:.3f} ms, after {probe_after:.3f} ms")
    probe.warn_if_slow(probe_before, probe_after)


if __name__ == "__main__":
    main()
