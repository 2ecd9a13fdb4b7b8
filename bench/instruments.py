"""What the measuring instruments cost a training run: validation on a step schedule, and the noise scale.

    python bench/instruments.py --dataroot DATA            # both parts, the scaling study's settings
    python bench/instruments.py --dataroot DATA --rounds 2 --steps 3     # a smoke run

The scaling study's settings (docs/scaling_study.md): AirbenchNet width 16, batch 512 in micro-batches of 256,
ghost BatchNorm 32, LARS, fp32, one thread (`--threads`), train.py's default host memory (`--malloc reuse`),
real CIFAR-10 with 5,000 images held out (`--val_size 5000`), which leaves 45,000 to train on (87 steps an
epoch). Each round times `--steps` training steps of each kind and one evaluation, in an order that rotates from
round to round; medians over rounds, and the paired ratio (median over rounds of the ratio within a round).

  (a) evaluation: one evaluation of the 5,000 validation images (trainer.evaluate_validation, as --eval_every
      runs it) against a training step; the ratio reported is 4 evaluations against one epoch of steps
      (target <= 0.25).
  (b) --noise_scale: a training step that measures the noise scale against one that does not (target <= 1.05);
      and, since that difference is within the noise of a step's time, the noise scale's own work (its calls
      around a step's backward passes, on that step's gradients) timed alone, as a fraction of a step.

A memory-write probe before and after flags a machine in its slow state (bench/probe.py).
"""
import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import config  # noqa: E402
import data  # noqa: E402
import probe  # noqa: E402  (bench/probe.py)
import trainer  # noqa: E402

VAL_SIZE = 5000
EVALS_PER_EPOCH = 4


def study_recipe(batch_size, micro_batch):
    return config.Recipe(arch="AirbenchNet", width=16, optimizer="LARS", lr=8.0, lr_scaling="sqrt",
                         exclude_bn_bias=True, ghost_batch_size=32, label_smoothing=0.1, warmup_fraction=0.05,
                         poly_power=1.0, batch_size=batch_size, max_samples_per_gpu=micro_batch, val_size=VAL_SIZE,
                         epochs=1, amp="none", channels_last="off")


def timed(function, *args):
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", default="./data", help="where CIFAR-10 is (default: ./data)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default: 9)")
    parser.add_argument("--steps", type=int, default=8, help="training steps of each kind per round (default: 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1, as the study)")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--micro_batch", type=int, default=256)
    probe.add_malloc_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc = probe.use_malloc(args.malloc)
    before_ms = probe.memory_write_ms()

    train_x, train_y, _, _ = data.load_cifar(args.dataroot, "cifar10", download=False)
    train_x, train_y, val_x, val_y = data.split_validation(train_x, train_y, VAL_SIZE)
    recipe = study_recipe(args.batch_size, args.micro_batch)
    plan = config.plan(recipe, len(train_y))
    device = torch.device("cpu")
    train_batches = data.TrainBatches(train_x, train_y, recipe.batch_size, seed=recipe.seed)
    val_batches = data.EvalBatches(val_x, val_y, 1024)
    parts = trainer.build(recipe, plan, device, noise=True)
    noise = parts.noise
    batches = iter(train_batches.epoch(0))
    pinned = [next(batches) for _ in range(args.steps)]  # the same steps every round: no data-order effect
    parts.net.train()

    def steps(measure_noise):
        parts.noise = noise if measure_noise else None
        for images, labels in pinned:
            trainer.train_step(parts, images, labels)

    def evaluation():
        trainer.evaluate_validation(parts, val_batches, 1)

    kinds = {"step": lambda: steps(False), "noise step": lambda: steps(True), "eval": evaluation}
    for function in kinds.values():  # warm-up
        function()
    times = {k: [] for k in kinds}
    order = list(kinds)
    for r in range(args.rounds):
        for kind in order[r % len(order):] + order[:r % len(order)]:
            seconds = timed(kinds[kind])
            times[kind].append(seconds / (args.steps if kind != "eval" else 1))
    # the noise scale's own work on one step's gradients, alone: the calls train_step makes around the backward
    images, labels = pinned[0]
    micro_batches = trainer.split_step(images, labels, plan, recipe.loss_weighting)
    trainer.accumulate_gradients(parts.net, micro_batches, parts.loss_fn)

    def noise_work():
        noise.start_step(micro_batches)
        for i in range(len(micro_batches)):
            noise.after_backward(i)
        noise.end_step()
        noise.readout(device).sum().item()  # wait for the work (a no-op on the CPU, which computes at once)

    repeats = 200
    for _ in range(10):
        noise_work()
    alone = statistics.median(timed(lambda: [noise_work() for _ in range(repeats)]) / repeats for _ in range(5))
    parts.optimizer.zero_grad(set_to_none=True)
    after_ms = probe.memory_write_ms()

    print(f"AirbenchNet width 16, batch {recipe.batch_size} in micro-batches of {plan.micro_batch}, ghost BN 32, "
          f"LARS, fp32, {args.threads} thread(s), --malloc {malloc}; {len(train_y)} training images "
          f"({plan.steps_per_epoch} steps an epoch), {len(val_y)} validation images; {args.rounds} rounds of "
          f"{args.steps} steps; torch {torch.__version__}")
    for kind, values in times.items():
        print(f"  {kind:>10}: median {statistics.median(values) * 1e3:8.1f} ms, best {min(values) * 1e3:8.1f} ms")
    step = statistics.median(times["step"])
    epoch = plan.steps_per_epoch * step
    evals = EVALS_PER_EPOCH * statistics.median(times["eval"])
    paired = statistics.median(EVALS_PER_EPOCH * e / (plan.steps_per_epoch * s)
                               for e, s in zip(times["eval"], times["step"]))
    print(f"(a) {EVALS_PER_EPOCH} evaluations of {len(val_y)} images vs an epoch of training: "
          f"{evals:.1f} s vs {epoch:.1f} s = {evals / epoch:.3f} (paired {paired:.3f}; target <= 0.25)")
    with_noise = statistics.median(times["noise step"])
    paired = statistics.median(n / s for n, s in zip(times["noise step"], times["step"]))
    print(f"(b) a step with --noise_scale vs without: {with_noise * 1e3:.1f} ms vs {step * 1e3:.1f} ms = "
          f"{with_noise / step:.3f} (paired {paired:.3f}; target <= 1.05); the noise scale's own work alone: "
          f"{alone * 1e3:.3f} ms a step = {1 + alone / step:.4f} of a step")
    print(f"memory-write probe: {before_ms:.2f} ms before, {after_ms:.2f} ms after")
    probe.warn_if_slow(before_ms, after_ms)


if __name__ == "__main__":
    main()
