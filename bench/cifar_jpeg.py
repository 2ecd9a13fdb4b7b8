"""A class-balanced subset of the JPEG CIFAR-10 copy, small enough to travel, and its rebuild as CIFAR pickles.

    python bench/cifar_jpeg.py subset SRC.zip DST.zip --train 30000 --test 10000   # copy JPEG bytes, no re-encode
    python bench/cifar_jpeg.py build DST.zip DATAROOT      # -> DATAROOT/cifar-10-batches-py (data.load_cifar's)

SRC.zip holds <top>/train/<class>/*.jpg and <top>/test/<class>/*.jpg (the layout of
../shared/data/cifar10-jpeg.zip; its make_cifar10.py builds all 50,000 + 10,000 images). `subset` keeps
N/10 images of every class, picked with a fixed seed; `build` decodes them (needs Pillow) and writes five
training batches and one test batch in the python-version pickle layout, rows shuffled with a fixed seed.
JPEG is lossy: accuracy runs a point or two below the official files (see make_cifar10.py).
"""
import argparse
import io
import os
import pickle
import random
import zipfile

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_synthetic(dst, n_train, n_test, seed=0):
    """Random 32x32 JPEGs in the layout of the team's zip (for a dry run on a machine without it)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(dst, "w") as zf:
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                encoded = io.BytesIO()
                image.save(encoded, format="JPEG", quality=75)
                zf.writestr(f"cifar_jpg/{split}/{CLASSES[i % len(CLASSES)]}/{i:05d}.jpg", encoded.getvalue())


def _members(zf, split):
    """{class: sorted names} of one split."""
    by_class = {c: [] for c in CLASSES}
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] == split and parts[-2] in by_class and name.endswith(".jpg"):
            by_class[parts[-2]].append(name)
    return {c: sorted(v) for c, v in by_class.items()}


def subset(src, dst, n_train, n_test, seed=0):
    """Copy a class-balanced subset of src's JPEG files (as stored: no re-encoding) into dst."""
    rng = random.Random(seed)
    tmp = dst + ".tmp"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
        for split, n in (("train", n_train), ("test", n_test)):
            members = _members(zin, split)
            per_class = n // len(CLASSES)
            for c in CLASSES:
                if per_class > len(members[c]):
                    raise SystemExit(f"{src}: {split}/{c} has {len(members[c])} images, {per_class} asked")
                for name in sorted(rng.sample(members[c], per_class)):
                    zout.writestr(f"cifar_jpg/{split}/{c}/{os.path.basename(name)}", zin.read(name))
    os.replace(tmp, dst)
    return os.path.getsize(dst)


def _read_split(zf, split, seed):
    from PIL import Image

    rows, labels = [], []
    for c, names in _members(zf, split).items():
        for name in names:
            image = np.asarray(Image.open(io.BytesIO(zf.read(name))).convert("RGB"), dtype=np.uint8)
            rows.append(image.transpose(2, 0, 1).reshape(-1))  # CHW, row-major, as the official pickles
            labels.append(CLASSES.index(c))
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.stack(rows)[order], [labels[i] for i in order]


def _dump(path, obj):
    with open(path + ".tmp", "wb") as f:
        pickle.dump(obj, f, protocol=4)
    os.replace(path + ".tmp", path)


def build(src, dataroot):
    """DATAROOT/cifar-10-batches-py from the zip; returns (train images, test images)."""
    out = os.path.join(dataroot, "cifar-10-batches-py")
    os.makedirs(out, exist_ok=True)
    with zipfile.ZipFile(src) as zf:
        x, y = _read_split(zf, "train", 0)
        for b, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
            _dump(os.path.join(out, f"data_batch_{b}"), {"batch_label": f"training batch {b} of 5",
                                                         "labels": [y[i] for i in part],
                                                         "data": np.ascontiguousarray(x[part])})
        n_train = len(y)
        x, y = _read_split(zf, "test", 1)
        _dump(os.path.join(out, "test_batch"), {"batch_label": "testing batch 1 of 1", "labels": y, "data": x})
    _dump(os.path.join(out, "batches.meta"), {"num_cases_per_batch": -(-n_train // 5), "label_names": CLASSES,
                                              "num_vis": 3072})
    return n_train, len(y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("subset")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--train", type=int, default=30000)
    s.add_argument("--test", type=int, default=10000)
    b = commands.add_parser("build")
    b.add_argument("src")
    b.add_argument("dataroot")
    args = parser.parse_args()
    if args.command == "subset":
        size = subset(args.src, args.dst, args.train, args.test)
        print(f"wrote {args.dst}: {args.train} train + {args.test} test JPEG images, {size / 2**20:.1f} MiB")
    else:
        n_train, n_test = build(args.src, args.dataroot)
        print(f"wrote {args.dataroot}/cifar-10-batches-py: {n_train} train, {n_test} test images")


if __name__ == "__main__":
    main()
