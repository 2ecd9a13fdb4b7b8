"""ResNet18 training throughput on one GPU: precisions, memory format, and the data loader.

    python bench/gpu_throughput.py                 # needs CUDA; part of bench/gpu_check.sh

Synthetic CIFAR-shaped uint8 data (real CIFAR cannot travel to a lent GPU machine). For each variant:
forward + backward + LARS step at batch 512, images/s over --steps timed steps after warm-up, and peak
GPU memory. Variants: fp32, bf16 autocast, bf16 + channels_last, each fed by the GPU-resident loader
(data.TrainBatches on the device), and bf16 + channels_last fed by a torchvision DataLoader with the
equivalent PIL transforms (the usual CIFAR recipe). Ratios are against fp32 with the GPU-resident loader.
Last: one optimizer step's time, LARS (multi-tensor) vs torch SGD (foreach), on ResNet18's parameters.
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import models  # noqa: E402
from lars import LARS  # noqa: E402


def torchvision_batches(x, y, batch_size, workers):
    import torchvision.transforms as T
    from PIL import Image

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.CIFAR_MEAN, data.CIFAR_STD)])
    hwc = x.permute(0, 2, 3, 1).numpy()

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(hwc)

        def __getitem__(self, i):
            return transform(Image.fromarray(hwc[i])), int(y[i])

    loader = torch.utils.data.DataLoader(Images(), batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=True, persistent_workers=True)
    while True:
        for images, labels in loader:
            yield images.cuda(non_blocking=True), labels.cuda(non_blocking=True)


def gpu_batches(x, y, batch_size, channels_last):
    batches = data.TrainBatches(x, y, batch_size, seed=0, device=torch.device("cuda"), channels_last=channels_last)
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def images_per_s(batches, dtype, channels_last, steps, warmup):
    torch.manual_seed(0)
    model = models.build("ResNet18").cuda()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = LARS(model.parameters(), lr=0.1)
    autocast = torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            started = time.perf_counter()
        x, y = next(batches)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return steps * len(y) / (time.perf_counter() - started), torch.cuda.max_memory_allocated() / 2**30


def step_ms(optimizer_factory, reps=50):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(p.detach().clone()) for p in models.build("ResNet18").cuda().parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = optimizer_factory(params)
    for _ in range(10):
        optimizer.step()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        optimizer.step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=25600)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8)
    cfg = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (cfg.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (cfg.images,), generator=g)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, ResNet18 (width 64), batch {cfg.batch_size}")
    variants = [("fp32, GPU-resident loader", None, False, "gpu"),
                ("bf16, GPU-resident loader", torch.bfloat16, False, "gpu"),
                ("bf16 + channels_last, GPU-resident loader", torch.bfloat16, True, "gpu"),
                (f"bf16 + channels_last, torchvision DataLoader ({cfg.workers} workers)", torch.bfloat16, True,
                 "torchvision")]
    baseline = None
    print(f"{'variant':<64}{'images/s':>10}{'ratio':>8}{'peak GiB':>10}")
    for name, dtype, channels_last, loader in variants:
        batches = (gpu_batches(x, y, cfg.batch_size, channels_last) if loader == "gpu"
                   else torchvision_batches(x, y, cfg.batch_size, cfg.workers))
        rate, peak = images_per_s(batches, dtype, channels_last, cfg.steps, cfg.warmup)
        baseline = baseline or rate
        print(f"{name:<64}{rate:>10.0f}{rate / baseline:>8.2f}{peak:>10.2f}", flush=True)
    sgd = step_ms(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True))
    lars = step_ms(lambda p: LARS(p, lr=0.1, foreach=True))
    print(f"optimizer step on ResNet18 parameters: SGD(foreach) {sgd:.3f} ms, LARS(multi-tensor) {lars:.3f} ms, "
          f"ratio {lars / sgd:.2f}")


if __name__ == "__main__":
    main()
