"""Run a YAML config's grid of trials: in turn, several at once, or on a Ray cluster (`train.py --config`).

    python train.py --config configs/seed_table.yaml --cuda seed_table            # every grid point, in turn
    python train.py --config configs/seed_table.yaml --epochs 2 smoke             # command-line flags win
    python train.py --config configs/cpu_study/x.yaml --trials_per_gpu 2 x        # two trials at a time
    python train.py --config configs/seed_table.yaml --cuda --ray auto seed_table # on a running Ray cluster

A config maps recipe flags (`batch_size`, `optimizer`, ...) to values, and may give the experiment a readable
`name:` (plot_results.py labels its figures with it; in a list of grids, the first grid's). A list is a grid axis, except for a
flag that takes a list itself (`lr_milestones`): there a list of lists is the axis and a plain list is one
value. The grid is the cartesian product of the axes in the file's order (the last axis varies fastest).
A config may also be a list of such mappings: several grids, run one after another (e.g. a recipe per batch
size; YAML anchors `&base` / `<<: *base` share the common keys).
Where and how trials run (`--logroot`, `--cuda`, ...) is given on the command line, except how often a trial is
observed (`eval_every`, `log_interval`: counted in steps, so a grid may set them for its batch size), and any flag given on the
command line overrides the config for every trial (e.g. `--epochs 2` for a smoke run).

All trials go into one experiment. Re-running the same command skips the finished trials and resumes the
unfinished ones from their checkpoints: a grid point is the trial whose logged recipe is the same. Sweeps of
one config may run side by side (two machines sharing the logroot, or a second process): each grid point is
claimed by the sweep that runs it, and the others leave it to that one.

`--trials_per_gpu N` runs up to N trials at once, each in its own process (small-batch trials alone leave a
GPU idle) with 1/N of the CPU threads (unless OMP_NUM_THREADS is set). `--ray` runs them through Ray Tune, one trial per worker with 1 CPU and `--gpus_per_trial` GPUs:
`--ray auto` or `--ray HOST:PORT` joins a running cluster (every node must see this directory, the data and
the logroot at the same absolute paths), `--ray local` starts a private Ray instance for the sweep's duration.
"""
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time

import torch
import yaml

import config
import data
import interrupts
import store
import trainer

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
# Errors a trial reports as one line; matched by name when they come back from another process.
TRIAL_ERRORS = {cls.__name__: cls for cls in (config.UsageError, store.StoreError, store.CheckpointError,
                                             trainer.Diverged, trainer.OutOfMemory, data.DataError)}


# How often a trial is observed: a grid may set these (in optimizer steps, so the right value depends on the
# grid's batch size); they are not part of what a trial computes, so they do not tell trials apart.
GRID_RUNTIME_KEYS = ("eval_every", "log_interval")
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a process gets when its parent dies
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_NOT_STARTED = "stopped before its first step; nothing written"


class ConfigError(config.UsageError):
    """A config file that cannot be read or holds a bad key or value; names the file and the key."""


class SweepFailed(Exception):
    """Some trials of a sweep failed (diverged, or stopped by an error); names each, in one line."""


# ---------------------------------------------------------------- the config

def _typed(path, key, value):
    """One value of `key` as the command line would have made it, or a ConfigError naming file and key."""
    raw = value
    scalar, takes_list, _ = config.field_kind(key)
    try:
        if isinstance(value, str) and scalar in (int, float):  # YAML reads `5e-4`, without a dot, as a string
            value = config.parse_value(key, value)  # (a comma-separated list too, for a list flag)
        elif takes_list and isinstance(value, list):
            value = tuple(config.parse_value(key, v) if isinstance(v, str) else (v,) for v in value)
            if any(len(v) != 1 for v in value):
                raise config.UsageError(f"--{key}: expected {config.describe(key)} (a YAML list of numbers, or "
                                        f"one comma-separated string), got {raw!r}")
            value = tuple(v[0] for v in value)
        elif takes_list and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,)  # as `--lr_milestones 100` on the command line
        return config.check_value(key, value)
    except config.UsageError as e:
        raise ConfigError(f"{path}: {key}: {str(e).split(': ', 1)[1]}") from None


class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping of a config."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last one
    silently). Keys that a merge (`<<: *base`) brings in may be overridden: that is what merging is for."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in lines:
                    raise _DuplicateKey(f"{key}: given twice, on lines {lines[key]} and {line} (YAML would keep "
                                        f"the second silently); give it once")
                lines[key] = line
            except TypeError:  # an unhashable key: the base loader says so
                break
        return super().construct_mapping(node, deep)


def load_config(path):
    """The config as a list of grids, each {name: [values]} (one value for a fixed key, several for an axis),
    checked."""
    try:
        with open(path) as f:
            raw = yaml.load(f, Loader=_UniqueKeyLoader)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    grids = raw if isinstance(raw, list) else [raw]
    if not raw or not all(isinstance(g, dict) and g for g in grids):
        raise ConfigError(f"{path}: a config must be a mapping of recipe flags to values (or a list of such "
                          f"mappings), got {'nothing' if not raw else type(raw).__name__}")
    return [_load_grid(path, grid) for grid in grids]


def _load_grid(path, raw):
    axes = {}
    for key, value in raw.items():
        if key == "name":  # the experiment's readable name, for plot_results's figures (it reads it from here)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{path}: name: expected a readable name (text), got {value!r}")
            continue
        if key in config.RUNTIME_KEYS and key not in GRID_RUNTIME_KEYS:
            raise ConfigError(f"{path}: {key}: says where or how trials run, not what they compute; "
                              f"give --{key} on the command line, not in a config")
        if key in GRID_RUNTIME_KEYS and isinstance(value, list):
            raise ConfigError(f"{path}: {key}: says how often a trial is observed, not what it computes: one "
                              f"value per grid, not a grid axis")
        if not isinstance(key, str) or key not in config.RECIPE_KEYS + GRID_RUNTIME_KEYS:
            raise ConfigError(f"{path}: {key}: not a train.py flag")
        takes_list = config.field_kind(key)[1]
        is_axis = isinstance(value, list) and (not takes_list or (value and all(isinstance(v, list) for v in value)))
        if isinstance(value, list) and not value:
            raise ConfigError(f"{path}: {key}: an empty list is an empty grid (no trial to run)")
        values = [_typed(path, key, v) for v in (value if is_axis else [value])]
        if len({repr(v) for v in values}) < len(values):
            raise ConfigError(f"{path}: {key}: the grid axis repeats a value: {value!r}")
        axes[key] = values
    return axes


def expand(axes):
    """The grid's points, as {name: value} dicts, in a deterministic order (the last axis varies fastest)."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


# ---------------------------------------------------------------- the plan

def _label(point, varying):
    return ", ".join(f"{k}={list(point[k]) if isinstance(point[k], tuple) else point[k]}" for k in varying
                     if k in point) or "(single trial)"


def _match(recipe_json, trials):
    """The existing trial for this recipe: a finished one, else the newest unfinished one."""
    same = [t for t in trials if config.recipe_json(t) == recipe_json]
    finished = [t for t in same if t.get("finished") is True]
    if finished:
        return finished[-1]
    return same[-1] if same else None


def grid_entries(config_path, recipe, runtime, given):
    """[(label, recipe, runtime, existing parameter file or None)] for every distinct grid point.

    `recipe` and `runtime` hold the command line's values; those of the flags in `given` override the config
    (a grid's `eval_every` and `log_interval` go to its points' runtime)."""
    grids = load_config(config_path)
    overridden = sorted({k for axes in grids for k in axes if k in given})
    keys = list(dict.fromkeys(k for axes in grids for k in axes))
    # a label names what tells the points apart: axes, and keys whose value differs between grids
    varying = [k for k in keys if k not in given and len({repr(v) for axes in grids for v in axes.get(k, [None])}) > 1]
    entries, seen = [], set()
    for point in (p for axes in grids for p in expand(axes)):
        point_recipe = dataclasses.replace(recipe, **{k: v for k, v in point.items()
                                                     if k not in given and k not in GRID_RUNTIME_KEYS})
        point_runtime = dataclasses.replace(runtime, **{k: v for k, v in point.items()
                                                       if k not in given and k in GRID_RUNTIME_KEYS})
        try:
            resolved = trainer.prepare(point_recipe, point_runtime)
        except config.UsageError as e:
            raise ConfigError(f"{config_path}: grid point {_label(point, varying)}: {e}") from None
        key = repr(resolved)
        if key in seen:  # the command line overrode an axis: its points collapse into one
            continue
        seen.add(key)
        entries.append((_label(point, varying), point_recipe, point_runtime, config.as_json(resolved)))
    trials = store.list_trials(runtime.logroot, runtime.experimentname)
    out = [(label, r, rt, _match(recipe_json, trials)) for label, r, rt, recipe_json in entries]
    print(f"sweep {config_path}: {len(out)} trial(s) into {store.experiment_dir(runtime.logroot, runtime.experimentname)}"
          + (f" (the command line overrides {', '.join(overridden)})" if overridden else ""))
    for i, (label, _, _, existing) in enumerate(out, 1):
        state = "new" if existing is None else f"trial {existing['trial_id']}, " + (
            "finished: skip" if existing.get("finished") else "unfinished: resume")
        print(f"  [{i}/{len(out)}] {label}: {state}")
    sys.stdout.flush()
    return out


# ---------------------------------------------------------------- running

def _run_one(recipe_json, runtime_json, resume_id):
    """One trial in a worker process; errors come back as (type name, message).

    The trial runs under the sweep's claim on its grid point (store.claim): a point claimed by another sweep
    over the same experiment is left to it, and one that another sweep started or finished since this sweep
    listed the trials is resumed or skipped, so that two sweeps side by side never run a point twice."""
    recipe, runtime = config.recipe_from_json(recipe_json), config.Runtime(**runtime_json)
    try:
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # under torchrun every rank runs every point, in step: no claims
            return trainer.run_trial(recipe, runtime, resume_id=resume_id)
        point = config.as_json(trainer.prepare(recipe, runtime))
        with store.claim(runtime.logroot, runtime.experimentname, point) as claimed:
            if not claimed:
                return {"trial_id": resume_id, "finished": False, "elsewhere": True}
            existing = _match(point, store.list_trials(runtime.logroot, runtime.experimentname))
            if existing and existing.get("finished"):
                return {"trial_id": existing["trial_id"], "finished": True, "skipped": True}
            return trainer.run_trial(recipe, runtime, resume_id=existing["trial_id"] if existing else None)
    except tuple(TRIAL_ERRORS.values()) as e:
        return {"trial_id": resume_id, "finished": False, "error_type": type(e).__name__, "error": str(e)}


def run(config_path, recipe, runtime, given):
    """Run every grid point not finished yet; returns the trials' summaries in grid order."""
    entries = grid_entries(config_path, recipe, runtime, given)
    todo = [i for i, (_, _, _, existing) in enumerate(entries) if not (existing and existing.get("finished"))]
    summaries = [{"trial_id": e["trial_id"], "finished": True, "skipped": True} if i not in todo else None
                 for i, (_, _, _, e) in enumerate(entries)]
    for i, (label, _, _, existing) in enumerate(entries):
        if i not in todo:
            print(f"[{i + 1}/{len(entries)}] {label}: trial {existing['trial_id']} already finished: skipped")
    # each trial is resumed by id
    jobs = {i: (config.as_json(entries[i][1]),
                config.as_json(dataclasses.replace(entries[i][2], resume=False, config="")),
                entries[i][3]["trial_id"] if entries[i][3] else None) for i in todo}
    if runtime.ray:
        results = _run_ray(jobs, runtime)
    elif runtime.trials_per_gpu > 1:
        results = _run_parallel(jobs, runtime.trials_per_gpu)
    else:
        results = {}
        for i, job in jobs.items():
            label = entries[i][0]
            print(f"[{i + 1}/{len(entries)}] {label}: " + (f"resuming trial {job[2]}" if job[2] else "new trial"),
                  flush=True)
            try:
                results[i] = _run_one(*job)
                if results[i].get("elsewhere"):
                    print(f"[{i + 1}/{len(entries)}] {label}: being run by another sweep: left to it", flush=True)
            except interrupts.Stopped as e:
                raise interrupts.Stopped(e.signum, f"sweep {config_path} [{i + 1}/{len(entries)}] {label}: "
                                                   f"{e.where or _NOT_STARTED}", e.kept) from None
            except Exception as e:  # not one of the trial errors (a bug, a torch error): the others still run
                results[i] = _failure(job, e)
    failures = []
    for i, result in results.items():
        summaries[i] = result
        if result.get("error"):
            failures.append((entries[i][0], result["error_type"], result["error"]))
    _report(entries, summaries)
    if failures:
        message = (f"{len(failures)} of {len(todo)} trial(s) of {config_path} failed: "
                   + "; ".join(f"{label}: {msg}" for label, _, msg in failures))
        bad_input = all(issubclass(TRIAL_ERRORS.get(kind, Exception), config.UsageError) for _, kind, _ in failures)
        raise config.UsageError(message) if bad_input else SweepFailed(message)
    return summaries


def _report(entries, summaries):
    print("sweep done:")
    for (label, *_), s in zip(entries, summaries):
        state = "not run" if s is None else "skipped (already finished)" if s.get("skipped") else (
            "left to the other sweep running it" if s.get("elsewhere") else "finished" if s.get("finished") else (
                "failed" if s.get("error") else "stopped early"))
        print(f"  {label}: trial {(s or {}).get('trial_id')} {state}")
    sys.stdout.flush()


def _run_parallel(jobs, workers):
    """Up to `workers` trials at once on the same device, each in a fresh process of its own (spawned: CUDA
    cannot be forked), so that a worker that dies (out of memory, killed) fails its own trial only. The data
    is fetched here first, so that the workers do not download it side by side.

    Ctrl-C reaches every process of the terminal's group, SIGTERM this one only: either way this process
    stops starting trials, sends SIGTERM to the running ones (each closes its trial, checkpoint kept) and
    waits for them, then raises Stopped naming each."""
    for dataroot, dataset in {(rt["dataroot"], r["dataset"]) for r, rt, _ in jobs.values()}:
        data.load_cifar(dataroot, dataset)
    context = multiprocessing.get_context("spawn")
    cpu_threads = _threads_per_trial(workers)
    running, guard, stopping = set(), threading.Lock(), threading.Event()

    def run_in_own_process(job):
        # a worker starts with both signals blocked (the mask is inherited): one that comes while it imports
        # torch waits until its handlers are in place, rather than end it with a traceback
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        with guard:
            if stopping.is_set():
                return {"trial_id": job[2], "finished": False, "stopped": _NOT_STARTED}
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_worker, args=(send, job, os.getpid(), cpu_threads))
            process.start()
            running.add(process)
        send.close()
        try:
            result = receive.recv()
        except EOFError:  # the process died without a word (killed, out of memory)
            process.join()
            result = _failure(job, RuntimeError(f"the trial's process ended with exit code {process.exitcode} "
                                                f"before reporting"))
        process.join()
        with guard:
            running.discard(process)
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as threads:
        futures = {}
        try:
            for i, job in jobs.items():
                futures[i] = threads.submit(run_in_own_process, job)
            return {i: future.result() for i, future in futures.items()}
        except interrupts.Stopped as stop:  # further signals do nothing now (interrupts.stop_on_signals)
            with guard:
                stopping.set()
                for process in running:
                    with contextlib.suppress(OSError):
                        os.kill(process.pid, signal.SIGTERM)
            results = [future.result() for future in futures.values()]
            where = "; ".join(r["stopped"] for r in results if r.get("stopped") and r["stopped"] != _NOT_STARTED)
            raise interrupts.Stopped(stop.signum, "sweep stopped: " + (where or "no trial had started"),
                                     kept=True) from None


def _worker(send, job, parent_pid, threads):
    """A trial's process (see _run_parallel): its set-up, the trial, and its result (or where it stopped) sent
    back to the sweep."""
    with interrupts.stop_on_signals():
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            _start_worker(parent_pid, threads)
            result = _run_one(*job)
        except interrupts.Stopped as e:
            result = {"trial_id": job[2], "finished": False, "stopped": e.where or _NOT_STARTED}
        except Exception as e:
            result = _failure(job, e)
        with contextlib.suppress(OSError):  # the sweep's process is gone
            send.send(result)


def _threads_per_trial(workers):
    """CPU threads for each of `workers` trials at once: an equal share of this process's torch threads (at least
    one), so that they do not oversubscribe the cores as each would by taking all of them (two AirbenchNet
    trials at once on 2 cores: 717 images/s each with one thread, 507 with two; bench/concurrent_trials.py).
    None, leaving each worker torch's default, when OMP_NUM_THREADS says how many."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, torch.get_num_threads() // workers)


def _start_worker(parent_pid, threads):
    """A trial worker's set-up: its share of the CPU threads (None: torch's default), and its end with the sweep."""
    if threads is not None:
        torch.set_num_threads(threads)
    _end_with_parent(parent_pid)


def _end_with_parent(parent_pid):
    """In a trial's worker process: be ended (SIGTERM) when the sweep's process dies, on Linux, rather than run
    on as an orphan that holds its trial's lock; the next run of the sweep resumes the trial from its checkpoint."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl (not Linux): an orphan finishes its trial
        return
    if os.getppid() != parent_pid:  # the sweep died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _failure(job, error):
    """The summary of a trial stopped by an error that is not one of TRIAL_ERRORS."""
    return {"trial_id": job[2], "finished": False, "error_type": type(error).__name__,
            "error": " ".join(f"{type(error).__name__}: {error}".split())}


def _ray_trial(ray_config, jobs):
    """Ray Tune trainable: one grid point, in a Ray worker (whose working directory is not ours)."""
    os.chdir(PROJECT_DIR)  # every path in the job is absolute
    result = _run_one(*jobs[ray_config["index"]])
    # (Tune's own result keys include `trial_id`: ours are prefixed.)
    return {"sweep_" + k: v for k, v in result.items()}


def _run_ray(jobs, runtime):
    import ray
    from ray import tune

    absolute = {"logroot": os.path.abspath(runtime.logroot), "dataroot": os.path.abspath(runtime.dataroot),
                "ray": ""}
    jobs = {i: (r, {**rt, **absolute}, resume) for i, (r, rt, resume) in jobs.items()}
    started_here = False
    if not ray.is_initialized():
        pythonpath = os.pathsep.join(p for p in (PROJECT_DIR, os.environ.get("PYTHONPATH", "")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
        try:
            ray.init(address=None if runtime.ray == "local" else runtime.ray, include_dashboard=False,
                     runtime_env=runtime_env)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise config.UsageError(f"--ray {runtime.ray}: cannot connect to a Ray cluster "
                                    f"({' '.join(str(e).split())})") from None
        started_here = True
    try:
        resources = {"cpu": 1, "gpu": runtime.gpus_per_trial if runtime.cuda else 0}
        storage = store.ray_dir(absolute["logroot"], runtime.experimentname)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_ray_trial, jobs=jobs), resources),
            param_space={"index": tune.grid_search(list(jobs))},
            run_config=tune.RunConfig(name=time.strftime("sweep-%Y%m%d-%H%M%S"), storage_path=storage, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0)))
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    results = {}
    for result in grid:
        i, metrics = result.config["index"], result.metrics or {}
        if result.error is not None or "sweep_finished" not in metrics:
            message = " ".join(str(result.error or "the trial reported no result").split())[-300:]
            results[i] = {"trial_id": jobs[i][2], "finished": False, "error_type": "RuntimeError", "error": message}
        else:
            results[i] = {k[len("sweep_"):]: v for k, v in metrics.items() if k.startswith("sweep_")}
    return results
