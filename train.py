"""Train a CIFAR ResNet with LARS or SGD at any effective batch size.

    python train.py --optimizer LARS --cuda lars_results           # the seed's recipe, one trial
    torchrun --nproc_per_node 4 train.py --cuda lars_results       # the same on 4 GPUs
    python train.py --config configs/seed_table.yaml seed_table    # a whole grid of trials

The defaults reproduce the seed's recipe: ResNet18 on CIFAR-10, LARS (lr 0.1, eta 0.001, momentum 0.9,
weight decay 5e-4), batch 128, polynomial (power 2) decay per iteration over 200 epochs, no warmup.

Each optimizer step sees exactly --batch_size training samples (data.TrainBatches decides how an epoch is
cut), split over the ranks and then into micro-batches of at most --max_samples_per_gpu. Each micro-batch's
mean loss is weighted by its share of the step's samples, so the accumulated gradient is the mean gradient
of the whole batch whatever the micro-batch sizes. BatchNorm, however, normalises each micro-batch on its
own (a "ghost batch" of at most --max_samples_per_gpu samples): accumulation is exact for the gradient of
what the network computes, not the same network as one giant batch would compute.
"""
import argparse
import contextlib
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data
import models
import schedulers
import tracking
from lars import LARS, lars_param_groups

OPTIMIZERS = ("LARS", "SGD")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Arguments that say where and how a run executes, not what it computes: a checkpoint may be resumed
# with other values, and a sweep does not tell trials apart by them.
RUNTIME_ARGS = ("experimentname", "logroot", "dataroot", "resume", "cuda", "config", "eval_batch_size",
                "stop_after_epoch", "ray", "gpus_per_trial") + tracking.LAUNCHER_ARGS


class UsageError(Exception):
    """Bad command-line input."""


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed."""


class Diverged(Exception):
    """The training loss became NaN or infinite."""


def add_arguments(parser):
    a = parser.add_argument
    a("--arch", default="ResNet18", choices=models.ARCHS, help="network")
    a("--width", type=int, default=64, help="channels of the first stage; 64 is the standard ResNet")
    a("--dataset", default="cifar10", choices=data.DATASETS)
    a("--train_subset", type=int, default=0, help="train on a class-balanced subset of N images (0: all)")
    a("--optimizer", default="LARS", choices=OPTIMIZERS, help="LARS (lars.py) or torch SGD with momentum")
    a("--lr", type=float, default=0.1, help="peak learning rate, before --lr_scaling")
    a("--momentum", type=float, default=0.9)
    a("--nesterov", action="store_true", help="Nesterov momentum (LARS and SGD)")
    a("--weight_decay", type=float, default=5e-4)
    a("--eta", type=float, default=0.001, help="LARS trust coefficient")
    a("--momentum_style", default="paper", choices=("paper", "sgd"), help="LARS: where lr enters momentum")
    a("--norm_mode", default="paper", choices=("paper", "update"), help="LARS: trust-ratio denominator")
    a("--trust_clip", action="store_true", help="LARS: clip the trust ratio at 1 (LARC)")
    a("--exclude_bn_bias", action="store_true",
      help="no weight decay and no LARS adaptation for BatchNorm weights and biases")
    a("--batch_size", type=int, default=128, help="effective batch: samples per optimizer step")
    a("--max_samples_per_gpu", type=int, default=512, help="largest micro-batch per forward/backward")
    a("--eval_batch_size", type=int, default=1024)
    a("--epochs", type=int, default=200)
    a("--schedule", default="poly", choices=schedulers.SCHEDULES, help="per-iteration LR schedule")
    a("--poly_power", type=float, default=2.0)
    a("--warmup_epochs", type=float, default=0.0, help="linear warmup from --warmup_start_lr")
    a("--warmup_start_lr", type=float, default=0.0)
    a("--end_lr", type=float, default=0.0, help="final learning rate (poly, cosine); floor for step decays")
    a("--lr_gamma", type=float, default=None,
      help="decay factor: at each milestone (step, default 0.1) or every epoch (geometric, default 0.98)")
    a("--lr_milestones", type=int, nargs="+", default=None,
      help="epochs at which --schedule step decays (default: 50%% and 75%% of --epochs)")
    a("--lr_scaling", default="none", choices=schedulers.LR_SCALING_RULES,
      help="scale --lr by batch_size/base_batch_size (linear) or its square root (sqrt)")
    a("--base_batch_size", type=int, default=128)
    a("--label_smoothing", type=float, default=0.0)
    a("--amp", default="none", choices=tuple(AMP_DTYPES), help="autocast dtype (fp16 uses a GradScaler)")
    a("--channels_last", action="store_true")
    a("--cuda", action="store_true", help="train on the GPU (default: CPU)")
    a("--resume", action="store_true", help="continue the experiment's newest unfinished trial")
    a("--stop_after_epoch", type=int, default=0,
      help="stop cleanly after this many epochs, checkpoint written (resume later with --resume)")
    a("--ray", default="", help="with --config: run the trials on this Ray cluster ('auto' or an address)")
    a("--gpus_per_trial", type=float, default=1.0, help="with --ray: GPUs reserved per trial")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default."""


def make_parser():
    parser = tracking.make_parser(add_arguments, __doc__)
    parser.formatter_class = HelpFormatter

    def one_line_error(message):
        parser.exit(2, f"train.py: error: {message}\n")

    parser.error = one_line_error
    return parser


def validate(args):
    positive = ("batch_size", "max_samples_per_gpu", "eval_batch_size", "epochs", "width", "base_batch_size")
    for name in positive:
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    for name in ("lr", "weight_decay", "warmup_epochs", "warmup_start_lr", "end_lr", "train_subset",
                 "stop_after_epoch"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.eta <= 0:
        raise UsageError(f"--eta must be > 0, got {args.eta}")
    if not 0 <= args.label_smoothing < 1:
        raise UsageError(f"--label_smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.warmup_epochs > args.epochs:
        raise UsageError(f"--warmup_epochs ({args.warmup_epochs}) must not exceed --epochs ({args.epochs})")
    if args.nesterov and args.momentum == 0:
        raise UsageError("--nesterov needs --momentum > 0")
    if args.cuda and not torch.cuda.is_available():
        raise UsageError("--cuda: CUDA is not available on this machine (drop --cuda to train on the CPU)")
    if args.amp == "fp16" and not args.cuda:
        raise UsageError("--amp fp16 needs --cuda (use --amp bf16 on the CPU)")


def recipe(args):
    """What a run computes: everything but where and how it executes."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in RUNTIME_ARGS}


# ---------------------------------------------------------------- distributed set-up (torchrun)

def init_distributed(args):
    """(rank, world_size, device) from torchrun's environment, or a single process."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if args.cuda else "cpu")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.batch_size % world_size:
        raise UsageError(f"--batch_size {args.batch_size} does not split evenly over {world_size} ranks")
    if args.cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if args.cuda else "gloo")
    return rank, world_size, device


def all_reduce_sum(tensor, world_size):
    if world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_from_master(value, world_size):
    if world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


# ---------------------------------------------------------------- model, optimizer, schedule

def build_optimizer(model, args, lr):
    if args.exclude_bn_bias:
        groups = lars_param_groups(model, args.weight_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if args.optimizer == "LARS":
        return LARS(groups, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay, eta=args.eta,
                    nesterov=args.nesterov, momentum_style=args.momentum_style, norm_mode=args.norm_mode,
                    trust_clip=args.trust_clip)
    return torch.optim.SGD(groups, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
                           nesterov=args.nesterov)


def build_scheduler(optimizer, args, steps_per_epoch):
    gamma = args.lr_gamma
    if gamma is None:
        gamma = 0.98 if args.schedule == "geometric" else 0.1
    milestones = args.lr_milestones or (args.epochs // 2, args.epochs * 3 // 4)
    return schedulers.make_scheduler(
        optimizer, args.schedule, total_steps=steps_per_epoch * args.epochs, steps_per_epoch=steps_per_epoch,
        warmup_steps=round(args.warmup_epochs * steps_per_epoch), warmup_start_lr=args.warmup_start_lr,
        end_lr=args.end_lr, power=args.poly_power, gamma=gamma, milestones=tuple(sorted(set(milestones))))


# ---------------------------------------------------------------- one step, one evaluation

def accumulate_gradients(model, images, labels, *, max_samples, loss_fn, autocast=contextlib.nullcontext,
                         scale=lambda loss: loss, no_sync=contextlib.nullcontext):
    """Forward/backward over micro-batches of at most `max_samples`, adding into the parameters' .grad.

    Micro-batch i's mean loss is weighted by n_i/n, so the gradient is the mean over all n samples
    however they are cut. Under DDP `no_sync` defers the all-reduce to the last micro-batch.
    Returns the summed loss and the number of correct predictions, as tensors (no host sync).
    """
    n = len(labels)
    chunks = list(zip(images.split(max_samples), labels.split(max_samples)))
    loss_sum = torch.zeros((), device=labels.device)
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for i, (x, y) in enumerate(chunks):
        with no_sync() if i < len(chunks) - 1 else contextlib.nullcontext():
            with autocast():
                logits = model(x)
                loss = loss_fn(logits, y)
            scale(loss * (len(y) / n)).backward()
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.argmax(1) == y).sum()
    return loss_sum, correct


@torch.no_grad()
def evaluate(model, batches, autocast, world_size):
    """Test loss, top-1 and top-5 (percent) over every test image once."""
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-5, count
    for x, y in batches:
        with autocast():
            logits = model(x)
        top5 = logits.topk(5, dim=1).indices
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        totals[1] += (top5[:, 0] == y).sum()
        totals[2] += (top5 == y[:, None]).any(1).sum()
        totals[3] += len(y)
    loss_sum, top1, top5, count = all_reduce_sum(totals, world_size).tolist()
    return {"test_loss": loss_sum / count, "test_top1": 100 * top1 / count, "test_top5": 100 * top5 / count}


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path, state):
    """Atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, args):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        theirs = state["recipe"]
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})".split("\n")[0])
    ours = recipe(args)
    differing = [f"--{k} {theirs.get(k)!r} in the checkpoint, {ours.get(k)!r} now"
                 for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if differing:
        raise CheckpointError(f"{path} belongs to another run: " + "; ".join(differing))
    return state


def rng_states():
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
            "python": random.getstate()}


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(states["python"])


def find_resumable(args):
    """(trial_id, checkpoint path) of the experiment's newest trial that has a checkpoint."""
    trials = [t for t in tracking.list_trials(args.logroot, args.experimentname)
              if os.path.exists(os.path.join(tracking.experiment_dir(args.logroot, args.experimentname),
                                             t["trial_id"], "last.pt"))]
    if not trials:
        raise CheckpointError(f"--resume: no trial with a checkpoint under "
                              f"{tracking.experiment_dir(args.logroot, args.experimentname)}")
    trial = trials[-1]
    path = os.path.join(tracking.experiment_dir(args.logroot, args.experimentname), trial["trial_id"], "last.pt")
    return trial["trial_id"], path


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- the run

def train(args, resume_id=None):
    """Run one trial to its end (or to --stop_after_epoch). Returns a summary dict.

    `resume_id` continues that trial of the experiment from its checkpoint (from scratch if it has
    none yet); `args.resume` continues the newest trial that has a checkpoint.
    """
    validate(args)
    rank, world_size, device = init_distributed(args)
    try:
        return _train(args, resume_id, rank, world_size, device)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _train(args, resume_id, rank, world_size, device):
    master = rank == 0
    checkpoint, ckpt_path = None, None
    if args.resume and resume_id is None:
        resume_id, ckpt_path = broadcast_from_master(find_resumable(args) if master else None, world_size)
    elif resume_id is not None:
        ckpt_path = os.path.join(tracking.experiment_dir(args.logroot, args.experimentname), resume_id, "last.pt")
        if not os.path.exists(ckpt_path):  # interrupted before its first checkpoint: start it again
            ckpt_path = None
    if ckpt_path is not None:
        checkpoint = load_checkpoint(ckpt_path, args)
        if checkpoint["finished"]:
            if master:
                print(f"trial {resume_id} already finished all {args.epochs} epochs; nothing to do")
            return {"trial_id": resume_id, "finished": True}

    # Rank 0 downloads the data (where it must) before the others read it.
    if not master:
        dist.barrier()
    train_x, train_y, test_x, test_y = data.load_cifar(args.dataroot, args.dataset)
    if master and world_size > 1:
        dist.barrier()
    if args.train_subset:
        train_x, train_y = data.class_balanced_subset(train_x, train_y, args.train_subset, args.seed)
    train_batches = data.TrainBatches(train_x, train_y, args.batch_size, seed=args.seed, device=device,
                                      rank=rank, world_size=world_size, channels_last=args.channels_last)
    test_batches = data.EvalBatches(test_x, test_y, args.eval_batch_size, device=device, rank=rank,
                                    world_size=world_size, channels_last=args.channels_last)
    steps_per_epoch = train_batches.steps_per_epoch

    seed_everything(args.seed)
    model = models.build(args.arch, num_classes=data.NUM_CLASSES[args.dataset], width=args.width).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = schedulers.scale_lr(args.lr, args.batch_size, args.base_batch_size, args.lr_scaling)
    optimizer = build_optimizer(model, args, lr)
    scheduler = build_scheduler(optimizer, args, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    start_epoch, global_step, best_top1 = 0, 0, -1.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_states(checkpoint["rng"])
        start_epoch, global_step, best_top1 = checkpoint["epoch"], checkpoint["global_step"], checkpoint["best_top1"]
    net = DistributedDataParallel(model, device_ids=[device] if args.cuda else None) if world_size > 1 else model

    dtype = AMP_DTYPES[args.amp]
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    no_sync = net.no_sync if world_size > 1 else contextlib.nullcontext

    params = {**vars(args), "scaled_lr": lr, "world_size": world_size, "steps_per_epoch": steps_per_epoch}
    trial = (tracking.Trial(args.logroot, args.experimentname, params, resume_id=resume_id,
                            keep_until_step=global_step) if master else None)
    if master:
        print(f"trial {trial.trial_id}: {args.optimizer} {args.arch}(width {args.width}) on {args.dataset}, "
              f"batch {args.batch_size} = {world_size} rank(s) x micro-batches of <= {args.max_samples_per_gpu}, "
              f"lr {args.lr} scaled to {lr:.6g} ({args.lr_scaling}), {steps_per_epoch} steps/epoch, "
              f"{'resuming after epoch ' + str(start_epoch) if checkpoint else 'from scratch'}, device {device}")
    last_epoch = args.epochs if not args.stop_after_epoch else min(args.epochs, args.stop_after_epoch)
    finished = False
    try:
        for epoch in range(start_epoch, last_epoch):
            net.train()
            started = time.perf_counter()
            loss_total, correct_total = 0.0, 0
            bar = tqdm(train_batches.epoch(epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                       leave=False, disable=not (master and sys.stderr.isatty()))
            for images, labels in bar:
                step_lr = optimizer.param_groups[0]["lr"]
                loss_sum, correct = accumulate_gradients(net, images, labels, max_samples=args.max_samples_per_gpu,
                                                         loss_fn=loss_fn, autocast=autocast, scale=scaler.scale,
                                                         no_sync=no_sync)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                global_step += 1
                totals = torch.stack([loss_sum.double(), correct.double()])
                step_loss, step_correct = all_reduce_sum(totals, world_size).tolist()
                step_loss /= args.batch_size
                if not math.isfinite(step_loss):
                    raise Diverged(f"training loss is {step_loss} at epoch {epoch + 1}, step {global_step} "
                                   f"(lr {step_lr:.4g}); stopped")
                loss_total += step_loss
                correct_total += step_correct
                if master:
                    trial.log(iteration=global_step, kind="step", epoch=epoch + 1, learning_rate=step_lr,
                              train_loss=step_loss, train_top1=100 * step_correct / args.batch_size)
                    bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{step_lr:.3g}")
            train_seconds = time.perf_counter() - started
            if world_size > 1:  # every rank evaluates (and rank 0 saves) rank 0's BatchNorm statistics
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)
            metrics = evaluate(model, test_batches, autocast, world_size)
            epoch_seconds = time.perf_counter() - started
            images_per_s = steps_per_epoch * args.batch_size / train_seconds
            best_top1 = max(best_top1, metrics["test_top1"])
            if master:
                row = {"kind": "epoch", "epoch": epoch + 1, "learning_rate": optimizer.param_groups[0]["lr"],
                       "train_loss": loss_total / steps_per_epoch,
                       "train_top1": 100 * correct_total / (steps_per_epoch * args.batch_size),
                       **metrics, "epoch_seconds": epoch_seconds, "images_per_s": images_per_s,
                       "batch_size": args.batch_size}
                trial.log(iteration=global_step, **row)
                print(f"epoch {epoch + 1:>3}/{args.epochs}  lr {row['learning_rate']:.4g}  "
                      f"train loss {row['train_loss']:.4f} acc {row['train_top1']:.2f}%  "
                      f"test loss {row['test_loss']:.4f} acc {row['test_top1']:.2f}% (top-5 {row['test_top5']:.2f}%)  "
                      f"{epoch_seconds:.1f}s  {images_per_s:.0f} img/s", flush=True)
                state = {"recipe": recipe(args), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                         "global_step": global_step, "best_top1": best_top1, "rng": rng_states(),
                         "finished": epoch + 1 == args.epochs}
                save_checkpoint(os.path.join(trial.dir, "last.pt"), state)
                if metrics["test_top1"] == best_top1:
                    save_checkpoint(os.path.join(trial.dir, "best.pt"), state)
        finished = last_epoch == args.epochs
    finally:
        if master:
            trial.close(finished)
    if master and not finished:
        print(f"stopped after epoch {last_epoch} as asked; continue with --resume")
    return {"trial_id": trial.trial_id if master else resume_id, "finished": finished, "best_top1": best_top1}


def explicit_flags(argv):
    """The destinations of the flags actually given in argv (a config's values yield to them)."""
    probe = tracking.make_parser(add_arguments, "")
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        if args.config:
            import sweep
            sweep.run(args.config, args, explicit_flags(argv))
        else:
            train(args)
    except (UsageError, data.DataError, CheckpointError, Diverged) as e:
        parser.exit(2 if isinstance(e, UsageError) else 1, f"train.py: error: {e}\n")


if __name__ == "__main__":
    # sweep.py imports `train`: let it find this module rather than load a second copy whose exception
    # classes main() would not catch.
    sys.modules.setdefault("train", sys.modules[__name__])
    main()
