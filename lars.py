r"""LARS: Layer-wise Adaptive Rate Scaling for PyTorch.

Implements Algorithm 1 of You, Gitman & Ginsburg, "Large Batch Training of
Convolutional Networks" (2017, arXiv:1708.03888) as a ``torch.optim.Optimizer``,
plus the variants found in the common reference implementations.  This module
depends on ``torch`` only: ``from lars import LARS, lars_param_groups``.

Structure follows ``torch/optim/sgd.py``: the :class:`LARS` class holds the
hyper-parameters and the state (``state[p]["momentum_buffer"]``); the
functional core :func:`lars` updates one list of tensors.  Its multi-tensor
path runs :func:`_lars_bucket`, a sequence of ``torch._foreach_*`` ops, once
per device and dtype; its single-tensor path runs the same function on
one-tensor lists.  Every quantity of a tensor (its norms, trust ratio and
update) depends on that tensor alone, so both paths give the same bits.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

__all__ = ["LARS", "LarsOptions", "lars", "lars_param_groups"]

# Half-precision parameters are updated in float32 and rounded once at the end:
# the per-tensor factor lr * lambda is often below the float16 range (1e-8 and
# less), so an update computed in float16 loses it entirely.
_UPCAST_DTYPES = (torch.float16, torch.bfloat16)
# Device types whose ``_foreach_*`` ops take each tensor's factor as a 0-d tensor; on the others the factors are
# repeated over their tensors' elements (see ``_per_tensor``).  The one hook for tests: () runs the accelerator
# route on the CPU.
SCALAR_FACTOR_DEVICES = ("cpu",)
# LARS.compile(): compiled configurations per optimizer; further ones run eagerly (a momentum schedule)
_MAX_COMPILED = 8
_CHOICES = {"momentum_style": ("paper", "sgd"), "norm_mode": ("paper", "update"),
            "zero_norm_trust": ("one", "formula")}

# A learning rate: a Python float, or (inside LARS.compile only) a one-element tensor.
LearningRate = Union[float, Tensor]
# (weight norms, norms of the trust ratio's denominator, trust ratios) of one device/dtype bucket
NormStats = Tuple[Tensor, Tensor, Tensor]


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_lr(lr, location: str = "") -> None:
    if isinstance(lr, Tensor) or not _is_real(lr) or not lr >= 0.0:
        raise ValueError(f"Invalid lr{location}: {lr!r} (expected a Python float >= 0)")


@dataclasses.dataclass(frozen=True)
class LarsOptions:
    """The hyper-parameters of a param group other than ``lr`` and ``foreach``, with their defaults.

    :class:`LARS` takes them as keyword arguments (and per param group); the
    functional :func:`lars` takes one instance.  Frozen: a compiled update is
    specialised on them (``lr`` stays an input).  See :class:`LARS` for their
    meaning."""

    momentum: float = 0.9
    weight_decay: float = 5e-4
    eta: float = 0.001
    eps: float = 0.0
    nesterov: bool = False
    momentum_style: str = "paper"
    norm_mode: str = "paper"
    trust_clip: bool = False
    maximize: bool = False
    zero_norm_trust: str = "one"
    lars_adapt: bool = True

    @classmethod
    def of(cls, group: dict) -> "LarsOptions":
        return cls(**{name: group[name] for name in _OPTION_NAMES})

    def check(self, location: str = "") -> None:
        """Raise ValueError naming the offending hyper-parameter (``location`` says where)."""
        if not _is_real(self.momentum) or not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"Invalid momentum{location}: {self.momentum!r} (expected 0 <= momentum < 1)")
        for name, low, strict in (("weight_decay", 0.0, False), ("eta", 0.0, True), ("eps", 0.0, False)):
            value = getattr(self, name)
            if not _is_real(value) or not (value > low if strict else value >= low):
                raise ValueError(f"Invalid {name}{location}: {value!r} (expected {'>' if strict else '>='} {low:g})")
        if self.nesterov is True and self.momentum == 0:
            raise ValueError(f"Invalid nesterov{location}: nesterov=True requires momentum > 0")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"Invalid {name}{location}: {getattr(self, name)!r} (expected one of {choices})")
        for name in ("nesterov", "trust_clip", "maximize", "lars_adapt"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Invalid {name}{location}: {getattr(self, name)!r} (expected a bool)")


_OPTION_NAMES = tuple(field.name for field in dataclasses.fields(LarsOptions))


def _check_group(group: dict, location: str = "") -> None:
    _check_lr(group.get("lr"), location)
    foreach = group.get("foreach")
    if foreach is not None and not isinstance(foreach, bool):
        raise ValueError(f"Invalid foreach{location}: {foreach!r} (expected None or a bool)")
    LarsOptions.of(group).check(location)


def _isolate_recompiles() -> dict:
    """``isolate_recompiles=True`` where ``torch.compile`` takes it: a cache per compiled function, so one
    configuration's recompiles do not count against another's limit.  Older releases (2.11) reject it."""
    parameters = inspect.signature(torch.compile).parameters.values()
    takes_it = any(p.name == "isolate_recompiles" or p.kind is p.VAR_KEYWORD for p in parameters)
    return {"isolate_recompiles": True} if takes_it else {}

class LARS(Optimizer):
    r"""Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017, Algorithm 1).

    Default semantics (``momentum_style="paper"``, ``norm_mode="paper"``,
    ``zero_norm_trust="one"``), for every parameter tensor :math:`w` with gradient
    :math:`g` (``-g`` if ``maximize``)::

        lambda = eta * ||w|| / (||g|| + weight_decay * ||w|| + eps)   # trust ratio
        lambda = 1            if ||w|| == 0 or ||g|| == 0             # never NaN/inf
        d      = g + weight_decay * w                                 # coupled L2
        v      = momentum * v + lr * lambda * d                       # v starts at 0
        w      = w - v

    The learning rate sits inside the momentum buffer, as in the paper and the
    MLPerf reference.  ``lr`` is read from ``group["lr"]`` at every step, so any
    ``torch.optim.lr_scheduler`` drives it.  float32 and float64 parameters are
    updated in their own dtype; float16 and bfloat16 parameters (and their
    buffers) are updated in float32 and rounded once, because ``lr * lambda``
    is often too small for float16 (unlike torch SGD, which computes in the
    parameter dtype).  Complex parameters are treated as pairs of real numbers,
    as torch SGD does: ``||w||`` is the norm of the complex values.

    Variants:

    * ``momentum_style="sgd"`` (torch SGD / timm / lightning-bolts)::

          buf = momentum * buf + lambda * d ;  w = w - lr * buf

      Equal to ``"paper"`` while ``lr`` is constant; different when ``lr``
      changes (here a new ``lr`` also rescales the accumulated history).
    * ``nesterov=True``: ``"paper"``: ``w = w - (momentum * v_new + lr * lambda * d)``;
      ``"sgd"``: ``w = w - lr * (lambda * d + momentum * buf_new)`` (torch SGD's
      Nesterov form applied to the scaled update).  Requires ``momentum > 0``.
    * ``norm_mode="update"`` (optax, SimCLR, BarlowTwins)::

          lambda = eta * ||w|| / (||g + weight_decay * w|| + eps)

      with ``lambda = 1`` when ``||w|| == 0`` or ``||g + weight_decay * w|| == 0``.
    * ``zero_norm_trust="formula"`` (the seed's pytorch-lars repository): no
      special case, the trust ratio is the formula as written.  A tensor with
      ``||w|| == 0`` gets ``lambda = 0`` and never moves (a BatchNorm bias
      initialised at 0 stays 0 unless its group has ``lars_adapt=False``), and
      ``||w|| == ||g|| == 0`` gives ``0 / 0 = NaN`` (with ``eps == 0``), which
      reaches the parameters; nothing is raised or hidden.
      ``zero_norm_trust="one"`` (default) uses ``lambda = 1`` in both cases.
    * ``trust_clip=True`` (LARC of apex / timm): ``lambda`` is replaced by
      ``min(lambda, lr) / lr``, so the effective per-tensor rate is
      ``min(lambda, lr)``: LARS can lower a tensor's rate below ``lr`` but
      never raise it above ``lr``.  (With ``lr == 0`` the factor is 1.)
    * Per param group, two independent switches: ``weight_decay`` (float) and
      ``lars_adapt`` (bool, default True).  A group with ``lars_adapt=False`` is
      plain momentum SGD (``lambda = 1``) with its own weight decay, in the
      chosen momentum style.  ``weight_decay=0`` never switches adaptation off.
      :func:`lars_param_groups` builds the usual MLPerf grouping (no decay and
      no adaptation for biases and normalisation weights).
    * ``maximize=True``: ``-g`` is used instead of ``g``.
    * ``momentum=0``: no buffer is kept; ``w = w - lr * lambda * d`` in both styles.

    Args:
        params: iterable of parameters (or named parameters) or of dicts defining parameter groups.
        lr (float): learning rate (required, a Python float >= 0; tensors are
            refused, also when set on a group later: see :meth:`compile`).
        foreach (bool, optional): ``True``: the multi-tensor path (one sequence of
            ``torch._foreach_*`` ops per device and dtype); ``False``: the same
            ops one tensor at a time (same bits, slower).  ``None`` (default)
            picks the multi-tensor path for plain dense tensors, on the CPU too.
        **options: the fields of :class:`LarsOptions` (``momentum=0.9``,
            ``weight_decay=5e-4``, ``eta=0.001``, ``eps=0``, ``nesterov=False``,
            ``momentum_style="paper"``, ``norm_mode="paper"``, ``trust_clip=False``,
            ``maximize=False``, ``zero_norm_trust="one"``, ``lars_adapt=True``).

    Sparse gradients are rejected with a ``RuntimeError``.  Parameters whose
    ``grad`` is None are skipped; ``p.grad`` is never modified.  ``step()``
    never copies a device value to the host.  Works with ``torch.amp.GradScaler``
    (``scaler.step(opt)`` skips steps with inf/NaN gradients).  A state dict or
    pickle whose param groups lack a key added in a later version loads with
    that key's default.

    Per-layer trust ratios: :meth:`trust_ratio_stats` returns, for the most recent
    ``step()``, one entry per (param group with ``lars_adapt=True``, device/dtype
    bucket) that had gradients: ``(params, weight_norms, grad_norms, trust_ratios)``,
    ``params`` the list of parameter tensors and the other three 1-D tensors on
    their device (float32 for half-precision parameters), element ``i`` belonging
    to ``params[i]``.  They are the step's own tensors (no recomputation, no host
    sync): ``grad_norms`` is the norm in the trust ratio's denominator (``||g||``,
    or ``||g + weight_decay * w||`` with ``norm_mode="update"``) and
    ``trust_ratios`` the lambda applied (after the zero-norm rule and
    ``trust_clip``).  Before any step: ``[]``.  Also under :meth:`compile`.

    Example::

        >>> opt = LARS(lars_param_groups(model, weight_decay=5e-4), lr=0.1)
        >>> loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
    """

    def __init__(self, params, lr: float, *, foreach: Optional[bool] = None, **options) -> None:
        unknown = set(options) - set(_OPTION_NAMES)
        if unknown:
            raise TypeError(f"LARS got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        defaults = {"lr": lr, "foreach": foreach, **dataclasses.asdict(LarsOptions(**options))}
        _check_group(defaults)
        self._compile_options: Optional[dict] = None  # LARS.compile(): torch.compile's options
        self._compiled: Dict[tuple, Callable] = {}  # (options, foreach) -> compiled lars
        self._lr_tensors: Dict[int, Tensor] = {}
        self._last_stats: List[Tuple[List[Tensor], List[Tuple[List[int], NormStats]]]] = []
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        # load_state_dict and unpickling replace the param groups; groups written before a key existed get its
        # default (as torch SGD does for foreach, maximize, ...); unpickling also creates the attributes
        super().__setstate__(state)
        fills = {"foreach": None, **dataclasses.asdict(LarsOptions())}
        for group in self.param_groups:
            for key, value in fills.items():
                group.setdefault(key, value)
        for name, value in (("_compile_options", None), ("_compiled", {}), ("_lr_tensors", {}),
                            ("_last_stats", [])):
            self.__dict__.setdefault(name, value)

    def add_param_group(self, param_group: dict) -> None:
        # validate the group as it will be stored, before Optimizer stores it
        _check_group({**self.defaults, **param_group}, f" in param group {len(self.param_groups)}")
        super().add_param_group(param_group)

    def compile(self, **compile_options) -> None:
        """Run the update of every later :meth:`step` through ``torch.compile(fullgraph=True, dynamic=False)``.

        ``compile_options`` go to ``torch.compile`` (e.g. ``backend``, ``mode``,
        ``options``, or ``dynamic=None`` for automatic dynamic shapes).
        ``step()`` stays the entry point, so schedulers, ``GradScaler`` and step
        hooks work unchanged.  Each group's ``lr`` goes in as a one-element
        float64 tensor, refilled every step: a Python float would be a constant
        of the graph and recompile whenever a scheduler changes it.  The other
        hyper-parameters are constants: each configuration of them (and of
        ``foreach``) gets its own compiled function (``isolate_recompiles``;
        torch releases without it, such as 2.11, share one cache and torch's
        recompile limit among them), which recompiles when the tensors with a gradient change (number,
        shapes, strides, dtypes).  Past 8 configurations in one optimizer (e.g.
        a momentum schedule) new ones run eagerly, with a warning.  Shapes are
        static by default: with automatic dynamic shapes the second
        configuration compiled (e.g. the second param group) got a
        dynamic-shape graph, about 2x slower on ResNet18 (``bench/compiled_step.py``).
        """
        self._compile_options = {"dynamic": False, **compile_options}
        self._compiled = {}

    def _compiled_lars(self, key: tuple):
        """The compiled :func:`lars` of one static configuration (:meth:`compile`)."""
        update = self._compiled.get(key)
        if update is None:
            if len(self._compiled) >= _MAX_COMPILED:
                warnings.warn(f"LARS.compile(): more than {_MAX_COMPILED} configurations of the hyper-parameters "
                              f"other than lr; this one runs eagerly")
                update = lars
            else:
                update = torch.compile(lars, fullgraph=True, **_isolate_recompiles(), **self._compile_options)
            self._compiled[key] = update
        return update

    def trust_ratio_stats(self) -> List[Tuple[List[Tensor], Tensor, Tensor, Tensor]]:
        """The trust ratios of the most recent :meth:`step` and the norms they came from (see the class)."""
        entries = []
        for params, buckets in self._last_stats:
            by_key: Dict[tuple, List[Tuple[List[int], NormStats]]] = {}
            for indices, stats in buckets:  # the single-tensor path has one bucket per tensor
                by_key.setdefault((params[indices[0]].device, params[indices[0]].dtype), []).append((indices, stats))
            for parts in by_key.values():
                tensors = [params[i] for indices, _ in parts for i in indices]
                if len(parts) == 1:
                    entries.append((tensors, *parts[0][1]))
                else:
                    entries.append((tensors, *(torch.cat([stats[k] for _, stats in parts]) for k in range(3))))
        return entries

    def _init_group(self, group: dict) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Params with a grad, their grads and momentum buffers (created as zeros if missing)."""
        params, grads, momentum_buffers = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            if group["momentum"] != 0:
                state = self.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                momentum_buffers.append(state["momentum_buffer"])
        return params, grads, momentum_buffers

    def _lr_tensor(self, index: int, lr: float) -> Tensor:
        """Group ``index``'s lr as the one-element float64 CPU tensor a compiled update takes (one per group,
        refilled: a new tensor every step cost 5-17 us on this project's CPU, a fill 1 us)."""
        tensor = self._lr_tensors.get(index)
        if tensor is None:
            with torch.inference_mode(False):  # a step under inference_mode must not leave an inference tensor
                tensor = self._lr_tensors[index] = torch.empty(1, dtype=torch.float64)
        return tensor.fill_(lr)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        self._last_stats = []
        for index, group in enumerate(self.param_groups):
            params, grads, momentum_buffers = self._init_group(group)
            if not params:
                continue
            lr = group["lr"]
            _check_lr(lr, f" in param group {index}")  # a scheduler or user may have set it
            options = LarsOptions.of(group)
            update = lars
            if self._compile_options is not None:
                update, lr = self._compiled_lars((options, group["foreach"])), self._lr_tensor(index, lr)
            stats = update(params, grads, momentum_buffers, lr=lr, options=options, foreach=group["foreach"])
            if options.lars_adapt:
                self._last_stats.append((params, stats))
        return loss


def lars_param_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    """Param groups following the MLPerf practice.

    Every tensor with ``ndim <= 1`` (all biases, BatchNorm/GroupNorm/LayerNorm
    weights) goes to a group with ``weight_decay=0`` and ``lars_adapt=False``;
    all other tensors are adapted and decayed with ``weight_decay``.  Parameters
    with ``requires_grad=False`` are skipped and empty groups are omitted.
    """
    adapted, excluded = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (excluded if p.ndim <= 1 else adapted).append(p)
    groups = []
    if adapted:
        groups.append({"params": adapted, "weight_decay": weight_decay, "lars_adapt": True})
    if excluded:
        groups.append({"params": excluded, "weight_decay": 0.0, "lars_adapt": False})
    return groups


# --------------------------------------------------------------------------- #
# Functional core
# --------------------------------------------------------------------------- #


def lars(
    params: List[Tensor],
    grads: List[Tensor],
    momentum_buffer_list: List[Optional[Tensor]],
    *,
    lr: LearningRate,
    options: LarsOptions = LarsOptions(),
    foreach: Optional[bool] = None,
) -> List[Tuple[List[int], NormStats]]:
    """Functional LARS; see :class:`LARS`.

    Updates ``params`` and the buffers in place; missing (None) buffers in
    ``momentum_buffer_list`` are created (it is unused when ``momentum == 0``).
    ``foreach``: as :class:`LARS`'s.  Returns, if ``options.lars_adapt``, each
    bucket's indices into ``params`` with its (weight norms, denominator norms,
    trust ratios) (one bucket per device and dtype, or per tensor with
    ``foreach=False``); else an empty list.
    """
    for g in grads:
        if g.is_sparse:
            raise RuntimeError("LARS does not support sparse gradients; use a dense gradient")
    if not params:
        return []
    if options.momentum != 0:
        for i, buf in enumerate(momentum_buffer_list):
            if buf is None:
                momentum_buffer_list[i] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
    if foreach is None:
        foreach = all(type(p) in (Tensor, torch.nn.Parameter) and p.layout == torch.strided for p in params)
    if foreach:
        buckets: Dict[tuple, List[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.device, p.dtype), []).append(i)
        bucket_list = list(buckets.values())
    else:
        bucket_list = [[i] for i in range(len(params))]
    results = []
    for indices in bucket_list:
        stats = _lars_bucket([params[i] for i in indices], [grads[i] for i in indices],
                             [momentum_buffer_list[i] for i in indices] if options.momentum != 0 else [],
                             lr=lr, o=options)
        if stats is not None:
            results.append((indices, stats))
    return results


def _lars_bucket(params: List[Tensor], grads: List[Tensor], bufs: List[Tensor], *, lr: LearningRate,
                 o: LarsOptions) -> Optional[NormStats]:
    """LARS on tensors of one device and dtype (``bufs`` is empty when momentum is 0).

    The step direction is ``d = sign * g + weight_decay * w`` (sign -1 if
    maximize).  It is applied as two terms, ``s * sign * g + s * weight_decay * w``,
    with no temporary, or, for ``norm_mode="update"`` (whose trust ratio takes
    ``||d||``), materialised once as ``d' = g + sign * weight_decay * w`` and
    applied as ``s * sign * d'``.  The per-tensor factors ``s`` stay tensors on
    the device (as Python floats they would cost a host sync)."""
    stored_params, stored_bufs = params, bufs
    if params[0].is_complex():
        params, grads, bufs = ([torch.view_as_real(t) for t in ts] for ts in (params, grads, bufs))
    upcast = params[0].dtype in _UPCAST_DTYPES
    if upcast:
        params, grads, bufs = (_to_float32(ts) for ts in (params, grads, bufs))
    sign = -1.0 if o.maximize else 1.0
    style = o.momentum_style if o.momentum != 0 else "paper"  # momentum 0: w -= lr * lambda * d
    materialize = o.weight_decay != 0 and o.norm_mode == "update"
    separate_decay = o.weight_decay != 0 and not materialize
    if isinstance(lr, Tensor):
        lr = lr.to(device=params[0].device, dtype=params[0].dtype)
    directions = torch._foreach_add(grads, params, alpha=sign * o.weight_decay) if materialize else grads

    stats = None
    if o.lars_adapt:
        norms = _norms([*params, *directions])
        w_norms, d_norms = norms[:len(params)], norms[len(params):]
        ratios = _trust_ratio(w_norms, d_norms, lr, o)
        stats = (w_norms, d_norms, ratios)
        factors = ratios * lr if style == "paper" else ratios
        # the decay term reuses the direction's factors: (weight_decay * sign) * w * (s * sign) = weight_decay * w * s
        direction_scale = decay_scale = _per_tensor(factors * sign if sign != 1.0 else factors, params)
        decay_value = o.weight_decay * sign
    elif isinstance(lr, Tensor) and style == "paper":  # compiled: lr is a graph input
        direction_scale = decay_scale = [lr * sign] * len(params)
        decay_value = o.weight_decay * sign
    else:
        scale = lr if style == "paper" else 1.0
        direction_scale, decay_scale, decay_value = scale * sign, scale * o.weight_decay, 1.0

    if o.momentum != 0 and not o.nesterov:
        torch._foreach_mul_(bufs, o.momentum)
        _add_scaled_(bufs, directions, direction_scale)
        if separate_decay:
            _add_scaled_(bufs, params, decay_scale, decay_value)
        steps = bufs
    else:
        if materialize:
            torch._foreach_mul_(directions, direction_scale)
            steps = directions
        else:
            steps = torch._foreach_mul(directions, direction_scale)
        if separate_decay:
            _add_scaled_(steps, params, decay_scale, decay_value)
        if o.momentum != 0:  # Nesterov: w -= (step + momentum * buf_new)
            torch._foreach_mul_(bufs, o.momentum)
            torch._foreach_add_(bufs, steps)
            torch._foreach_add_(steps, bufs, alpha=o.momentum)
    if style == "paper":
        torch._foreach_sub_(params, steps)
    elif isinstance(lr, Tensor):
        _add_scaled_(params, steps, [-lr] * len(params))
    else:
        torch._foreach_add_(params, steps, alpha=-lr)

    if upcast:
        torch._foreach_copy_(stored_params, params)
        if stored_bufs:
            torch._foreach_copy_(stored_bufs, bufs)
    return stats


def _norms(tensors: List[Tensor]) -> Tensor:
    """The 2-norms of ``tensors`` as a vector; each tensor's norm does not depend on the others in the list.

    Eager: one ``_foreach_norm`` (a fused kernel on accelerators).  Compiled: one
    ``vector_norm`` per tensor, reductions that Inductor fuses into its kernels
    (``_foreach_norm`` would stay a separate library call)."""
    if torch.compiler.is_compiling():
        return torch.stack([torch.linalg.vector_norm(t) for t in tensors])
    return torch.stack(torch._foreach_norm(tensors, 2))


def _trust_ratio(w_norm: Tensor, update_norm: Tensor, lr: LearningRate, o: LarsOptions) -> Tensor:
    """lambda, elementwise over the norms.  Only multiplications, additions, divisions, comparisons and
    selections, each rounded once, so that a vector of one and of many norms give the same bits (a fused
    ``add(..., alpha=)`` may be an FMA in vectorised CPU loops and not in scalar ones)."""
    denominator = update_norm
    if o.norm_mode == "paper" and o.weight_decay != 0.0:
        denominator = denominator + w_norm * o.weight_decay
    if o.eps != 0.0:
        denominator = denominator + o.eps
    ratio = (w_norm * o.eta) / denominator
    if o.zero_norm_trust == "one":  # lambda = 1 where ||w|| == 0 or ||u|| == 0 (no host sync)
        ratio = torch.where(torch.minimum(w_norm, update_norm) > 0, ratio, 1.0)
    if o.trust_clip:  # min(lambda, lr) / lr; clamp keeps a NaN of zero_norm_trust="formula"
        if isinstance(lr, Tensor):
            ratio = torch.where(lr > 0, torch.clamp(ratio, max=lr) / lr, 1.0)
        elif lr != 0.0:
            ratio = torch.clamp(ratio, max=lr) / lr
        else:
            ratio = torch.ones_like(ratio)
    return ratio


def _per_tensor(factors: Tensor, like: List[Tensor]) -> List[Tensor]:
    """``factors[i]`` for each tensor of ``like``, as operands of the ``_foreach_*`` ops.

    On the CPU (and when compiling) 0-d views.  On an accelerator a ``_foreach_*``
    op with 0-d operands launches one kernel per tensor (its fused route needs
    operands of equal shapes and strides), so there each factor is repeated over
    its tensor's elements: one ``repeat_interleave`` into a flat buffer, viewed
    with each tensor's shape and strides.  Same values either way, same bits."""
    if factors.device.type in SCALAR_FACTOR_DEVICES or torch.compiler.is_compiling() or not all(
            t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) for t in like):
        return list(factors.unbind(0))
    numels = tuple(t.numel() for t in like)
    flat = torch.repeat_interleave(factors, _repeats(factors.device, numels), output_size=sum(numels))
    views, offset = [], 0
    for t, numel in zip(like, numels):
        views.append(flat.as_strided(t.shape, t.stride(), offset))
        offset += numel
    return views


@functools.lru_cache(maxsize=64)
def _repeats(device: torch.device, numels: Sequence[int]) -> Tensor:
    """The element counts as a tensor on ``device``, copied there once per list of sizes (the copy is
    :func:`_per_tensor`'s only transfer from the host)."""
    with torch.inference_mode(False):
        return torch.tensor(numels, dtype=torch.int64, device=device)


def _to_float32(tensors: List[Tensor]) -> List[Tensor]:
    """float32 copies, by one ``_foreach_copy_`` (not one conversion kernel per tensor)."""
    copies = [torch.empty_like(t, dtype=torch.float32) for t in tensors]
    if copies:
        torch._foreach_copy_(copies, tensors)
    return copies


def _add_scaled_(targets: List[Tensor], tensors: List[Tensor], factor, value: float = 1.0) -> None:
    """targets += value * tensors * factor, without a temporary (value is 1 for a float factor)."""
    if isinstance(factor, (list, tuple)):
        torch._foreach_addcmul_(targets, tensors, factor, value=value)
    else:
        torch._foreach_add_(targets, tensors, alpha=factor)
