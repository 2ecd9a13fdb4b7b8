"""Training-batch throughput: data.TrainBatches against a torchvision DataLoader with the same augmentation.

    python bench/data_pipeline.py                         # CPU, 10,000 synthetic images, batch 512
    python bench/data_pipeline.py --device cuda           # batches end up on the GPU for both pipelines

Both pipelines see the same synthetic uint8 images and produce normalised float batches of --batch_size
on --device. After one untimed warm-up epoch each, --epochs full epochs are timed. By default the tensor
pipeline gets one CPU thread and the DataLoader --workers processes: the comparison does not favour it.
"""
import argparse
import os
import sys
import time

import torch
import torchvision.transforms as T
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402


class PILImages(torch.utils.data.Dataset):
    """The synthetic images as a classic torchvision dataset: HWC uint8 -> PIL -> transforms."""

    def __init__(self, images_hwc, labels, transform):
        self.images_hwc, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images_hwc[i])), int(self.labels[i])


def images_per_second(batches_of_epoch, epochs, device):
    """Warm up for one epoch, then time `epochs` full ones; batches are moved to `device` if they are not."""
    def run(epoch):
        count = 0
        for images, labels in batches_of_epoch(epoch):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            count += len(labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return count

    run(0)
    started = time.perf_counter()
    count = sum(run(epoch) for epoch in range(1, epochs + 1))
    return count / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="synthetic training images")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs, after one warm-up epoch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of the tensor pipeline (each DataLoader worker uses one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (args.images,), generator=generator)

    tensor_batches = data.TrainBatches(x, y, args.batch_size, seed=0, device=device)
    tensor_rate = images_per_second(tensor_batches.epoch, args.epochs, device)

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.CIFAR_MEAN, data.CIFAR_STD)])
    dataset = PILImages(x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy(), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0,
                                         pin_memory=device.type == "cuda")
    loader_rate = images_per_second(lambda epoch: loader, args.epochs, device)

    print(f"{args.images} synthetic images, batch {args.batch_size}, {args.epochs} timed epochs, device {device}, "
          f"tensor pipeline on {args.threads} thread(s), DataLoader on {args.workers} workers, {os.cpu_count()} CPUs")
    print(f"| {'pipeline':<44} | {'images/s':>10} | {'ratio':>6} |")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 8}|")
    print(f"| {'data.TrainBatches (uint8 tensors, batched)':<44} | {tensor_rate:>10,.0f} | "
          f"{tensor_rate / loader_rate:>5.1f}x |")
    print(f"| {f'DataLoader + PIL transforms, {args.workers} workers':<44} | {loader_rate:>10,.0f} | {1:>5.1f}x |")


if __name__ == "__main__":
    main()
