r"""LARS: Layer-wise Adaptive Rate Scaling for PyTorch.

Implements Algorithm 1 of You, Gitman & Ginsburg, "Large Batch Training of
Convolutional Networks" (2017, arXiv:1708.03888) as a ``torch.optim.Optimizer``,
plus the variants found in the common reference implementations.  This module
depends on ``torch`` only: ``from lars import LARS, lars_param_groups``.

Structure follows ``torch/optim/sgd.py``: the :class:`LARS` class holds the
hyper-parameters and the state (``state[p]["momentum_buffer"]``); the
functional core :func:`lars` dispatches to ``_single_tensor_lars`` (one tensor
at a time) or ``_multi_tensor_lars`` (``torch._foreach_*`` kernels over all
tensors of one device and dtype).  Both paths run the same operations in the
same order on the same operands, so they give the same bits.  On the CPU both
update a float32 tensor (not with Nesterov) by torch's fused SGD kernel, one
pass over its memory, with its LARS factor (``_CPU_FUSED_UPDATE``).

For ``torch.compile``, call ``opt.compile()`` once (options go to
``torch.compile``, which runs with ``fullgraph=True``) and keep calling
``opt.step()``: the functional core is compiled, with ``lr`` passed as a
tensor so that a scheduler changing it does not recompile, and with only the
guards that the optimizer cannot check more cheaply itself (:meth:`LARS.compile`).
"""

from __future__ import annotations

import numbers
import struct
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

__all__ = ["LARS", "lars", "lars_param_groups"]

_MOMENTUM_STYLES = ("paper", "sgd")
_NORM_MODES = ("paper", "update")
_ZERO_NORM_TRUST = ("one", "formula")
# Half-precision parameters are updated in float32 and rounded once at the end:
# the per-tensor factor lr * lambda is often below the float16 range (1e-8 and
# less), so an update computed in float16 loses it entirely.
_UPCAST_DTYPES = (torch.float16, torch.bfloat16)
_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)
# Param-group keys added after LARS's first version, with the value that a group without the key means (as
# torch SGD fills ``foreach``, ``maximize``, ... when it loads an older state dict or pickle).
_ADDED_KEYS = dict(eps=0.0, nesterov=False, momentum_style="paper", norm_mode="paper", trust_clip=False,
                   maximize=False, foreach=None, zero_norm_trust="one", lars_adapt=True)
# The hyper-parameters that are constants of a compiled update (all but lr, which is a graph input).
_STATIC_HYPER = ("momentum", "weight_decay", "eta", "eps", "nesterov", "momentum_style", "norm_mode",
                 "trust_clip", "lars_adapt", "maximize", "zero_norm_trust")
# Compiled updates per optimizer; further configurations run eagerly (like torch.compile's recompile limit).
_MAX_COMPILED_UPDATES = 8
# LARS.compile(): the compiled update per static configuration and options, for all optimizers of the process.
_COMPILED_UPDATES: Dict[tuple, Callable[..., None]] = {}


def _kept_guards(guard_entries) -> List[bool]:
    """The Dynamo guards a compiled update keeps (LARS.compile): tensor metadata, global state and a
    tensor passed twice (e.g. one gradient tensor shared by two parameters), which the portable set drops."""
    return [keep or entry.guard_type == "DUPLICATE_INPUT"
            for keep, entry in zip(torch.compiler.keep_portable_guards_unsafe(guard_entries), guard_entries)]


def _frozen(value):
    """A hashable stand-in for compile options (nested dicts and lists)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value

# A learning rate: a Python float, or (inside LARS.compile only) a one-element tensor.
LearningRate = Union[float, Tensor]
# Per-tensor factors: one float for all tensors, or one tensor per tensor (0-d on
# the CPU and when compiling, of the tensor's shape on accelerators: _per_tensor).
Scale = Union[float, Sequence[Tensor], Sequence[float]]


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_lr(lr, location: str) -> None:
    if isinstance(lr, Tensor) or not _is_real(lr) or not lr >= 0.0:
        raise ValueError(f"Invalid lr{location}: {lr!r} (expected a Python float >= 0)")


def _validate(hyper: dict, location: str = "") -> None:
    """Raise ValueError naming the offending hyper-parameter (``location`` says where)."""
    _check_lr(hyper.get("lr"), location)
    momentum = hyper.get("momentum")
    if not _is_real(momentum) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum{location}: {momentum!r} (expected 0 <= momentum < 1)")
    for name, low, strict in (("weight_decay", 0.0, False), ("eta", 0.0, True), ("eps", 0.0, False)):
        value = hyper.get(name)
        if not _is_real(value) or not (value > low if strict else value >= low):
            raise ValueError(f"Invalid {name}{location}: {value!r} (expected {'>' if strict else '>='} {low:g})")
    if hyper.get("nesterov") and momentum == 0:
        raise ValueError(f"Invalid nesterov{location}: nesterov=True requires momentum > 0")
    for name, choices in (("momentum_style", _MOMENTUM_STYLES), ("norm_mode", _NORM_MODES),
                          ("zero_norm_trust", _ZERO_NORM_TRUST)):
        if hyper.get(name) not in choices:
            raise ValueError(f"Invalid {name}{location}: {hyper.get(name)!r} (expected one of {choices})")
    for name in ("nesterov", "trust_clip", "maximize", "lars_adapt"):
        if not isinstance(hyper.get(name), bool):
            raise ValueError(f"Invalid {name}{location}: {hyper.get(name)!r} (expected a bool)")
    foreach = hyper.get("foreach")
    if foreach is not None and not isinstance(foreach, bool):
        raise ValueError(f"Invalid foreach{location}: {foreach!r} (expected None or a bool)")


def _multi_tensor_allowed(params: List[Tensor]) -> bool:
    """Whether ``foreach=None`` runs the multi-tensor path: plain dense tensors, not TorchScript.

    Unlike torch's own optimizers this holds on the CPU too: there the foreach
    kernels loop over the tensors in C++, and the trust ratios of all tensors
    come from one stacked vector, while single-tensor LARS pays about a dozen
    small operations per tensor for its trust ratio: it measured 3-4x the
    step time of SGD(foreach) at ResNet18 width 16 on the CPU (bench/optimizer_step.py),
    the multi-tensor path 1.1x.  Tensors on several devices are fine: the
    path groups them by device and dtype.
    """
    return not torch.jit.is_scripting() and all(
        type(p) in _PLAIN_TENSOR_TYPES and p.layout == torch.strided for p in params)


def _group_by_device_and_dtype(params: List[Tensor]) -> List[List[int]]:
    """Indices of ``params`` per (device, dtype), in order of first appearance."""
    groups: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    return list(groups.values())


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
        params: iterable of parameters or of dicts defining parameter groups.
        lr (float): learning rate (required, a Python float >= 0; tensors are
            refused, also when set on a group later: see :meth:`compile`).
        momentum (float): momentum factor in [0, 1) (default 0.9).
        weight_decay (float): coupled L2 coefficient, >= 0 (default 5e-4).
        eta (float): trust coefficient, > 0 (default 0.001).
        eps (float): added to the trust-ratio denominator, >= 0 (default 0).
        nesterov (bool): Nesterov momentum (default False).
        momentum_style (str): ``"paper"`` or ``"sgd"`` (default ``"paper"``).
        norm_mode (str): ``"paper"`` or ``"update"`` (default ``"paper"``).
        trust_clip (bool): LARC clipping (default False).
        maximize (bool): maximise the objective (default False).
        foreach (bool, optional): use the multi-tensor ``torch._foreach_*`` path.
            ``None`` (default) picks it whenever the parameters allow it (plain
            dense tensors), on the CPU too (see ``_multi_tensor_allowed``).
        zero_norm_trust (str): ``"one"`` or ``"formula"`` (default ``"one"``).

    Sparse gradients are rejected with a ``RuntimeError``.  Parameters whose
    ``grad`` is None are skipped; ``p.grad`` is never modified.  Works with
    ``torch.amp.GradScaler`` (``scaler.step(opt)`` skips steps with inf/NaN
    gradients).  :meth:`compile` runs the update through ``torch.compile``.

    Example::

        >>> opt = LARS(lars_param_groups(model, weight_decay=5e-4), lr=0.1)
        >>> loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        eta: float = 0.001,
        eps: float = 0.0,
        nesterov: bool = False,
        momentum_style: str = "paper",
        norm_mode: str = "paper",
        trust_clip: bool = False,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        zero_norm_trust: str = "one",
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            eps=eps,
            nesterov=nesterov,
            momentum_style=momentum_style,
            norm_mode=norm_mode,
            trust_clip=trust_clip,
            maximize=maximize,
            foreach=foreach,
            zero_norm_trust=zero_norm_trust,
            lars_adapt=True,
        )
        _validate(defaults)
        # Per param group (by id): what only changes when the set of parameters with a gradient changes
        self._layouts: Dict[int, _GroupLayout] = {}
        # LARS.compile(): torch.compile's options (None: eager) and their hashable form, and the compiled
        # update per static configuration
        self._compile_options: Optional[dict] = None
        self._compile_options_key = _frozen(None)
        self._compiled_updates: Dict[tuple, Callable[..., None]] = {}
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        # load_state_dict and unpickling replace the param groups: drop the
        # layouts of the old ones (unpickling also creates the attributes)
        super().__setstate__(state)
        for group in self.param_groups:  # state dicts and pickles written before a key existed
            for key, value in _ADDED_KEYS.items():
                group.setdefault(key, value)
        self._layouts = {}
        self.__dict__.setdefault("_compile_options", None)
        self.__dict__.setdefault("_compile_options_key", _frozen(self._compile_options))
        self.__dict__.setdefault("_compiled_updates", {})

    def add_param_group(self, param_group: dict) -> None:
        # validate the group as it will be stored, before Optimizer stores it
        merged = {**self.defaults, **param_group}
        _validate(merged, f" in param group {len(self.param_groups)}")
        super().add_param_group(param_group)

    def compile(self, **compile_options) -> None:
        """Run the update of every later :meth:`step` through ``torch.compile(fullgraph=True)``.

        ``compile_options`` go to ``torch.compile`` (e.g. ``backend``, ``mode``,
        ``options``).  ``step()`` stays the entry point, so schedulers,
        ``GradScaler`` and step hooks work unchanged.  It gathers the tensors in
        Python, passes each group's ``lr`` as a one-element tensor (a Python
        float would be a constant of the graph and recompile whenever a
        scheduler changes it), and calls a compiled functional :func:`lars`.

        Guards are what a compiled function pays on every call: on ResNet18's
        186 tensors Dynamo's full set and Inductor's size asserts cost 0.08-0.12 ms
        per step on this project's 2-core CPU (about 10 % of an SGD step at
        width 16).  So each static configuration (a group's hyper-parameters
        other than ``lr``, the number of tensors with a gradient, the path, the
        device type, the options) gets its own compiled :func:`lars`
        (``isolate_recompiles=True``: its graphs are its own), chosen in Python
        and shared by all optimizers of the process, and Dynamo keeps only the
        guards on tensor metadata, on global state (grad mode, autocast, ...)
        and on a tensor passed twice (``_kept_guards``); Inductor's size
        asserts, which the tensor guards make redundant, are off.  A change of
        shape, stride, dtype, device or aliasing recompiles as usual.  Past 8
        configurations in one optimizer (e.g. a momentum schedule), new ones run
        eagerly, with a warning.

        Shapes are static (``dynamic=False``): with torch.compile's automatic
        dynamic shapes the second configuration compiled in a process (e.g. the
        second param group) got a dynamic-shape graph, ~2x slower on ResNet18
        width 16 (this project's 2-core CPU; ``bench/compiled_step.py``).  With the Inductor backend
        on the CPU two options are on by default: ``cpp_wrapper`` (the kernel's
        C++ caller instead of a Python one: less per-call overhead, about 25 s
        more compile time), and ``realize_reads_threshold=2``, which makes
        Inductor compute each tensor's factor (trust ratio times ``lr``) once:
        with the default (4) it recomputes it, a scalar division, in every vector
        iteration of the tensor's update loop (the C++ compiler cannot hoist it,
        as the loop's stores may alias the norms it reads): 0.05 ms of a 0.6 ms
        step at width 16 (``bench/compiled_step.py``).  ``dynamic`` and ``options`` given here override these
        and the guard filter (``options={"guard_filter_fn": None}`` keeps all
        guards); with a ``mode``, which torch.compile does not take together
        with ``options``, none of the options applies (all guards).
        """
        self._compile_options = compile_options
        self._compile_options_key = _frozen(compile_options)
        self._compiled_updates = {}
        self._layouts = {}  # they hold the update chosen under the previous options

    def _compiled_update(self, group: dict, params: List[Tensor], foreach: bool,
                         layout: "_GroupLayout") -> Callable[..., None]:
        """The compiled :func:`lars` for this group's static configuration (:meth:`compile`), remembered by
        the group's layout until the configuration changes."""
        device_type = params[0].device.type  # model.to(device) keeps the parameters, and so the layout
        static = (foreach, device_type, *(group[name] for name in _STATIC_HYPER))
        if layout.compiled_update is not None and layout.compiled_update[0] == static:
            return layout.compiled_update[1]
        key = (len(params), *static, self._compile_options_key)
        update = self._compiled_updates.get(key)
        if update is None and len(self._compiled_updates) >= _MAX_COMPILED_UPDATES:
            warnings.warn(f"LARS.compile(): more than {_MAX_COMPILED_UPDATES} static configurations "
                          f"(hyper-parameters other than lr, tensors with a gradient); this one runs eagerly")
            update = lars
        if update is None:
            update = _COMPILED_UPDATES.get(key)
            if update is None:
                # shared by the optimizers of the process: Dynamo caps the graphs of one function at 256 in all
                update = _COMPILED_UPDATES[key] = self._new_compiled_update(device_type)
            self._compiled_updates[key] = update
        layout.compiled_update = (static, update)
        return update

    def _new_compiled_update(self, device_type: str) -> Callable[..., None]:
        """``torch.compile(lars)`` with this optimizer's options and LARS.compile()'s defaults."""
        compile_options = {"dynamic": False, **self._compile_options}
        if "mode" not in compile_options:  # torch.compile takes a mode or options, not both
            options = {"guard_filter_fn": _kept_guards}
            if compile_options.get("backend", "inductor") == "inductor":  # other backends get no Inductor keys
                options["size_asserts"] = False
                if device_type == "cpu":
                    options["cpp_wrapper"] = True
                    options["realize_reads_threshold"] = 2
            options.update(compile_options.get("options") or {})
            if options["guard_filter_fn"] is None:
                del options["guard_filter_fn"]
            compile_options["options"] = options
        # isolate_recompiles: this configuration's graphs are not seen by the other configurations'
        return torch.compile(lars, fullgraph=True, isolate_recompiles=True, **compile_options)

    def _init_group(self, group: dict) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Params with a grad, their grads and momentum buffers (created as zeros if missing)."""
        params: List[Tensor] = []
        grads: List[Tensor] = []
        momentum_buffers: List[Tensor] = []
        keeps_buffer = group["momentum"] != 0
        state = self.state
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            if keeps_buffer:
                param_state = state[p]
                buf = param_state.get("momentum_buffer")
                if buf is None:
                    buf = param_state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                momentum_buffers.append(buf)
        return params, grads, momentum_buffers

    def _layout(self, group: dict, params: List[Tensor]) -> "_GroupLayout":
        """The :class:`_GroupLayout` of ``params`` (the group's tensors with a gradient), cached per group."""
        cached = self._layouts.get(id(group))
        if (cached is not None and cached.group is group and len(cached.params) == len(params)
                and all(a is b for a, b in zip(cached.params, params))):
            return cached
        layout = self._layouts[id(group)] = _GroupLayout(group, params)
        return layout

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

        for index, group in enumerate(self.param_groups):
            params, grads, momentum_buffers = self._init_group(group)
            if not params:
                continue
            lr = group["lr"]
            _check_lr(lr, f" in param group {index}")  # a scheduler or user may have set it
            layout = self._layout(group, params)
            foreach = layout.multi_allowed if group["foreach"] is None else group["foreach"]
            buckets, eager_caches = layout.buckets, layout.eager_caches
            update = lars
            if self._compile_options is not None:
                update = self._compiled_update(group, params, foreach, layout)
                if update is not lars:  # a 0-d CPU tensor would become a host scalar (.item()) in compiled code
                    lr = layout.lr_tensor.fill_(lr)
                    eager_caches = None  # the compiled update keeps its factors and norms inside the kernel
            update(
                params,
                grads,
                momentum_buffers,
                foreach=foreach,
                device_dtype_buckets=buckets,
                eager_caches=eager_caches,
                lr=lr,
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                eta=group["eta"],
                eps=group["eps"],
                nesterov=group["nesterov"],
                momentum_style=group["momentum_style"],
                norm_mode=group["norm_mode"],
                trust_clip=group["trust_clip"],
                lars_adapt=group["lars_adapt"],
                maximize=group["maximize"],
                zero_norm_trust=group["zero_norm_trust"],
            )

        return loss


class _GroupLayout:
    """What :meth:`LARS.step` keeps per param group while the same tensors have a gradient: the tensors
    (the group itself, to detect a reused id), whether the multi-tensor path may run, the device/dtype
    buckets with an :class:`_EagerCache` each; for :meth:`LARS.compile`, the compiled update last chosen
    with its static configuration, and the one-element float64 tensor that carries ``lr`` into it (refilled
    each step: 1 us, a new tensor 5-17 us on this project's CPU)."""

    __slots__ = ("group", "params", "multi_allowed", "buckets", "eager_caches", "compiled_update",
                 "lr_tensor")

    def __init__(self, group: dict, params: List[Tensor]) -> None:
        self.group = group
        self.params = tuple(params)
        self.multi_allowed = _multi_tensor_allowed(params)
        self.buckets = _group_by_device_and_dtype(params)
        self.eager_caches = [_EagerCache() for _ in self.buckets]
        self.compiled_update: Optional[Tuple[tuple, Callable[..., None]]] = None
        with torch.inference_mode(False):  # a step under inference_mode must not leave an inference tensor
            self.lr_tensor = torch.empty(1, dtype=torch.float64, device="cpu")


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
    foreach: Optional[bool] = None,
    *,
    lr: LearningRate,
    momentum: float,
    weight_decay: float,
    eta: float,
    eps: float,
    nesterov: bool,
    momentum_style: str,
    norm_mode: str,
    trust_clip: bool,
    lars_adapt: bool,
    maximize: bool,
    zero_norm_trust: str = "one",
    device_dtype_buckets: Optional[List[List[int]]] = None,
    eager_caches: Optional[List["_EagerCache"]] = None,
) -> None:
    """Functional LARS; see :class:`LARS`.

    Updates ``params`` and the buffers in place; missing (None) buffers in
    ``momentum_buffer_list`` are created (it is unused when ``momentum == 0``).
    Two optional caches, which the :class:`LARS` class keeps between steps:
    ``device_dtype_buckets``, the indices of ``params`` per (device, dtype), as
    ``_group_by_device_and_dtype`` computes them (None: computed here), and
    ``eager_caches``, one :class:`_EagerCache` per bucket (None: new factor
    views and norm plans every call; the results are the same).
    """
    for g in grads:
        if g.is_sparse:
            raise RuntimeError("LARS does not support sparse gradients; use a dense gradient")
    if foreach is None:
        foreach = _multi_tensor_allowed(params)
    if momentum != 0:
        for i, buf in enumerate(momentum_buffer_list):
            if buf is None:
                momentum_buffer_list[i] = torch.zeros_like(params[i], memory_format=torch.preserve_format)
    hyper = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                 nesterov=nesterov, momentum_style=momentum_style, norm_mode=norm_mode,
                 trust_clip=trust_clip, lars_adapt=lars_adapt, maximize=maximize,
                 zero_norm_trust=zero_norm_trust)
    if foreach and not torch.jit.is_scripting():
        if not params:
            return
        buckets = device_dtype_buckets
        if buckets is None:
            buckets = _group_by_device_and_dtype(params)
        if eager_caches is None:
            eager_caches = [None] * len(buckets)
        if len(buckets) == 1:
            _multi_tensor_lars(params, grads, momentum_buffer_list if momentum != 0 else [],
                               eager_cache=eager_caches[0], **hyper)
        else:
            for indices, eager_cache in zip(buckets, eager_caches, strict=True):
                _multi_tensor_lars([params[i] for i in indices], [grads[i] for i in indices],
                                   [momentum_buffer_list[i] for i in indices] if momentum != 0 else [],
                                   eager_cache=eager_cache, **hyper)
    else:
        _single_tensor_lars(params, grads, momentum_buffer_list, **hyper)


def _trust_ratio(w_norm: Tensor, update_norm: Tensor, *, lr: LearningRate, weight_decay: float,
                 decay_in_denominator: bool, eta: float, eps: float, trust_clip: bool,
                 zero_norm_trust: str) -> Tensor:
    """lambda, elementwise over 0-d tensors (single-tensor path) or stacked norms (multi-tensor).

    Only multiplications, additions, divisions, comparisons and selections, each
    rounded once, so a 0-d and a stacked evaluation agree bit for bit (a fused
    ``add(..., alpha=)`` may be an FMA in vectorised CPU loops and not in scalar
    ones).  ``update_norm`` is ||g|| (``norm_mode="paper"``) or ||d||.
    """
    denominator = update_norm
    if decay_in_denominator and weight_decay != 0.0:
        denominator = denominator + w_norm * weight_decay
    if eps != 0.0:
        denominator = denominator + eps
    ratio = (w_norm * eta) / denominator
    if zero_norm_trust == "one":  # lambda = 1 where ||w|| == 0 or ||u|| == 0 (no host sync)
        ratio = torch.where(torch.minimum(w_norm, update_norm) > 0, ratio, 1.0)
    if trust_clip:
        # min(lambda, lr) / lr; clamp keeps a NaN of zero_norm_trust="formula"
        if isinstance(lr, Tensor):
            ratio = torch.where(lr > 0, torch.clamp(ratio, max=lr) / lr, 1.0)
        elif lr != 0.0:
            ratio = torch.clamp(ratio, max=lr) / lr
        else:
            ratio = torch.ones_like(ratio)
    return ratio


def _norms(tensors: List[Tensor], plan: Optional["_NormPlan"] = None) -> Tensor:
    """The 2-norms of ``tensors`` (all on one device), as a vector.

    Each tensor's norm does not depend on the other tensors of the list, so the
    single-tensor path and the multi-tensor path, whose lists differ (e.g. the
    first holds float32 copies of half-precision tensors), get the same bits.  Eager on the CPU by a :class:`_NormPlan`
    (``plan``, kept between steps by :class:`LARS`, else one per list of sizes);
    on other devices by one ``_foreach_norm`` (a fused kernel; on CUDA
    ``torch.linalg.vector_norm`` sums in another order).  A compiled graph gets
    reductions that Inductor fuses into its kernels (``_foreach_norm`` would stay
    a separate library call): on the CPU :func:`_unrolled_sum_of_squares` for
    tensors of at least ``_UNROLLED_NORM_NUMEL`` elements, else ``vector_norm``."""
    if torch.compiler.is_compiling():
        return torch.stack([_compiled_norm(t) for t in tensors])
    if tensors[0].device.type != "cpu" or type(tensors[0]) not in _PLAIN_TENSOR_TYPES:  # e.g. a DTensor
        return torch.stack(torch._foreach_norm(tensors, 2))
    return (plan if plan is not None else _NormPlan.for_sizes(tensors)).norms(tensors)


# Eager norms on the CPU (_NormPlan), by each tensor's size: 1-d tensors under _SEGMENTED_NORM_NUMEL elements by
# one segmented sum, tensors of at least _DOT_NORM_NUMEL elements by BLAS dot, the others by one _foreach_norm.
# With dot from 16384 or 32768 elements the weights of a ResNet18 of width 8 took 1.16-1.20x the time of one
# _foreach_norm (a view, a dot and the joining of the results cost more than the norm of a mid-size tensor);
# from 65536, 0.86x at width 16 and 0.57x at width 64 (bench/eager_norms.py measures this value).
_SEGMENTED_NORM_NUMEL = 1024
_DOT_NORM_NUMEL = 65536


class _NormPlan:
    """How the eager CPU path computes the 2-norms of a list of tensors of given sizes.

    ``torch._foreach_norm`` runs one ``vector_norm`` per tensor on the CPU: about
    1.5 us for a tensor of a few elements, and for large tensors one thread and
    one accumulator, each add waiting for the previous one (~7e9 floats/s).  So
    each tensor takes one of three routes, by its size alone (a tensor's norm must
    not depend on its list, see :func:`_norms`):

    * 1-d tensors of fewer than ``_SEGMENTED_NORM_NUMEL`` elements (BatchNorm
      weights and biases: 82 of ResNet18's 124 weights and gradients) are
      concatenated, squared and summed per tensor by one ``index_add_``, a
      sequential sum within each tensor;
    * tensors of at least ``_DOT_NORM_NUMEL`` elements get a BLAS ``dot`` of
      their flat view with themselves (several accumulators, and threads; the
      same memory with the same threads gives the same bits);
    * the others go to one ``_foreach_norm``, cheaper for them than a view and a
      ``dot`` each.

    ``bench/eager_norms.py`` times it against one ``_foreach_norm`` for all, with
    all of ResNet18's tensors and with the weights that ``lars_param_groups``
    adapts.  Overflow is as with ``vector_norm``: both sum the squares in the
    tensor's dtype.

    :class:`LARS` keeps one per device/dtype bucket while the group's tensors
    stay the same (:class:`_EagerCache`).  A parameter whose size changes under
    its optimizer (``p.data = ...``) breaks its momentum buffer anyway; here a
    change of the segmented tensors' total size is refused by ``index_add_``'s
    check that the segment ids cover the concatenation.
    """

    __slots__ = ("count", "by_dot", "by_segment", "by_foreach", "segment_ids", "order")

    def __init__(self, tensors: List[Tensor]) -> None:
        numels = [t.numel() for t in tensors]
        self.count = len(tensors)
        self.by_dot = [i for i, k in enumerate(numels) if k >= _DOT_NORM_NUMEL]
        self.by_segment = [i for i, k in enumerate(numels) if k < _SEGMENTED_NORM_NUMEL and tensors[i].dim() == 1]
        taken = set(self.by_dot + self.by_segment)
        self.by_foreach = [i for i in range(len(tensors)) if i not in taken]
        self.segment_ids = torch.repeat_interleave(
            torch.arange(len(self.by_segment)),
            torch.tensor([numels[i] for i in self.by_segment], dtype=torch.int64))
        # the norms come in the order computed; order[i] is where tensors[i]'s is (None: already in order)
        computed = self.by_dot + self.by_segment + self.by_foreach
        self.order = None
        if computed != list(range(len(tensors))):
            self.order = torch.empty(len(tensors), dtype=torch.int64)
            self.order[computed] = torch.arange(len(tensors))

    @staticmethod
    def for_sizes(tensors: List[Tensor]) -> "_NormPlan":
        """A plan for these sizes, made once per process (calls without a kept plan: the single-tensor path,
        the functional :func:`lars`)."""
        key = tuple((t.numel(), t.dim() == 1) for t in tensors)
        plan = _NORM_PLANS.get(key)
        if plan is None:
            if len(_NORM_PLANS) >= 256:  # a bound for programs that build many models
                _NORM_PLANS.clear()
            with torch.inference_mode(False):  # used again outside inference_mode
                plan = _NORM_PLANS[key] = _NormPlan(tensors)
        return plan

    def norms(self, tensors: List[Tensor]) -> Tensor:
        if len(self.by_foreach) == self.count:
            return torch.stack(torch._foreach_norm(tensors, 2))
        squares = []  # sums of squares, by dot and by segment
        if self.by_dot:
            flats = [tensors[i].reshape(-1) for i in self.by_dot]
            squares.append(torch.stack([torch.dot(flat, flat) for flat in flats]))
        if self.by_segment:
            values = torch.cat([tensors[i] for i in self.by_segment])
            values.mul_(values)
            squares.append(values.new_zeros(len(self.by_segment)).index_add_(0, self.segment_ids, values))
        parts = []
        if squares:
            parts.append((torch.cat(squares) if len(squares) > 1 else squares[0]).sqrt_())
        if self.by_foreach:
            parts.append(torch.stack(torch._foreach_norm([tensors[i] for i in self.by_foreach], 2)))
        norms = torch.cat(parts) if len(parts) > 1 else parts[0]
        return norms if self.order is None else norms.index_select(0, self.order)


# _NormPlan.for_sizes: (numel, is 1-d) of each tensor -> its plan.
_NORM_PLANS: Dict[tuple, _NormPlan] = {}


def _compiled_norm(t: Tensor) -> Tensor:
    """The 2-norm of ``t`` in a compiled graph (see :func:`_norms`)."""
    return (_unrolled_sum_of_squares(t).sqrt() if t.device.type == "cpu" and t.numel() >= _UNROLLED_NORM_NUMEL
            else torch.linalg.vector_norm(t))


# On the CPU a compiled multi-tensor update computes each tensor's factor from that tensor's two norms (0-d
# operations, which Inductor turns into one scalar computation before the tensor's update loop), instead of
# stacking all norms into vectors as the eager path does (one vectorised trust ratio is cheaper than 62 scalar
# ones only eagerly): 0.79x vs 0.84x SGD at ResNet18 width 16 on this project's CPU (bench/compiled_step.py,
# which sets this to False while tracing its "stacked factors" variant).  On CUDA, where neither form has been
# measured (kernels per step), the stacked one stays.
_COMPILED_PER_TENSOR_FACTORS = True


# A compiled norm on the CPU (_unrolled_sum_of_squares): the elements per row, one vector register of float32
# (AVX2: 8, measured faster than 16 here), and the size from which it is used.
_UNROLLED_ROW = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8
_UNROLLED_NORM_NUMEL = 1024


def _unrolled_sum_of_squares(t: Tensor) -> Tensor:
    """The sum of squares of ``t``'s elements, written for Inductor's C++ backend (compiled code only).

    ``vector_norm`` compiles to one vector accumulator: each step waits for the
    previous add, so the norm pass ran at ~6e9 floats/s on this project's CPU,
    where a reduction that keeps several sums in flight reaches the memory's
    speed.  Here each step of the reduction loads four rows of ``_UNROLLED_ROW``
    elements and adds their squares in a tree before the one dependent add: a
    step at width 16 took 0.59 instead of 0.92 ms (``bench/compiled_step.py``).
    The elements are summed in another order than ``vector_norm``'s.
    """
    # in memory order, a view, for channels-last too (a norm does not depend on the order); another layout
    # is read through its strides (correct, maybe slower)
    channels_last = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    flat = (t.permute(0, 2, 3, 1) if channels_last else t).reshape(-1)
    head = t.numel() - t.numel() % (4 * _UNROLLED_ROW)
    a, b, c, d = (row * row for row in flat[:head].view(-1, 4, _UNROLLED_ROW).unbind(1))
    total = ((a + b) + (c + d)).sum()
    if head < t.numel():
        total = total + flat[head:].square().sum()
    return total


def _plan(*, momentum: float, weight_decay: float, momentum_style: str, norm_mode: str,
          maximize: bool) -> Tuple[float, str, bool, bool]:
    """Static (Python-level) decisions shared by both paths.

    The step direction is ``d = sign * g + weight_decay * w``.  It is either
    applied as two terms, ``s * sign * g + s * weight_decay * w``, with no
    temporary, or materialised once as ``d' = g + sign * weight_decay * w``
    and applied as ``s * sign * d'`` (``d = sign * d'``, and ``||d|| = ||d'||``):
    needed for ``norm_mode="update"``, whose trust ratio takes ``||d||``.

    The per-tensor factors stay tensors on the device: turning them into Python
    floats would copy them to the host, a sync every step.  On an accelerator
    they are repeated over their tensors' elements so that the ``_foreach_*``
    ops taking them stay fused (``_per_tensor``).
    Returns (sign, momentum style, materialise d', separate decay term).
    """
    sign = -1.0 if maximize else 1.0
    style = momentum_style if momentum != 0 else "paper"  # momentum 0: w -= lr * lambda * d
    materialize_direction = weight_decay != 0 and norm_mode == "update"
    separate_decay_term = weight_decay != 0 and not materialize_direction
    return sign, style, materialize_direction, separate_decay_term


def _single_tensor_lars(
    params: List[Tensor],
    grads: List[Tensor],
    momentum_buffer_list: List[Optional[Tensor]],
    *,
    lr: LearningRate,
    momentum: float,
    weight_decay: float,
    eta: float,
    eps: float,
    nesterov: bool,
    momentum_style: str,
    norm_mode: str,
    trust_clip: bool,
    lars_adapt: bool,
    maximize: bool,
    zero_norm_trust: str,
) -> None:
    sign, style, materialize_direction, separate_decay_term = _plan(
        momentum=momentum, weight_decay=weight_decay, momentum_style=momentum_style,
        norm_mode=norm_mode, maximize=maximize)
    # each tensor as it is updated: complex ones as pairs of reals, half-precision ones as float32 copies (all
    # of them at once, as in the multi-tensor path: the norms come first, in one call per device and dtype)
    views: List[Tuple[Tensor, Tensor, Optional[Tensor], bool]] = []
    for i, (param, grad) in enumerate(zip(params, grads)):
        w, g, buf = param, grad, momentum_buffer_list[i] if momentum != 0 else None
        if w.is_complex():
            w, g = torch.view_as_real(w), torch.view_as_real(g)
            buf = torch.view_as_real(buf) if buf is not None else None
        upcast = w.dtype in _UPCAST_DTYPES
        if upcast:
            w, g = w.float(), g.float()
            buf = buf.float() if buf is not None else None
        direction = torch.add(g, w, alpha=sign * weight_decay) if materialize_direction else g
        views.append((w, direction, buf, upcast))
    norms = _norms_per_tensor([w for w, _, _, _ in views], [d for _, d, _, _ in views]) if lars_adapt else []

    for i, (param, (w, direction, buf, upcast)) in enumerate(zip(params, views)):
        lr_value = lr.to(device=w.device, dtype=w.dtype) if isinstance(lr, Tensor) else lr
        if lars_adapt:
            w_norm, update_norm = norms[i]
            scale: Union[float, Tensor] = _trust_ratio(
                w_norm, update_norm, lr=lr_value, weight_decay=weight_decay,
                decay_in_denominator=norm_mode == "paper", eta=eta, eps=eps,
                trust_clip=trust_clip, zero_norm_trust=zero_norm_trust)
            if style == "paper":
                scale = scale * lr_value
        else:
            scale = lr_value if style == "paper" else 1.0
        if isinstance(scale, Tensor):
            direction_scale = scale * sign if sign != 1.0 else scale
            # the decay term reuses the direction's factor: (weight_decay * sign) * w * (scale * sign)
            # rounds as weight_decay * w * scale (the sign flips are exact), and needs no second factor
            decay_scale, decay_value = direction_scale, weight_decay * sign
        else:
            direction_scale = scale * sign
            decay_scale, decay_value = scale * weight_decay, 1.0

        fused = _fused_update_applies(w.device, w.dtype, nesterov, lr_value)
        if fused:
            factor = scale.item() if isinstance(scale, Tensor) else _as_float32(scale)
            fused = _fits_fused_kernel(w, direction, buf, factor, momentum)
        if fused:
            _fused_update_([w], [direction], [buf] if buf is not None else [], factor, momentum=momentum,
                           style=style, lr_value=lr_value, maximize=sign < 0,
                           weight_decay=weight_decay if separate_decay_term else 0.0)
        elif momentum != 0 and not nesterov:
            buf.mul_(momentum)
            _add_scaled_one_(buf, direction, direction_scale)
            if separate_decay_term:
                _add_scaled_one_(buf, w, decay_scale, decay_value)
            _step_weights_(w, buf, style, lr_value)
        else:
            step = direction.mul_(direction_scale) if materialize_direction else direction * direction_scale
            if separate_decay_term:
                _add_scaled_one_(step, w, decay_scale, decay_value)
            if momentum != 0:
                buf.mul_(momentum)
                buf.add_(step)
                step.add_(buf, alpha=momentum)
            _step_weights_(w, step, style, lr_value)

        if upcast:
            param.copy_(w)
            if buf is not None:
                momentum_buffer_list[i].copy_(buf)


def _step_weights_(w: Tensor, step: Tensor, style: str, lr_value: LearningRate) -> None:
    """w -= step ("paper": step holds lr) or w -= lr * step ("sgd"), as the multi-tensor path's last op."""
    if style == "paper":
        w.sub_(step)
    else:
        _add_scaled_one_(w, step, -lr_value)


def _norms_per_tensor(weights: List[Tensor], directions: List[Tensor]) -> List[Tuple[Tensor, Tensor]]:
    """(||w||, ||d||) of each tensor, for the single-tensor path: one :func:`_norms` call per device and dtype
    (each tensor's norm is the multi-tensor path's: it does not depend on the list).  One call per tensor made
    the single-tensor step 1.25x slower at ResNet18 width 16 on this project's CPU (a one-off A/B, 2026-11-30);
    this way it costs what one ``_foreach_norm`` per tensor did (3.76 vs 3.79 ms)."""
    pairs: List[Tuple[Tensor, Tensor]] = [None] * len(weights)  # type: ignore[list-item]
    for indices in _group_by_device_and_dtype(weights):
        norms = _norms([weights[i] for i in indices] + [directions[i] for i in indices]).unbind(0)
        for k, i in enumerate(indices):
            pairs[i] = (norms[k], norms[len(indices) + k])
    return pairs


def _add_scaled_one_(target: Tensor, tensor: Tensor, factor: Union[float, Tensor], value: float = 1.0) -> None:
    """target += value * tensor * factor, by the operations ``_add_scaled_`` runs (value is 1 for a float factor)."""
    if not isinstance(factor, Tensor):
        target.add_(tensor, alpha=factor)
    else:
        target.addcmul_(tensor, factor, value=value)


def _add_scaled_(targets: List[Tensor], tensors: List[Tensor], factor: Scale, value: float = 1.0) -> None:
    """targets += value * tensors * factor, without a temporary (value is 1 for a float factor)."""
    if not isinstance(factor, (list, tuple)):
        torch._foreach_add_(targets, tensors, alpha=factor)
    else:
        torch._foreach_addcmul_(targets, tensors, factor, value=value)


# On the CPU the update of a tensor that fits it runs through torch's fused SGD kernel (``torch._fused_sgd_``,
# the kernel of ``SGD(fused=True)``): one pass over the tensor's weights, direction and buffer, where the
# ``_foreach_*`` ops, loops of one elementwise kernel per tensor on the CPU, read and write them four times.
# The kernel computes ``d = g + weight_decay * w`` (``-g`` if maximize), ``buf = momentum * buf + (1 - dampening)
# * d`` and ``w = w - lr' * buf`` for one lr' and dampening per call: with ``dampening = 1 - s`` and ``lr' = 1``
# it is this module's ``v = momentum * v + s * d ; w = w - v`` (s = lr * lambda, or lambda and ``lr' = lr`` in
# the "sgd" style).  Nesterov's forms scale ``d`` outside the buffer and keep the ``_foreach_*`` update.
# bench/optimizer_step.py measures both routes (the ``_foreach_*`` one with this set to False).
_CPU_FUSED_UPDATE = hasattr(torch, "_fused_sgd_")


def _fused_update_applies(device: torch.device, dtype: torch.dtype, nesterov: bool, lr: LearningRate) -> bool:
    """Whether tensors of this device and compute dtype may take the fused kernel (see ``_CPU_FUSED_UPDATE``).

    float32 only: a float64 factor ``s`` does not survive ``1 - (1 - s)`` (float64 stays the exact reference),
    and half-precision tensors reach the update as float32 copies.  Eager, with a float ``lr``."""
    return (_CPU_FUSED_UPDATE and device.type == "cpu" and dtype == torch.float32 and not nesterov
            and not isinstance(lr, Tensor) and not torch.compiler.is_compiling())


def _fits_fused_kernel(w: Tensor, d: Tensor, buf: Optional[Tensor], factor: float, momentum: float) -> bool:
    """Whether the fused kernel updates this tensor with exactly the factor ``factor`` (a float32 value).

    The kernel indexes the weights, direction and buffer as one flat array each, so the three must lay their
    elements out alike; and it receives the factor as ``1 - dampening``, which is ``factor`` again, bit for
    bit, unless ``factor`` is below ~2e-9 (or NaN).  Both paths ask this of the same tensors and factors, so
    they take the same route for each tensor."""
    if type(w) not in _PLAIN_TENSOR_TYPES or type(d) not in _PLAIN_TENSOR_TYPES:
        return False
    if momentum != 0 and 1.0 - (1.0 - factor) != factor:
        return False
    if w.is_contiguous():
        return d.is_contiguous() and (buf is None or buf.is_contiguous())
    stride = w.stride()
    return _is_dense(w) and d.stride() == stride and (buf is None or buf.stride() == stride)


def _fused_update_(ws: List[Tensor], ds: List[Tensor], bufs: List[Tensor], factor: float, *, momentum: float,
                   style: str, lr_value: float, weight_decay: float, maximize: bool) -> None:
    """The update of tensors that share ``factor`` (lr * lambda for "paper", lambda for "sgd") by the fused
    kernel, which updates each tensor of its lists on its own; ``bufs`` is empty if momentum is 0, and
    ``weight_decay`` is 0 when the directions ``ds`` already hold the decay term."""
    if momentum == 0:  # w = w - factor * d
        torch._fused_sgd_(ws, ds, [], weight_decay=weight_decay, momentum=0.0, lr=factor, dampening=0.0,
                          nesterov=False, maximize=maximize, is_first_step=False)
    else:
        torch._fused_sgd_(ws, ds, bufs, weight_decay=weight_decay, momentum=momentum,
                          lr=1.0 if style == "paper" else lr_value, dampening=1.0 - factor,
                          nesterov=False, maximize=maximize, is_first_step=False)


def _as_float32(value: float) -> float:
    """``value`` rounded to float32, as a ``_foreach_*`` op rounds a float ``alpha`` for float32 tensors."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # beyond float32's range
        return value * float("inf")


def _factor_values(direction_scale: Scale, sign: float, count: int,
                   eager_cache: Optional["_EagerCache"]) -> List[float]:
    """The multi-tensor path's per-tensor factors, without the sign of ``maximize``, as Python floats (a CPU
    tensor's values: no device sync) for the fused kernel."""
    if not isinstance(direction_scale, list):
        return [_as_float32(direction_scale * sign)] * count
    if eager_cache is not None and direction_scale is eager_cache.views:
        values = eager_cache.vector.tolist()
    else:
        values = torch.stack(direction_scale).tolist()
    return values if sign == 1.0 else [-v for v in values]


def _multi_tensor_lars(
    params: List[Tensor],
    grads: List[Tensor],
    momentum_buffer_list: List[Tensor],
    *,
    lr: LearningRate,
    momentum: float,
    weight_decay: float,
    eta: float,
    eps: float,
    nesterov: bool,
    momentum_style: str,
    norm_mode: str,
    trust_clip: bool,
    lars_adapt: bool,
    maximize: bool,
    zero_norm_trust: str,
    eager_cache: Optional["_EagerCache"] = None,
) -> None:
    """One device and dtype; every buffer exists (``momentum_buffer_list`` is empty if momentum is 0)."""
    stored_params, stored_buffers = params, momentum_buffer_list
    if params[0].is_complex():
        params, grads, momentum_buffer_list = (
            [torch.view_as_real(t) for t in ts] for ts in (params, grads, momentum_buffer_list))
    upcast = params[0].dtype in _UPCAST_DTYPES
    if upcast:
        params, grads, momentum_buffer_list = (_to_float32(ts) for ts in (params, grads, momentum_buffer_list))
    device, compute_dtype = params[0].device, params[0].dtype
    sign, style, materialize_direction, separate_decay_term = _plan(
        momentum=momentum, weight_decay=weight_decay, momentum_style=momentum_style,
        norm_mode=norm_mode, maximize=maximize)
    lr_value = lr.to(device=device, dtype=compute_dtype) if isinstance(lr, Tensor) else lr
    count = len(params)
    if materialize_direction:
        directions = torch._foreach_add(grads, params, alpha=sign * weight_decay)
    else:
        directions = grads

    if lars_adapt and torch.compiler.is_compiling() and _COMPILED_PER_TENSOR_FACTORS and device.type == "cpu":
        factor = lr_value if style == "paper" else 1.0
        factor = factor * sign if sign != 1.0 else factor
        direction_scale = [
            _trust_ratio(_compiled_norm(w), _compiled_norm(d), lr=lr_value, weight_decay=weight_decay,
                         decay_in_denominator=norm_mode == "paper", eta=eta, eps=eps, trust_clip=trust_clip,
                         zero_norm_trust=zero_norm_trust) * factor
            for w, d in zip(params, directions)]
        decay_scale, decay_value = direction_scale, weight_decay * sign
    elif lars_adapt:
        tensors = [*params, *directions]
        norms = _norms(tensors, eager_cache.norm_plan(tensors)
                       if eager_cache is not None and device.type == "cpu" else None)
        ratios = _trust_ratio(
            norms[:count], norms[count:], lr=lr_value, weight_decay=weight_decay,
            decay_in_denominator=norm_mode == "paper", eta=eta, eps=eps,
            trust_clip=trust_clip, zero_norm_trust=zero_norm_trust)
        # ratio * (lr * sign) rounds as the single-tensor path's (ratio * lr) * sign: the sign flip is exact
        factor = lr_value if style == "paper" else 1.0
        direction_scale: Scale = _per_tensor(ratios, factor * sign if sign != 1.0 else factor, params,
                                             eager_cache)
        # as in the single-tensor path, the decay term reuses the direction's factors
        decay_scale, decay_value = direction_scale, weight_decay * sign
    elif isinstance(lr_value, Tensor) and style == "paper":  # compiled: lr is a graph input
        direction_scale = [lr_value * sign] * count
        decay_scale, decay_value = direction_scale, weight_decay * sign
    else:
        scale = lr_value if style == "paper" else 1.0
        direction_scale = scale * sign
        decay_scale, decay_value = scale * weight_decay, 1.0

    # the parts of the tensors that the _foreach_* ops update: slices on their own route, a list of indices
    # for the tensors that the fused kernel cannot update exactly
    parts: List[Union[slice, List[int]]] = [slice(0, count)]
    if _fused_update_applies(device, compute_dtype, nesterov, lr_value):
        factors = _factor_values(direction_scale, sign, count, eager_cache)
        fused_opts = dict(momentum=momentum, style=style, lr_value=lr_value, maximize=sign < 0,
                          weight_decay=weight_decay if separate_decay_term else 0.0)
        shared = not isinstance(direction_scale, list)  # one factor: one call for all the tensors that fit
        fits, rest = [], []
        for i in range(count):
            buf = momentum_buffer_list[i] if momentum != 0 else None
            if not _fits_fused_kernel(params[i], directions[i], buf, factors[i], momentum):
                rest.append(i)
            elif shared:
                fits.append(i)
            else:
                _fused_update_([params[i]], [directions[i]], [buf] if momentum != 0 else [], factors[i],
                               **fused_opts)
        if fits:
            _fused_update_(_pick(params, fits), _pick(directions, fits), _pick(momentum_buffer_list, fits),
                           factors[0], **fused_opts)
        parts = [rest] if rest else []
    elif eager_cache is not None and device.type == "cpu":
        parts = eager_cache.update_chunks(params)
    for part in parts:
        _update_(_pick(params, part), _pick(directions, part), _pick(momentum_buffer_list, part),
                 _pick(direction_scale, part), _pick(decay_scale, part), decay_value,
                 momentum=momentum, nesterov=nesterov, style=style, lr_value=lr_value,
                 materialize_direction=materialize_direction, separate_decay_term=separate_decay_term)

    if upcast:
        torch._foreach_copy_(stored_params, params)
        if stored_buffers:
            torch._foreach_copy_(stored_buffers, momentum_buffer_list)


def _pick(values, part: Union[slice, List[int]]):
    """The items of a per-tensor list or tuple (``_foreach_*`` ops return tuples) at ``part`` (a slice or
    indices); a shared float factor, or the empty buffer list of momentum 0, as it is."""
    if not isinstance(values, (list, tuple)) or not values:
        return values
    return values[part] if isinstance(part, slice) else [values[i] for i in part]


def _update_(params: List[Tensor], directions: List[Tensor], momentum_buffer_list: List[Tensor],
             direction_scale: Scale, decay_scale: Scale, decay_value: float, *, momentum: float, nesterov: bool,
             style: str, lr_value: LearningRate, materialize_direction: bool, separate_decay_term: bool) -> None:
    """The multi-tensor update of ``params`` (and buffers) from their directions and per-tensor factors."""
    if momentum != 0 and not nesterov:
        _scale_(momentum_buffer_list, momentum)
        _add_scaled_(momentum_buffer_list, directions, direction_scale)
        if separate_decay_term:
            _add_scaled_(momentum_buffer_list, params, decay_scale, decay_value)
        steps = momentum_buffer_list
    else:
        if materialize_direction:
            torch._foreach_mul_(directions, direction_scale)
            steps = directions
        else:
            steps = torch._foreach_mul(directions, direction_scale)
        if separate_decay_term:
            _add_scaled_(steps, params, decay_scale, decay_value)
        if momentum != 0:
            _scale_(momentum_buffer_list, momentum)
            torch._foreach_add_(momentum_buffer_list, steps)
            torch._foreach_add_(steps, momentum_buffer_list, alpha=momentum)

    if style == "paper":
        torch._foreach_sub_(params, steps)
    elif isinstance(lr_value, Tensor):
        _add_scaled_(params, steps, [-lr_value] * len(params))
    else:
        torch._foreach_add_(params, steps, alpha=-lr_value)


# The eager CPU update by _foreach ops (float64, Nesterov; see _CPU_FUSED_UPDATE for the others) runs them on
# chunks of tensors of about this many elements in all (4 MB a float32 list), so that a chunk's weights,
# gradients and buffers stay in the cache from one op to the next.
_UPDATE_CHUNK_NUMEL = 1 << 20


class _EagerCache:
    """What the eager multi-tensor path keeps between steps for one device/dtype bucket on the CPU
    (:class:`LARS` holds one per bucket, while the group's tensors stay the same).

    A vector of per-tensor factors and its 0-d views: the views are the operands
    of the ``_foreach_*`` ops, and writing each step's factors into the same
    vector replaces an ``unbind`` into new 0-d views, which cost ~40 us per step
    for ResNet18's 62 tensors on this project's 2-core CPU (about 4 % of an SGD
    step at width 16).  The :class:`_NormPlan` of the norms' tensors (the
    weights, then the gradients or update directions), and the chunks of the
    update (``update_chunks``).  Empty until first used.
    """

    __slots__ = ("vector", "views", "plan", "chunks")

    def __init__(self) -> None:
        self.vector: Optional[Tensor] = None
        self.views: List[Tensor] = []
        self.plan: Optional[_NormPlan] = None
        self.chunks: List[slice] = []

    def update_chunks(self, params: List[Tensor]) -> List[slice]:
        """Consecutive runs of ``params`` of about ``_UPDATE_CHUNK_NUMEL`` elements (made at the first step)."""
        if not self.chunks or self.chunks[-1].stop != len(params):
            self.chunks, start, size = [], 0, 0
            for i, p in enumerate(params):
                size += p.numel()
                if size >= _UPDATE_CHUNK_NUMEL or i == len(params) - 1:
                    self.chunks.append(slice(start, i + 1))
                    start, size = i + 1, 0
        return self.chunks

    def norm_plan(self, tensors: List[Tensor]) -> _NormPlan:
        """The plan for the norms' tensors, made at the first step (their sizes stay with the layout)."""
        if self.plan is None or self.plan.count != len(tensors):
            with torch.inference_mode(False):  # used again by steps outside inference_mode
                self.plan = _NormPlan(tensors)
        return self.plan

    def write(self, ratios: Tensor, factor: Union[float, Tensor]) -> List[Tensor]:
        """Views of ``ratios * factor`` (``ratios`` itself if factor is the float 1)."""
        vector = self.vector
        if vector is None or vector.shape != ratios.shape or vector.dtype != ratios.dtype \
                or vector.device != ratios.device:
            with torch.inference_mode(False):  # written again by steps outside inference_mode
                vector = self.vector = torch.empty_like(ratios)
                self.views = list(vector.unbind(0))
        if isinstance(factor, float) and factor == 1.0:
            vector.copy_(ratios)
        else:
            torch.mul(ratios, factor, out=vector)
        return self.views


def _per_tensor(ratios: Tensor, factor: Union[float, Tensor], like: List[Tensor],
                eager_cache: Optional[_EagerCache] = None) -> List[Tensor]:
    """``ratios[i] * factor`` for each tensor of ``like``, as operands of the ``_foreach_*`` ops.

    On the CPU (and when compiling) these are 0-d views of one vector: with a
    ``eager_cache`` (CPU, eager), of the same vector every step.  On an
    accelerator a ``_foreach_*`` op with 0-d operands takes torch's per-tensor
    route, one kernel launch per tensor (its fused route needs operands of equal
    shapes and strides), so there each factor is repeated over its tensor's
    elements instead: one ``repeat_interleave`` into a flat buffer, viewed with
    each tensor's shape and strides, and the ops that take the factors are fused.
    The operands hold the same values either way, so the results are the same.
    """
    compiling = torch.compiler.is_compiling()
    if eager_cache is not None and not compiling and not _expands_factors(ratios.device):
        return eager_cache.write(ratios, factor)
    factors = ratios if isinstance(factor, float) and factor == 1.0 else ratios * factor
    if not _expands_factors(factors.device) or compiling:
        return list(factors.unbind(0))
    layout = _dense_layout(like, factors.device)
    if layout is None:  # a tensor that is not dense: no flat buffer can be viewed as it
        return list(factors.unbind(0))
    repeats, total, views = layout
    flat = torch.repeat_interleave(factors, repeats, output_size=total)  # output_size: no host sync
    return [flat.as_strided(size, stride, offset) for size, stride, offset in views]


def _expands_factors(device: torch.device) -> bool:
    """Whether per-tensor factors are repeated over their tensors' elements (see ``_per_tensor``)."""
    return device.type != "cpu"


# (device, sizes and strides of the tensors) -> (repeats on the device, total numel,
# (size, stride, offset) of each tensor's view of the flat buffer), or None.
_DENSE_LAYOUTS: Dict[tuple, Optional[Tuple[Tensor, int, List[tuple]]]] = {}


def _dense_layout(tensors: List[Tensor], device: torch.device):
    key = (device, tuple((t.shape, t.stride()) for t in tensors))
    if key in _DENSE_LAYOUTS:
        return _DENSE_LAYOUTS[key]
    layout = None
    if all(_is_dense(t) for t in tensors):
        views, offset = [], 0
        for t in tensors:
            views.append((t.shape, t.stride(), offset))
            offset += t.numel()
        # built once per layout: the copy of the repeats to the device is the only host sync
        repeats = torch.tensor([t.numel() for t in tensors], dtype=torch.int64, device=device)
        layout = (repeats, offset, views)
    if len(_DENSE_LAYOUTS) >= 64:  # a bound for programs that build many models
        _DENSE_LAYOUTS.clear()
    _DENSE_LAYOUTS[key] = layout
    return layout


def _is_dense(t: Tensor) -> bool:
    """Whether the elements of ``t`` fill ``t.numel()`` consecutive slots of memory (any dim order)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _to_float32(tensors: List[Tensor]) -> List[Tensor]:
    """float32 copies, by one fused ``_foreach_copy_`` (not one conversion kernel per tensor)."""
    if not tensors:
        return []
    copies = [torch.empty_like(t, dtype=torch.float32) for t in tensors]
    torch._foreach_copy_(copies, tensors)
    return copies


# (factor, dtype) -> a 0-d CPU tensor holding it, for _scale_; never written to.
_CPU_SCALARS: Dict[Tuple[float, torch.dtype], Tensor] = {}


def _scale_(tensors: List[Tensor], factor: float) -> None:
    """tensors *= factor.  On the CPU a Python float becomes a new tensor for every
    tensor of the list (about 2x the time of the multiplication at ResNet18 width
    16); one 0-d tensor in the compute dtype gives the same products (kept, since
    making it is another ~5 us a step)."""
    if tensors[0].device.type == "cpu" and not torch.compiler.is_compiling():
        key = (factor, tensors[0].dtype)
        scalar = _CPU_SCALARS.get(key)
        if scalar is None:
            if len(_CPU_SCALARS) >= 64:  # a bound for momentum schedules
                _CPU_SCALARS.clear()
            scalar = _CPU_SCALARS[key] = torch.tensor(factor, dtype=tensors[0].dtype, device="cpu")
        torch._foreach_mul_(tensors, scalar)
    else:
        torch._foreach_mul_(tensors, factor)
