"""Hostile input (issue 14): every bad value, name, folder or fault is one `train.py: error:` line naming the
flag or file (and the expected range), exit status 2 for bad input and 1 for a failed run, no traceback, and
nothing created or changed under --logroot (or outside it)."""
import errno
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch

import config
import data
import store
import train
import trainer
from conftest import (ROOT, epoch_rows, only_trial, result_rows, run_expecting_error, run_expecting_stop, tiny_flags,
                      tree)

# the end-to-end runs here train on 100 images (2 steps per epoch) and evaluate 50: a CPU shared with others
QUICK = ("--train_subset", "100", "--test_subset", "50", "--max_samples_per_gpu", "50")


def quick_flags(dataroot, logroot, *extra):
    return tiny_flags(dataroot, logroot, *QUICK, *extra)


@pytest.fixture
def no_data_load(monkeypatch):
    """Bad input must be refused before the data is loaded."""
    def load(*args, **kwargs):
        raise AssertionError("the data was loaded before the input was checked")
    monkeypatch.setattr(data, "load_cifar", load)


def files(path):
    """{relative path: bytes} of every file under path: what a failed run must leave as it was."""
    out = {}
    for folder, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), path)] = f.read()
    return out


def tmp_files(path):
    return [os.path.join(f, n) for f, _, names in os.walk(path) for n in names if n.endswith(".tmp")]


# ---------------------------------------------------------------- bad values: exit 2, nothing written

BAD_VALUES = {
    "lr nan": (["--lr", "nan"], "--lr: expected a finite number >= 0"),
    "eta nan": (["--eta", "nan"], "--eta: expected a finite number > 0"),
    "weight_decay nan": (["--weight_decay", "nan"], "--weight_decay: expected a finite number >= 0"),
    "warmup_epochs nan": (["--warmup_epochs", "nan"], "--warmup_epochs: expected a finite number >= 0"),
    "warmup_epochs -1e-3": (["--warmup_epochs", "-1e-3"], "--warmup_epochs: expected a finite number >= 0"),
    "lr inf": (["--lr", "inf"], "--lr: expected a finite number >= 0"),
    "lr_gamma nan": (["--lr_gamma", "nan"], "--lr_gamma: expected a finite number > 0 and <= 1"),
    "config lr .nan": (["--config", "{tmp}/nan.yaml"], "nan.yaml: lr: expected a finite number >= 0"),
    "config lr .inf": (["--config", "{tmp}/inf.yaml"], "inf.yaml: lr: expected a finite number >= 0"),
    "seed -1": (["--seed", "-1"], "--seed: expected an integer >= 0 and <= 4294967295"),
    "seed 2**40": (["--seed", str(2**40)], "--seed: expected an integer >= 0 and <= 4294967295"),
    "lr_gamma -1": (["--lr_gamma", "-1"], "--lr_gamma: expected a finite number > 0 and <= 1"),
    "lr_milestones -1,5": (["--lr_milestones", "-1,5"], "--lr_milestones: expected comma-separated integers >= 0"),
    "lr_milestones=-1": (["--lr_milestones=-1"], "--lr_milestones: expected comma-separated integers >= 0"),
    "poly_power -1 (cosine)": (["--poly_power", "-1", "--schedule", "cosine"],
                               "--poly_power: expected a finite number > 0"),
}


@pytest.mark.parametrize("extra, words", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_are_one_line_errors_that_write_nothing(extra, words, tmp_path, capsys, no_data_load):
    (tmp_path / "nan.yaml").write_text("lr: .nan\n")
    (tmp_path / "inf.yaml").write_text("lr: .inf\n")
    extra = [e.format(tmp=tmp_path) for e in extra]
    existing = tmp_path / "logs"
    (existing / "old").mkdir(parents=True)
    (existing / "old" / "kept.txt").write_text("kept")
    before = tree(tmp_path)
    err = run_expecting_error(["bad", *tiny_flags(tmp_path / "data", existing), *extra], capsys, code=2)
    assert words in err
    assert tree(tmp_path) == before
    fresh = tmp_path / "new" / "logs"
    assert run_expecting_error(["bad", *tiny_flags(tmp_path / "data", fresh), *extra], capsys, code=2) == err
    assert not (tmp_path / "new").exists()


def test_milestones_are_one_value_and_do_not_swallow_the_experiment_name():
    args = config.make_parser().parse_args(["--lr_milestones", "1,2", "myexp", "--schedule", "step"])
    assert args.experimentname == "myexp" and args.lr_milestones == (1, 2)
    args = config.make_parser().parse_args(["--lr_milestones=3", "myexp"])
    assert args.experimentname == "myexp" and args.lr_milestones == (3,)


# ---------------------------------------------------------------- experiment names: exit 2, nothing anywhere

@pytest.mark.parametrize("name", ["x" * 300, "..", "../escaped", "", "a/b", "."],
                         ids=["300 chars", "dotdot", "../escaped", "empty", "a-slash-b", "dot"])
def test_unsafe_experiment_names_are_refused(name, tmp_path, capsys, no_data_load):
    logroot = tmp_path / "logs"
    logroot.mkdir()
    before = tree(tmp_path)
    err = run_expecting_error([name, *tiny_flags(tmp_path / "data", logroot)], capsys, code=2)
    assert "experimentname: expected a" in err and ("single folder name" in err or "255 bytes" in err)
    assert tree(tmp_path) == before  # nothing inside the logroot, nor beside it (../escaped)
    err = run_expecting_error([name, *tiny_flags(tmp_path / "data", tmp_path / "new" / "logs")], capsys, code=2)
    assert not (tmp_path / "new").exists() and not (tmp_path / "escaped").exists()


# ---------------------------------------------------------------- --logroot faults: exit 1, before the data load

def test_logroot_that_is_a_file(tmp_path, capsys, no_data_load):
    (tmp_path / "afile").write_text("mine")
    before = tree(tmp_path)
    for logroot in (tmp_path / "afile", tmp_path / "afile" / "logs"):
        err = run_expecting_error(["exp", *tiny_flags(tmp_path / "data", logroot)], capsys, code=1)
        assert f"--logroot {logroot}" in err and "not a folder" in err
    assert tree(tmp_path) == before and (tmp_path / "afile").read_text() == "mine"


@pytest.fixture
def immutable(tmp_path):
    """A folder nobody (root included) can create files in: `chattr +i`; skipped where chattr fails."""
    folder = tmp_path / "immutable"
    folder.mkdir()
    try:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    except OSError as e:
        pytest.skip(f"no chattr ({e})")
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("below", ["", "logs"], ids=["logroot", "its-parent"])
def test_logroot_in_an_immutable_folder(below, immutable, tmp_path, capsys, no_data_load):
    logroot = immutable / below if below else immutable
    before = tree(tmp_path)
    err = run_expecting_error(["exp", *tiny_flags(tmp_path / "data", logroot)], capsys, code=1)
    assert f"--logroot {logroot}: cannot write in {immutable}" in err
    assert tree(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="permission bits do not stop root (the chattr test covers it)")
def test_logroot_without_write_permission(tmp_path, capsys, no_data_load):
    logroot = tmp_path / "readonly"
    logroot.mkdir()
    logroot.chmod(0o500)
    try:
        before = tree(tmp_path)
        err = run_expecting_error(["exp", *tiny_flags(tmp_path / "data", logroot)], capsys, code=1)
        assert f"--logroot {logroot}: cannot write" in err and tree(tmp_path) == before
    finally:
        logroot.chmod(0o700)


# ---------------------------------------------------------------- a full disk during the run

class FullDisk:
    """The disk fills up while the 2nd epoch's checkpoint is written: from then on every fsync (which a
    checkpoint, a result rewrite and a parameter file go through) fails with ENOSPC, until `free()`."""

    def __init__(self):
        self.armed, self.full = True, False

    def free(self):
        self.full = False


@pytest.fixture
def full_disk(monkeypatch):
    disk = FullDisk()
    real_save, real_fsync = torch.save, os.fsync

    def save(state, f, *args, **kwargs):
        if disk.armed and isinstance(state, dict) and state.get("epoch") == 2:
            disk.armed, disk.full = False, True
        return real_save(state, f, *args, **kwargs)

    def fsync(fd):
        if disk.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "fsync", fsync)
    return disk


@pytest.mark.slow
def test_disk_full_keeps_the_last_good_checkpoint_and_resume_changes_nothing(tiny_cifar10, tmp_path, capsys,
                                                                             full_disk):
    root, _ = tiny_cifar10
    logroot = tmp_path / "logs"
    err = run_expecting_error(["full", *quick_flags(root, logroot)], capsys, code=1)
    trial_dir, trial = only_trial(logroot, "full")
    assert f"{os.path.join(trial_dir, 'last.pt')}: cannot write (No space left on device)" in err
    assert torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)["epoch"] == 1
    assert trial["finished"] is False and tmp_files(logroot) == []

    before = files(logroot)
    err = run_expecting_error(["full", "--resume", *quick_flags(root, logroot)], capsys, code=1)  # still full
    assert "_result.json: cannot write (No space left on device)" in err
    assert files(logroot) == before and tmp_files(logroot) == []  # no second trial, no orphan folder
    assert [t["trial_id"] for t in store.list_trials(str(logroot), "full")] == [trial["trial_id"]]

    full_disk.free()  # space freed: the resume goes through
    capsys.readouterr()
    train.main(["full", "--resume", *quick_flags(root, logroot)])
    assert "resuming after epoch 1" in capsys.readouterr().out
    _, trial = only_trial(logroot, "full")
    assert trial["finished"] is True
    assert [r["epoch"] for r in result_rows(logroot, "full", trial["trial_id"]) if r["kind"] == "epoch"] == [1, 2]


# ---------------------------------------------------------------- damaged files on --resume

def test_resume_with_a_corrupt_parameter_file_names_it(tiny_cifar10, tmp_path, capsys, no_data_load):
    root, _ = tiny_cifar10
    params = tmp_path / "exp" / "trials" / "a123456789_param_map.json"
    params.parent.mkdir(parents=True)
    params.write_text('{"trial_id": "a123456789", "finish')
    before = tree(tmp_path)
    err = run_expecting_error(["exp", "--resume", *tiny_flags(root, tmp_path)], capsys, code=1)
    assert f"{params}: not a readable trial parameter file" in err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "zeros"])
def test_damaged_checkpoint_message_is_complete(damage, tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"epoch": 1, "model": {"w": torch.ones(100)}}, path)
    blob = path.read_bytes()
    path.write_bytes({"truncated": blob[:100], "empty": b"", "text": b"not a checkpoint\n",
                      "zeros": bytes(len(blob))}[damage])
    with pytest.raises(store.CheckpointError) as info:
        store.load_checkpoint(str(path))
    message = str(info.value)
    assert message.startswith(f"{path} is not a readable checkpoint (") and "weights_only" not in message
    assert message.endswith("delete it to start the trial again") and "\n" not in message
    assert message.count("(") == message.count(")")


# ---------------------------------------------------------------- one writer per trial

def test_a_second_writer_is_refused_until_the_first_lets_go(tmp_path):
    logroot = str(tmp_path)
    first = store.open_trial(logroot, "exp", {"lr": 0.1})
    trial_id = first.trial_id
    with pytest.raises(store.StoreError, match="another process"):
        store.open_trial(logroot, "exp", {"lr": 0.1}, resume_id=trial_id)
    first.close(False)
    store.open_trial(logroot, "exp", {"lr": 0.1}, resume_id=trial_id).close(False)

    # a writer that dies (SIGKILL: no clean-up runs) does not leave the trial locked
    holder = subprocess.Popen(
        [sys.executable, "-c", "import store, sys, time; t = store.open_trial(sys.argv[1], 'exp', {}, resume_id=sys.argv[2]);"
                               " print('open', flush=True); time.sleep(60)", logroot, trial_id],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(store.StoreError, match="another process"):
            store.open_trial(logroot, "exp", {"lr": 0.1}, resume_id=trial_id)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    store.open_trial(logroot, "exp", {"lr": 0.1}, resume_id=trial_id).close(False)
    assert [t["trial_id"] for t in store.list_trials(logroot, "exp")] == [trial_id]


def test_reopening_a_trial_clears_the_temporary_files_of_a_killed_writer(tmp_path):
    logroot = str(tmp_path)
    trial = store.open_trial(logroot, "exp", {"lr": 0.1})
    trial.close(False)
    folder, trials = tmp_path / "exp" / trial.trial_id, tmp_path / "exp" / "trials"
    stale = [folder / "last.pt.tmp", folder / "best.pt.tmp", trials / f"{trial.trial_id}_result.json.tmp"]
    other = trials / "b000000000_result.json.tmp"  # another trial's: not ours to remove
    for path in stale + [other]:
        path.write_bytes(b"half a file")
    store.open_trial(logroot, "exp", {"lr": 0.1}, resume_id=trial.trial_id).close(False)
    assert not any(p.exists() for p in stale) and other.exists()


# ---------------------------------------------------------------- --help

def test_help_shows_one_default_for_every_flag():
    done = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    options = done.stdout.split("\nwhat a trial computes")[1]
    entries = {}
    for block in re.split(r"\n  (?=--)", "\n" + options):
        match = re.match(r"\s*(--\w+)", block)
        if match:
            entries[match.group(1)] = " ".join(block.split())
    assert set(entries) == {f"--{name}" for name in config.RECIPE_KEYS + config.RUNTIME_KEYS} - {"--experimentname"}
    for flag, text in entries.items():
        assert "default" in text, f"{flag} shows no default: {text}"
        assert "(default: )" not in text, f"{flag} shows an empty default: {text}"
    for flag in ("--cuda", "--lr_milestones"):
        assert entries[flag].count("default") == 1, entries[flag]


# ---------------------------------------------------------------- interrupted runs resume bit-identically

@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted 2-epoch run (the reference) and its dataroot."""
    from conftest import write_tiny_cifar
    root = tmp_path_factory.mktemp("data")
    write_tiny_cifar(str(root))
    logroot = tmp_path_factory.mktemp("straight")
    train.main(["straight", *quick_flags(root, logroot)])
    return root, logroot


METRICS = ["epoch", "iteration", "learning_rate", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5"]


def assert_same_as_straight(straight_run, logroot, name):
    _, straight_logroot = straight_run
    assert epoch_rows(straight_logroot, "straight")[METRICS].values.tolist() == \
        epoch_rows(logroot, name)[METRICS].values.tolist()
    steps = lambda root, exp: [r["train_loss"] for r in result_rows(root, exp, only_trial(root, exp)[1]["trial_id"])
                               if r["kind"] == "step"]  # noqa: E731
    assert steps(straight_logroot, "straight") == steps(logroot, name)
    a = torch.load(os.path.join(only_trial(straight_logroot, "straight")[0], "last.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(only_trial(logroot, name)[0], "last.pt"), weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_killed_during_evaluation_then_resumed_is_bit_identical(straight_run, tmp_path, monkeypatch, capsys):
    root, _ = straight_run
    real = trainer.evaluate
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) while epoch 2 is being evaluated
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    err = run_expecting_stop(["killed", *quick_flags(root, tmp_path)], capsys, code=130)
    monkeypatch.setattr(trainer, "evaluate", real)
    trial_dir, trial = only_trial(tmp_path, "killed")
    assert f"trial {trial['trial_id']} stopped in epoch 2/2 (after step 4); last.pt holds epoch 1" in err
    assert trial["finished"] is False
    assert torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)["epoch"] == 1
    train.main(shlex.split(err.split("continue with: ")[1])[2:])  # the command it gives: python train.py ...
    assert only_trial(tmp_path, "killed")[1]["finished"] is True
    assert_same_as_straight(straight_run, tmp_path, "killed")


@pytest.mark.slow
def test_killed_during_the_checkpoint_write_then_resumed_is_bit_identical(straight_run, tmp_path, monkeypatch,
                                                                          capsys):
    root, _ = straight_run
    real = os.replace
    renames = []

    def replace(src, dst):
        if str(dst).endswith("last.pt"):
            renames.append(dst)
            if len(renames) == 2:
                raise KeyboardInterrupt  # the epoch-2 last.pt is written, not yet renamed over the old one
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    err = run_expecting_stop(["killed", *quick_flags(root, tmp_path)], capsys, code=130)
    assert "stopped in epoch 2/2 (after step 4); last.pt holds epoch 1" in err
    monkeypatch.setattr(os, "replace", real)
    trial_dir, trial = only_trial(tmp_path, "killed")
    assert torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)["epoch"] == 1  # still valid
    assert tmp_files(tmp_path) == [] and trial["finished"] is False

    # a SIGKILL mid-write would leave the temporary files behind: the resume clears them
    stale = [os.path.join(trial_dir, "best.pt.tmp"),
             os.path.join(tmp_path, "killed", "trials", f"{trial['trial_id']}_result.json.tmp")]
    for path in stale:
        with open(path, "wb") as f:
            f.write(b"half a file")
    train.main(["killed", "--resume", *quick_flags(root, tmp_path)])
    assert tmp_files(tmp_path) == [] and only_trial(tmp_path, "killed")[1]["finished"] is True
    assert_same_as_straight(straight_run, tmp_path, "killed")


# ---------------------------------------------------------------- Ctrl-C and SIGTERM (in this process)

@pytest.mark.slow
def test_sigterm_during_evaluation_says_where_and_how_to_continue(straight_run, tmp_path, monkeypatch, capsys):
    """A real SIGTERM (handled in this process): exit 143, one line; the trial keeps its epoch-1 checkpoint and
    the command it prints finishes it as an uninterrupted run would have."""
    root, _ = straight_run
    real = trainer.evaluate
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    err = run_expecting_stop(["term", *quick_flags(root, tmp_path)], capsys, code=143)
    monkeypatch.setattr(trainer, "evaluate", real)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back
    trial_dir, trial = only_trial(tmp_path, "term")
    assert err.startswith(f"train.py: stopped by SIGTERM: trial {trial['trial_id']} stopped in epoch 2/2 (after step "
                          f"4); last.pt holds epoch 1; continue with: python train.py term ")
    assert err.endswith(" --resume") and trial["finished"] is False and tmp_files(tmp_path) == []
    assert torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)["epoch"] == 1
    train.main(shlex.split(err.split("continue with: ")[1])[2:])
    assert only_trial(tmp_path, "term")[1]["finished"] is True
    assert_same_as_straight(straight_run, tmp_path, "term")


def test_ctrl_c_before_the_first_checkpoint_leaves_nothing(tiny_cifar10, tmp_path, monkeypatch, capsys):
    root, _ = tiny_cifar10
    real = trainer.train_step
    steps = []

    def train_step(*args):
        steps.append(1)
        if len(steps) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(trainer, "train_step", train_step)
    logroot = tmp_path / "logs"
    err = run_expecting_stop(["early", *quick_flags(root, logroot)], capsys, code=130)
    assert "stopped in epoch 1/2 (after step 1); no checkpoint yet: the trial is removed; start again with: " \
           "python train.py early " in err and "--resume" not in err
    assert not logroot.exists()  # no trial without a result, no empty folder


# ---------------------------------------------------------------- a real full disk (a small tmpfs)

@pytest.fixture
def small_disk(tmp_path):
    """mount(size_kb) mounts a tmpfs of that size and returns its folder; skipped where mounting is not allowed."""
    mounted = []

    def mount(size_kb):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                                  capture_output=True, text=True)
        except OSError as e:
            pytest.skip(f"no mount command ({e})")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_checkpoint_that_fills_a_real_disk_is_one_store_error(small_disk):
    disk = small_disk(64)
    path = str(disk / "last.pt")
    with pytest.raises(store.StoreError) as info:  # torch.save alone says "unexpected pos"
        store.write_atomically(path, lambda f: torch.save({"w": torch.ones(100_000)}, f))
    assert str(info.value) == f"{path}: cannot write (No space left on device)"
    assert os.listdir(disk) == []
    trial = store.open_trial(str(disk), "exp", {"lr": 0.1})
    try:
        with open(disk / "filler", "wb", buffering=0) as f:  # the rest of the disk
            with pytest.raises(OSError):
                while True:
                    f.write(bytes(4096))
        with pytest.raises(store.StoreError, match="_result.json: cannot write \\(No space left on device\\)"):
            trial.log(iteration=1, kind="step", train_loss=1.0, padding="x" * 8192)
    finally:
        with pytest.raises(store.StoreError, match="No space left on device"):
            trial.close(False)
    assert tmp_files(disk) == []


def test_a_run_that_fills_a_real_disk_keeps_its_last_checkpoint(tiny_cifar10, small_disk, capsys):
    """A width-8 ResNet18 checkpoint is 1.5 MB: a 2.2 MB disk holds epoch 1's, not epoch 2's beside it."""
    root, _ = tiny_cifar10
    logroot = small_disk(2200) / "logs"
    err = run_expecting_error(["full", *quick_flags(root, logroot)], capsys, code=1)
    trial_dir, trial = only_trial(logroot, "full")
    assert err == f"train.py: error: {os.path.join(trial_dir, 'last.pt')}: cannot write (No space left on device)"
    assert torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)["epoch"] == 1
    assert trial["finished"] is False and tmp_files(logroot) == []
    assert [r["epoch"] for r in result_rows(logroot, "full", trial["trial_id"]) if r["kind"] == "epoch"] == [1, 2]


# ---------------------------------------------------------------- names and folders that escape

@pytest.mark.parametrize("name, words", [
    ("a\nb", "without control characters (newline, tab, escape...), got 'a\\nb'"),
    ("a\tb", "without control characters"),
    ("red\x1b[31m", "without control characters"),
    (b"caf\xe9".decode("utf-8", "surrogateescape"), "expected a UTF-8 folder name, got the bytes 'caf\\xe9'"),
], ids=["newline", "tab", "escape", "latin-1"])
def test_names_with_control_characters_or_not_utf8_are_refused(name, words, tmp_path, capsys, no_data_load):
    logroot = tmp_path / "logs"
    err = run_expecting_error([name, *tiny_flags(tmp_path / "data", logroot)], capsys, code=2)
    assert err == f"train.py: error: experimentname: expected a folder name {words}" or words in err
    assert not logroot.exists()


@pytest.mark.parametrize("link", ["experiment", "trials"])
def test_an_experiment_folder_linked_outside_the_logroot_is_refused(link, tmp_path, capsys, no_data_load):
    logroot, outside = tmp_path / "logs", tmp_path / "elsewhere"
    outside.mkdir()
    logroot.mkdir()
    if link == "experiment":
        (logroot / "exp").symlink_to(outside)
        where = logroot / "exp"
    else:
        (logroot / "exp").mkdir()
        (logroot / "exp" / "trials").symlink_to(outside)
        where = logroot / "exp" / "trials"
    before = tree(tmp_path)
    err = run_expecting_error(["exp", *tiny_flags(tmp_path / "data", logroot)], capsys, code=1)
    assert err.startswith(f"train.py: error: {where}: leads to {outside}, outside --logroot {logroot}")
    assert tree(tmp_path) == before
    (logroot / "inside").mkdir()  # a link that stays inside is fine
    (logroot / "alias").symlink_to(logroot / "inside")
    store.check_destination(str(logroot), "alias")


# ---------------------------------------------------------------- config files

def test_a_config_key_given_twice_is_refused(tmp_path, capsys, no_data_load):
    grid = tmp_path / "twice.yaml"
    grid.write_text("lr: 0.1\nbatch_size: [50, 100]\nlr: 0.2\n")
    err = run_expecting_error(["exp", "--config", str(grid), *tiny_flags(tmp_path / "data", tmp_path / "logs")],
                              capsys, code=2)
    assert err == f"train.py: error: {grid}: lr: given twice, on lines 1 and 3 (YAML would keep the second " \
                  f"silently); give it once"
    import sweep
    nested = tmp_path / "nested.yaml"
    nested.write_text("- lr: 0.1\n  epochs: 2\n- {lr: 0.2, lr: 0.3}\n")
    with pytest.raises(sweep.ConfigError, match="lr: given twice, on lines 3 and 3"):
        sweep.load_config(str(nested))
    merged = tmp_path / "merged.yaml"  # a merge's keys may be overridden: that is no repeat
    merged.write_text("- &base\n  lr: 0.1\n  epochs: 2\n- <<: *base\n  lr: 0.3\n")
    assert sweep.load_config(str(merged)) == [{"lr": [0.1], "epochs": [2]}, {"lr": [0.3], "epochs": [2]}]


# ---------------------------------------------------------------- flags

FLAG_MISTAKES = {
    "stop after the last epoch": (["--epochs", "1", "--stop_after_epoch", "5"],
                                  "--stop_after_epoch: 5 is past --epochs 1"),
    "width 100000": (["--width", "100000"], "--width: expected an integer >= 1 and <= 1024, got 100000"),
    "milestones with a space": (["--lr_milestones", "3", "5", "--schedule", "step"],
                                "--lr_milestones: takes one comma-separated value (--lr_milestones 3,5), got '3' "
                                "then '5'"),
}


@pytest.mark.parametrize("extra, message", FLAG_MISTAKES.values(), ids=FLAG_MISTAKES.keys())
def test_flag_mistakes_are_named(extra, message, tmp_path, capsys, no_data_load):
    err = run_expecting_error(["exp", *tiny_flags(tmp_path / "data", tmp_path / "logs"), *extra], capsys, code=2)
    assert err == f"train.py: error: {message}" and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("where", ["build", "step"])
def test_out_of_memory_names_the_flags_that_size_it(where, tiny_cifar10, tmp_path, monkeypatch, capsys):
    root, _ = tiny_cifar10

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 360.00 GiB")

    monkeypatch.setattr(trainer, "build_model" if where == "build" else "train_step", no_memory)
    logroot = tmp_path / "logs"
    err = run_expecting_error(["oom", *quick_flags(root, logroot)], capsys, code=1)
    when = "building the model" if where == "build" else "in epoch 1"
    assert err == (f"train.py: error: out of memory {when}: the memory grows with --width 8 (as its square) and "
                   f"the micro-batch of 50 samples (--max_samples_per_gpu 50); lower one of them")
    assert not logroot.exists()


@pytest.mark.slow
def test_a_real_out_of_memory_at_model_build(tiny_cifar10, tmp_path):
    """--width 1024 (11 GB of weights) in a process whose address space is capped 1 GB above what it has."""
    root, _ = tiny_cifar10
    script = ("import resource, sys, sweep, train\n"  # the training stack loaded before the cap
              "vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize')) * 1024\n"
              "resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))\n"
              "train.main(sys.argv[1:])\n")
    flags = [*quick_flags(root, tmp_path / "logs")]
    flags[flags.index("--width") + 1] = "1024"
    done = subprocess.run([sys.executable, "-c", script, "oom", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr == ("train.py: error: out of memory building the model: the memory grows with --width 1024 "
                           "(as its square) and the micro-batch of 50 samples (--max_samples_per_gpu 50); lower one "
                           "of them\n")
    assert not (tmp_path / "logs").exists()


def test_divergence_says_whether_a_checkpoint_is_kept():
    with pytest.raises(trainer.Diverged, match=r"^training loss is inf at epoch 1, by step 1 \(lr 0.1\); stopped, no "
                                               r"checkpoint was written before it$"):
        trainer.check_finite(float("inf"), 0, 1, 0.1, 0)
    with pytest.raises(trainer.Diverged, match="stopped, last.pt of epoch 3 kept$"):
        trainer.check_finite(float("nan"), 4, 17, 0.1, 3)
    trainer.check_finite(2.3, 0, 1, 0.1, 0)


@pytest.mark.slow
def test_divergence_in_a_run_names_the_checkpoint_it_kept(tiny_cifar10, tmp_path, monkeypatch, capsys):
    root, _ = tiny_cifar10
    real = trainer.check_finite

    def nan_in_epoch_2(loss, epoch, *args):
        return real(float("nan") if epoch == 1 else loss, epoch, *args)

    monkeypatch.setattr(trainer, "check_finite", nan_in_epoch_2)
    err = run_expecting_error(["nan", *quick_flags(root, tmp_path)], capsys, code=1)
    assert err.endswith("stopped, last.pt of epoch 1 kept")


# ---------------------------------------------------------------- a log edited by hand

@pytest.mark.slow
def test_a_damaged_best_checkpoint_is_rewritten_on_resume(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    train.main(["best", "--stop_after_epoch", "1", *quick_flags(root, tmp_path)])
    trial_dir, trial = only_trial(tmp_path, "best")
    best = os.path.join(trial_dir, "best.pt")
    os.remove(best)  # a hard link to last.pt: replace it, do not write through it
    with open(best, "wb") as f:
        f.write(b"edited")
    capsys.readouterr()
    train.main(["best", "--resume", *quick_flags(root, tmp_path)])
    out = capsys.readouterr().out
    assert f"best.pt of trial {trial['trial_id']} was damaged: it will hold the best epoch after epoch 1" in out
    assert only_trial(tmp_path, "best")[1]["finished"] is True
    assert torch.load(best, weights_only=True)["epoch"] == 2  # the best (the only) epoch since the resume


def _written_trial(logroot, epochs=2, steps_per_epoch=2):
    """A closed trial with the rows a run of `epochs` epochs writes; returns (trial id, result file)."""
    trial = store.open_trial(str(logroot), "exp", {"lr": 0.1})
    for epoch in range(1, epochs + 1):
        for step in range(1, steps_per_epoch + 1):
            trial.log(iteration=(epoch - 1) * steps_per_epoch + step, kind="step", epoch=epoch, train_loss=1.0)
        trial.log(iteration=epoch * steps_per_epoch, kind="epoch", epoch=epoch, test_top1=10.0)
    trial.close(False)
    return trial.trial_id, logroot / "exp" / "trials" / f"{trial.trial_id}_result.json"


@pytest.mark.parametrize("edit, problem", [
    (lambda lines, tid: lines.insert(2, "garbage\n"), "line 3 is not valid JSON"),
    (lambda lines, tid: lines.append("garbage\n"), "line 7 is not valid JSON"),
    (lambda lines, tid: lines.append('{"trial_id": "b000000000", "iteration": 9, "kind": "step"}\n'),
     "line 7 belongs to trial 'b000000000', not {tid}"),
    (lambda lines, tid: lines.append(lines[2].replace('"iteration": 2', '"iteration": 4')),
     "line 7 repeats or goes back to epoch 1 (line 6 has epoch 2)"),
    (lambda lines, tid: lines.insert(1, lines[0]), "line 2 repeats or goes back to step 1 (line 1 has step 1)"),
    (lambda lines, tid: lines.append(lines[0]), "line 7 has iteration 1, before the 4 of line 6"),
], ids=["garbage-inside", "garbage-last", "other-trial", "epoch-twice", "step-twice", "going-back"])
def test_a_result_file_edited_by_hand_is_refused_not_rewritten(edit, problem, tmp_path):
    trial_id, results = _written_trial(tmp_path)
    lines = results.read_text().splitlines(keepends=True)
    edit(lines, trial_id)
    results.write_text("".join(lines))
    before = files(tmp_path)
    message = f"{results}: {problem.format(tid=trial_id)}"
    with pytest.raises(store.StoreError) as info:
        store.open_trial(str(tmp_path), "exp", {"lr": 0.1}, resume_id=trial_id, keep_until_step=4)
    assert str(info.value).startswith(message)
    with pytest.raises(store.StoreError) as info:  # and so is reading it for a plot
        store.read_experiment(str(tmp_path / "exp"))
    assert str(info.value).startswith(message)
    assert files(tmp_path) == before


def test_a_last_row_cut_by_a_kill_is_dropped_on_resume(tmp_path):
    trial_id, results = _written_trial(tmp_path)
    whole = results.read_text()
    results.write_text(whole + '{"iteration": 5, "kind": "st')  # killed mid-write: no newline after it
    store.open_trial(str(tmp_path), "exp", {"lr": 0.1}, resume_id=trial_id, keep_until_step=4).close(False)
    assert results.read_text() == whole


def test_resume_refuses_a_forged_row(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    train.main(["forged", "--stop_after_epoch", "1", *quick_flags(root, tmp_path)])
    _, trial = only_trial(tmp_path, "forged")
    results = tmp_path / "forged" / "trials" / f"{trial['trial_id']}_result.json"
    epoch_row = [line for line in results.read_text().splitlines() if '"kind": "epoch"' in line][0]
    results.write_text(results.read_text() + epoch_row.replace('"test_top1": ', '"test_top1": 99.0, "x": ') + "\n")
    before = files(tmp_path)
    err = run_expecting_error(["forged", "--resume", *quick_flags(root, tmp_path)], capsys, code=1)
    assert f"{results}: line 4 repeats or goes back to epoch 1 (line 3 has epoch 1)" in err
    assert files(tmp_path) == before


# ---------------------------------------------------------------- progress

def test_durations_read_as_a_person_would_say_them():
    assert [trainer.duration(s) for s in (0.4, 45, 60, 725, 3599, 3600, 11220)] == \
        ["0s", "45s", "1m00s", "12m05s", "59m59s", "1h00m", "3h07m"]


@pytest.mark.slow
def test_the_epoch_line_shows_the_time_the_run_has_left(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    train.main(["eta", *quick_flags(root, tmp_path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and re.search(r"  run ETA \d+(s|m\d\ds)$", lines[0]) and "ETA" not in lines[1]
