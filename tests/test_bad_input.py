"""Hostile input (issue 14): every bad value, name, folder or fault is one `train.py: error:` line naming the
flag or file (and the expected range), exit status 2 for bad input and 1 for a failed run, no traceback, and
nothing created or changed under --logroot (or outside it)."""
import errno
import os
import re
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
from conftest import ROOT, epoch_rows, only_trial, result_rows, run_expecting_error, tiny_flags, tree

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
def test_killed_during_evaluation_then_resumed_is_bit_identical(straight_run, tmp_path, monkeypatch):
    root, _ = straight_run
    real = trainer.evaluate
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) while epoch 2 is being evaluated
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        train.main(["killed", *quick_flags(root, tmp_path)])
    monkeypatch.setattr(trainer, "evaluate", real)
    trial_dir, trial = only_trial(tmp_path, "killed")
    assert trial["finished"] is False
    assert torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)["epoch"] == 1
    train.main(["killed", "--resume", *quick_flags(root, tmp_path)])
    assert only_trial(tmp_path, "killed")[1]["finished"] is True
    assert_same_as_straight(straight_run, tmp_path, "killed")


@pytest.mark.slow
def test_killed_during_the_checkpoint_write_then_resumed_is_bit_identical(straight_run, tmp_path, monkeypatch):
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
    with pytest.raises(KeyboardInterrupt):
        train.main(["killed", *quick_flags(root, tmp_path)])
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
