"""Everything on disk: where a trial's files are, opening and resuming trials, checkpoints, reading results.

The only module that knows track-ml and skeletor-ml. A trial is stored in track-ml's layout

    LOGROOT/EXPERIMENT/trials/<trial_id>_param_map.json   its recipe, plan, runtime and status (one JSON object)
    LOGROOT/EXPERIMENT/trials/<trial_id>_result.json      one JSON object per logged row
    LOGROOT/EXPERIMENT/<trial_id>/                         last.pt, best.pt, and the writer's lock
    LOGROOT/EXPERIMENT/ray/                                Ray Tune's own records of a sweep run with --ray

and read back with skeletor's reader (`skeletor.proc`), as the seed's logs were. The files are written here
rather than through `track.Trial`, which cannot reopen a trial: the parameter file is replaced atomically,
result rows are appended (a resumed trial keeps its rows up to the checkpoint), and a lock in the trial
folder refuses a second writer. Values are plain Python numbers: track's JSON encoder mangles numpy scalars.

track and skeletor are imported only where results are read (skeletor takes ~20 s to import: it pulls in
ray and torchvision), so starting or resuming a trial does not pay for them.
"""
import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import uuid

# track-ml 0.1.1's names (track.constants), pinned in requirements.txt; a test checks they still agree.
METADATA_FOLDER = "trials"
PARAMS_SUFFIX = "param_map.json"
RESULT_SUFFIX = "result.json"
LOCK_NAME = ".writer.lock"
# LOGROOT/EXPERIMENT/.claims/<recipe digest>.lock: which sweep runs which grid point (see `claim`)
CLAIMS_FOLDER = ".claims"


class StoreError(Exception):
    """A file or folder that cannot be read or written, worded as one line that names it."""


class CheckpointError(StoreError):
    """A checkpoint that cannot be resumed."""


# ---------------------------------------------------------------- paths and up-front checks

def experiment_dir(logroot, experimentname):
    return os.path.join(logroot, experimentname)


def _name_limit(folder):
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return os.pathconf(folder or ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_destination(logroot, experimentname):
    """Before anything is loaded or written: --logroot is (or can become) a writable folder and this file
    system takes the experiment name (config.check_experimentname has made sure it is one plain folder name).
    Raises StoreError naming the flag; creates nothing."""
    name = experimentname
    if len(name.encode()) > _name_limit(logroot):
        raise StoreError(f"experiment name: {len(name.encode())} bytes is longer than the file system allows "
                         f"({_name_limit(logroot)})")
    if os.path.exists(logroot) and not os.path.isdir(logroot):
        raise StoreError(f"--logroot {logroot}: exists and is not a folder")
    existing = logroot
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    existing = existing or "."
    if not os.path.isdir(existing):
        raise StoreError(f"--logroot {logroot}: {existing} is not a folder")
    for folder in (experiment_dir(logroot, name), logroot, existing):
        if os.path.isdir(folder):
            _check_writable(folder, logroot)
            break
    _check_inside(logroot, name)


def _check_inside(logroot, experimentname):
    """The experiment folder and its trials folder, where they exist, resolve to folders under --logroot: a
    link that leads out of it would send every file of the experiment elsewhere."""
    root = os.path.realpath(logroot)
    experiment = experiment_dir(logroot, experimentname)
    for folder in (experiment, os.path.join(experiment, METADATA_FOLDER)):
        if os.path.lexists(folder):
            target = os.path.realpath(folder)
            if os.path.commonpath([root, target]) != root:
                raise StoreError(f"{folder}: leads to {target}, outside --logroot {logroot} (a symbolic link); "
                                 f"give that folder's parent as --logroot, or remove the link")


def _check_writable(folder, logroot):
    """access(2), not a probe file: it touches nothing (a probe would change the folder's mtime), and unlike
    the permission bits it tells root about read-only mounts and immutable folders."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"--logroot {logroot}: cannot write in {folder} (no write permission, or a read-only or "
                         f"immutable folder)")


def trial_dir(logroot, experimentname, trial_id):
    return os.path.join(experiment_dir(logroot, experimentname), trial_id)


def params_path(experiment_folder, trial_id):
    return os.path.join(experiment_folder, METADATA_FOLDER, f"{trial_id}_{PARAMS_SUFFIX}")


def _params_path(logroot, experimentname, trial_id):
    return params_path(experiment_dir(logroot, experimentname), trial_id)


def _results_path(logroot, experimentname, trial_id):
    return os.path.join(experiment_dir(logroot, experimentname), METADATA_FOLDER, f"{trial_id}_{RESULT_SUFFIX}")


def ray_dir(logroot, experimentname):
    """Where Ray Tune keeps its own records of a sweep (the trials' results are the files above)."""
    return os.path.join(experiment_dir(logroot, experimentname), "ray")


def result_rows(logroot, experimentname, trial_id):
    """A trial's result rows as written, without skeletor (a last line cut short by a crash is dropped)."""
    return _read_rows(_results_path(logroot, experimentname, trial_id), drop_cut_last_line=True, trial_id=trial_id)


def checkpoint_path(logroot, experimentname, trial_id, name="last.pt"):
    return os.path.join(trial_dir(logroot, experimentname, trial_id), name)


# ---------------------------------------------------------------- small atomic writes

def _io_error(path, e):
    return StoreError(f"{path}: cannot write ({e.strerror or e})")


class _RecordingFile:
    """A file whose last failed write is kept: torch.save turns an OSError of the file's write (a full disk)
    into a RuntimeError ("unexpected pos ...") that no longer says why."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self._f.flush()


def write_atomically(path, write):
    """`write(file_object)` into path.tmp, then rename over path: readers see the old file or the new one.
    On failure (a full disk) the temporary file is removed and a StoreError names `path`."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            recording = _RecordingFile(f)
            try:
                write(recording)
            except Exception:
                if recording.error is not None:
                    raise recording.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise _io_error(path, e) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _write_json(path, obj):
    write_atomically(path, lambda f: f.write(json.dumps(obj, sort_keys=True).encode()))


# ---------------------------------------------------------------- listing trials

def list_trials(logroot, experimentname):
    """The parameter files of the experiment's trials, oldest first ([] when there are none)."""
    folder = os.path.join(experiment_dir(logroot, experimentname), METADATA_FOLDER)
    if not os.path.isdir(folder):
        return []
    trials = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(PARAMS_SUFFIX):
            path = os.path.join(folder, name)
            try:
                trials.append(_read_params(path))
            except StoreError:
                if os.path.exists(path):
                    raise
                # removed since the listing: a trial stopped before its first checkpoint takes its files away
    return sorted(trials, key=lambda t: t.get("start_time", ""))


def _read_params(path):
    try:
        with open(path) as f:
            params = json.load(f)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) else " ".join(str(e).split())
        raise StoreError(f"{path}: not a readable trial parameter file ({reason})") from None
    if not isinstance(params, dict) or "trial_id" not in params:
        raise StoreError(f"{path}: not a trial parameter file (no trial_id)")
    return params


def trial_params(logroot, experimentname, trial_id):
    """A trial's parameter file, as a dict."""
    return _read_params(_params_path(logroot, experimentname, trial_id))


def mark_finished(logroot, experimentname, trial_id):
    """Set `finished` in the parameter file of a trial whose final checkpoint exists (under its lock)."""
    lock_file = _lock(os.path.join(trial_dir(logroot, experimentname, trial_id), LOCK_NAME), trial_id)
    try:
        params = trial_params(logroot, experimentname, trial_id)
        if params.get("finished") is not True:
            params.update(finished=True, end_time=datetime.datetime.now().isoformat())
            _write_json(_params_path(logroot, experimentname, trial_id), params)
    finally:
        lock_file.close()


def newest_unfinished(logroot, experimentname):
    """The trial id that --resume continues: the newest trial that has not finished."""
    trials = list_trials(logroot, experimentname)
    where = experiment_dir(logroot, experimentname)
    if not trials:
        raise CheckpointError(f"--resume: no trial under {where}")
    unfinished = [t for t in trials if t.get("finished") is not True]
    if not unfinished:
        raise CheckpointError(f"--resume: all {len(trials)} trial(s) under {where} have finished; nothing to resume")
    return unfinished[-1]["trial_id"]


# ---------------------------------------------------------------- a trial being written

def _git(*args):
    """git's output in this file's repository, or None (no git, not a checkout, a timeout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


# Committed outputs, not code: a study that commits its results as it goes changes them under running trials.
OUTPUT_FOLDERS = ("results", "images")


def code_version():
    """{"git_hash": the checkout's commit, "git_dirty": whether tracked files other than the committed outputs
    (OUTPUT_FOLDERS) differ from it} ("unknown" and None outside a git checkout). Untracked files (logs, data)
    do not make a checkout dirty."""
    commit = _git("rev-parse", "HEAD")
    changes = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                   *(f":(exclude){folder}" for folder in OUTPUT_FOLDERS)) if commit else None
    return {"git_hash": commit.strip() if commit else "unknown",
            "git_dirty": None if changes is None else bool(changes.strip())}


class Trial:
    """One trial opened for writing by this process, holding its lock until `close`.

    `open_trial` makes a new one or reopens an existing one; rows go to the result file with `log`,
    checkpoints with `save_checkpoint`, and `close(finished)` writes the final parameter file.
    """

    def __init__(self, logroot, experimentname, trial_id, params, lock_file, results_file, created=()):
        self.logroot, self.experimentname, self.trial_id = logroot, experimentname, trial_id
        self.params = params
        self.dir = trial_dir(logroot, experimentname, trial_id)
        self._lock_file = lock_file
        self._results = results_file
        self._results_path = _results_path(logroot, experimentname, trial_id)
        self._created = list(created)  # the folders open_trial made for it, outermost first
        self.saved = {}  # {checkpoint name: epoch} of the checkpoints this process wrote

    def log(self, **row):
        """Append one result row (`iteration` is the global optimizer step) and flush it to disk."""
        row["trial_id"] = self.trial_id
        try:
            self._results.write(json.dumps(row) + "\n")
            self._results.flush()
        except OSError as e:
            raise _io_error(self._results_path, e) from None

    def save_checkpoint(self, state, name="last.pt", same_as=None):
        """Write `state` (a dict with its "epoch") atomically as `name`; `same_as` names a checkpoint just
        written with this state, which is hard-linked instead (a later write of it replaces its file, so the
        link keeps these bytes)."""
        path = os.path.join(self.dir, name)
        if same_as is not None:
            try:
                os.link(os.path.join(self.dir, same_as), path + ".tmp")
                os.replace(path + ".tmp", path)
                self.saved[name] = state["epoch"]
                return
            except OSError:  # no hard links here (or a full disk): write it out
                _remove_quietly(path + ".tmp")
        import torch
        write_atomically(path, lambda f: torch.save(state, f))
        self.saved[name] = state["epoch"]

    def discard_checkpoint_after(self, epoch, name="best.pt"):
        """Remove checkpoint `name` unless it is a readable one of epoch `epoch` or before (a trial resumed from
        an older last.pt, --checkpoint_every > 1, drops the rows after it, and must not keep a best.pt from
        them). Returns why it is not there now ("missing", "damaged", "of a later epoch"), None if kept."""
        path = os.path.join(self.dir, name)
        if not os.path.exists(path):
            return "missing" if epoch > 0 else None
        try:
            reason = "of a later epoch" if load_checkpoint(path)["epoch"] > epoch else None
        except CheckpointError:  # cut short by a kill while it was written, or damaged by hand
            reason = "damaged"
        if reason:
            try:
                os.remove(path)
            except OSError as e:
                raise _io_error(path, e) from None
        return reason

    def discard(self):
        """Close and remove a trial this process created that holds nothing worth keeping (stopped before its
        first checkpoint): its files, and the folders made for it."""
        try:
            with contextlib.suppress(OSError):
                self._results.close()
            for path in (self._results_path, _params_path(self.logroot, self.experimentname, self.trial_id),
                         os.path.join(self.dir, LOCK_NAME)):
                _remove_quietly(path)
            _undo(self._created)
        finally:
            self._lock_file.close()

    def close(self, finished):
        """Write the final parameter file (`finished` marks a run that completed all its epochs), unlock."""
        try:
            self.params.update(finished=bool(finished), end_time=datetime.datetime.now().isoformat())
            try:
                self._results.close()
            except OSError as e:
                raise _io_error(self._results_path, e) from None
            _write_json(_params_path(self.logroot, self.experimentname, self.trial_id), self.params)
        finally:
            self._lock_file.close()


def new_trial_id():
    """Ten hex digits, as track's, but starting with a letter: pandas (under skeletor's reader) turns an id of
    digits only into a number, and track then fails to find its files."""
    while True:
        trial_id = uuid.uuid4().hex[:10]
        if trial_id[0].isalpha():
            return trial_id


def _lock(path, trial_id):
    """An OS-level lock: released by the kernel when the process dies, so a crash never leaves it stuck."""
    try:
        handle = open(path, "a")
    except OSError as e:
        raise _io_error(path, e) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.close()
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise StoreError(f"trial {trial_id} is being written by another process (lock {path}); "
                             f"wait for it to finish or stop it first") from None
        raise _io_error(path, e) from None
    return handle


def open_trial(logroot, experimentname, params, resume_id=None, keep_until_step=0):
    """A Trial for writing. New (resume_id None): a fresh id and folder. Reopened: the result rows after
    `keep_until_step` (from an interrupted epoch) are dropped; `params` replaces the parameter file.

    On a write failure nothing new is left behind: a new trial's folder and files are removed."""
    trial_id = resume_id or new_trial_id()
    folder = trial_dir(logroot, experimentname, trial_id)
    metadata = os.path.join(experiment_dir(logroot, experimentname), METADATA_FOLDER)
    created = []
    try:
        _make_folders(metadata, created)
        _make_folders(folder, created)
        lock_file = _lock(os.path.join(folder, LOCK_NAME), trial_id)
    except OSError as e:
        _undo(created)
        raise _io_error(folder, e) from None
    except StoreError:
        _undo(created)
        raise
    params = {**params, "trial_id": trial_id, "finished": False, **code_version(),
              "invocation": " ".join(sys.argv), "start_time": datetime.datetime.now().isoformat()}
    results_path = _results_path(logroot, experimentname, trial_id)
    try:
        if resume_id is not None:
            # a writer killed mid-write (SIGKILL) leaves its temporary files; this trial's are ours (we hold its lock)
            for where, prefix in ((folder, ""), (metadata, f"{trial_id}_")):
                for name in os.listdir(where):
                    if name.startswith(prefix) and name.endswith(".tmp"):
                        _remove_quietly(os.path.join(where, name))
            old = _params_path(logroot, experimentname, trial_id)
            params["start_time"] = _read_params(old).get("start_time", params["start_time"]) if os.path.exists(
                old) else params["start_time"]
            kept = [row for row in _read_rows(results_path, drop_cut_last_line=True, trial_id=trial_id)
                    if (row.get("iteration") or 0) <= keep_until_step]
            write_atomically(results_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
        _write_json(_params_path(logroot, experimentname, trial_id), params)
        results_file = open(results_path, "a")
    except BaseException as e:
        lock_file.close()
        if resume_id is None:
            for path in (results_path, _params_path(logroot, experimentname, trial_id),
                         os.path.join(folder, LOCK_NAME)):
                _remove_quietly(path)
            _undo(created)
        if isinstance(e, OSError):
            raise _io_error(results_path, e) from None
        raise
    return Trial(logroot, experimentname, trial_id, params, lock_file, results_file, created)


@contextlib.contextmanager
def claim(logroot, experimentname, recipe_json):
    """Held by a sweep while it runs one grid point (one recipe) of the experiment, so that sweeps run side by
    side over one config share its points instead of running one twice. Yields True when this process holds
    the claim, False when another process does. An OS-level lock, released by the kernel when its process dies;
    the folders made for it are removed again when the experiment has no trial afterwards (a trial that failed
    to start leaves nothing behind)."""
    folder = os.path.join(experiment_dir(logroot, experimentname), CLAIMS_FOLDER)
    path = os.path.join(folder, hashlib.sha1(json.dumps(recipe_json, sort_keys=True).encode()).hexdigest()[:16]
                        + ".lock")
    created = []
    try:
        try:
            _make_folders(folder, created)
            handle = open(path, "a")
        except FileNotFoundError:  # removed meanwhile by a claim that wrote no trial (below): make it again
            _make_folders(folder, created)
            handle = open(path, "a")
    except OSError as e:
        _undo(created)
        raise _io_error(path, e) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = True
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            handle.close()
            raise _io_error(path, e) from None
        held = False
    try:
        yield held
    finally:
        # only the holder tidies up, and before it lets go, so that no other process holds the file it removes
        if held and created and not _has_trials(logroot, experimentname):
            _remove_quietly(path)
            handle.close()
            _undo(created)
        else:
            handle.close()


def _has_trials(logroot, experimentname):
    try:
        return bool(list_trials(logroot, experimentname))
    except StoreError:  # an unreadable parameter file is still a trial's
        return True


def _make_folders(path, created):
    """Make `path` and whichever of its parents are missing, appending each folder made here to `created`
    (outermost first; one made meanwhile by a process starting beside this one is not ours)."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        missing.insert(0, path)
        path = os.path.dirname(path)
    for path in missing:
        try:
            os.mkdir(path)
            created.append(path)
        except FileExistsError:
            pass


def _undo(created):
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            pass


def _read_rows(path, drop_cut_last_line=False, trial_id=None):
    """The JSON rows of a result file; a bad line is a StoreError naming it. A last line cut short by a crash
    (no newline after it: rows are written whole, newline last) is dropped when `drop_cut_last_line` (a resumed
    trial rewrites its file without it). With `trial_id`, each row must be one the kit wrote for that trial
    (`_check_row`): a line edited by hand is refused, never dropped or kept silently."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise StoreError(f"{path}: cannot read ({e.strerror or e})") from None
    lines = text.split("\n")
    rows, seen = [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if drop_cut_last_line and number == len(lines) and line.lstrip().startswith("{"):
                break
            raise StoreError(f"{path}: line {number} is not valid JSON: the file is damaged or cut short") from None
        if not isinstance(row, dict):
            raise StoreError(f"{path}: line {number} is not a JSON object")
        if trial_id is not None:
            _check_row(path, number, row, trial_id, seen)
        rows.append(row)
    return rows


def _check_row(path, number, row, trial_id, seen):
    """A StoreError naming the line unless `row` is one the kit could have written for the trial after the
    rows before it (`seen` carries what they were): the trial's id, an iteration that never goes back, one
    row per step and one per epoch, epochs in order."""
    def refuse(problem):
        raise StoreError(f"{path}: line {number} {problem}: not a row this trial wrote (edited by hand?); "
                         f"restore the file, or move the trial out of the experiment")
    if row.get("trial_id") != trial_id:
        refuse(f"belongs to trial {row.get('trial_id')!r}, not {trial_id}")
    iteration = row.get("iteration")
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        refuse(f"has iteration {iteration!r}, not a step number")
    if "iteration" in seen and iteration < seen["iteration"][0]:
        refuse(f"has iteration {iteration}, before the {seen['iteration'][0]} of line {seen['iteration'][1]}")
    seen["iteration"] = (iteration, number)
    kind = row.get("kind")
    if kind in ("step", "epoch"):
        value = iteration if kind == "step" else row.get("epoch")
        if isinstance(value, bool) or not isinstance(value, int):
            refuse(f"is a {kind} row with {kind} {value!r}")
        if kind in seen and value <= seen[kind][0]:
            refuse(f"repeats or goes back to {kind} {value} (line {seen[kind][1]} has {kind} {seen[kind][0]})")
        seen[kind] = (value, number)


# ---------------------------------------------------------------- checkpoints

def load_checkpoint(path):
    """A checkpoint's state dict, or a CheckpointError in one line (a damaged file is not a security problem,
    whatever torch's message suggests)."""
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        kind = "cut short or damaged" if isinstance(e, (EOFError, RuntimeError)) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({kind}); delete it to start the trial "
                              f"again") from None


# ---------------------------------------------------------------- reading results back

def read_results(experiment_folder):
    """All rows of all trials of an experiment as one pandas DataFrame, through skeletor's reader (each row
    carries its trial's parameters)."""
    import skeletor.proc
    return skeletor.proc.df_from_proj(skeletor.proc.proj(proj_dir=experiment_folder))


def read_experiment(experiment_folder):
    """[(params, rows)] for every trial of an experiment folder; rows are the result rows as dicts.

    Every file is validated first (a damaged line is a StoreError naming the file and line); the rows
    then come through skeletor's reader when every trial has a result file, as the seed's analysis did
    (its pandas JSON parser may round a float in its last digit).
    """
    if not os.path.isdir(experiment_folder):
        raise StoreError(f"{experiment_folder}: no such directory")
    folder = os.path.join(experiment_folder, METADATA_FOLDER)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    params_list = [_read_params(os.path.join(folder, n)) for n in names if n.endswith(PARAMS_SUFFIX)]
    if not params_list:
        raise StoreError(f"{experiment_folder}: no trials here (no {METADATA_FOLDER}/*_{PARAMS_SUFFIX}); "
                         f"give an experiment folder LOGROOT/EXPERIMENT")
    direct = {p["trial_id"]: _read_rows(os.path.join(folder, f"{p['trial_id']}_{RESULT_SUFFIX}"),
                                        trial_id=p["trial_id"])
              for p in params_list}
    rows_by_id = dict(direct)
    if all(direct.values()):
        try:
            df = read_results(experiment_folder)
        except Exception as e:  # pandas raises many types
            raise StoreError(f"{experiment_folder}: skeletor could not read the results ({type(e).__name__}: "
                             f"{' '.join(str(e).split())})") from None
        for trial_id, group in df.groupby(df["trial_id"].astype(str), sort=False):
            records, raw = group.to_dict("records"), direct.get(trial_id, [])
            records = records[:len(raw)]  # a running trial may have logged more since the first read
            if len(records) != len(raw):
                raise StoreError(f"{experiment_folder}: skeletor read {len(records)} rows of trial {trial_id}, "
                                 f"its file has {len(raw)}")
            # skeletor's frame has every column in every row: keep each row's own keys, its values as read, except
            # where a parameter has the key's name (e.g. noise_scale): the frame then holds the parameter's value
            params = next(p for p in params_list if str(p["trial_id"]) == trial_id)
            rows_by_id[trial_id] = [{k: row[k] if k in params else record[k] for k in row}
                                    for record, row in zip(records, raw)]
    return [(p, rows_by_id.get(str(p["trial_id"]), [])) for p in params_list]

