"""The training library: build a trial's parts from its recipe, and run it (`run_trial`).

Each optimizer step sees --batch_size samples (data.TrainBatches cuts the epoch), split over the ranks and
then into micro-batches of at most --max_samples_per_gpu. With --loss_weighting per_sample each micro-batch's
mean loss is weighted by its share of the step's samples, so the accumulated gradient is the mean gradient of
the whole batch however it is cut. BatchNorm normalises each micro-batch on its own, or groups of
--ghost_batch_size inside it: accumulation is exact for the network that is computed, which is not the
network one giant batch would compute. The seed's behaviours (short last step, per-chunk loss division,
staircase lr, trust ratio with no zero case, uniform BN weights) are recipe options; see README.
"""
import contextlib
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import config
import data
import host_memory
import interrupts
import models
import schedulers
import store
from lars import LARS, lars_param_groups
from noise_scale import NoiseScale

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(Exception):
    """The training loss became NaN or infinite."""


class OutOfMemory(Exception):
    """The model or a step did not fit in memory; names the flags that size it."""


# ---------------------------------------------------------------- building

def build_optimizer(model, recipe, lr):
    if recipe.exclude_bn_bias:
        groups = lars_param_groups(model, recipe.weight_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if recipe.optimizer == "LARS":
        return LARS(groups, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, eta=recipe.eta,
                    nesterov=recipe.nesterov, momentum_style=recipe.momentum_style, norm_mode=recipe.norm_mode,
                    trust_clip=recipe.trust_clip, zero_norm_trust=recipe.zero_norm_trust)
    return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                           nesterov=recipe.nesterov)


def build_scheduler(optimizer, recipe, plan):
    return schedulers.make_scheduler(
        optimizer, recipe.schedule, total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch,
        warmup_steps=plan.resolved_warmup_steps, warmup_start_lr=recipe.warmup_start_lr, end_lr=recipe.end_lr,
        power=recipe.poly_power, gamma=plan.resolved_lr_gamma, milestones=plan.resolved_lr_milestones,
        per_epoch=recipe.lr_update == "epoch")


def build_model(recipe, device):
    """The network, initialised from the global RNG (seed it first)."""
    model = models.build(recipe.arch, num_classes=data.NUM_CLASSES[recipe.dataset], width=recipe.width,
                         ghost_batch_size=recipe.ghost_batch_size, zero_init_residual=recipe.zero_init_residual,
                         bn_weight_init=recipe.bn_weight_init).to(device)
    if recipe.channels_last == "on":
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class Parts:
    """Everything a trial trains with; `net` is `model` wrapped for DDP (or `model` itself)."""
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    autocast: object
    no_sync: object
    plan: config.Plan
    loss_weighting: str
    noise: object = None  # a noise_scale.NoiseScale with --noise_scale


def build(recipe, plan, device, world_size=1, compile=False, noise=False):
    """A trial's parts from its (resolved) recipe and plan; the model is initialised from recipe.seed.
    `noise`: measure the gradient noise scale (noise_scale.py)."""
    seed_everything(recipe.seed)
    model = build_model(recipe, device)
    optimizer = build_optimizer(model, recipe, plan.scaled_lr)
    net = model
    if world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    measure = NoiseScale(model.parameters(), net if world_size > 1 else None) if noise else None
    if compile:
        net = torch.compile(net)
        if isinstance(optimizer, LARS):
            optimizer.compile()  # lr as a tensor: no recompile when the schedule changes it
        else:
            optimizer.step = torch.compile(optimizer.step)
    scheduler = build_scheduler(optimizer, recipe, plan)
    dtype = AMP_DTYPES[recipe.amp]
    return Parts(model=model, net=net, optimizer=optimizer, scheduler=scheduler,
                 scaler=torch.amp.GradScaler(device.type, enabled=recipe.amp == "fp16"),
                 loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing),
                 autocast=lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
                 no_sync=net.no_sync if world_size > 1 else contextlib.nullcontext, plan=plan,
                 loss_weighting=recipe.loss_weighting, noise=measure)


# ---------------------------------------------------------------- one step, one evaluation

def split_step(images, labels, plan, loss_weighting):
    """[(images, labels, weight)]: the step's micro-batches and the factor on each one's mean loss.

    per_sample: micro-batches of at most plan.micro_batch, weight n_i / n (the exact mean over the batch).
    per_chunk (the seed): torch.chunk into plan.micro_batches_per_step chunks, weight 1 / that number
    whatever each chunk's size (on a short last step the chunks are smaller, and fewer if torch.chunk says so).
    """
    n = len(labels)
    if loss_weighting == "per_chunk":
        chunks = plan.micro_batches_per_step
        return [(x, y, 1.0 / chunks) for x, y in zip(images.chunk(chunks), labels.chunk(chunks))]
    return [(x, y, len(y) / n) for x, y in zip(images.split(plan.micro_batch), labels.split(plan.micro_batch))]


def accumulate_gradients(net, micro_batches, loss_fn, autocast=contextlib.nullcontext, scale=lambda loss: loss,
                         no_sync=contextlib.nullcontext, after_backward=None):
    """Forward/backward over the micro-batches, adding weight * mean loss's gradient into .grad.

    Under DDP `no_sync` defers the all-reduce to the last micro-batch. `after_backward(i)`, if given, is
    called after micro-batch i's backward (the noise scale reads .grad there). Returns the summed per-sample
    loss and the number of correct predictions as device tensors: no host sync.
    """
    device = micro_batches[0][1].device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    last = len(micro_batches) - 1
    for i, (x, y, weight) in enumerate(micro_batches):
        with no_sync() if i < last else contextlib.nullcontext():
            with autocast():
                logits = net(x)
                loss = loss_fn(logits, y)
            scale(loss * weight).backward()
        if after_backward is not None:
            after_backward(i)
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.argmax(1) == y).sum()
    return loss_sum, correct


def train_step(parts, images, labels):
    """One optimizer step; returns (summed loss, correct) as device tensors, without a host sync. With
    parts.noise (--noise_scale) the step's gradients also feed its noise-scale estimate."""
    micro_batches = split_step(images, labels, parts.plan, parts.loss_weighting)
    noise = parts.noise
    if noise is not None:
        noise.start_step(micro_batches)
    loss_sum, correct = accumulate_gradients(parts.net, micro_batches, parts.loss_fn, parts.autocast,
                                             parts.scaler.scale, parts.no_sync,
                                             noise.after_backward if noise is not None else None)
    if noise is not None:
        noise.end_step(parts.plan.world_size)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()
    return loss_sum, correct


def trust_ratio_stats(parts):
    """(layer names, [one float64 tensor]) for the optimizer's last step: the ||w|| of the n adapted tensors,
    then their ||g||, then the trust ratios (LARS.trust_ratio_stats: the values its update used, not
    recomputed), gathered on the device to be read with the loss."""
    names = {id(p): name for name, p in parts.model.named_parameters()}
    layers, columns = [], ([], [], [])
    for params, *stats in parts.optimizer.trust_ratio_stats():
        layers += [names.get(id(p), "?") for p in params]
        for column, values in zip(columns, stats):
            column.append(values.double())
    if not layers:
        return [], []
    return layers, [torch.cat([torch.cat(column) for column in columns])]


def trust_ratio_row(layers, values, world_size):
    """The 'trust' row from trust_ratio_stats's values as read (summed over the ranks, which agree)."""
    n = len(layers)
    values = [v / world_size for v in values]
    return {"layers": layers, "weight_norm": values[:n], "grad_norm": values[n:2 * n],
            "trust_ratio": values[2 * n:3 * n]}


def all_reduce_sum(tensor, world_size):
    if world_size > 1:
        dist.all_reduce(tensor)
    return tensor


@torch.no_grad()
def evaluate(model, batches, autocast, world_size, show_progress=False, prefix="test"):
    """Loss, top-1 and top-5 (percent) over every image of `batches` once, as `{prefix}_loss` etc.; one host
    sync. Leaves the model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-5, count
    for x, y in tqdm(batches, desc="evaluating", leave=False, disable=not show_progress):
        with autocast():
            logits = model(x)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        totals[1] += (top5[:, 0] == y).sum()
        totals[2] += (top5 == y[:, None]).any(1).sum()
        totals[3] += len(y)
    loss_sum, top1, top5, count = all_reduce_sum(totals, world_size).tolist()
    return {f"{prefix}_loss": loss_sum / count, f"{prefix}_top1": 100 * top1 / count,
            f"{prefix}_top5": 100 * top5 / count}


def share_batchnorm_statistics(model):
    """Every rank evaluates (and rank 0 saves) rank 0's BatchNorm statistics. The ranks' own statistics only
    ever feed evaluations, so replacing them changes no training step."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def evaluate_validation(parts, val_batches, world_size):
    """val_loss, val_top1, val_top5 of the model as it is now, in the middle of an epoch or at its end; the
    network is back in training mode afterwards. Reads nothing but the model (no RNG, no optimizer state), so
    a run evaluates the same steps with the same results however often it was stopped and resumed."""
    if world_size > 1:
        share_batchnorm_statistics(parts.model)
    metrics = evaluate(parts.model, val_batches, parts.autocast, world_size, prefix="val")
    parts.net.train()
    return metrics


# ---------------------------------------------------------------- state

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def checkpoint_state(parts, recipe, epoch, global_step, best_top1, finished):
    state = {"recipe": config.as_json(recipe), "model": parts.model.state_dict(),
             "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
             "scaler": parts.scaler.state_dict(), "epoch": epoch, "global_step": global_step,
             "best_top1": best_top1, "rng": rng_states(), "finished": finished}
    if parts.noise is not None:
        state["noise_scale"] = parts.noise.state_dict()
    return state


def check_same_recipe(theirs, recipe, path, where):
    """A CheckpointError naming every recipe value of `theirs` (a checkpoint's or a parameter file's) that
    differs from `recipe`."""
    ours, theirs = config.as_json(recipe), config.recipe_json(theirs)
    differing = [f"--{k} {theirs.get(k)!r} {where}, {ours.get(k)!r} now"
                 for k in config.RECIPE_KEYS if ours.get(k) != theirs.get(k)]
    if differing:
        raise store.CheckpointError(f"{path} belongs to another run: " + "; ".join(differing))


def restore(parts, recipe, state, path):
    """Load a checkpoint's state into the parts; a checkpoint of another recipe is a CheckpointError."""
    check_same_recipe(state.get("recipe", {}), recipe, path, "in the checkpoint")
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    set_rng_states(state["rng"])
    if parts.noise is not None and "noise_scale" in state:  # else (a run without it) measured from here on
        parts.noise.load_state_dict(state["noise_scale"])
    return state["epoch"], state["global_step"], state["best_top1"]


# ---------------------------------------------------------------- distributed set-up (torchrun)

def init_distributed(cuda):
    """(rank, world_size, device) from torchrun's environment variables, or a single process."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return rank, world_size, device


def broadcast_from_master(value, world_size):
    if world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


# ---------------------------------------------------------------- the run

def prepare(recipe, runtime):
    """Check everything that can be checked before the data is loaded; returns the resolved recipe."""
    config.check(recipe, runtime, world_size=int(os.environ.get("WORLD_SIZE", 1)))  # torchrun's, before joining
    if runtime.cuda and not torch.cuda.is_available():
        raise config.UsageError("--cuda: CUDA is not available on this machine (drop --cuda to train on the CPU)")
    store.check_destination(runtime.logroot, runtime.experimentname)
    return config.resolve(recipe, runtime)


def run_trial(recipe, runtime, resume_id=None):
    """Run one trial to its end (or to --stop_after_epoch); returns a summary dict.

    `resume_id` continues that trial from its checkpoint (from scratch if it has none yet); --resume
    continues the experiment's newest unfinished trial. Sets the process's allocator (`host_memory.use_malloc`).
    """
    recipe = prepare(recipe, runtime)
    rank, world_size, device = init_distributed(runtime.cuda)
    if not host_memory.use_malloc(runtime.malloc) and runtime.malloc == "reuse" and rank == 0:
        print("--malloc reuse: not glibc here; the system allocator's defaults stay", flush=True)
    try:
        summary = _run(recipe, runtime, resume_id, rank, world_size, device)
        if world_size > 1:  # no rank tears gloo down while another still uses it (a rank once aborted in CI)
            dist.barrier()
        return summary
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _run(recipe, runtime, resume_id, rank, world_size, device):
    """The trial's loop, nanoGPT-style: what it resumes, its data and parts, then epochs of steps."""
    master = rank == 0
    resume_id, checkpoint, checkpoint_file = _checkpoint_to_resume(recipe, runtime, resume_id, master, world_size)
    if checkpoint is not None and checkpoint["finished"]:
        return {"trial_id": resume_id, "finished": True}
    torch.backends.cudnn.benchmark = runtime.cuda  # fixed shapes: let cuDNN pick its fastest kernels once
    train_batches, val_batches, test_batches, plan = _batches(recipe, runtime, rank, world_size, device)
    try:
        parts = build(recipe, plan, device, world_size, runtime.compile, runtime.noise_scale)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if isinstance(e, torch.OutOfMemoryError) or _is_out_of_memory(e):
            raise out_of_memory(recipe, plan, "building the model") from None
        raise
    if runtime.noise_scale and world_size == 1 and plan.micro_batches_per_step < 2 and master:
        print(f"--noise_scale: one micro-batch per step on one rank (batch {recipe.batch_size}, "
              f"--max_samples_per_gpu {recipe.max_samples_per_gpu}): no two batch sizes to compare, so the noise "
              f"scale is not measured; the run goes on without it", flush=True)
    start_epoch, global_step, best_top1 = 0, 0, -1.0
    if checkpoint is not None:
        start_epoch, global_step, best_top1 = restore(parts, recipe, checkpoint, checkpoint_file)
    trial, best_saved = _open_trial(recipe, runtime, plan, resume_id, start_epoch, global_step, device,
                                    best_top1) if master else (None, best_top1)
    last_epoch = min(recipe.epochs, runtime.stop_after_epoch or recipe.epochs)
    show_progress = master and sys.stderr.isatty()
    saved_epoch, epoch = start_epoch, start_epoch  # the epoch last.pt holds; the one being run
    run_started, run_steps = time.perf_counter(), (last_epoch - start_epoch) * plan.steps_per_epoch
    try:
        for epoch in range(start_epoch, last_epoch):
            parts.net.train()
            started = time.perf_counter()
            eval_seconds = 0.0  # of the validation evaluations inside the epoch, not counted as training time
            interval_sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, correct
            interval_samples = 0
            epoch_sums = [0.0, 0.0, 0]  # loss sum, correct, samples: host numbers, read at the log points
            val_metrics = {}
            bar = tqdm(train_batches.epoch(epoch), total=plan.steps_per_epoch, leave=False,
                       desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not show_progress)
            for step, (images, labels) in enumerate(bar, 1):
                lr = parts.optimizer.param_groups[0]["lr"]
                loss_sum, correct = train_step(parts, images, labels)
                global_step += 1
                interval_sums += torch.stack([loss_sum.double(), correct.double()])
                interval_samples += len(labels) * world_size
                epoch_end = step == plan.steps_per_epoch
                # The host reads the loss only every --log_interval steps (and at the epoch's end): a read
                # waits for the device, so reading every step would serialise CPU and GPU. The cost: a
                # NaN is noticed up to log_interval steps late (the last good checkpoint is kept).
                if step % runtime.log_interval == 0 or epoch_end:
                    noise_values = [parts.noise.readout(device)] if parts.noise is not None else []
                    trust_names, trust_values = trust_ratio_stats(parts) if runtime.log_trust_ratios else ([], [])
                    read = torch.cat([interval_sums, *noise_values, *trust_values])
                    read = all_reduce_sum(read, world_size).tolist()  # the interval's one sync
                    noise_end = 2 + 2 * len(noise_values)
                    (loss_sum, correct), noise, trust = read[:2], read[2:noise_end], read[noise_end:]
                    loss, top1 = loss_sum / interval_samples, 100 * correct / interval_samples
                    check_finite(loss, epoch, global_step, lr, saved_epoch)
                    if master:
                        noise_row = parts.noise.row(noise, world_size) if parts.noise is not None else {}
                        trial.log(iteration=global_step, kind="step", epoch=epoch + 1, learning_rate=lr,
                                  train_loss=loss, train_top1=top1, **noise_row)
                        if trust_names:
                            trial.log(iteration=global_step, kind="trust", epoch=epoch + 1,
                                      **trust_ratio_row(trust_names, trust, world_size))
                        steps_done = (epoch - start_epoch) * plan.steps_per_epoch + step
                        run_left = (time.perf_counter() - run_started) / steps_done * (run_steps - steps_done)
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", run_left=duration(run_left))
                    epoch_sums = [epoch_sums[0] + loss_sum, epoch_sums[1] + correct, epoch_sums[2] + interval_samples]
                    interval_sums.zero_()
                    interval_samples = 0
                if val_batches is not None and (epoch_end or (runtime.eval_every and
                                                              global_step % runtime.eval_every == 0)):
                    eval_started = time.perf_counter()
                    val_metrics = evaluate_validation(parts, val_batches, world_size)
                    seconds = time.perf_counter() - eval_started
                    eval_seconds += seconds
                    if master:
                        trial.log(iteration=global_step, kind="eval", epoch=epoch + 1, **val_metrics,
                                  eval_seconds=seconds)
            train_seconds = time.perf_counter() - started - eval_seconds
            if world_size > 1:
                share_batchnorm_statistics(parts.model)
            metrics = {}
            if runtime.test_eval == "epoch" or epoch + 1 == recipe.epochs:
                metrics = evaluate(parts.model, test_batches, parts.autocast, world_size, show_progress)
            # best.pt: chosen on the validation split when there is one, never on the test set then
            score = val_metrics["val_top1"] if val_batches is not None else metrics["test_top1"]
            best_top1 = max(best_top1, score)
            if master:
                loss_sum, correct, samples = epoch_sums
                row = dict(kind="epoch", epoch=epoch + 1, learning_rate=lr, train_loss=loss_sum / samples,
                           train_top1=100 * correct / samples, **metrics, **val_metrics,
                           epoch_seconds=time.perf_counter() - started, images_per_s=samples / train_seconds,
                           batch_size=recipe.batch_size)
                trial.log(iteration=global_step, **row)
                run_left = (time.perf_counter() - run_started) / (epoch + 1 - start_epoch) * (last_epoch - epoch - 1)
                print_epoch(row, recipe.epochs, run_left if epoch + 1 < last_epoch else None)
                improved = score >= best_saved
                best_saved = max(best_saved, score)
                if _save_checkpoints(trial, parts, recipe, runtime, epoch + 1, last_epoch, global_step, best_top1,
                                     improved):
                    saved_epoch = epoch + 1
        finished = last_epoch == recipe.epochs
        if master:
            trial.close(finished)
    except BaseException as e:
        stopped = isinstance(e, KeyboardInterrupt)
        no_memory = isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and _is_out_of_memory(e))
        saved_epoch = trial.saved.get("last.pt", saved_epoch) if master else saved_epoch  # also mid-save
        # a new trial stopped by the user or by memory before any checkpoint holds nothing worth keeping
        discard = (stopped or no_memory) and master and resume_id is None and not trial.saved
        if master:  # the error that stopped the run is the one to report, not a second one (a full disk)
            if isinstance(e, Diverged):  # an outcome of the recipe, not an accident: the parameter file says so
                trial.params["diverged"] = True
            with contextlib.suppress(store.StoreError):
                trial.discard() if discard else trial.close(False)
        if no_memory:
            raise out_of_memory(recipe, plan, f"in epoch {epoch + 1}") from None
        if stopped:
            trial_id = trial.trial_id if master else resume_id
            kept = "no checkpoint yet: the trial is removed" if discard else (
                f"last.pt holds epoch {saved_epoch}" if saved_epoch else "no checkpoint yet: it starts again")
            raise interrupts.Stopped(getattr(e, "signum", signal.SIGINT), f"trial {trial_id} stopped in epoch "
                                     f"{epoch + 1}/{recipe.epochs} (after step {global_step}); {kept}",
                                     kept=not discard) from None
        raise
    if master:
        print(("finished" if finished else f"stopped after epoch {last_epoch} as asked; continue with --resume")
              + f": results in {trial.dir}", flush=True)
    return {"trial_id": trial.trial_id if master else resume_id, "finished": finished, "best_top1": best_top1}


def _checkpoint_to_resume(recipe, runtime, resume_id, master, world_size):
    """(trial id, its checkpoint or None, the checkpoint's path) for --resume or a sweep's resume_id; checks
    that the trial is this recipe and closes one that finished but was killed before saying so."""
    if runtime.resume and resume_id is None:
        resume_id = broadcast_from_master(
            store.newest_unfinished(runtime.logroot, runtime.experimentname) if master else None, world_size)
    if resume_id is None:
        return None, None, None
    path = store.checkpoint_path(runtime.logroot, runtime.experimentname, resume_id)
    checkpoint = store.load_checkpoint(path) if os.path.exists(path) else None
    if checkpoint is None:  # killed before its first checkpoint: start it again, if it is this recipe
        params_file = store.params_path(store.experiment_dir(runtime.logroot, runtime.experimentname), resume_id)
        check_same_recipe(store.trial_params(runtime.logroot, runtime.experimentname, resume_id), recipe,
                          params_file, "in the parameter file")
    elif checkpoint["finished"]:
        if master:  # killed between its last checkpoint and closing its parameter file: close it now
            store.mark_finished(runtime.logroot, runtime.experimentname, resume_id)
            print(f"trial {resume_id} already finished all {recipe.epochs} epochs; nothing to do")
    elif 0 < runtime.stop_after_epoch <= checkpoint["epoch"]:
        raise config.UsageError(f"--stop_after_epoch: trial {resume_id} is already at epoch {checkpoint['epoch']}; "
                                f"give a later epoch, or none to finish it")
    return resume_id, checkpoint, path


def _batches(recipe, runtime, rank, world_size, device):
    """(training batches, validation batches or None, test batches, plan) on the device; rank 0 downloads the
    data (where it must) before the other ranks read it."""
    if rank > 0:
        dist.barrier()
    train_x, train_y, test_x, test_y = data.load_cifar(runtime.dataroot, recipe.dataset)
    if rank == 0 and world_size > 1:
        dist.barrier()
    if recipe.val_size >= len(train_y):
        raise config.UsageError(f"--val_size: {recipe.val_size} is not fewer than the {len(train_y)} training "
                                f"images")
    val_x = val_y = None
    if recipe.val_size:  # held out first, by a seed of its own: the same split whatever the trial
        train_x, train_y, val_x, val_y = data.split_validation(train_x, train_y, recipe.val_size)
    if recipe.train_subset:
        train_x, train_y = data.class_balanced_subset(train_x, train_y, recipe.train_subset, recipe.seed)
    if recipe.test_subset > len(test_y):
        raise config.UsageError(f"--test_subset: {recipe.test_subset} is more than the {len(test_y)} test images")
    if recipe.test_subset:
        test_x, test_y = test_x[:recipe.test_subset], test_y[:recipe.test_subset]
    plan = config.plan(recipe, len(train_y), world_size)
    placement = dict(channels_last=recipe.channels_last == "on", rank=rank, world_size=world_size, device=device)
    train_batches = data.TrainBatches(train_x, train_y, recipe.batch_size, seed=recipe.seed,
                                      keep_last=recipe.last_batch == "keep", **placement)
    test_batches = data.EvalBatches(test_x, test_y, runtime.eval_batch_size, **placement)
    val_batches = data.EvalBatches(val_x, val_y, runtime.eval_batch_size, **placement) if recipe.val_size else None
    return train_batches, val_batches, test_batches, plan


def _open_trial(recipe, runtime, plan, resume_id, start_epoch, global_step, device, best_top1):
    """(the trial's files, opened and locked for writing with every value the run works with; the test top-1
    its best.pt holds). A resumed trial whose best.pt is missing, damaged or of a later epoch than last.pt
    loses it (the best epoch's weights are gone): best.pt then holds the best epoch from here on, and says so."""
    params = {**config.as_json(recipe), **config.as_json(plan), **config.as_json(runtime),
              "torch_threads": torch.get_num_threads(),  # CPU results depend on it (reduction order)
              "torch_version": torch.__version__,
              "recipe_keys": list(config.RECIPE_KEYS)}
    trial = store.open_trial(runtime.logroot, runtime.experimentname, params, resume_id, global_step)
    best_saved = best_top1
    if resume_id is not None:
        try:
            lost = trial.discard_checkpoint_after(start_epoch, "best.pt")
        except BaseException:
            trial.close(False)
            raise
        if lost:
            best_saved = -1.0
            print(f"best.pt of trial {trial.trial_id} was {lost}: it will hold the best epoch after epoch "
                  f"{start_epoch} (the best test top-1 so far, {best_top1:.2f}%, is in the result rows)", flush=True)
    print(f"trial {trial.trial_id} in {trial.dir}: {recipe.optimizer} {recipe.arch}(width {recipe.width}) on "
          f"{recipe.dataset}, batch {recipe.batch_size} = {plan.world_size} rank(s) x "
          f"{plan.micro_batches_per_step} micro-batch(es) of {plan.micro_batch}, lr {recipe.lr} scaled to "
          f"{plan.scaled_lr:.6g} ({recipe.lr_scaling}), {plan.steps_per_epoch} steps/epoch, "
          f"{'resuming after epoch ' + str(start_epoch) if start_epoch else 'from scratch'}, device {device}",
          flush=True)
    return trial, best_saved


def print_epoch(row, epochs, run_left=None):
    """The epoch's line; `run_left`: the seconds the run's remaining epochs should take at this run's pace."""
    print(f"epoch {row['epoch']:>3}/{epochs}  last lr {row['learning_rate']:.4g}  train loss {row['train_loss']:.4f} "
          f"acc {row['train_top1']:.2f}%  "
          + (f"val loss {row['val_loss']:.4f} acc {row['val_top1']:.2f}%  " if "val_top1" in row else "")
          + (f"test loss {row['test_loss']:.4f} acc {row['test_top1']:.2f}% (top-5 {row['test_top5']:.2f}%)  "
             if "test_top1" in row else "")
          + f"{row['epoch_seconds']:.1f}s  {row['images_per_s']:.0f} img/s"
          + ("" if run_left is None else f"  run ETA {duration(run_left)}"), flush=True)


def duration(seconds):
    """Seconds in words for a person: 45s, 12m05s, 3h07m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _save_checkpoints(trial, parts, recipe, runtime, done, last_epoch, global_step, best_top1, improved):
    """last.pt every --checkpoint_every epochs and at the run's last epoch; best.pt when test top-1 improved.
    Returns whether last.pt was written."""
    last_due = done % runtime.checkpoint_every == 0 or done == last_epoch
    if not (last_due or improved):
        return False
    state = checkpoint_state(parts, recipe, done, global_step, best_top1, done == recipe.epochs)
    if last_due:
        trial.save_checkpoint(state, "last.pt")
    if improved:  # the same bytes as last.pt when both are due: a link, not a second write
        trial.save_checkpoint(state, "best.pt", same_as="last.pt" if last_due else None)
    return last_due


def check_finite(loss, epoch, global_step, lr, saved_epoch):
    """Diverged unless `loss` is finite; `saved_epoch`: the epoch last.pt holds (0: none yet)."""
    if not math.isfinite(loss):
        kept = f"last.pt of epoch {saved_epoch} kept" if saved_epoch else "no checkpoint was written before it"
        raise Diverged(f"training loss is {loss} at epoch {epoch + 1}, by step {global_step} (lr {lr:.4g}); "
                       f"stopped, {kept}")


def _is_out_of_memory(error):
    """A RuntimeError of the CPU allocator that ran out (CUDA's is torch.OutOfMemoryError)."""
    return "can't allocate memory" in str(error) or "out of memory" in str(error).lower()


def out_of_memory(recipe, plan, when):
    return OutOfMemory(f"out of memory {when}: the memory grows with --width {recipe.width} (as its square) and "
                       f"the micro-batch of {plan.micro_batch} samples (--max_samples_per_gpu "
                       f"{recipe.max_samples_per_gpu}); lower one of them")
