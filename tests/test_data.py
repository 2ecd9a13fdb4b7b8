import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import data
from conftest import write_tiny_cifar

MEAN = torch.tensor(data.CIFAR_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(data.CIFAR_STD).view(1, 3, 1, 1)


def random_images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def to_uint8(normalised):
    """Inverse of the normalisation, back to the exact uint8 pixels."""
    pixels = (normalised * STD + MEAN) * 255
    assert (pixels - pixels.round()).abs().max() < 1e-3
    return pixels.round().to(torch.uint8)


def all_batches(batches, epoch):
    images, labels = zip(*batches.epoch(epoch))
    return torch.cat(images), torch.cat(labels)


# ---------------------------------------------------------------- loading

@pytest.mark.parametrize("dataset", data.DATASETS)
def test_loader_reads_the_files_back_bit_exactly(tmp_path, dataset):
    expected = write_tiny_cifar(str(tmp_path), dataset, n_train=53, n_test=21, seed=4)
    loaded = data.load_cifar(str(tmp_path), dataset, download=False)
    for got, want in zip(loaded, expected):
        assert torch.equal(got, torch.from_numpy(want))
    train_x, train_y, test_x, test_y = loaded
    assert train_x.dtype == torch.uint8 and train_x.shape == (53, 3, 32, 32) and test_x.shape == (21, 3, 32, 32)
    assert train_y.dtype == torch.int64 and test_y.dtype == torch.int64


def test_fixtures_give_balanced_labels(tiny_cifar10, tiny_cifar100):
    for (root, (train_x, train_y, test_x, test_y)), classes in ((tiny_cifar10, 10), (tiny_cifar100, 100)):
        assert os.path.isdir(root)
        assert train_x.shape == (200, 3, 32, 32) and test_x.shape == (100, 3, 32, 32)
        assert (np.bincount(train_y, minlength=classes) == 200 // classes).all()
        assert (np.bincount(test_y, minlength=classes) == 100 // classes).all()


@pytest.mark.parametrize("dataset, cls, folder", [("cifar10", "CIFAR10", "cifar-10-batches-py"),
                                                  ("cifar100", "CIFAR100", "cifar-100-python")])
def test_missing_folder_with_failing_download_names_the_folder(tmp_path, monkeypatch, dataset, cls, folder):
    calls = []

    def offline(root, train, download):
        calls.append((root, train, download))
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, cls, offline)
    with pytest.raises(data.DataError) as err:
        data.load_cifar(str(tmp_path), dataset)
    message = str(err.value)
    assert calls == [(str(tmp_path), True, True)]
    assert "\n" not in message
    assert os.path.join(str(tmp_path), folder) in message
    assert "download failed" in message and "name resolution" in message and "cs.toronto.edu" in message


def test_missing_folder_is_filled_by_the_download(tmp_path, monkeypatch):
    expected = write_tiny_cifar(str(tmp_path / "elsewhere"), n_train=20, n_test=10)

    def fake_download(root, train, download):
        os.rename(tmp_path / "elsewhere" / "cifar-10-batches-py", os.path.join(root, "cifar-10-batches-py"))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    for got, want in zip(data.load_cifar(str(tmp_path)), expected):
        assert torch.equal(got, torch.from_numpy(want))


def test_missing_folder_without_download_is_an_error(tmp_path):
    with pytest.raises(data.DataError, match="cifar-10-batches-py and download is off"):
        data.load_cifar(str(tmp_path), download=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "missing"])
def test_damaged_file_is_an_error_naming_it(tmp_path, damage):
    write_tiny_cifar(str(tmp_path), n_train=20, n_test=10)
    path = os.path.join(str(tmp_path), "cifar-10-batches-py", "data_batch_3")
    if damage == "missing":
        os.remove(path)
    elif damage == "wrong_shape":
        with open(path, "wb") as f:
            pickle.dump({"data": np.zeros((4, 1024), np.uint8), "labels": [0, 1, 2, 3]}, f)
    else:
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content[: len(content) // 2] if damage == "truncate" else b"not a pickle at all")
    with pytest.raises(data.DataError) as err:
        data.load_cifar(str(tmp_path), download=False)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_class_balanced_subset_is_balanced_and_seeded():
    x = random_images(300)
    y = torch.arange(300) % 10
    sub_x, sub_y = data.class_balanced_subset(x, y, 50, seed=1)
    assert torch.equal(torch.bincount(sub_y, minlength=10), torch.full((10,), 5))
    assert len(torch.unique(sub_x.view(50, -1), dim=0)) == 50
    again_x, again_y = data.class_balanced_subset(x, y, 50, seed=1)
    assert torch.equal(sub_x, again_x) and torch.equal(sub_y, again_y)
    assert not torch.equal(sub_x, data.class_balanced_subset(x, y, 50, seed=2)[0])
    _, uneven_y = data.class_balanced_subset(x, y, 53, seed=1)
    assert torch.bincount(uneven_y, minlength=10).tolist() == [6, 6, 6] + [5] * 7


@pytest.mark.parametrize("n", [0, 301])
def test_class_balanced_subset_rejects_impossible_sizes(n):
    with pytest.raises(data.DataError, match="train_subset"):
        data.class_balanced_subset(random_images(300), torch.arange(300) % 10, n, seed=0)


# ---------------------------------------------------------------- training batches

def test_train_batches_shapes_dtypes_and_memory_format():
    batches = data.TrainBatches(random_images(100), torch.arange(100) % 10, 32, seed=0)
    assert batches.steps_per_epoch == 3
    steps = list(batches.epoch(0))
    assert len(steps) == 3
    for images, labels in steps:
        assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32 and images.is_contiguous()
        assert labels.shape == (32,) and labels.dtype == torch.int64
    images, _ = next(data.TrainBatches(random_images(100), torch.arange(100), 32, seed=0,
                                       channels_last=True).epoch(0))
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


def test_crops_are_windows_of_the_zero_padded_image_possibly_mirrored():
    x = random_images(64, seed=1)
    images, labels = all_batches(data.TrainBatches(x, torch.arange(64), 64, seed=5), epoch=2)
    crops = to_uint8(images)
    # Every 32x32 window of every padded original, mirrored or not: (64, 2 flips, 81 offsets, 3, 32, 32).
    windows = F.pad(x, (4, 4, 4, 4)).unfold(2, 32, 1).unfold(3, 32, 1)  # (64, 3, 9, 9, 32, 32)
    windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(64, 81, 3, 32, 32)
    windows = torch.stack([windows, windows.flip(-1)], dim=1)
    found = set()
    for crop, label in zip(crops, labels):
        matches = (windows[label] == crop).flatten(2).all(2).nonzero().tolist()
        assert len(matches) == 1, "each crop is exactly one window of its own padded image"
        flip, offset = matches[0]
        found.add((flip, offset))
    assert {flip for flip, _ in found} == {0, 1}
    rows, columns = zip(*(divmod(offset, 9) for _, offset in found))
    assert {min(rows), max(rows), min(columns), max(columns)} == {0, 8}, "the whole padding is reachable"


def test_padding_normalises_like_torchvision():
    x = torch.zeros(512, 3, 32, 32, dtype=torch.uint8) + 255
    images, _ = next(data.TrainBatches(x, torch.zeros(512, dtype=torch.int64), 512, seed=0).epoch(0))
    corners = images[:, :, 0, 0]
    assert torch.allclose(corners.amin(0), (-MEAN / STD).view(3))
    assert torch.allclose(corners.amax(0), ((1 - MEAN) / STD).view(3))


def test_flips_mirror_exactly():
    x = random_images(1)
    seen = set()
    for seed in range(20):
        image, _ = next(data.TrainBatches(x, torch.zeros(1, dtype=torch.int64), 1, seed=seed).epoch(0))
        crop = to_uint8(image)[0]
        mirrored = to_uint8(torch.flip(image, dims=[-1]))[0]
        windows = F.pad(x[0], (4, 4, 4, 4)).unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 9, 9, 32, 32)
        plain = (windows == crop[:, None, None]).flatten(3).all(3).all(0).any().item()
        flipped = (windows == mirrored[:, None, None]).flatten(3).all(3).all(0).any().item()
        assert plain != flipped
        seen.add(flipped)
    assert seen == {False, True}


def test_same_seed_and_epoch_give_the_same_batches_and_others_differ():
    x, y = random_images(96), torch.arange(96)
    torch.manual_seed(0)
    first = all_batches(data.TrainBatches(x, y, 32, seed=7), epoch=3)
    torch.manual_seed(1)  # the global RNG plays no part
    again = all_batches(data.TrainBatches(x, y, 32, seed=7), epoch=3)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other_epoch = all_batches(data.TrainBatches(x, y, 32, seed=7), epoch=4)
    other_seed = all_batches(data.TrainBatches(x, y, 32, seed=8), epoch=3)
    for other in (other_epoch, other_seed):
        assert not torch.equal(first[1], other[1]) and not torch.equal(first[0], other[0])


def test_each_epoch_uses_distinct_samples_and_drops_a_changing_remainder():
    batches = data.TrainBatches(random_images(100), torch.arange(100), 32, seed=0)
    dropped = []
    for epoch in range(3):
        _, labels = all_batches(batches, epoch)
        assert len(labels) == batches.steps_per_epoch * 32 == 96
        assert len(torch.unique(labels)) == 96
        dropped.append(set(range(100)) - set(labels.tolist()))
    assert len({frozenset(d) for d in dropped}) == 3


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shares_concatenate_to_the_single_process_batch(world_size):
    x, y = random_images(80), torch.arange(80)
    single = list(data.TrainBatches(x, y, 32, seed=3).epoch(1))
    shares = [list(data.TrainBatches(x, y, 32, seed=3, rank=r, world_size=world_size).epoch(1))
              for r in range(world_size)]
    assert all(len(s) == len(single) for s in shares)
    for step, (images, labels) in enumerate(single):
        assert all(len(s[step][1]) == 32 // world_size for s in shares)
        assert torch.equal(torch.cat([s[step][0] for s in shares]), images)
        assert torch.equal(torch.cat([s[step][1] for s in shares]), labels)


def test_batch_size_errors_name_batch_size():
    x, y = random_images(40), torch.arange(40)
    with pytest.raises(data.DataError, match="batch_size 30 does not split evenly over 4 ranks"):
        data.TrainBatches(x, y, 30, seed=0, world_size=4)
    with pytest.raises(data.DataError, match="batch_size 41"):
        data.TrainBatches(x, y, 41, seed=0)


# ---------------------------------------------------------------- evaluation batches

def test_eval_batches_cover_every_image_once_in_order():
    x, y = random_images(50), torch.arange(50)
    batches = data.EvalBatches(x, y, 16)
    assert len(batches) == 4
    steps = list(batches)
    assert [len(labels) for _, labels in steps] == [16, 16, 16, 2]
    images = torch.cat([i for i, _ in steps])
    assert torch.equal(torch.cat([l for _, l in steps]), y)
    assert torch.allclose(images, (x / 255 - MEAN) / STD, atol=1e-6)
    channels_last, _ = next(iter(data.EvalBatches(x, y, 16, channels_last=True)))
    assert channels_last.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_eval_parts_over_ranks_cover_every_image_once(world_size):
    x, y = random_images(50), torch.arange(50)
    parts = [data.EvalBatches(x, y, 8, rank=r, world_size=world_size) for r in range(world_size)]
    labels = torch.cat([l for part in parts for _, l in part])
    assert torch.equal(labels, y)
    assert sum(len(list(part)) for part in parts) == sum(len(part) for part in parts)
