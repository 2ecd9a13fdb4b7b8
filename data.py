"""CIFAR-10/100 as uint8 tensors on the training device, augmented with batched tensor ops.

The whole training set stays on the device as uint8 (150 MB for CIFAR); each step gathers its samples,
crops and flips them in uint8 and normalises once at the end, so no DataLoader workers or PIL are involved.
"""
import os
import pickle
import socket
from collections import namedtuple

import numpy as np
import torch
import torch.nn.functional as F

from config import DATASETS

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
# The seed script's constants (CIFAR-10 statistics), used for CIFAR-100 too unless passed explicitly.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

PAD = 4
CROP = 32
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
# urllib waits forever by default; an offline node that drops packets should fail in seconds, not hang.
DOWNLOAD_SOCKET_TIMEOUT_S = 20

_Layout = namedtuple("_Layout", "title folder train_files test_files label_key torchvision_class")
_LAYOUTS = {
    "cifar10": _Layout("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                       ("test_batch",), "labels", "CIFAR10"),
    "cifar100": _Layout("CIFAR-100", "cifar-100-python", ("train",), ("test",), "fine_labels", "CIFAR100"),
}


class DataError(Exception):
    """A problem with the data or the data flags, worded for the user in one line."""


# ---------------------------------------------------------------- loading

def load_cifar(dataroot, dataset="cifar10", download=True):
    """(train_x, train_y, test_x, test_y): uint8 (N, 3, 32, 32) images and int64 labels, on the CPU.

    Files already under `dataroot` are read as they are, without torchvision's md5 check: a copy rebuilt
    from another source is as good as the original if it has the right format. Only a missing folder
    is downloaded (through torchvision).
    """
    if dataset not in _LAYOUTS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    layout = _LAYOUTS[dataset]
    folder = os.path.join(dataroot, layout.folder)
    if not os.path.isdir(folder):
        fill_hint = f"put the python-version batches there ({CIFAR_URL}) or run on a machine with internet"
        if not download:
            raise DataError(f"{layout.title} not found in {folder} and download is off: {fill_hint}")
        try:
            _download(dataroot, layout)
        except Exception as e:
            reason = " ".join(f"{type(e).__name__}: {e}".split())
            raise DataError(f"{layout.title} not found in {folder} and the download failed ({reason}): "
                            f"{fill_hint}") from e
    num_classes = NUM_CLASSES[dataset]
    train_x, train_y = _read_batches(folder, layout.train_files, layout.label_key, num_classes)
    test_x, test_y = _read_batches(folder, layout.test_files, layout.label_key, num_classes)
    return train_x, train_y, test_x, test_y


def _download(dataroot, layout):
    import torchvision  # only needed when the data is missing

    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        # One archive holds both splits, so one call fetches everything.
        getattr(torchvision.datasets, layout.torchvision_class)(dataroot, train=True, download=True)
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _read_batches(folder, names, label_key, num_classes):
    parts = [_read_batch(os.path.join(folder, name), label_key, num_classes) for name in names]
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, CROP, CROP)
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


def _read_batch(path, label_key, num_classes):
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing: the CIFAR folder is incomplete (get the python-version batches "
                        f"from {CIFAR_URL})")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images = np.asarray(batch["data"])
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except Exception as e:  # a damaged pickle can fail in many ways; all mean the same to the user
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(f"{path} is not a readable CIFAR batch ({reason})") from e
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * CROP * CROP:
        raise DataError(f"{path}: 'data' should be N x {3 * CROP * CROP} uint8, got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{path}: {len(images)} images but {labels.size} '{label_key}'")
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise DataError(f"{path}: '{label_key}' outside 0..{num_classes - 1}")
    return images, labels


def class_balanced_subset(x, y, n, seed, flag="--train_subset"):
    """A seeded subset of n samples with every class equally represented.

    When n is not a multiple of the number of classes, the lowest class labels get one sample more each.
    `flag` names the option that asked for it in error messages.
    """
    index = _class_balanced_index(y, n, seed, flag)
    return x[index], y[index]


# The validation split's own seed: the same held-out images for every trial, whatever its --seed or optimizer.
VALIDATION_SEED = 20181130


def split_validation(x, y, n):
    """(train_x, train_y, val_x, val_y): n class-balanced samples held out (fixed by VALIDATION_SEED), the rest
    kept for training, both in their original order."""
    if not 1 <= n < len(y):
        raise DataError(f"--val_size: expected between 1 and {len(y) - 1} (fewer than the {len(y)} training "
                        f"images), got {n}")
    held_out = _class_balanced_index(y, n, VALIDATION_SEED, "--val_size")
    kept = torch.ones(len(y), dtype=torch.bool)
    kept[held_out] = False
    return x[kept], y[kept], x[held_out], y[held_out]


def _class_balanced_index(y, n, seed, flag):
    if not 1 <= n <= len(y):
        raise DataError(f"{flag}: expected between 1 and the training set size {len(y)}, got {n}")
    classes = torch.unique(y)
    per_class, extra = divmod(n, len(classes))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for i, label in enumerate(classes.tolist()):
        members = torch.nonzero(y == label).flatten()
        count = per_class + (i < extra)
        if count > len(members):
            raise DataError(f"{flag} {n} needs {count} images of class {label}, which has only {len(members)}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


# ---------------------------------------------------------------- batches

class _Normalise:
    """uint8 images -> float32 (x/255 - mean)/std, as one multiply-add."""

    def __init__(self, mean, std, device):
        mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = (1 / (255 * std)).to(device)
        self.shift = (-mean / std).to(device)

    def __call__(self, images, channels_last):
        if channels_last:  # converted while still one byte per element
            images = images.contiguous(memory_format=torch.channels_last)
        # The multiply converts uint8 to float32 in the same pass; it and the in-place add keep the memory format.
        return torch.mul(images, self.scale).add_(self.shift)


def _check_images(x, y):
    if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, CROP, CROP):
        raise DataError(f"images should be uint8 (N, 3, {CROP}, {CROP}), got {x.dtype} {tuple(x.shape)}")
    if y.shape != (len(x),):
        raise DataError(f"{len(x)} images but labels of shape {tuple(y.shape)}")


def _check_rank(rank, world_size):
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} outside a world of {world_size}")


class TrainBatches:
    """Augmented training batches, one optimizer step's global batch at a time, sharded over ranks.

    How an epoch is cut: every epoch draws a fresh permutation of the N samples and uses its first
    steps_per_epoch * batch_size = (N // batch_size) * batch_size entries; the remaining N mod batch_size
    samples are dropped for that epoch (different ones each epoch), so every step has exactly batch_size
    samples. With keep_last=True (the seed's loader) they form a short last step instead: ceil(N / batch_size)
    steps, the last with N mod batch_size samples (one rank only). Rank r of world_size takes the contiguous slice [r*b, (r+1)*b), b = batch_size/world_size,
    of each global batch: the ranks' shares concatenated in rank order are the single-process batch.

    Randomness: the permutation, crop offsets and flips of a whole epoch come from a CPU generator seeded
    from (seed, epoch) alone, so every rank and every device sees the same choices, and the global RNG
    is neither used nor disturbed.

    Augmentation, per sample: a 32x32 crop of the image zero-padded by 4 pixels (padding is 0 in uint8,
    so (0 - mean)/std after normalisation, as torchvision's RandomCrop(32, padding=4) + ToTensor + Normalize),
    a horizontal flip with probability 1/2, then (x/255 - mean)/std.
    """

    def __init__(self, x, y, batch_size, *, seed, device=None, mean=CIFAR_MEAN, std=CIFAR_STD, rank=0,
                 world_size=1, channels_last=False, keep_last=False):
        _check_images(x, y)
        _check_rank(rank, world_size)
        if keep_last and world_size > 1:
            raise DataError("a short last step (keep_last) runs on one rank only")
        if not 1 <= batch_size <= len(x):
            raise DataError(f"batch_size {batch_size} must be between 1 and the training set size {len(x)}")
        if batch_size % world_size:
            raise DataError(f"batch_size {batch_size} does not split evenly over {world_size} ranks")
        self.device = torch.device(device) if device is not None else x.device
        self.images = x.to(self.device)
        self.labels = y.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.keep_last = keep_last
        self.normalise = _Normalise(mean, std, self.device)

    @property
    def steps_per_epoch(self):
        if self.keep_last:
            return -(-len(self.images) // self.batch_size)
        return len(self.images) // self.batch_size

    def epoch(self, epoch):
        """Yields steps_per_epoch (images, labels) pairs: this rank's share of each step's global batch."""
        n = len(self.images)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).to(self.device)
        offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator).to(self.device)
        flips = torch.randint(0, 2, (n,), generator=generator, dtype=torch.bool).to(self.device)
        share = self.batch_size // self.world_size
        for step in range(self.steps_per_epoch):
            start = step * self.batch_size + self.rank * share
            positions = slice(start, start + share)
            index = order[positions]
            images = self._crop_and_flip(self.images.index_select(0, index), offsets[positions], flips[positions])
            yield self.normalise(images, self.channels_last), self.labels[index]

    def _crop_and_flip(self, images, offsets, flips):
        """uint8 (B, 3, 32, 32) -> uint8 crops of the zero-padded images, mirrored where flips is set."""
        padded = F.pad(images, (PAD, PAD, PAD, PAD))
        # A (B, 9, 9, 3, 32, 32) view of every window costs nothing; picking one per image is then one gather.
        windows = padded.unfold(2, CROP, 1).unfold(3, CROP, 1).permute(0, 2, 3, 1, 4, 5)
        crops = windows[torch.arange(len(images), device=images.device), offsets[:, 0], offsets[:, 1]]
        return torch.where(flips[:, None, None, None], crops.flip(3), crops)


class EvalBatches:
    """Normalised, unaugmented test batches: every image of this rank's part once, in order.

    With world_size > 1 the test set is cut into world_size contiguous parts (sizes differ by at most one);
    together they cover each image exactly once, so summed metrics over ranks are whole-test-set metrics.
    The last batch of a part may be smaller.
    """

    def __init__(self, x, y, batch_size, *, device=None, mean=CIFAR_MEAN, std=CIFAR_STD, rank=0, world_size=1,
                 channels_last=False):
        _check_images(x, y)
        _check_rank(rank, world_size)
        if batch_size < 1:
            raise DataError(f"eval batch size must be at least 1, got {batch_size}")
        device = torch.device(device) if device is not None else x.device
        part = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
        self.images = x[part].to(device)
        self.labels = y[part].to(device, torch.int64)
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.normalise = _Normalise(mean, std, device)

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.images), self.batch_size):
            batch = slice(start, start + self.batch_size)
            yield self.normalise(self.images[batch], self.channels_last), self.labels[batch]
