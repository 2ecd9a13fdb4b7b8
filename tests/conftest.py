"""Shared test helpers: tiny CIFAR datasets (synthetic_cifar.py), and tiny training runs.

Other tests import them directly: `from conftest import write_tiny_cifar, tiny_flags, ...`.
"""
import os

import pytest

from synthetic_cifar import write_tiny_cifar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


@pytest.fixture(autouse=True)
def host_memory_untouched(monkeypatch):
    """A trial run in this process applies --malloc (default `reuse`), which is process-wide and one-way
    (host_memory.py): here glibc is left as it is, so no test changes the allocator of the tests after it.
    tests/test_host_memory.py and the trials run as subprocesses set it for real."""
    import host_memory
    monkeypatch.setattr(host_memory, "_glibc_reuse", lambda: True)
    monkeypatch.setattr(host_memory, "_reused", False)


@pytest.fixture
def tiny_cifar10(tmp_path):
    """(dataroot, (train_x, train_y, test_x, test_y)) of a 200/100-image CIFAR-10."""
    return str(tmp_path), write_tiny_cifar(str(tmp_path), "cifar10")


@pytest.fixture
def tiny_cifar100(tmp_path):
    """(dataroot, (train_x, train_y, test_x, test_y)) of a 200/100-image CIFAR-100."""
    return str(tmp_path), write_tiny_cifar(str(tmp_path), "cifar100")


# ---------------------------------------------------------------- tiny training runs

def tiny_flags(dataroot, logroot, *extra, epochs=2):
    """Flags for a run that takes seconds: 200 training images, batch 50 -> 4 optimizer steps per epoch,
    each in 2 micro-batches of 25, on a width-8 ResNet18; the loss is logged after every step."""
    return ["--width", "8", "--epochs", str(epochs), "--batch_size", "50", "--max_samples_per_gpu", "25",
            "--eval_batch_size", "64", "--log_interval", "1", "--dataroot", str(dataroot), "--logroot", str(logroot),
            *extra]


def result_rows(logroot, experiment, trial_id):
    """A trial's result rows as written (one JSON object per line)."""
    import store
    return store.result_rows(str(logroot), experiment, trial_id)


def only_trial(logroot, experiment):
    """(trial folder, parameter file) of an experiment's single trial."""
    import store
    (trial,) = store.list_trials(str(logroot), experiment)
    return os.path.join(logroot, experiment, trial["trial_id"]), trial


def epoch_rows(logroot, experiment):
    """The epoch rows of an experiment's single trial, as read back through skeletor."""
    import store
    df = store.read_results(os.path.join(logroot, experiment))
    return df[df["kind"] == "epoch"].sort_values("epoch")


def run_expecting_error(argv, capsys, code=None):
    """train.main(argv) must exit with one `train.py: error:` line (and `code`); returns the line."""
    import train
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code != 0 if code is None else exit_info.value.code == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def run_expecting_stop(argv, capsys, code):
    """train.main(argv) must stop (SIGINT 130, SIGTERM 143) with one `train.py: stopped by` line; returns it."""
    import train
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: stopped by ") and "\n" not in err and "Traceback" not in err, err
    return err


def tree(path):
    """{relative path: (size, mtime)} of everything under path ({} when it does not exist)."""
    out = {}
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(folder, name)
            stat = os.lstat(full)
            out[os.path.relpath(full, path)] = (stat.st_size, stat.st_mtime_ns)
    return out
