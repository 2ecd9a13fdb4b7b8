"""Shared test helpers: tiny CIFAR datasets in the real pickle layout, and tiny training runs.

Other tests import them directly: `from conftest import write_tiny_cifar, tiny_flags, ...`.
"""
import os
import pickle

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def write_tiny_cifar(root, dataset="cifar10", n_train=200, n_test=100, seed=0):
    """Random uint8 images with balanced labels, as the python-version CIFAR files under `root`.

    Returns (train_x, train_y, test_x, test_y): uint8 (N, 3, 32, 32) and int64 (N,) numpy arrays.
    """
    rng = np.random.default_rng(seed)
    num_classes = NUM_CLASSES[dataset]
    train_x, test_x = (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for n in (n_train, n_test))
    train_y, test_y = (rng.permutation(np.arange(n) % num_classes).astype(np.int64) for n in (n_train, n_test))
    if dataset == "cifar10":
        folder = os.path.join(root, "cifar-10-batches-py")
        os.makedirs(folder, exist_ok=True)
        train_parts = np.array_split(np.arange(n_train), 5)
        for i, part in enumerate(train_parts, start=1):
            _dump(os.path.join(folder, f"data_batch_{i}"), _batch(f"training batch {i} of 5", train_x[part],
                                                                  {"labels": train_y[part].tolist()}))
        _dump(os.path.join(folder, "test_batch"), _batch("testing batch 1 of 1", test_x,
                                                         {"labels": test_y.tolist()}))
        _dump(os.path.join(folder, "batches.meta"), {"num_cases_per_batch": len(train_parts[0]), "num_vis": 3072,
                                                     "label_names": [f"class_{c}" for c in range(num_classes)]})
    else:
        folder = os.path.join(root, "cifar-100-python")
        os.makedirs(folder, exist_ok=True)
        for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            labels = {"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()}
            _dump(os.path.join(folder, name), _batch(name, x, labels))
        _dump(os.path.join(folder, "meta"), {"fine_label_names": [f"fine_{c}" for c in range(100)],
                                             "coarse_label_names": [f"coarse_{c}" for c in range(20)]})
    return train_x, train_y, test_x, test_y


def _batch(batch_label, x, labels):
    return {"batch_label": batch_label, "data": x.reshape(len(x), -1), **labels,
            "filenames": [f"image_{i}.png" for i in range(len(x))]}


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the original (Python 2) files


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


def tree(path):
    """{relative path: (size, mtime)} of everything under path ({} when it does not exist)."""
    out = {}
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(folder, name)
            stat = os.lstat(full)
            out[os.path.relpath(full, path)] = (stat.st_size, stat.st_mtime_ns)
    return out
