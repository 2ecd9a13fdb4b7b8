"""Synthetic CIFAR-10/100 files in the real python-version pickle layout, for tests and benchmarks.

Random uint8 images with balanced labels: data.py reads them exactly as it reads the downloaded files, so a
test or a benchmark exercises the real loading path without the real data set.
"""
import os
import pickle

import numpy as np

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
