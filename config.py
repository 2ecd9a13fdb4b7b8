"""What a trial computes (`Recipe`), where and how it runs (`Runtime`), and what follows from both (`Plan`).

The command line and the YAML grids (`train.py --config`) both produce these dataclasses, typed from the
fields below and validated by one function, `check`, so a value is judged the same wherever it comes from.
The `Recipe` is a trial's identity: resume refuses a checkpoint with another recipe, and the sweep matches
grid points to trials by it. Every value worked out at start (scaled lr, warmup steps, milestones, steps)
lives in `Plan` and is written into the trial's parameter file.

This module imports no torch, so `train.py --help` stays cheap.
"""
import argparse
import dataclasses
import math
import sys
import typing
import unicodedata
from dataclasses import dataclass, field

SCHEDULES = ("poly", "cosine", "step", "geometric")
LR_SCALING_RULES = ("none", "linear", "sqrt")
DATASETS = ("cifar10", "cifar100")
MALLOC_MODES = ("reuse", "system")  # --malloc, see host_memory.py
# numpy's seed range (the seed also seeds numpy).
MAX_SEED = 2**32 - 1
# 16x the standard ResNet18's 64 channels (2.9e9 parameters: ~34 GB of weights, gradients and momentum):
# a typo (--width 100000) is an error, not an attempt to allocate terabytes.
MAX_WIDTH = 1024


class UsageError(Exception):
    """Bad input from the command line or a config, worded as one line that names the flag."""


def _opt(default, help, *, choices=None, low=None, high=None, low_open=False, high_open=False, dest_only=False):
    """A field with its --help text and its valid range (for numbers) or choices (for strings)."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open,
            "high_open": high_open}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def _archs():
    import models  # imports torch.nn; deferred so this module stays torch-free until a parser is built
    return models.ARCHS


@dataclass(frozen=True)
class Recipe:
    """What a trial computes. Defaults: the seed's flags (ResNet18, LARS lr 0.1, eta 0.001, poly 2, batch 128)."""
    # network and data
    arch: str = _opt("ResNet18", "network: a name in models.ARCHS (ResNet18/34/50, the CIFAR proxies)",
                     choices="archs")
    width: int = _opt(64, "channels of the first stage (64: the standard ResNet18; memory grows as its square)",
                      low=1, high=MAX_WIDTH)
    dataset: str = _opt("cifar10", "dataset", choices=DATASETS)
    train_subset: int = _opt(0, "train on a class-balanced subset of N images (0: all)", low=0)
    test_subset: int = _opt(0, "evaluate on the first N test images (0: all 10,000); marked in the results", low=0)
    val_size: int = _opt(0, "hold out N class-balanced training images as a validation split, never trained on "
                            "(the same images for every trial: a seed of their own); 0: none", low=0)
    seed: int = _opt(1, "random seed for the model, data order and augmentation (skeletor's default 1)",
                     low=0, high=MAX_SEED)
    ghost_batch_size: int = _opt(0, "BatchNorm normalises groups of G samples of each micro-batch (ghost BN, "
                                    "Hoffer et al. 2017); 0, or G >= the micro-batch: the whole micro-batch",
                                 low=0)
    zero_init_residual: bool = _opt(False, "start the last BatchNorm weight of each residual block at 0 "
                                           "(Goyal et al. 2017)")
    bn_weight_init: str = _opt("ones", "BatchNorm weight init: ones, or uniform in [0, 1) as PyTorch <= 0.4 "
                                       "(the seed)", choices=("ones", "uniform"))
    # optimizer
    optimizer: str = _opt("LARS", "LARS (lars.py) or torch SGD with momentum", choices=("LARS", "SGD"))
    lr: float = _opt(0.1, "peak learning rate, before --lr_scaling", low=0)
    momentum: float = _opt(0.9, "momentum", low=0, high=1, high_open=True)
    nesterov: bool = _opt(False, "Nesterov momentum (LARS and SGD)")
    weight_decay: float = _opt(5e-4, "L2 weight decay", low=0)
    eta: float = _opt(0.001, "LARS trust coefficient", low=0, low_open=True)
    momentum_style: str = _opt("paper", "LARS: lr inside the momentum buffer (paper) or outside (sgd)",
                               choices=("paper", "sgd"))
    norm_mode: str = _opt("paper", "LARS trust-ratio denominator: ||g|| + wd*||w|| (paper) or ||g + wd*w|| "
                                   "(update)", choices=("paper", "update"))
    trust_clip: bool = _opt(False, "LARS: clip the trust ratio at 1 (LARC)")
    zero_norm_trust: str = _opt("one", "LARS trust ratio when a norm is 0: one, or the bare formula as the seed "
                                       "(0 for zero weights, so BN biases never move)", choices=("one", "formula"))
    exclude_bn_bias: bool = _opt(False, "no weight decay and no LARS adaptation for every tensor with ndim <= 1 "
                                        "(BatchNorm weights, all biases)")
    label_smoothing: float = _opt(0.0, "label smoothing", low=0, high=1, high_open=True)
    # batches
    batch_size: int = _opt(128, "effective batch: samples per optimizer step", low=1)
    max_samples_per_gpu: int = _opt(512, "largest micro-batch per forward/backward on one device", low=1)
    last_batch: str = _opt("drop", "the epoch's N mod B left-over samples: drop (every step has B samples) or "
                                   "keep as a short last step (the seed)", choices=("drop", "keep"))
    loss_weighting: str = _opt("per_sample", "accumulation: per_sample (each micro-batch weighted by its size: "
                                             "exact) or per_chunk (torch.chunk into max(1, B // "
                                             "max_samples_per_gpu) chunks, each mean loss / chunks: the seed)",
                               choices=("per_sample", "per_chunk"))
    epochs: int = _opt(200, "training epochs", low=1)
    # schedule
    schedule: str = _opt("poly", "learning-rate decay after warmup", choices=SCHEDULES)
    lr_update: str = _opt("step", "update the lr every optimizer step, or once per epoch (a staircase: the seed)",
                          choices=("step", "epoch"))
    poly_power: float = _opt(2.0, "poly: lr = peak * (1 - progress)**power", low=0, low_open=True)
    warmup_epochs: float = _opt(0.0, "linear warmup from --warmup_start_lr, in epochs", low=0)
    warmup_steps: int = _opt(0, "linear warmup, in optimizer steps (instead of --warmup_epochs)", low=0)
    warmup_fraction: float = _opt(0.0, "linear warmup, as a fraction of all steps (instead of --warmup_epochs)",
                                  low=0, high=1, high_open=True)
    warmup_start_lr: float = _opt(0.0, "learning rate at step 0 of the warmup", low=0)
    end_lr: float = _opt(0.0, "final learning rate (poly, cosine); floor for step and geometric", low=0)
    lr_gamma: typing.Optional[float] = _opt(None, "decay factor: per milestone (step; default 0.1) or per epoch "
                                                  "(geometric; default 0.98)", low=0, high=1, low_open=True)
    lr_milestones: typing.Tuple[int, ...] = _opt((), "step: comma-separated epochs at which the lr decays "
                                                     "(default: 50%% and 75%% of --epochs)", low=0)
    lr_scaling: str = _opt("none", "scale --lr by batch_size/base_batch_size (linear) or its square root (sqrt)",
                           choices=LR_SCALING_RULES)
    base_batch_size: int = _opt(128, "the batch size --lr is given for (with --lr_scaling)", low=1)
    # numerics
    amp: str = _opt("auto", "autocast dtype; auto: bf16 with --cuda, none (fp32) on the CPU",
                    choices=("auto", "none", "bf16", "fp16"))
    channels_last: str = _opt("auto", "channels-last memory format; auto: on with --cuda, off on the CPU",
                              choices=("auto", "on", "off"))


@dataclass(frozen=True)
class Runtime:
    """Where and how a trial runs: none of it changes what it computes."""
    experimentname: str = _opt("", "name of the experiment: its results go to LOGROOT/EXPERIMENTNAME/")
    logroot: str = _opt("./logs", "each experiment is a folder here")
    dataroot: str = _opt("./data", "where CIFAR is (downloaded there if missing)")
    config: str = _opt("", "run the grid of trials in this YAML file (configs/*.yaml) instead of one trial")
    cuda: bool = _opt(False, "train on the GPU (default: CPU)")
    resume: bool = _opt(False, "continue the experiment's newest unfinished trial")
    eval_batch_size: int = _opt(1024, "test images per forward", low=1)
    stop_after_epoch: int = _opt(0, "stop cleanly after epoch N of the trial, checkpoint written (then --resume)",
                                 low=0)
    log_interval: int = _opt(50, "log (and check) the training loss every N optimizer steps", low=1)
    eval_every: typing.Optional[int] = _opt(None, "with --val_size: evaluate the validation split every K "
                                                  "optimizer steps (and at each epoch's end), logged as rows of "
                                                  "kind 'eval' (default: none, only at each epoch's end)", low=1)
    test_eval: str = _opt("epoch", "when to evaluate the test set: after every epoch, or with --val_size only after "
                                   "the last (a study that chooses on validation reads the test set once)",
                          choices=("epoch", "end"))
    noise_scale: bool = _opt(False, "estimate the gradient noise scale B_simple = tr(Sigma)/|G|^2 from each step's "
                                    "micro-batches (or ranks), logged every --log_interval steps as noise_scale, "
                                    "noise_trace, noise_grad_sq (McCandlish et al. 2018)")
    log_trust_ratios: bool = _opt(False, "LARS: log each adapted layer's ||w||, ||g|| and the trust ratio the "
                                         "optimizer used, every --log_interval steps, as rows of kind 'trust'")
    checkpoint_every: int = _opt(1, "write last.pt every N epochs (the last epoch always)", low=1)
    compile: bool = _opt(False, "run the model and the optimizer step through torch.compile")
    malloc: str = _opt("reuse", "host memory (glibc): reuse freed blocks instead of mapping fresh pages for "
                                "each large tensor (small nets on the CPU: up to 1.5x images/s; resident memory "
                                "stays near its peak), or glibc's system defaults",
                       choices=MALLOC_MODES)
    ray: str = _opt("", "with --config: run the trials on this Ray cluster ('auto', an address, or 'local')")
    gpus_per_trial: float = _opt(1.0, "with --ray: GPUs reserved per trial", low=0, low_open=True)
    trials_per_gpu: int = _opt(1, "with --config: run up to N trials at once on the device (separate processes, "
                                  "1/N of the CPU threads each unless OMP_NUM_THREADS is set)",
                               low=1)


RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(Recipe))
RUNTIME_KEYS = tuple(f.name for f in dataclasses.fields(Runtime))
_FIELDS = {f.name: f for cls in (Recipe, Runtime) for f in dataclasses.fields(cls)}


# ---------------------------------------------------------------- values: typing and checking

def field_kind(name):
    """(scalar type, is a tuple, may be None) of a field."""
    hint = typing.get_type_hints(Recipe if name in RECIPE_KEYS else Runtime)[name]
    optional = typing.get_origin(hint) is typing.Union
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True, optional
    return hint, False, optional


def _choices(name):
    choices = _FIELDS[name].metadata.get("choices")
    return _archs() if choices == "archs" else choices


def describe(name):
    """What a value of `name` must be, in words (for error messages)."""
    scalar, is_tuple, optional = field_kind(name)
    meta = _FIELDS[name].metadata
    if scalar is bool:
        return "true or false"
    if _choices(name):
        words = "one of " + ", ".join(_choices(name))
    else:
        words = {int: "an integer", float: "a finite number", str: "a string"}[scalar]
        if meta.get("low") is not None or meta.get("high") is not None:
            lo = "" if meta["low"] is None else ("> " if meta["low_open"] else ">= ") + _number(meta["low"])
            hi = "" if meta["high"] is None else ("< " if meta["high_open"] else "<= ") + _number(meta["high"])
            words += " " + " and ".join(p for p in (lo, hi) if p)
    if is_tuple:
        words = "comma-separated " + words.replace("an integer", "integers").replace("a finite number", "numbers")
    return words


def _number(bound):
    """A range bound in words: integers in full (the seed's 4294967295, not 4.29497e+09)."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _bad(name, value):
    return UsageError(f"--{name}: expected {describe(name)}, got {value!r}")


def _check_scalar(name, value):
    scalar, _, _ = field_kind(name)
    meta = _FIELDS[name].metadata
    if scalar is bool:
        if not isinstance(value, bool):
            raise _bad(name, value)
        return value
    if scalar is str:
        if not isinstance(value, str) or (_choices(name) and value not in _choices(name)):
            raise _bad(name, value)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, value)
    if scalar is int and not (isinstance(value, int) or float(value).is_integer()):
        raise _bad(name, value)
    if not math.isfinite(value):
        raise _bad(name, value)
    value = scalar(value)
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value < low or (meta["low_open"] and value == low)):
        raise _bad(name, value)
    if high is not None and (value > high or (meta["high_open"] and value == high)):
        raise _bad(name, value)
    return value


def check_value(name, value):
    """`value` as field `name` holds it (ints as int, tuples as tuple), or a UsageError naming --name."""
    if name not in _FIELDS:
        raise UsageError(f"{name}: not a train.py flag")
    _, is_tuple, optional = field_kind(name)
    if value is None and optional:
        return None
    if is_tuple:
        if not isinstance(value, (list, tuple)):
            raise _bad(name, value)
        return tuple(_check_scalar(name, v) for v in value)
    return _check_scalar(name, value)


def parse_value(name, text):
    """A command-line string as field `name`'s type (also what YAML leaves as a string, e.g. `5e-4`)."""
    scalar, is_tuple, _ = field_kind(name)
    parts = [p for p in text.split(",") if p.strip()] if is_tuple else [text]
    try:
        values = [scalar(p) for p in parts]
    except ValueError:
        raise _bad(name, text) from None
    return tuple(values) if is_tuple else values[0]


def check(recipe, runtime=None, world_size=1):
    """Every rule that involves one value or several, at once; raises UsageError naming the flag."""
    for f in dataclasses.fields(recipe):
        check_value(f.name, getattr(recipe, f.name))
    if runtime is not None:
        for f in dataclasses.fields(runtime):
            if f.name != "experimentname":
                check_value(f.name, getattr(runtime, f.name))
        check_experimentname(runtime.experimentname)
    r = recipe
    if r.warmup_epochs > r.epochs:
        raise UsageError(f"--warmup_epochs: {r.warmup_epochs:g} is more than --epochs {r.epochs}")
    if sum(1 for w in (r.warmup_epochs, r.warmup_steps, r.warmup_fraction) if w) > 1:
        raise UsageError("--warmup_epochs, --warmup_steps, --warmup_fraction: give at most one")
    if r.nesterov and r.momentum == 0:
        raise UsageError("--nesterov: needs --momentum > 0")
    if r.lr_milestones and list(r.lr_milestones) != sorted(set(r.lr_milestones)):
        raise UsageError(f"--lr_milestones: expected strictly increasing epochs, got "
                         f"{','.join(map(str, r.lr_milestones))}")
    if r.lr_milestones and r.lr_milestones[-1] > r.epochs:
        raise UsageError(f"--lr_milestones: {r.lr_milestones[-1]} is past --epochs {r.epochs}")
    if r.ghost_batch_size and r.last_batch == "keep":
        raise UsageError("--ghost_batch_size: not with --last_batch keep (the short last step need not divide)")
    if r.batch_size % world_size:
        raise UsageError(f"--batch_size: {r.batch_size} does not split evenly over {world_size} ranks")
    chunks, micro = micro_batches(r, world_size)
    last_micro = r.batch_size // world_size - (chunks - 1) * micro
    if r.ghost_batch_size and any(m > r.ghost_batch_size and m % r.ghost_batch_size for m in (micro, last_micro)):
        raise UsageError(f"--ghost_batch_size: {r.ghost_batch_size} does not divide the micro-batches of {micro} "
                         f"and {last_micro} samples (batch {r.batch_size} over {world_size} rank(s), at most "
                         f"{r.max_samples_per_gpu} per forward)")
    if r.last_batch == "keep" and world_size > 1:
        raise UsageError("--last_batch: keep (the seed's short last step) runs on one rank only")
    if r.zero_init_residual and r.arch not in _residual_archs():
        raise UsageError(f"--zero_init_residual: {r.arch} has no residual blocks")
    if runtime is not None:
        if r.amp == "fp16" and not runtime.cuda:
            raise UsageError("--amp: fp16 needs --cuda (use bf16 on the CPU)")
        if runtime.eval_every is not None and not r.val_size:
            raise UsageError("--eval_every: needs --val_size (a validation split to evaluate)")
        if runtime.test_eval == "end" and not r.val_size:
            raise UsageError("--test_eval end: needs --val_size (the epochs before the last are then evaluated on "
                             "the validation split only)")
        if runtime.log_trust_ratios and r.optimizer != "LARS":
            raise UsageError(f"--log_trust_ratios: needs --optimizer LARS (got {r.optimizer}: no trust ratios)")
        if runtime.noise_scale and r.amp == "fp16":
            raise UsageError("--noise_scale: not with --amp fp16 (its gradients are loss-scaled)")
        if runtime.stop_after_epoch > r.epochs:
            raise UsageError(f"--stop_after_epoch: {runtime.stop_after_epoch} is past --epochs {r.epochs}")



# The longest file name on Linux file systems (NAME_MAX); store.check_destination asks the actual one.
MAX_NAME_BYTES = 255


def check_command(runtime):
    """Flags that only mean something for a grid (the sweep hands each trial a runtime without them)."""
    if runtime.ray and not runtime.config:
        raise UsageError("--ray: needs --config (a grid to run)")
    if runtime.trials_per_gpu > 1 and not runtime.config:
        raise UsageError("--trials_per_gpu: needs --config (a grid to run)")
    if runtime.gpus_per_trial != 1.0 and not runtime.ray:
        raise UsageError("--gpus_per_trial: needs --ray (it reserves GPUs on a Ray cluster)")


def check_experimentname(name):
    """The experiment name becomes the folder LOGROOT/NAME: one plain folder name, nothing that climbs out,
    printable (a newline in a folder name breaks every listing) and UTF-8 (the parameter file and the
    messages are text)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UsageError(f"experimentname: expected a single folder name (not empty, not '.' or '..', no '/'), "
                         f"got {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach Python as lone surrogates
        shown = name.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        raise UsageError(f"experimentname: expected a UTF-8 folder name, got the bytes '{shown}'") from None
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise UsageError(f"experimentname: expected a folder name without control characters (newline, tab, "
                         f"escape...), got {name!r}")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise UsageError(f"experimentname: expected a folder name of at most {MAX_NAME_BYTES} bytes, got one of "
                         f"{len(name.encode('utf-8', 'surrogateescape'))} bytes")


def _residual_archs():
    import models
    return models.RESIDUAL_ARCHS


def resolve(recipe, runtime):
    """The recipe with its 'auto' values decided for this device (what the trial is, and is compared by)."""
    cuda = runtime.cuda
    return dataclasses.replace(
        recipe,
        amp=("bf16" if cuda else "none") if recipe.amp == "auto" else recipe.amp,
        channels_last=("on" if cuda else "off") if recipe.channels_last == "auto" else recipe.channels_last)


def as_json(values):
    """A Recipe, Runtime or Plan as plain JSON values (tuples as lists), in field order."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(values).items()}


def recipe_from_json(values):
    """A Recipe from a parameter file or checkpoint (only the recipe's keys are read; a key it lacks, from
    before that field existed, takes the field's default, which is the behaviour it had then)."""
    return Recipe(**{k: tuple(values[k]) if isinstance(values[k], list) else values[k]
                     for k in RECIPE_KEYS if k in values})


def recipe_json(values):
    """The recipe of a parameter file or checkpoint as JSON values, every key present (see recipe_from_json)."""
    return as_json(recipe_from_json(values))


# ---------------------------------------------------------------- derived values

def scale_lr(base_lr, batch_size, base_batch_size, rule):
    """lr for `batch_size` given `base_lr` tuned at `base_batch_size`: "linear" (Goyal et al. 2017), "sqrt"
    (Krizhevsky 2014) or "none"."""
    if rule not in LR_SCALING_RULES:
        raise ValueError(f"unknown rule {rule!r}: choose one of {', '.join(LR_SCALING_RULES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if base_batch_size < 1:
        raise ValueError(f"base_batch_size must be >= 1, got {base_batch_size}")
    ratio = batch_size / base_batch_size
    return base_lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


@dataclass(frozen=True)
class Plan:
    """Every number the trial works out at start from its recipe, the data size and the world size."""
    train_size: int
    world_size: int
    steps_per_epoch: int
    total_steps: int
    scaled_lr: float          # --lr after --lr_scaling: the peak of the schedule
    resolved_warmup_steps: int  # from --warmup_steps, --warmup_fraction or --warmup_epochs
    resolved_lr_gamma: float
    resolved_lr_milestones: typing.Tuple[int, ...]
    micro_batch: int          # samples per forward on one rank (a short last step has fewer)
    micro_batches_per_step: int
    bn_batch_size: int        # samples BatchNorm normalises together (ghost batch, else the micro-batch)


def micro_batches(recipe, world_size=1):
    """(micro-batches per step, samples in each) on one rank: per_sample cuts a step into equal micro-batches
    of at most --max_samples_per_gpu; per_chunk asks torch.chunk for max(1, B // max_samples_per_gpu) chunks."""
    per_rank = recipe.batch_size // world_size
    if recipe.loss_weighting == "per_chunk":
        chunks = max(1, recipe.batch_size // recipe.max_samples_per_gpu)
    else:
        chunks = -(-per_rank // recipe.max_samples_per_gpu)
    return chunks, -(-per_rank // chunks)


def plan(recipe, train_size, world_size=1):
    """The Plan, or a UsageError when the recipe does not fit this data or this many ranks."""
    r = recipe
    if r.batch_size > train_size:
        raise UsageError(f"--batch_size: {r.batch_size} is more than the {train_size} training images")
    chunks, micro = micro_batches(r, world_size)
    if r.last_batch == "keep":
        steps_per_epoch = -(-train_size // r.batch_size)
    else:
        steps_per_epoch = train_size // r.batch_size
    total = steps_per_epoch * r.epochs
    if r.warmup_steps:
        warmup = r.warmup_steps
    elif r.warmup_fraction:
        warmup = round(r.warmup_fraction * total)
    else:
        warmup = round(r.warmup_epochs * steps_per_epoch)
    if warmup > total:
        raise UsageError(f"--warmup_steps: {warmup} is more than the {total} optimizer steps of the run")
    scaled_lr = scale_lr(r.lr, r.batch_size, r.base_batch_size, r.lr_scaling)
    gamma = r.lr_gamma if r.lr_gamma is not None else (0.98 if r.schedule == "geometric" else 0.1)
    milestones = r.lr_milestones or tuple(sorted({r.epochs // 2, r.epochs * 3 // 4}))
    return Plan(train_size=train_size, world_size=world_size, steps_per_epoch=steps_per_epoch, total_steps=total,
                scaled_lr=scaled_lr, resolved_warmup_steps=warmup, resolved_lr_gamma=gamma,
                resolved_lr_milestones=tuple(milestones), micro_batch=micro, micro_batches_per_step=chunks,
                bn_batch_size=min(r.ghost_batch_size or micro, micro))


# ---------------------------------------------------------------- the command line

def _flag_help(name):
    meta = _FIELDS[name].metadata
    default = _FIELDS[name].default
    if "default" in meta["help"]:  # the help says what an empty default means
        return meta["help"]
    shown = "off" if default is False else "none" if default == "" else default
    return f"{meta['help']} (default: {shown})"


def make_parser(description="", *, with_defaults=True):
    """The argument parser: skeletor-ml's standard argument names and defaults (experimentname, --logroot,
    --dataroot, --seed, --config) and every Recipe/Runtime field as --name, typed from the field. Flags are
    never abbreviated (a prefix of a flag is an error, not a guess).

    `with_defaults=False` leaves unset flags out of the result, so it tells which flags were given.
    """
    parser = _Parser(prog="train.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                     argument_default=None if with_defaults else argparse.SUPPRESS, allow_abbrev=False)

    def one_line_error(message):
        parser.exit(2, f"train.py: error: {message}\n")

    parser.error = one_line_error
    parser.add_argument("experimentname", help=_FIELDS["experimentname"].metadata["help"])
    for cls, title in ((Recipe, "what a trial computes (its recipe)"), (Runtime, "where and how it runs")):
        group = parser.add_argument_group(title)
        for f in dataclasses.fields(cls):
            if f.name == "experimentname":
                continue
            default = {"default": f.default} if with_defaults else {}
            if field_kind(f.name)[0] is bool:
                group.add_argument(f"--{f.name}", action="store_true", help=_flag_help(f.name), **default)
            else:
                choices = f.metadata["choices"]
                metavar = "{" + ",".join(choices) + "}" if isinstance(choices, tuple) else f.name.upper()
                group.add_argument(f"--{f.name}", type=_parser_type(f.name), metavar=metavar,
                                   help=_flag_help(f.name), **default)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse, except that a value starting with '-' after a flag that takes one is that flag's value.
    argparse takes only plain negative numbers (`-1`, `-.5`) as values: `--lr_milestones -1,5` or
    `--warmup_epochs -1e-3` would be "expected one argument" instead of the flag's range."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        takes_value = {f"--{name}" for name in _FIELDS if field_kind(name)[0] is not bool}
        joined, i = [], 0
        while i < len(args):
            value = args[i + 1] if i + 1 < len(args) else ""
            if args[i] == "--":
                joined += args[i:]
                break
            if (args[i] in takes_value and len(value) > 1 and value[0] == "-"
                    and (value[1].isdigit() or value[1] == ".")):
                joined.append(f"{args[i]}={value}")
                i += 2
            else:
                joined.append(args[i])
                i += 1
        return super().parse_known_args(joined, namespace)

    def parse_args(self, args=None, namespace=None):
        """A list flag given several values separated by spaces (`--lr_milestones 3 5`) is named as such, not
        reported as "unrecognized arguments: 5 EXPERIMENTNAME"."""
        args = list(sys.argv[1:] if args is None else args)
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            lists = {f"--{name}" for name in _FIELDS if field_kind(name)[1]}
            for i, arg in enumerate(args[:-2]):
                if arg in lists and _looks_numeric(args[i + 2]):
                    self.error(f"{arg}: takes one comma-separated value ({arg} {args[i + 1]},{args[i + 2]}), got "
                               f"{args[i + 1]!r} then {args[i + 2]!r}")
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _looks_numeric(text):
    return bool(text) and all(c.isdigit() or c in ".,-+e" for c in text) and any(c.isdigit() for c in text)


def _parser_type(name):
    def convert(text):
        try:
            return parse_value(name, text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None
    convert.__name__ = name
    return convert


def given_flags(argv):
    """The names of the flags given in argv (a config's values yield to them)."""
    return set(vars(make_parser(with_defaults=False).parse_args(argv))) - {"experimentname"}


def from_namespace(args):
    """(Recipe, Runtime) from parsed arguments."""
    values = vars(args)
    return (Recipe(**{k: values[k] for k in RECIPE_KEYS}), Runtime(**{k: values[k] for k in RUNTIME_KEYS}))
