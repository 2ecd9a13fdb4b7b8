"""Run a YAML config's grid of trials, one after another or on a Ray cluster (`train.py --config`).

    python train.py --config configs/seed_table.yaml --cuda seed_table            # every grid point, in turn
    python train.py --config configs/seed_table.yaml --epochs 2 smoke             # command-line flags win
    python train.py --config configs/seed_table.yaml --cuda --ray auto seed_table # on a running Ray cluster

A config maps train.py's flags (argparse dests: `batch_size`, `optimizer`, ...) to values. A list is a grid
axis, except for a flag that takes a list itself (`lr_milestones`): there a list of lists is the axis and a
plain list is one value. The grid is the cartesian product of the axes in the file's order (the last axis
varies fastest). A config says what the trials compute; where and how they run (`--logroot`, `--dataroot`,
`--cuda`, `--eval_batch_size`, `--ray`, ...) is given on the command line, and any flag given on the command
line overrides the config for every trial (e.g. `--epochs 2` for a smoke run).

All trials go into one experiment. Re-running the same command skips the finished trials and resumes the
unfinished ones from their checkpoints: a grid point is the trial whose logged arguments have the same
`train.recipe` (everything but the runtime arguments), so nothing is trained twice and nothing is lost.

`--ray` runs the trials through Ray Tune, one trial per worker with 1 CPU and `--gpus_per_trial` GPUs (with
`--cuda`): `--ray auto` or `--ray HOST:PORT` joins a running cluster (`ray start --head` on the head node;
every node must see this directory, the data and the logroot at the same absolute paths), `--ray local`
starts a private Ray instance on this machine for the sweep's duration. Ray's own records go under
LOGROOT/EXPERIMENT/ray/; the results are the same track files as without Ray.
"""
import argparse
import copy
import itertools
import os
import sys
import time

import yaml

import data
import tracking
import train

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
# Keys a config may not hold: they say where or how trials run (give them on the command line), or they
# would break the sweep (`resume`: the sweep resumes by itself; `config`, `experimentname`).
FORBIDDEN_KEYS = set(train.RUNTIME_ARGS)
# Errors a trial reports that train.main turns into a one-line message (matched by name across processes).
TRIAL_ERRORS = {"UsageError": train.UsageError, "CheckpointError": train.CheckpointError,
                "Diverged": train.Diverged, "DataError": data.DataError}


class ConfigError(train.UsageError):
    """A config file that cannot be read or holds a bad key or value; names the file and the key."""


# ---------------------------------------------------------------- the config

def _actions():
    """argparse dest -> action, for train.py's parser."""
    return {a.dest: a for a in train.make_parser()._actions if a.dest != "help"}


def _describe(action):
    if action.nargs == 0:
        return "true or false"
    kind = {int: "an integer", float: "a number", None: "a string", str: "a string"}.get(action.type, "a value")
    if action.choices is not None:
        kind = "one of " + ", ".join(map(str, action.choices))
    if action.nargs in ("+", "*"):
        kind = f"a list of {kind.replace('an integer', 'integers').replace('a number', 'numbers')}"
    return kind


def _check_scalar(path, key, action, value):
    """The value as argparse would have made it from the command line, or a ConfigError."""
    if value is None and action.default is None:
        return None
    if action.nargs == 0:  # store_true
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: {key}: expected true or false, got {value!r}")
    bad = ConfigError(f"{path}: {key}: expected {_describe(action)}, got {value!r}")
    if isinstance(value, (bool, list, dict)) or value is None:
        raise bad
    kind = action.type or str
    if isinstance(value, str):
        try:  # as on the command line (YAML reads `5e-4`, without a dot, as a string)
            value = kind(value)
        except (TypeError, ValueError):
            raise bad from None
    elif kind is int:
        if not isinstance(value, int):
            raise bad
    elif kind is float:
        if not isinstance(value, (int, float)):
            raise bad
        value = float(value)
    elif kind is str:
        raise bad  # a number where a string (a choice) is expected
    if action.choices is not None and value not in action.choices:
        raise bad
    return value


def _check_value(path, key, action, value):
    if action.nargs in ("+", "*"):
        if value is None and action.default is None:
            return None
        if not isinstance(value, list) or (action.nargs == "+" and not value):
            raise ConfigError(f"{path}: {key}: expected {_describe(action)}, got {value!r}")
        return [_check_scalar(path, key, action, v) for v in value]
    return _check_scalar(path, key, action, value)


def load_config(path):
    """The config as {dest: [values]} (one value for a fixed key, several for a grid axis), checked."""
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config must be a mapping of train.py flags to values, "
                          f"got {type(config).__name__}")
    if not config:
        raise ConfigError(f"{path}: the config is empty")
    actions = _actions()
    axes = {}
    for key, value in config.items():
        if not isinstance(key, str) or key not in actions:
            raise ConfigError(f"{path}: {key}: not a train.py flag")
        if key in FORBIDDEN_KEYS:
            raise ConfigError(f"{path}: {key}: says where or how trials run, not what they compute; "
                              f"give --{key} on the command line, not in a config")
        action = actions[key]
        takes_list = action.nargs in ("+", "*")
        is_axis = isinstance(value, list) and (not takes_list or (value and all(isinstance(v, list) for v in value)))
        if isinstance(value, list) and not value:
            raise ConfigError(f"{path}: {key}: an empty list is an empty grid (no trial to run)")
        values = [_check_value(path, key, action, v) for v in (value if is_axis else [value])]
        if len({repr(v) for v in values}) < len(values):
            raise ConfigError(f"{path}: {key}: the grid axis repeats a value: {value!r}")
        axes[key] = values
    return axes


def expand(axes):
    """The grid's points, as {dest: value} dicts, in a deterministic order (the last axis varies fastest)."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def trial_args(args, point, explicit):
    """`args` with the grid point's values, except the flags given on the command line."""
    out = copy.deepcopy(args)
    for key, value in point.items():
        if key not in explicit:
            setattr(out, key, copy.deepcopy(value))
    out.resume = False  # the sweep picks the trial to resume itself
    return out


# ---------------------------------------------------------------- the plan

def _label(point, varying):
    return ", ".join(f"{k}={point[k]}" for k in varying) or "(single trial)"


def _match(recipe, trials):
    """The existing trial for this recipe: a finished one, else the newest unfinished one."""
    same = [t for t in trials if all(t.get(k) == v for k, v in recipe.items())]
    finished = [t for t in same if t.get("finished") is True]
    if finished:
        return finished[-1]
    return same[-1] if same else None


def plan(config_path, args, explicit):
    """[(label, trial_args, existing param map or None)] for every distinct grid point."""
    axes = load_config(config_path)
    overridden = sorted(k for k in axes if k in explicit)
    entries, seen = [], set()
    varying = [k for k, v in axes.items() if len(v) > 1 and k not in explicit]
    for point in expand(axes):
        targs = trial_args(args, point, explicit)
        try:
            train.validate(targs)
        except train.UsageError as e:
            raise ConfigError(f"{config_path}: grid point {_label(point, varying)}: {e}") from None
        recipe = train.recipe(targs)
        key = repr(recipe)
        if key in seen:  # the command line overrode an axis: its points collapse into one
            continue
        seen.add(key)
        entries.append((_label(point, varying), targs, recipe))
    try:
        trials = tracking.list_trials(args.logroot, args.experimentname)
    except ValueError as e:
        raise train.CheckpointError(str(e)) from None
    out = [(label, targs, _match(recipe, trials)) for label, targs, recipe in entries]
    exp_dir = tracking.experiment_dir(args.logroot, args.experimentname)
    print(f"sweep {config_path}: {len(out)} trial(s) into {exp_dir}"
          + (f" (the command line overrides {', '.join(overridden)})" if overridden else ""))
    for i, (label, _, existing) in enumerate(out, 1):
        state = ("new" if existing is None else
                 f"trial {existing['trial_id']}, " + ("finished: skip" if existing.get("finished") else "unfinished: resume"))
        print(f"  [{i}/{len(out)}] {label}: {state}")
    sys.stdout.flush()
    return out


# ---------------------------------------------------------------- running

def run(config_path, args, explicit):
    """Run every grid point of `config_path` not finished yet; returns the trials' summaries in grid order."""
    entries = plan(config_path, args, explicit)
    if args.ray:
        return _run_ray(entries, args)
    summaries, diverged = [], []
    for i, (label, targs, existing) in enumerate(entries, 1):
        prefix = f"[{i}/{len(entries)}] {label}"
        if existing is not None and existing.get("finished"):
            print(f"{prefix}: trial {existing['trial_id']} already finished: skipped", flush=True)
            summaries.append({"trial_id": existing["trial_id"], "finished": True, "skipped": True})
            continue
        resume_id = existing["trial_id"] if existing is not None else None
        print(f"{prefix}: " + (f"resuming trial {resume_id}" if resume_id else "new trial"), flush=True)
        try:
            summaries.append(train.train(targs, resume_id=resume_id))
        except train.Diverged as e:  # the recipe's outcome: carry on with the other points, report it at the end
            print(f"{prefix}: {e}", flush=True)
            diverged.append(f"{label}: {e}")
            summaries.append({"trial_id": resume_id, "finished": False, "error": str(e)})
        except tuple(TRIAL_ERRORS.values()) as e:  # the others stop the sweep: name the grid point
            raise type(e)(f"{prefix}: {e}") from None
    _report(entries, summaries)
    if diverged:
        raise train.Diverged(f"{len(diverged)} trial(s) of {config_path} diverged: " + "; ".join(diverged))
    return summaries


def _report(entries, summaries):
    print("sweep done:")
    for (label, _, _), s in zip(entries, summaries):
        state = "skipped (already finished)" if s.get("skipped") else (
            "finished" if s.get("finished") else ("failed" if s.get("error") else "stopped early"))
        print(f"  {label}: trial {s.get('trial_id')} {state}")
    sys.stdout.flush()


def _ray_trial(config, payloads):
    """Ray Tune trainable: one grid point, in a Ray worker (whose working directory is not ours)."""
    payload = payloads[config["index"]]
    args = argparse.Namespace(**payload["args"])
    # Tune starts us in its trial folder; work from the project's (track records its git state in the
    # param map, as for a local run). Every path in `args` is absolute.
    os.chdir(PROJECT_DIR)
    try:
        summary = train.train(args, resume_id=payload["resume_id"])
    except tuple(TRIAL_ERRORS.values()) as e:
        return {"sweep_error_type": type(e).__name__, "sweep_error": str(e), "sweep_finished": False}
    # (Tune's own result keys include `trial_id`: ours are prefixed.)
    return {"sweep_trial_id": summary["trial_id"], "sweep_finished": bool(summary["finished"]), "sweep_error": ""}


def _run_ray(entries, args):
    import ray
    from ray import tune

    todo = [i for i, (_, _, existing) in enumerate(entries) if not (existing and existing.get("finished"))]
    summaries = [{"trial_id": e["trial_id"], "finished": True, "skipped": True} if e and e.get("finished") else None
                 for _, _, e in entries]
    for i, (label, _, existing) in enumerate(entries):
        if i not in todo:
            print(f"[{i + 1}/{len(entries)}] {label}: trial {existing['trial_id']} already finished: skipped")
    if not todo:
        _report(entries, summaries)
        return summaries
    payloads = {}
    for i in todo:
        targs = copy.deepcopy(entries[i][1])
        targs.logroot, targs.dataroot = os.path.abspath(targs.logroot), os.path.abspath(targs.dataroot)
        targs.ray = ""
        existing = entries[i][2]
        payloads[i] = {"args": vars(targs), "resume_id": existing["trial_id"] if existing else None}

    started_here = False
    if not ray.is_initialized():
        pythonpath = os.pathsep.join(p for p in (PROJECT_DIR, os.environ.get("PYTHONPATH", "")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
        try:
            if args.ray == "local":
                ray.init(include_dashboard=False, runtime_env=runtime_env)
            else:
                ray.init(address=args.ray, runtime_env=runtime_env)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise train.UsageError(f"--ray {args.ray}: cannot connect to a Ray cluster ({e})".split("\n")[0]) from None
        started_here = True
    try:
        resources = {"cpu": 1, "gpu": args.gpus_per_trial if args.cuda else 0}
        storage = os.path.abspath(os.path.join(tracking.experiment_dir(args.logroot, args.experimentname), "ray"))
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_ray_trial, payloads=payloads), resources),
            param_space={"index": tune.grid_search(todo)},
            run_config=tune.RunConfig(name=time.strftime("sweep-%Y%m%d-%H%M%S"), storage_path=storage, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0)))
        results = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()

    failures = []
    for result in results:
        i = result.config["index"]
        label = entries[i][0]
        metrics = result.metrics or {}
        if result.error is not None:
            failures.append((label, RuntimeError, f"{type(result.error).__name__}: "
                                                  f"{str(result.error).strip().splitlines()[-1] if str(result.error).strip() else ''}"))
            summaries[i] = {"trial_id": payloads[i]["resume_id"], "finished": False, "error": str(result.error)}
        elif metrics.get("sweep_error") or "sweep_finished" not in metrics:
            message = metrics.get("sweep_error") or "the trial reported no result"
            failures.append((label, TRIAL_ERRORS.get(metrics.get("sweep_error_type"), RuntimeError), message))
            summaries[i] = {"trial_id": payloads[i]["resume_id"], "finished": False, "error": message}
        else:
            summaries[i] = {"trial_id": metrics["sweep_trial_id"], "finished": metrics["sweep_finished"]}
    _report(entries, summaries)
    if failures:
        kinds = {kind for _, kind, _ in failures}
        kind = kinds.pop() if len(kinds) == 1 else RuntimeError
        raise kind(f"{len(failures)} of {len(todo)} Ray trial(s) failed: "
                   + "; ".join(f"{label}: {msg}" for label, _, msg in failures))
    return summaries
