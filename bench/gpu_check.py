"""The GPU check's driver (bench/gpu_check.sh runs it): every section in its own subprocess with its own timeout.

    python bench/gpu_check.py              # on a GPU machine, about 8-9 minutes (see bench/gpu_check.sh)
    python bench/gpu_check.py --dry-run    # every section on the CPU at tiny sizes (~1 minute): catches typos

Sections, in order (each prints as it goes; a section that fails or times out is reported and the rest run):
  env          GPU, driver, torch, CUDA
  tests        the CUDA-marked tests (pytest -m cuda tests)
  throughput   ResNet18 width 64 images/s through trainer.build + trainer.train_step (augmentation included),
               eager: batch 64 (one micro-batch: launch-bound) and batch 16384 as 32 micro-batches of 512,
               fp32 and bf16 + channels_last
  syncs        host syncs in trainer.train_step under torch.cuda.set_sync_debug_mode("warn") (expect 0), and in
               the log interval's one read (expect 1: shows the counter works)
  optimizer    one step of LARS and SGD(foreach) on ResNet18's parameters (fp32 and bf16): time, and CUDA
               kernels per step() from torch.profiler; LARS.compile() for fp32
  accuracy     ResNet18 on real CIFAR-10 (a 30k-image class-balanced subset of the JPEG copy, carried in
               .gpu_data/), the tuned LARS recipe at batch 512, as many epochs as the time budget allows
  concurrent   1 trial vs 3 at once (train.py --config --trials_per_gpu 3) at batch 256: total images/s
  checkpoint   bench/checkpoint_cost.py: one checkpoint write (ResNet18 width 64 + LARS, from the GPU) against
               the batch-16384 bf16 epoch time measured above
  compiled     the throughput variants under torch.compile (model + LARS.compile()); the four compile in
               parallel processes, then are timed one at a time
  projection   wall time of the seed table (5 batch sizes x 200 epochs) from the measured rates, and on paper

--dry-run: width 4, a few hundred synthetic (or 200 real) images, batch 16 / 64 in micro-batches of 8, one or
two steps, torch.compile with backend "eager"; skips only what needs CUDA (the sync-debug counter, the CUDA
kernel count: CPU profiler events are counted instead) and says so.
"""
import argparse
import glob
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

SHARED_ZIP = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10-jpeg.zip")  # the team's ../shared
CARRIED_ZIP = os.path.join(ROOT, ".gpu_data", "cifar10-subset.zip")
TABLE_BATCHES = (64, 256, 1024, 4096, 16384)  # configs/seed_table.yaml
TABLE_EPOCHS = 200
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000
FORWARD_GFLOP = 0.56  # ResNet18 (CIFAR) per image, forward (as commonly quoted; it is multiply-accumulates)
H200_BF16_PEAK_TFLOPS = 989  # dense

# (name, timeout seconds, header)
SECTIONS = [
    ("env", 30, "environment"),
    ("tests", 150, "CUDA-marked tests"),
    ("throughput", 100, "throughput, eager"),
    ("syncs", 60, "host syncs per step"),
    ("optimizer", 90, "optimizer step"),
    ("accuracy", 260, "accuracy on real CIFAR-10"),
    ("concurrent", 100, "concurrent trials"),
    ("checkpoint", 40, "checkpoint write cost"),
    ("compiled", 200, "throughput, compiled"),
    ("projection", 20, "projection of the seed table"),
]
# kineto's chatter on stderr around every profile (and, without a GPU, its failed device query)
NOISE = ("SyncActivityProfilerHandler", "gpuGetDeviceCount failed")


def sizes(dry):
    if dry:
        return dict(width=4, small=(8, 8), big=(32, 8), images=64, warmup=1, steps=2, big_warmup=1, big_steps=1,
                    sync_batch=8, sync_steps=3, opt_reps=3, conc_batch=32, conc_images=128, conc_epochs=2,
                    conc_trials=2, acc_train=200, acc_test=100, acc_batch=50, acc_budget_s=0, backend="eager",
                    compile_warmup=1, compiled=("fp32_8", "bf16cl_32"))
    return dict(width=64, small=(64, 64), big=(16384, 512), images=16384, warmup=20, steps=100, big_warmup=1,
                big_steps=3, sync_batch=256, sync_steps=20, opt_reps=30, conc_batch=256, conc_images=25600,
                conc_epochs=3, conc_trials=3, acc_train=30000, acc_test=10000, acc_batch=512, acc_budget_s=170,
                backend="inductor", compile_warmup=3, compiled=None)


def variants(s):
    """(key, label, batch, micro, amp, channels_last) of the throughput measurements."""
    out = []
    for batch, micro in (s["small"], s["big"]):
        shape = f"batch {batch}" + (f" = {batch // micro} x {micro}" if micro < batch else "")
        out.append((f"fp32_{batch}", f"fp32, {shape}", batch, micro, "none", "off"))
        out.append((f"bf16cl_{batch}", f"bf16 + channels_last, {shape}", batch, micro, "bf16", "on"))
    return out


# ---------------------------------------------------------------- helpers for the sections

def _torch_device(dry):
    import torch
    return torch.device("cpu" if dry else "cuda")


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def _synthetic(n, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def _parts(s, batch, micro, amp, channels_last, device, n_images):
    import config
    import trainer
    recipe = config.Recipe(width=s["width"], batch_size=batch, max_samples_per_gpu=micro, amp=amp,
                           channels_last=channels_last)
    return trainer.build(recipe, config.plan(recipe, n_images), device)


def _compile(parts, backend):
    import torch
    parts.net = torch.compile(parts.net, backend=backend)
    parts.optimizer.compile(backend=backend)


def _endless(batches):
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def _time_steps(parts, stream, device, warmup, steps):
    """images/s of `steps` train_steps after `warmup` ones."""
    import trainer
    for _ in range(warmup):
        trainer.train_step(parts, *next(stream))
    _sync(device)
    started = time.perf_counter()
    n = 0
    for _ in range(steps):
        images, labels = next(stream)
        trainer.train_step(parts, images, labels)
        n += len(labels)
    _sync(device)
    return n / (time.perf_counter() - started)


def _measure(s, key, device, compiled=False, ready=None):
    import data
    import torch
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as trainer.run_trial
    (_, label, batch, micro, amp, cl), = [v for v in variants(s) if v[0] == key]
    x, y = _synthetic(max(batch, s["images"]))
    parts = _parts(s, batch, micro, amp, cl, device, len(y))
    if compiled:
        _compile(parts, s["backend"])
    stream = _endless(data.TrainBatches(x, y, batch, seed=0, device=device, channels_last=cl == "on"))
    big = batch == s["big"][0]
    warmup = s["compile_warmup"] if compiled else (s["big_warmup"] if big else s["warmup"])
    if ready is not None:  # compile and warm up, then wait for our turn on the GPU
        _time_steps(parts, stream, device, warmup, 0)
        ready()
        warmup = 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rate = _time_steps(parts, stream, device, warmup, s["big_steps"] if big else s["steps"])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return label, rate, peak


def _save(work, name, values):
    with open(os.path.join(work, f"{name}.json"), "w") as f:
        json.dump(values, f, indent=1)


def _load(work, name):
    path = os.path.join(work, f"{name}.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _epoch_rows(logroot, experiment):
    """[the epoch rows of each trial of the experiment], through store.py (no skeletor on the device)."""
    import store
    return [sorted((r for r in store.result_rows(logroot, experiment, t["trial_id"]) if r.get("kind") == "epoch"),
                   key=lambda r: r["epoch"]) for t in store.list_trials(logroot, experiment)]


def _steady_rate(rows):
    later = rows[1:] or rows
    return statistics.median(r["images_per_s"] for r in later)


# ---------------------------------------------------------------- sections

def section_env(s, work, dry):
    import torch
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{os.cpu_count()} CPUs")
    if dry:
        print("dry run: CPU only (CUDA available: %s)" % torch.cuda.is_available())
        return
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        print(done.stdout.strip() or done.stderr.strip())
    print(f"device: {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")


def section_tests(s, work, dry):
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests", "-p", "no:cacheprovider"]
    print("$ python " + " ".join(command[1:]))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=140)
    print("\n".join((done.stdout + done.stderr).strip().splitlines()[-15:]))
    if done.returncode not in (0, 5):  # 5: nothing collected/selected
        raise RuntimeError(f"pytest exit status {done.returncode}")


def section_throughput(s, work, dry):
    device = _torch_device(dry)
    print(f"ResNet18 width {s['width']}, trainer.build + trainer.train_step (LARS, GPU-resident augmentation); "
          f"batch {s['small'][0]}: {s['warmup']} warm-up + {s['steps']} timed steps; batch {s['big'][0]}: "
          f"{s['big_warmup']} + {s['big_steps']}")
    results = {}
    for key, *_ in variants(s):
        label, rate, peak = _measure(s, key, device)
        results[key] = rate
        _save(work, "throughput", results)
        print(f"  eager {label:<42} {rate:>10,.0f} images/s   peak {peak:6.2f} GiB", flush=True)


def section_syncs(s, work, dry):
    import warnings

    import torch

    import data
    import trainer
    device = _torch_device(dry)
    batch = s["sync_batch"]
    x, y = _synthetic(max(batch * 4, s["images"]))
    amp, cl = ("none", "off") if dry else ("bf16", "on")
    parts = _parts(s, batch, min(batch, 512), amp, cl, device, len(y))
    stream = _endless(data.TrainBatches(x, y, batch, seed=0, device=device, channels_last=cl == "on"))
    for _ in range(2):
        trainer.train_step(parts, *next(stream))
    _sync(device)
    counting = device.type == "cuda"
    if counting:
        torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as in_steps:
            warnings.simplefilter("always")
            sums = torch.zeros(2, dtype=torch.float64, device=device)
            for _ in range(s["sync_steps"]):
                loss_sum, correct = trainer.train_step(parts, *next(stream))
                sums += torch.stack([loss_sum.double(), correct.double()])  # as the loop does
        with warnings.catch_warnings(record=True) as in_read:
            warnings.simplefilter("always")
            sums.tolist()  # the log interval's read
    finally:
        if counting:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in in_steps if "synchroniz" in str(w.message)]
    read = [w for w in in_read if "synchroniz" in str(w.message)]
    if not counting:
        print(f"ran {s['sync_steps']} train_steps and the interval read on the CPU; "
              f"skipped: the sync-debug counter needs CUDA")
        return
    print(f"bf16 + channels_last, batch {batch}: {len(syncs)} synchronizing call(s) in {s['sync_steps']} "
          f"train_steps = {len(syncs) / s['sync_steps']:.2f} per step (expect 0); the interval read: {len(read)} "
          f"(expect 1)")
    for w in syncs[:5]:
        print(f"  at {w.filename}:{w.lineno}: {str(w.message).splitlines()[0][:150]}")


def _optimizer_tensors(width, device, dtype):
    import torch

    import models
    shapes = [p.shape for p in models.build("ResNet18", width=width).parameters()]
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(sh, generator=g) * 0.1).to(device, dtype)) for sh in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 0.01).to(device, dtype)
    return params


def _step_ms(optimizer, device, reps):
    import torch
    for _ in range(3):
        optimizer.step()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            optimizer.step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            optimizer.step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _events_per_step(optimizer, device, steps=5):
    """CUDA kernels per step() (on the CPU: aten ops, the closest count there)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.autograd import DeviceType
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            optimizer.step()
        _sync(device)
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == DeviceType.CUDA) / steps
    return sum(1 for e in events if e.name.startswith("aten::")) / steps


def section_optimizer(s, work, dry):
    import torch

    from lars import LARS
    device = _torch_device(dry)
    unit = "CUDA kernels" if device.type == "cuda" else "CPU aten ops (kernel count needs CUDA)"
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    print(f"ResNet18 width {s['width']} parameters; median step of {s['opt_reps']}; per step(): {unit}")
    results = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        makers = [("SGD(foreach)", lambda p: torch.optim.SGD(p, foreach=True, **hyper)),
                  ("LARS", lambda p: LARS(p, **hyper))]
        if dtype_name == "fp32":
            makers.append(("LARS.compile()", lambda p: LARS(p, **hyper)))
        for name, make in makers:
            optimizer = make(_optimizer_tensors(s["width"], device, dtype))
            if name.endswith("compile()"):
                optimizer.compile(backend=s["backend"])
                t0 = time.perf_counter()
                optimizer.step()
                _sync(device)
                name += f" (compiled in {time.perf_counter() - t0:.0f} s)"
            ms = _step_ms(optimizer, device, s["opt_reps"])
            launches = _events_per_step(optimizer, device)
            results[f"{dtype_name} {name}"] = {"ms": ms, "per_step": launches}
            print(f"  {dtype_name} params  {name:<32} {ms:8.3f} ms   {launches:6.0f} per step()", flush=True)
    _save(work, "optimizer", results)


def _accuracy_data(s, work, dry):
    """DATAROOT with the real-image CIFAR-10 pickles, built from the carried (or, dry, the shared) zip."""
    import cifar_jpeg
    dataroot = os.path.join(work, "cifar_real")
    source = CARRIED_ZIP
    if dry:  # a tiny subset of whichever zip is here, through the same two steps
        source = next((p for p in (SHARED_ZIP, CARRIED_ZIP) if os.path.exists(p)), None)
        if source is None:  # a machine without the team's copy: random JPEGs in the same layout
            source = os.path.join(work, "synthetic-jpeg.zip")
            cifar_jpeg.write_synthetic(source, s["acc_train"], s["acc_test"])
            print(f"no JPEG CIFAR-10 zip here ({SHARED_ZIP} or .gpu_data/): random images in its layout")
        tiny = os.path.join(work, "tiny-subset.zip")
        cifar_jpeg.subset(source, tiny, s["acc_train"], s["acc_test"])
        source = tiny
    elif not os.path.exists(source):
        return None, f"{source} is missing: run `bash bench/gpu_check.sh prepare` before the device call and " \
                     f"carry .gpu_data"
    t0 = time.perf_counter()
    n_train, n_test = cifar_jpeg.build(source, dataroot)
    print(f"rebuilt {n_train} train + {n_test} test images from {os.path.basename(source)} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return dataroot, None


def section_accuracy(s, work, dry, budget_s=None):
    dataroot, why = _accuracy_data(s, work, dry)
    if dataroot is None:
        raise RuntimeError(why)
    rate = _load(work, "throughput").get(f"bf16cl_{s['big'][0]}")
    epochs = 1
    if not dry:
        budget = min(s["acc_budget_s"], budget_s or s["acc_budget_s"])
        # an epoch: 30k training images at the measured rate, 10k test images at ~3x it, plus ~1 s of the rest
        epoch_s = (s["acc_train"] / rate + s["acc_test"] / (3 * rate) + 1.0) if rate else 6.0
        epochs = max(1, min(100, int(0.85 * (budget - 20) / epoch_s)))
        print(f"time budget {budget:.0f} s, estimated {epoch_s:.1f} s/epoch "
              f"({'from the measured bf16 rate' if rate else 'no measured rate: a guess'}) -> {epochs} epochs")
    flags = ["--width", str(s["width"]), "--epochs", str(epochs), "--batch_size", str(s["acc_batch"]),
             "--lr", "1.0", "--lr_scaling", "sqrt", "--warmup_fraction", "0.05", "--poly_power", "1",
             "--exclude_bn_bias", "--label_smoothing", "0.1", "--checkpoint_every", "1000",
             "--dataroot", dataroot, "--logroot", os.path.join(work, "logs")]
    if not dry:
        flags += ["--cuda", "--amp", "bf16", "--channels_last", "on"]
    command = [sys.executable, "train.py", "accuracy", *flags]
    print("$ python " + " ".join(command[1:]).replace(work, "$WORK"), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith(("epoch", "train.py", "Traceback")) or "Error" in line:
            print("  " + line.rstrip(), flush=True)
    if proc.wait() != 0:
        raise RuntimeError(f"train.py exit status {proc.returncode}")
    (rows,) = _epoch_rows(os.path.join(work, "logs"), "accuracy")
    last = rows[-1]
    print(f"ResNet18 width {s['width']}, LARS (lr 1.0 sqrt-scaled, 5% warmup, poly 1, no wd/LARS on BN, label "
          f"smoothing 0.1), batch {s['acc_batch']}, {'bf16 + channels_last' if not dry else 'fp32 CPU'}, "
          f"{len(rows)} epochs on a {s['acc_train']}-image class-balanced subset of CIFAR-10 (JPEG copy), tested on "
          f"{s['acc_test']} test images: test top-1 {last['test_top1']:.2f}% (best "
          f"{max(r['test_top1'] for r in rows):.2f}%), {time.perf_counter() - t0:.0f} s in all, "
          f"{_steady_rate(rows):,.0f} training images/s")


def section_concurrent(s, work, dry):
    import synthetic_cifar
    dataroot = os.path.join(work, "synthetic")
    synthetic_cifar.write_tiny_cifar(dataroot, n_train=s["conc_images"], n_test=1000 if not dry else 64)
    flags = ["--width", str(s["width"]), "--batch_size", str(s["conc_batch"]), "--epochs", str(s["conc_epochs"]),
             "--checkpoint_every", "1000", "--dataroot", dataroot, "--logroot", os.path.join(work, "logs")]
    if not dry:
        flags.append("--cuda")
    n = s["conc_trials"]
    grid = os.path.join(work, "seeds.yaml")
    with open(grid, "w") as f:
        f.write(f"seed: {list(range(1, n + 1))}\n")
    print(f"ResNet18 width {s['width']}, batch {s['conc_batch']}, {s['conc_images']} synthetic images, "
          f"{s['conc_epochs']} epochs, --amp/--channels_last auto; images/s of the epochs after the first")
    totals = {}
    for name, extra in (("one", []), ("several", ["--config", grid, "--trials_per_gpu", str(n)])):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "train.py", f"concurrent_{name}", *flags, *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=150)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"train.py ({name}) exit status {done.returncode}: "
                               f"{(done.stdout + done.stderr).strip().splitlines()[-3:]}")
        trials = _epoch_rows(os.path.join(work, "logs"), f"concurrent_{name}")
        rates = [_steady_rate(rows) for rows in trials]
        totals[name] = sum(rates)
        print(f"  {len(trials)} trial(s) at once: total {sum(rates):10,.0f} images/s (per trial "
              f"{', '.join(f'{r:,.0f}' for r in rates)}), {wall:.0f} s wall", flush=True)
    print(f"  {n} at once / one: {totals['several'] / totals['one']:.2f}x total throughput")
    totals["trials"] = n
    _save(work, "concurrent", totals)


def section_checkpoint(s, work, dry):
    """bench/checkpoint_cost.py on this machine's disk, against the batch-16384 epoch measured above."""
    rate = _load(work, "throughput").get(f"bf16cl_{s['big'][0]}")
    epoch_s = TRAIN_IMAGES / rate if rate and not dry else 3.0
    command = [sys.executable, "bench/checkpoint_cost.py", "--width", str(s["width"]), "--writes", "3",
               "--epoch_seconds", f"{epoch_s:.2f}", "--dir", work] + ([] if dry else ["--cuda"])
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=35)
    print((done.stdout + done.stderr).strip())
    if done.returncode != 0:
        raise RuntimeError(f"checkpoint_cost.py exit status {done.returncode}")


def section_compiled(s, work, dry, budget_s=None):
    """The variants compile in parallel processes (CPU-bound), then each is timed alone on the GPU."""
    keys = s["compiled"] or [v[0] for v in variants(s)]
    if s["compiled"]:
        print(f"dry run: {len(keys)} of the {len(variants(s))} variants ({', '.join(keys)})")
    procs = {}
    for key in keys:
        log = open(os.path.join(work, f"compile_{key}.log"), "w")
        threads = str(max(1, (os.cpu_count() or 1) // len(keys)))  # inductor's compile workers, shared fairly
        procs[key] = subprocess.Popen([sys.executable, __file__, "--compile-worker", key, "--work", work]
                                      + (["--dry-run"] if dry else []), cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT,
                                      env={**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": threads})
    deadline = time.time() + (budget_s or 200) - 30

    def flag(key, name):
        return os.path.join(work, f"compile_{key}.{name}")

    t0 = time.perf_counter()
    while time.time() < deadline and not all(os.path.exists(flag(k, "ready")) or procs[k].poll() is not None
                                             for k in keys):
        time.sleep(0.2)
    print(f"compiled and warmed up in {time.perf_counter() - t0:.0f} s (the {len(keys)} in parallel, "
          f"backend {s['backend']}); timing each alone:", flush=True)
    results = {}
    failed = []
    try:
        for key in keys:
            if not os.path.exists(flag(key, "ready")):
                failed.append(key)
                print(f"  {key}: not ready (" + ("exited " + str(procs[key].returncode) if procs[key].poll()
                                                 is not None else "still compiling") + f"; see compile_{key}.log)")
                continue
            open(flag(key, "go"), "w").close()
            while not os.path.exists(flag(key, "json")) and procs[key].poll() is None and time.time() < deadline + 25:
                time.sleep(0.05)
            if not os.path.exists(flag(key, "json")):
                failed.append(key)
                print(f"  {key}: no result")
                continue
            with open(flag(key, "json")) as f:
                label, rate, peak = json.load(f)
            results[key] = rate
            _save(work, "compiled", results)
            print(f"  compiled {label:<42} {rate:>10,.0f} images/s   peak {peak:6.2f} GiB", flush=True)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    if failed:
        for key in failed:
            with open(os.path.join(work, f"compile_{key}.log")) as f:
                print(f"  --- compile_{key}.log (tail)\n" + "".join(f.readlines()[-8:]))
        raise RuntimeError(f"{len(failed)} compiled variant(s) gave no result")


def compile_worker(key, work, dry):
    s = sizes(dry)
    base = os.path.join(work, f"compile_{key}")

    def ready():
        open(base + ".ready", "w").close()
        while not os.path.exists(base + ".go"):
            time.sleep(0.02)

    result = _measure(s, key, _torch_device(dry), compiled=True, ready=ready)
    with open(base + ".json.tmp", "w") as f:
        json.dump(result, f)
    os.replace(base + ".json.tmp", base + ".json")


def section_projection(s, work, dry):
    eager, compiled, concurrent = _load(work, "throughput"), _load(work, "compiled"), _load(work, "concurrent")
    small, big = s["small"][0], s["big"][0]
    print(f"the seed table: batch sizes {', '.join(map(str, TABLE_BATCHES))} x {TABLE_EPOCHS} epochs x "
          f"{TRAIN_IMAGES} images, + a {TEST_IMAGES}-image evaluation per epoch (at ~3x the training rate)")
    if dry:
        print("(dry run: CPU rates at tiny sizes; the hours below mean nothing)")

    def rate_at(rates, prefix, batch):
        r_small, r_big = rates.get(f"{prefix}_{small}"), rates.get(f"{prefix}_{big}")
        if not (r_small and r_big):
            return None
        if batch >= 512:  # micro-batches of 512 from 512 up
            return r_big
        t = (math.log(batch) - math.log(small)) / (math.log(512) - math.log(small))  # log-linear in between
        return math.exp((1 - t) * math.log(r_small) + t * math.log(r_big))

    for title, rates, prefix in (("eager fp32 (the seed table's amp none, channels_last off)", eager, "fp32"),
                                 ("eager bf16 + channels_last", eager, "bf16cl"),
                                 ("compiled fp32", compiled, "fp32"),
                                 ("compiled bf16 + channels_last", compiled, "bf16cl")):
        per_batch = {b: rate_at(rates, prefix, b) for b in TABLE_BATCHES}
        if None in per_batch.values():
            print(f"  {title}: not measured")
            continue
        seconds = {b: TABLE_EPOCHS * (TRAIN_IMAGES / r + TEST_IMAGES / (3 * r)) for b, r in per_batch.items()}
        print(f"  {title}: {sum(seconds.values()) / 3600:6.2f} h in turn ("
              + ", ".join(f"{b}: {sec / 3600:.2f} h" for b, sec in seconds.items()) + ")")
    if concurrent.get("one"):
        print(f"  {concurrent['trials']} trials at once at batch {s['conc_batch']} (--trials_per_gpu "
              f"{concurrent['trials']}) give {concurrent['several'] / concurrent['one']:.2f}x the total images/s of "
              f"one: the small-batch trials' share of the time divides by about that factor")
    flop = TABLE_EPOCHS * TRAIN_IMAGES * len(TABLE_BATCHES) * 3 * FORWARD_GFLOP * 1e9
    print(f"  on paper: {FORWARD_GFLOP} GFLOP/image forward x3 (forward + backward) x {TABLE_EPOCHS} x "
          f"{TRAIN_IMAGES} x {len(TABLE_BATCHES)} = {flop:.2e} FLOP: {flop / 100e12 / 60:.0f} min at 100 TFLOPS, "
          f"{flop / (0.4 * H200_BF16_PEAK_TFLOPS * 1e12) / 60:.1f}-"
          f"{flop / (0.3 * H200_BF16_PEAK_TFLOPS * 1e12) / 60:.1f} min at 30-40% of the H200's "
          f"{H200_BF16_PEAK_TFLOPS} bf16 TFLOPS (x2 if the 0.56 G are multiply-accumulates, as for ResNet18)")


FUNCTIONS = {"env": section_env, "tests": section_tests, "throughput": section_throughput,
             "syncs": section_syncs, "optimizer": section_optimizer, "accuracy": section_accuracy,
             "concurrent": section_concurrent, "checkpoint": section_checkpoint, "compiled": section_compiled,
             "projection": section_projection}


# ---------------------------------------------------------------- the driver

def _stream(proc):
    for line in proc.stdout:
        if any(noise in line for noise in NOISE):
            continue
        print("  " + line.rstrip() if line.strip() else "", flush=True)


def drive(dry, deadline_s, only):
    temporary = not os.environ.get("GPU_CHECK_WORK")
    work = os.environ.get("GPU_CHECK_WORK") or os.path.join("/tmp", f"gpu_check_{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    started = time.time()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    print(f"== gpu_check{' --dry-run' if dry else ''} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
          f"commit {commit.stdout.strip() or 'unknown'}, work folder {work}, deadline {deadline_s} s", flush=True)
    failures = []
    for name, timeout, header in SECTIONS:
        if only and name not in only:
            continue
        left = deadline_s - (time.time() - started)
        reserve = 0 if name == "projection" else 15  # the projection always gets its turn
        limit = min(timeout, left - 5 - reserve)
        print(f"\n== {header} [{name}] (timeout {max(0, limit):.0f} s)", flush=True)
        if limit < 10:
            print("SKIPPED: the call's time is spent")
            failures.append(name)
            continue
        t0 = time.time()
        command = [sys.executable, "-u", __file__, "--section", name, "--work", work, "--budget", f"{limit:.0f}"]
        proc = subprocess.Popen(command + (["--dry-run"] if dry else []), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        reader = threading.Thread(target=_stream, args=(proc,), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        reader.join(timeout=5)
        took = time.time() - t0
        if proc.returncode == 0:
            print(f"-- {name}: done in {took:.0f} s", flush=True)
        else:
            failures.append(name)
            state = f"TIMED OUT after {took:.0f} s" if proc.returncode == -9 else f"FAILED (exit {proc.returncode})"
            print(f"-- {name}: {state}", flush=True)
    if os.environ.get("OUT"):  # the measured numbers and the accuracy run's rows, beside the report
        import store
        keep = os.path.join(os.environ["OUT"], "gpu_check_files")
        os.makedirs(keep, exist_ok=True)
        for path in glob.glob(os.path.join(work, "*.json")) + glob.glob(os.path.join(work, "compile_*.log")) + \
                glob.glob(os.path.join(work, "logs", "accuracy", store.METADATA_FOLDER, "*.json")):
            shutil.copy(path, keep)
    print(f"\n== summary: {len(failures)} section(s) failed or timed out" + (f": {', '.join(failures)}" if failures
                                                                              else "") +
          f"; {time.time() - started:.0f} s in all", flush=True)
    if temporary:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="everything on the CPU at tiny sizes")
    parser.add_argument("--deadline", type=float, default=530, help="seconds for the whole check")
    parser.add_argument("--only", nargs="+", choices=list(FUNCTIONS), help="run just these sections")
    parser.add_argument("--section", choices=list(FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--compile-worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compile_worker:
        return compile_worker(args.compile_worker, args.work, args.dry_run)
    if args.section:
        function = FUNCTIONS[args.section]
        kwargs = {"budget_s": args.budget} if args.section in ("accuracy", "compiled") else {}
        try:
            function(sizes(args.dry_run), args.work, args.dry_run, **kwargs)
        except Exception as e:
            import traceback
            traceback.print_exc(limit=4, file=sys.stdout)
            print(f"ERROR: {type(e).__name__}: {e}")
            return 1
        return 0
    return drive(args.dry_run, args.deadline, args.only)


if __name__ == "__main__":
    sys.exit(main())
