r"""LARS: Layer-wise Adaptive Rate Scaling for PyTorch.

Implements Algorithm 1 of You, Gitman & Ginsburg, "Large Batch Training of
Convolutional Networks" (2017, arXiv:1708.03888) as a ``torch.optim.Optimizer``,
plus the variants found in the common reference implementations.  This module
depends on ``torch`` only: ``from lars import LARS, lars_param_groups``.

Structure follows ``torch/optim/sgd.py``: the :class:`LARS` class holds the
hyper-parameters and the state (``state[p]["momentum_buffer"]``); the
functional core :func:`lars` dispatches to ``_single_tensor_lars`` (one tensor
at a time) or ``_multi_tensor_lars`` (``torch._foreach_*`` kernels, no host
synchronisation).  Both paths run the same arithmetic in the same order, so
they give the same numbers.
"""

from __future__ import annotations

import numbers
from typing import List, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

try:  # private torch helper; present in torch >= 2.0
    from torch.optim.optimizer import _default_to_fused_or_foreach
except ImportError:  # pragma: no cover - depends on the torch version
    _default_to_fused_or_foreach = None

__all__ = ["LARS", "lars", "lars_param_groups"]

_MOMENTUM_STYLES = ("paper", "sgd")
_NORM_MODES = ("paper", "update")


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _validate(h: dict, where: str = "") -> None:
    """Raise ValueError naming the offending hyper-parameter."""
    sfx = f" {where}" if where else ""
    lr = h.get("lr")
    if isinstance(lr, Tensor) or not _is_real(lr) or not lr >= 0.0:
        raise ValueError(f"Invalid lr{sfx}: {lr!r} (expected a Python float >= 0)")
    m = h.get("momentum")
    if not _is_real(m) or not 0.0 <= m < 1.0:
        raise ValueError(f"Invalid momentum{sfx}: {m!r} (expected 0 <= momentum < 1)")
    wd = h.get("weight_decay")
    if not _is_real(wd) or not wd >= 0.0:
        raise ValueError(f"Invalid weight_decay{sfx}: {wd!r} (expected >= 0)")
    eta = h.get("eta")
    if not _is_real(eta) or not eta > 0.0:
        raise ValueError(f"Invalid eta{sfx}: {eta!r} (expected > 0)")
    eps = h.get("eps")
    if not _is_real(eps) or not eps >= 0.0:
        raise ValueError(f"Invalid eps{sfx}: {eps!r} (expected >= 0)")
    if h.get("nesterov") and m == 0:
        raise ValueError(f"Invalid nesterov{sfx}: nesterov=True requires momentum > 0")
    if h.get("momentum_style") not in _MOMENTUM_STYLES:
        raise ValueError(
            f"Invalid momentum_style{sfx}: {h.get('momentum_style')!r} "
            f"(expected one of {_MOMENTUM_STYLES})"
        )
    if h.get("norm_mode") not in _NORM_MODES:
        raise ValueError(
            f"Invalid norm_mode{sfx}: {h.get('norm_mode')!r} (expected one of {_NORM_MODES})"
        )
    for k in ("nesterov", "trust_clip", "maximize", "lars_adapt"):
        if not isinstance(h.get(k), bool):
            raise ValueError(f"Invalid {k}{sfx}: {h.get(k)!r} (expected a bool)")
    fe = h.get("foreach")
    if fe is not None and not isinstance(fe, bool):
        raise ValueError(f"Invalid foreach{sfx}: {fe!r} (expected None or a bool)")


class LARS(Optimizer):
    r"""Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017, Algorithm 1).

    Default semantics (``momentum_style="paper"``, ``norm_mode="paper"``), for every
    parameter tensor :math:`w` with gradient :math:`g` (``-g`` if ``maximize``)::

        lambda = eta * ||w|| / (||g|| + weight_decay * ||w|| + eps)   # trust ratio
        lambda = 1            if ||w|| == 0 or ||g|| == 0             # never NaN/inf
        d      = g + weight_decay * w                                 # coupled L2
        v      = momentum * v + lr * lambda * d                       # v starts at 0
        w      = w - v

    The learning rate sits inside the momentum buffer, as in the paper and the
    MLPerf reference.  ``lr`` is read from ``group["lr"]`` at every step, so any
    ``torch.optim.lr_scheduler`` drives it.  Norms and the trust ratio are
    computed in at least float32 (float32 for half/bfloat16 parameters); the
    buffer update itself runs in the parameter dtype, like torch SGD.

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
    * ``trust_clip=True`` (LARC of apex / timm): ``lambda`` is replaced by
      ``min(lambda / lr, 1)``, so the effective per-tensor rate is
      ``lr * min(lambda / lr, 1) = min(lambda, lr)``: LARS can lower a tensor's
      rate below ``lr`` but never raise it above ``lr``.  (With ``lr == 0``
      the factor is 1.)
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
        lr (float): learning rate (required, >= 0).
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
            ``None`` picks it where torch's own optimizers would (CUDA and other
            accelerators; not on CPU).

    Sparse gradients are rejected with a ``RuntimeError``.  Parameters whose
    ``grad`` is None are skipped; ``p.grad`` is never modified.  Works with
    ``torch.amp.GradScaler`` (``scaler.step(opt)`` skips steps with inf/NaN
    gradients) and with ``torch.compile``.

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
            lars_adapt=True,
        )
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        _validate(self.param_groups[-1], f"in param group {len(self.param_groups) - 1}")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("momentum_style", "paper")
            group.setdefault("norm_mode", "paper")
            group.setdefault("trust_clip", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("lars_adapt", True)

    def _init_group(self, group, params, grads, momentum_buffer_list) -> bool:
        """Collect params with a grad; return True if a momentum buffer is missing."""
        missing = False
        use_momentum = group["momentum"] != 0
        state = self.state
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(
                    "LARS does not support sparse gradients (parameter of shape "
                    f"{tuple(p.shape)}); use a dense gradient"
                )
            params.append(p)
            grads.append(g)
            if use_momentum:
                buf = state[p].get("momentum_buffer")
                if buf is None:
                    missing = True
                momentum_buffer_list.append(buf)
        return missing

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

        for group in self.param_groups:
            params: List[Tensor] = []
            grads: List[Tensor] = []
            momentum_buffer_list: List[Optional[Tensor]] = []
            missing = self._init_group(group, params, grads, momentum_buffer_list)
            if not params:
                continue
            if not group["lr"] >= 0.0:  # a scheduler may have set it
                raise ValueError(f"Invalid lr: {group['lr']!r} (expected >= 0)")

            lars(
                params,
                grads,
                momentum_buffer_list,
                foreach=group["foreach"],
                lr=group["lr"],
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
            )

            if missing:  # buffers created in this step: store them in the state
                for p, buf in zip(params, momentum_buffer_list):
                    self.state[p]["momentum_buffer"] = buf

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
    foreach: Optional[bool] = None,
    *,
    lr: float,
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
) -> None:
    """Functional LARS; see :class:`LARS`.  Updates ``params`` and the buffers in
    place; missing (None) buffers in ``momentum_buffer_list`` are created."""
    if foreach is None:
        if _default_to_fused_or_foreach is not None and not torch.jit.is_scripting():
            _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        else:  # pragma: no cover
            foreach = False
    if any(g.is_sparse for g in grads):
        raise RuntimeError("LARS does not support sparse gradients")
    func = _multi_tensor_lars if foreach else _single_tensor_lars
    func(
        params,
        grads,
        momentum_buffer_list,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        eta=eta,
        eps=eps,
        nesterov=nesterov,
        momentum_style=momentum_style,
        norm_mode=norm_mode,
        trust_clip=trust_clip,
        lars_adapt=lars_adapt,
        maximize=maximize,
    )


def _norm_dtype(dtype: torch.dtype) -> Optional[torch.dtype]:
    """dtype argument for norms: None (native) for float32/float64, else float32."""
    return None if dtype in (torch.float32, torch.float64) else torch.float32


def _trust_scale(w_norm: Tensor, u_norm: Tensor, *, lr, decay_in_denominator, eta, eps,
                 trust_clip, momentum_style, weight_decay) -> Tensor:
    """Per-tensor scale s of the update: ``lr * lambda`` ("paper") or ``lambda`` ("sgd").

    Works elementwise on 0-d tensors (single-tensor path) or on stacked 1-d
    tensors (multi-tensor path) with the same sequence of operations, hence
    the same bits.  ``u_norm`` is ||g|| (``norm_mode="paper"``) or ||d||.
    """
    denom = u_norm
    if decay_in_denominator and weight_decay != 0.0:
        denom = denom + weight_decay * w_norm
    if eps != 0.0:
        denom = denom + eps
    ratio = (w_norm * eta) / denom
    # lambda = 1 where ||w|| == 0 or ||u|| == 0 (torch.where: no host sync)
    lam = torch.where(torch.minimum(w_norm, u_norm) > 0, ratio, 1.0)
    if trust_clip:
        # effective rate lr * min(lam / lr, 1) = min(lam, lr); factor 1 when lr == 0
        lam = torch.where(lam < lr, lam / lr if lr != 0.0 else lam, 1.0)
    return lam * lr if momentum_style == "paper" else lam


def _plan(*, momentum, weight_decay, momentum_style, norm_mode, maximize):
    """Static (Python-level) decisions shared by both paths.

    The update is ``u = s * sign * src + s * weight_decay * w`` with ``src = g``,
    or, when d is materialised (norm_mode "update" with decay), ``src = d' =
    g + sign * weight_decay * w`` and ``u = s * sign * d'`` (since d = sign * d').
    """
    sign = -1.0 if maximize else 1.0
    # momentum == 0: no buffer; both styles reduce to w -= lr * lambda * d
    style = momentum_style if momentum != 0 else "paper"
    materialize_d = norm_mode == "update" and weight_decay != 0
    w_term = weight_decay != 0 and not materialize_d
    return sign, style, materialize_d, w_term


def _single_tensor_lars(
    params: List[Tensor],
    grads: List[Tensor],
    momentum_buffer_list: List[Optional[Tensor]],
    *,
    lr: float,
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
) -> None:
    sign, style, materialize_d, w_term = _plan(
        momentum=momentum, weight_decay=weight_decay, momentum_style=momentum_style,
        norm_mode=norm_mode, maximize=maximize)
    plain_scale = lr if style == "paper" else 1.0  # lars_adapt=False: lambda = 1

    for i, (w, g) in enumerate(zip(params, grads)):
        src = torch.add(g, w, alpha=sign * weight_decay) if materialize_d else g
        if lars_adapt:
            nd = _norm_dtype(w.dtype)
            s = _trust_scale(
                torch.linalg.vector_norm(w, 2, dtype=nd), torch.linalg.vector_norm(src, 2, dtype=nd),
                lr=lr, decay_in_denominator=norm_mode == "paper", eta=eta, eps=eps,
                trust_clip=trust_clip, momentum_style=style, weight_decay=weight_decay)

        if momentum != 0 and not nesterov:
            buf = momentum_buffer_list[i]
            if buf is None:
                buf = torch.zeros_like(w, memory_format=torch.preserve_format)
                momentum_buffer_list[i] = buf
            buf.mul_(momentum)
            if lars_adapt:
                buf.addcmul_(src, s, value=sign)
                if w_term:
                    buf.addcmul_(w, s, value=weight_decay)
            else:
                buf.add_(src, alpha=plain_scale * sign)
                if w_term:
                    buf.add_(w, alpha=plain_scale * weight_decay)
            upd = buf
        else:
            # u = scaled update; then the Nesterov look-ahead if momentum != 0
            if lars_adapt:
                s_signed = s * sign if sign != 1.0 else s
                u = src.mul_(s_signed) if materialize_d else torch.mul(src, s_signed)
                if w_term:
                    u.addcmul_(w, s_signed, value=sign * weight_decay)
            else:
                a = plain_scale * sign
                u = src.mul_(a) if materialize_d else torch.mul(src, a)
                if w_term:
                    u.add_(w, alpha=plain_scale * weight_decay)
            if momentum != 0:
                buf = momentum_buffer_list[i]
                if buf is None:
                    buf = torch.zeros_like(w, memory_format=torch.preserve_format)
                    momentum_buffer_list[i] = buf
                buf.mul_(momentum)
                buf.add_(u)
                u.add_(buf, alpha=momentum)
            upd = u

        if style == "paper":
            w.sub_(upd)
        else:
            w.add_(upd, alpha=-lr)


def _multi_tensor_lars(
    params: List[Tensor],
    grads: List[Tensor],
    momentum_buffer_list: List[Optional[Tensor]],
    *,
    lr: float,
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
) -> None:
    if len(params) == 0:
        return
    sign, style, materialize_d, w_term = _plan(
        momentum=momentum, weight_decay=weight_decay, momentum_style=momentum_style,
        norm_mode=norm_mode, maximize=maximize)
    plain_scale = lr if style == "paper" else 1.0  # lars_adapt=False: lambda = 1

    tensorlists = [params, grads] + ([momentum_buffer_list] if momentum != 0 else [])
    grouped = Optimizer._group_tensors_by_device_and_dtype(tensorlists, with_indices=True)
    for device_lists, indices in grouped.values():
        dev_params: List[Tensor] = device_lists[0]
        dev_grads: List[Tensor] = device_lists[1]
        device, dtype = dev_params[0].device, dev_params[0].dtype

        dev_bufs: List[Tensor] = []
        if momentum != 0:
            dev_bufs_opt = device_lists[2]
            for j in range(len(dev_params)):
                buf = dev_bufs_opt[j]
                if buf is None:
                    buf = torch.zeros_like(dev_params[j], memory_format=torch.preserve_format)
                    dev_bufs_opt[j] = buf
                    momentum_buffer_list[indices[j]] = buf
                dev_bufs.append(buf)

        if materialize_d:
            src = torch._foreach_add(dev_grads, dev_params, alpha=sign * weight_decay)
        else:
            src = dev_grads

        if lars_adapt:
            nd = _norm_dtype(dtype)
            # one _foreach_norm over params and update sources, one stack
            n = len(dev_params)
            norms = torch.stack(torch._foreach_norm(list(dev_params) + list(src), 2, dtype=nd))
            s = _trust_scale(
                norms[:n], norms[n:], lr=lr, decay_in_denominator=norm_mode == "paper",
                eta=eta, eps=eps, trust_clip=trust_clip, momentum_style=style,
                weight_decay=weight_decay)

        # On CPU, _foreach_mul_ with a Python scalar is ~2x slower than with a
        # 0-d tensor and, for bfloat16/float16, rounds the scalar to that dtype
        # first (Tensor.mul_ does not).  A 0-d tensor in the compute dtype is
        # faster and keeps the single-tensor path's arithmetic (and its bits).
        if device.type == "cpu":
            cdt = _norm_dtype(dtype) or dtype

            def _num(x):
                return torch.tensor(x, dtype=cdt)
        else:
            def _num(x):
                return x

        if momentum != 0 and not nesterov:
            torch._foreach_mul_(dev_bufs, _num(momentum))
            if lars_adapt:
                s_list = s.unbind(0)
                torch._foreach_addcmul_(dev_bufs, src, s_list, value=sign)
                if w_term:
                    torch._foreach_addcmul_(dev_bufs, dev_params, s_list, value=weight_decay)
            else:
                torch._foreach_add_(dev_bufs, src, alpha=plain_scale * sign)
                if w_term:
                    torch._foreach_add_(dev_bufs, dev_params, alpha=plain_scale * weight_decay)
            upd = dev_bufs
        else:
            if lars_adapt:
                s_list = (s * sign if sign != 1.0 else s).unbind(0)
                if materialize_d:
                    torch._foreach_mul_(src, s_list)
                    u = src
                else:
                    u = torch._foreach_mul(src, s_list)
                if w_term:
                    torch._foreach_addcmul_(u, dev_params, s_list, value=sign * weight_decay)
            else:
                a = _num(plain_scale * sign)
                if materialize_d:
                    torch._foreach_mul_(src, a)
                    u = src
                else:
                    u = torch._foreach_mul(src, a)
                if w_term:
                    torch._foreach_add_(u, dev_params, alpha=plain_scale * weight_decay)
            if momentum != 0:
                torch._foreach_mul_(dev_bufs, _num(momentum))
                torch._foreach_add_(dev_bufs, u)
                torch._foreach_add_(u, dev_bufs, alpha=momentum)
            upd = u

        if style == "paper":
            torch._foreach_sub_(dev_params, upd)
        else:
            torch._foreach_add_(dev_params, upd, alpha=-lr)
