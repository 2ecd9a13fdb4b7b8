"""LARS against the behaviours torch.optim's generic test suite asserts of every optimizer.

torch's own suite (test/optim/test_optim.py over torch/testing/_internal/common_optimizers.py) runs each
optimizer through the same checks: state_dict round trips, loading state dicts of older versions, hooks,
no-op steps, foreach vs for-loop, complex and mixed-dtype parameters, schedulers, GradScaler, copying and
pickling, and its refusals.  These are the ones that apply to LARS, each over LARS's variants and both paths.
Small tensors on the CPU: the whole file runs in seconds.
"""

import copy
import io
import os
import pickle
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lars import LARS  # noqa: E402

BASE = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, eta=0.02)
# name: (keyword arguments, overrides of the second param group or None for one group)
VARIANTS = {
    "paper": ({}, None),
    "momentum0": ({"momentum": 0.0}, None),
    "sgd": ({"momentum_style": "sgd"}, None),
    "nesterov_paper": ({"nesterov": True}, None),
    "nesterov_sgd": ({"nesterov": True, "momentum_style": "sgd"}, None),
    "weight_decay0": ({"weight_decay": 0.0}, None),
    "maximize": ({"maximize": True}, None),
    "norm_update": ({"norm_mode": "update"}, None),
    "trust_clip_sgd": ({"trust_clip": True, "momentum_style": "sgd"}, None),
    "formula_eps": ({"zero_norm_trust": "formula", "eps": 1e-6}, None),
    "adapt_off_group": ({}, {"lars_adapt": False, "weight_decay": 0.0}),
}
# a zero-initialised tensor (as a bias) exercises the zero-norm rule
SHAPES = [(4, 3), (3,), (2, 3, 2), (5,)]
ZERO_INIT = 3
# the param-group keys that LARS added after its first version, with the value a group without them means
LATER_KEYS = {"foreach": None, "maximize": False, "lars_adapt": True, "zero_norm_trust": "one",
              "trust_clip": False, "norm_mode": "paper", "momentum_style": "paper", "nesterov": False, "eps": 0.0}


def make_params(dtype=torch.float32, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    if len(params) > ZERO_INIT:
        params[ZERO_INIT].zero_()
    return [p.requires_grad_() for p in params]


def make_opt(params, variant, foreach, **extra):
    kwargs, second = VARIANTS[variant]
    kwargs = {**BASE, **kwargs, "foreach": foreach, **extra}
    if second is None:
        return LARS(params, **kwargs)
    return LARS([{"params": params[:2]}, {"params": params[2:], **second}], **kwargs)


def gradients(params, step, zero=False):
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.zeros_like(p) if zero else
            torch.randn(p.shape, generator=gen, dtype=torch.float64).mul_(0.1).to(p.dtype) for p in params]


def run(opt, params, steps, first=0):
    for step in range(first, first + steps):
        for p, g in zip(params, gradients(params, step)):
            p.grad = g
        opt.step()


def same(xs, ys):
    return all(torch.equal(x.detach(), y.detach()) for x, y in zip(xs, ys, strict=True))


def clones(params):
    return [p.detach().clone().requires_grad_() for p in params]


def states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k].keys() == b[k].keys() and all(torch.equal(a[k][n], b[k][n]) for n in a[k]) for k in a)


variants = pytest.mark.parametrize("variant", list(VARIANTS))
paths = pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])


# --------------------------------------------------------------------------- state_dict


@paths
@variants
def test_state_dict_round_trip_continues_bit_identically(variant, foreach):
    params = make_params()
    opt = make_opt(params, variant, foreach)
    run(opt, params, 3)
    saved = opt.state_dict()
    assert states_equal(saved["state"], opt.state_dict()["state"])  # deterministic
    buffer = io.BytesIO()
    torch.save(saved, buffer)  # through a checkpoint file, as weights_only loads it
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    resumed_params = clones(params)
    resumed = make_opt(resumed_params, variant, foreach, lr=123.0)  # hyper-parameters come from the state dict
    resumed.load_state_dict(loaded)
    assert resumed.param_groups[0]["lr"] == BASE["lr"]
    run(opt, params, 3, first=3)
    run(resumed, resumed_params, 3, first=3)
    assert same(params, resumed_params)
    a, b = opt.state_dict(), resumed.state_dict()
    assert states_equal(a["state"], b["state"]) and a["param_groups"] == b["param_groups"]


@variants
def test_state_dict_is_deterministic_across_runs(variant):
    dicts = []
    for _ in range(2):
        params = make_params()
        opt = make_opt(params, variant, True)
        run(opt, params, 2)
        dicts.append(opt.state_dict())
    assert states_equal(dicts[0]["state"], dicts[1]["state"])
    assert dicts[0]["param_groups"] == dicts[1]["param_groups"]


@paths
@variants
def test_state_dict_lacking_later_keys_loads_and_steps_with_the_defaults(variant, foreach):
    # a state dict written before a key existed lacks it; loading fills the default (torch SGD does this for
    # foreach, maximize, ...) and the optimizer steps on as it would have with the key at its default
    params = make_params()
    opt = make_opt(params, variant, foreach)
    run(opt, params, 2)
    old = copy.deepcopy(opt.state_dict())
    removed = []
    for group in old["param_groups"]:
        # foreach always: both paths give the same bits
        removed.append([key for key, default in LATER_KEYS.items() if key == "foreach" or group[key] == default])
        for key in removed[-1]:
            del group[key]
    resumed_params = clones(params)
    resumed = make_opt(resumed_params, variant, foreach)
    resumed.load_state_dict(old)
    for group, keys in zip(resumed.param_groups, removed, strict=True):
        assert "foreach" in keys and all(group[key] == LATER_KEYS[key] for key in keys)
    run(opt, params, 2, first=2)
    run(resumed, resumed_params, 2, first=2)
    assert same(params, resumed_params)


def test_state_dict_of_the_first_version_loads_on_an_unpickled_optimizer():
    params = make_params()
    opt = make_opt(params, "paper", None)
    run(opt, params, 1)
    old = opt.state_dict()
    for group in old["param_groups"]:
        for key in LATER_KEYS:
            del group[key]
    clone = pickle.loads(pickle.dumps(opt))
    clone.load_state_dict(old)
    assert all(group[key] == value for group in clone.param_groups for key, value in LATER_KEYS.items())
    for p in clone.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    clone.step()


@variants
def test_state_is_cast_to_the_parameters_dtype_on_load(variant):
    params = make_params(torch.float32)
    opt = make_opt(params, variant, True)
    run(opt, params, 2)
    wide = [p.detach().double().requires_grad_() for p in params]
    resumed = make_opt(wide, variant, True)
    resumed.load_state_dict(opt.state_dict())
    if VARIANTS[variant][0].get("momentum", BASE["momentum"]) == 0:
        assert not resumed.state
    for p in wide:
        for value in resumed.state[p].values():
            assert value.dtype == torch.float64 and value.device == p.device
    run(resumed, wide, 1, first=2)
    assert all(p.dtype == torch.float64 for p in wide)


def test_named_parameters_state_dict_round_trip():
    model = nn.Linear(3, 2)
    opt = LARS(model.named_parameters(), **BASE)
    run(opt, list(model.parameters()), 2)
    saved = opt.state_dict()
    assert saved["param_groups"][0]["param_names"] == ["weight", "bias"]
    other = copy.deepcopy(model)
    resumed = LARS(other.named_parameters(), **BASE)
    resumed.load_state_dict(copy.deepcopy(saved))  # load_state_dict keeps the tensors it is given
    run(opt, list(model.parameters()), 1, first=2)
    run(resumed, list(other.parameters()), 1, first=2)
    assert same(model.parameters(), other.parameters())


# --------------------------------------------------------------------------- hooks


@paths
@variants
def test_step_hooks_instance_and_global_are_called_in_order(variant, foreach):
    params = make_params()
    opt = make_opt(params, variant, foreach)
    calls = []
    handles = [
        opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre")),
        opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post")),
        register_optimizer_step_pre_hook(lambda o, args, kwargs: calls.append("global pre")),
        register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append("global post")),
    ]
    try:
        run(opt, params, 1)
        assert calls == ["global pre", "pre", "post", "global post"]
    finally:
        for handle in handles:
            handle.remove()
    run(opt, params, 1, first=1)
    assert len(calls) == 4


@variants
def test_state_dict_and_load_state_dict_hooks_are_called(variant):
    params = make_params()
    opt = make_opt(params, variant, True)
    run(opt, params, 1)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("save pre"))

    def save_post(o, state_dict):
        calls.append("save post")
        state_dict["extra"] = 7
        return state_dict

    def load_pre(o, state_dict):
        calls.append("load pre")
        assert state_dict.pop("extra") == 7
        return state_dict

    opt.register_state_dict_post_hook(save_post)
    saved = opt.state_dict()
    assert saved["extra"] == 7
    resumed_params = clones(params)
    resumed = make_opt(resumed_params, variant, True)
    resumed.register_load_state_dict_pre_hook(load_pre)
    resumed.register_load_state_dict_post_hook(lambda o: calls.append("load post"))
    resumed.load_state_dict(copy.deepcopy(saved))
    assert calls == ["save pre", "save post", "load pre", "load post"]
    run(opt, params, 1, first=1)
    run(resumed, resumed_params, 1, first=1)
    assert same(params, resumed_params)


# --------------------------------------------------------------------------- no-op steps, gradients


@paths
@variants
def test_step_without_gradients_changes_nothing(variant, foreach):
    params = make_params()
    before = clones(params)
    opt = make_opt(params, variant, foreach)
    opt.step()
    assert same(params, before) and not opt.state


@paths
@variants
def test_step_with_zero_gradients_and_no_weight_decay_changes_nothing(variant, foreach):
    params = make_params()
    before = clones(params)
    opt = make_opt(params, variant, foreach, weight_decay=0.0)
    for step in range(2):
        for p, g in zip(params, gradients(params, step, zero=True)):
            p.grad = g
        opt.step()
    assert same(params, before)


@paths
@variants
def test_gradients_are_untouched(variant, foreach):
    params = make_params()
    opt = make_opt(params, variant, foreach)
    for step in range(2):
        grads = gradients(params, step)
        for p, g in zip(params, grads):
            p.grad = g
        kept = [g.clone() for g in grads]
        opt.step()
        assert all(p.grad is g for p, g in zip(params, grads))
        assert same(grads, kept)


@paths
@variants
def test_step_with_closure_returns_its_loss_and_goes_the_right_way(variant, foreach):
    params = make_params(seed=3)
    opt = make_opt(params, variant, foreach, lr=0.05)
    sign = -1.0 if VARIANTS[variant][0].get("maximize") else 1.0

    def closure():
        opt.zero_grad()
        assert torch.is_grad_enabled()
        loss = sign * sum((p - 1.0).square().sum() for p in params)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(20)]
    assert sign * losses[-1] < sign * losses[0]


# --------------------------------------------------------------------------- paths, dtypes, layouts


@variants
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_foreach_equals_for_loop_exactly(variant, dtype):
    runs = []
    for foreach in (False, True):
        params = make_params(dtype)
        opt = make_opt(params, variant, foreach)
        run(opt, params, 3)
        runs.append((params, opt.state))
    assert same(runs[0][0], runs[1][0])
    for p, q in zip(runs[0][0], runs[1][0]):
        assert states_equal({0: runs[0][1][p]}, {0: runs[1][1][q]})


@paths
@variants
def test_complex_parameters_equal_their_view_as_real_copies(variant, foreach):
    complex_params = [torch.complex(a.detach(), b.detach()).requires_grad_()
                      for a, b in zip(make_params(seed=10), make_params(seed=11))]
    real_params = [torch.view_as_real(p.detach()).clone().requires_grad_() for p in complex_params]
    opt_c = make_opt(complex_params, variant, foreach)
    opt_r = make_opt(real_params, variant, foreach)
    for step in range(3):
        for c, r, g in zip(complex_params, real_params, gradients(real_params, step)):
            c.grad, r.grad = torch.view_as_complex(g.clone()), g
        opt_c.step()
        opt_r.step()
    assert same([torch.view_as_real(c.detach()) for c in complex_params], real_params)
    assert not torch.equal(real_params[0].detach(), torch.view_as_real(complex_params[0].detach()).neg())


@paths
@variants
def test_mixed_dtypes_in_one_group_equal_each_tensor_alone(variant, foreach):
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
    params = [p.detach().to(d).requires_grad_() for p, d in zip(make_params(torch.float64), dtypes)]
    opt = make_opt(params, "paper" if VARIANTS[variant][1] else variant, foreach)
    run(opt, params, 3)
    for i, d in enumerate(dtypes):
        alone = [p.detach().to(d).requires_grad_() for p in make_params(torch.float64)][i:i + 1]
        opt_alone = make_opt(alone, "paper" if VARIANTS[variant][1] else variant, foreach)
        for step in range(3):
            alone[0].grad = gradients(params, step)[i]
            opt_alone.step()
        assert params[i].dtype == d and torch.equal(params[i].detach(), alone[0].detach())


@paths
@variants
def test_non_contiguous_parameters(variant, foreach):
    # transposed and strided leaves: updated in place (still views), same bits on both paths, the values of
    # contiguous copies up to the order of the norms' sums
    bases = [torch.randn(3, 4, dtype=torch.float64), torch.randn(8, dtype=torch.float64),
             torch.randn(2, 3, 4, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)]
    views = [bases[0].t(), bases[1][::2], bases[2].transpose(0, 2), bases[3][::2]]
    assert not any(v.is_contiguous() for v in views)
    params = [v.requires_grad_() for v in views]
    pointers = [p.data_ptr() for p in params]
    dense = [p.detach().contiguous().requires_grad_() for p in params]
    other = [p.detach().clone().requires_grad_() for p in params]  # clone keeps the strides
    assert not other[0].is_contiguous()
    opts = [make_opt(ps, variant, fe) for ps, fe in ((params, foreach), (dense, foreach), (other, not foreach))]
    for step in range(3):
        grads = gradients(params, step)
        for ps in (params, dense, other):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        for opt in opts:
            opt.step()
    assert [p.data_ptr() for p in params] == pointers
    assert same(params, other)
    assert all(torch.allclose(p, d, rtol=1e-12, atol=1e-14) for p, d in zip(params, dense))
    assert not torch.equal(params[0].detach(), bases[0].t().clone().zero_())


# --------------------------------------------------------------------------- schedulers, GradScaler

SCHEDULERS = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10),
    "CyclicLR": lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, 0.01, 0.3, step_size_up=2),
    "ReduceLROnPlateau": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5),
    "SWALR": lambda opt: torch.optim.swa_utils.SWALR(opt, swa_lr=0.02, anneal_epochs=3),
}


@paths
@variants
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_schedulers_drive_the_hyper_parameters(scheduler, variant, foreach):
    # the scheduled run equals a run whose lr and momentum are set by hand to the values the scheduler chose
    params = make_params()
    opt = make_opt(params, variant, foreach)
    sched = SCHEDULERS[scheduler](opt)
    chosen = []
    for step in range(6):
        chosen.append([(g["lr"], g["momentum"]) for g in opt.param_groups])
        run(opt, params, 1, first=step)
        if scheduler == "ReduceLROnPlateau":
            sched.step(1.0)  # no improvement: lr halves every step
        else:
            sched.step()
    assert len({lr for values in chosen for lr, _ in values}) > 1
    by_hand = make_params()
    opt_hand = make_opt(by_hand, variant, foreach)
    for step, values in enumerate(chosen):
        for group, (lr, momentum) in zip(opt_hand.param_groups, values):
            group["lr"], group["momentum"] = lr, momentum
        run(opt_hand, by_hand, 1, first=step)
    assert same(params, by_hand)


@paths
@variants
def test_grad_scaler_unscales_exactly_and_skips_infinite_steps(variant, foreach):
    plain, scaled = make_params(), make_params()
    opt_plain, opt_scaled = make_opt(plain, variant, foreach), make_opt(scaled, variant, foreach)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for step in range(3):
        grads = gradients(plain, step)
        scale = scaler.scale(torch.ones(()))  # a power of 2: scaling and unscaling are exact
        for p, q, g in zip(plain, scaled, grads):
            p.grad, q.grad = g.clone(), g * scale
        opt_plain.step()
        scaler.step(opt_scaled)
        scaler.update()
    assert same(plain, scaled)
    before = clones(scaled)
    scale = scaler.scale(torch.ones(()))
    for q, g in zip(scaled, gradients(scaled, 9)):
        q.grad = g * scale
    scaled[0].grad[0, 0] = float("inf")
    scaler.step(opt_scaled)
    scaler.update()
    assert same(scaled, before) and scaler.get_scale() == 2.0 ** 9


# --------------------------------------------------------------------------- copies


@paths
@variants
def test_deepcopy_and_pickle_continue_identically(variant, foreach):
    params = make_params()
    opt = make_opt(params, variant, foreach)
    run(opt, params, 2)
    copies = [copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))]
    run(opt, params, 2, first=2)
    for other in copies:
        other_params = [p for g in other.param_groups for p in g["params"]]
        assert not any(p is q for p, q in zip(other_params, params))
        run(other, other_params, 2, first=2)
        assert same(params, other_params)


def test_repr_names_the_hyper_parameters():
    text = repr(make_opt(make_params(), "adapt_off_group", None))
    assert text.startswith("LARS (") and "Parameter Group 1" in text and "lars_adapt: False" in text


# --------------------------------------------------------------------------- refusals


def test_sparse_gradient_is_refused():
    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    for foreach in (False, True, None):
        with pytest.raises(RuntimeError, match="sparse gradients"):
            LARS(emb.parameters(), lr=0.1, foreach=foreach).step()
    assert torch.equal(emb.weight.detach(), before)


def test_empty_and_duplicate_parameters_are_refused():
    p = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        LARS([], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        LARS([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        LARS([p], lr=0.1).add_param_group({"params": [p]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LARS([p, p], lr=0.1)
    assert any("duplicate parameters" in str(w.message) for w in caught)
    with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
        LARS(p, lr=0.1)
    with pytest.raises(ValueError, match="with/without names"):
        LARS([("weight", p), torch.ones(2, requires_grad=True)], lr=0.1)


def test_tensor_lr_is_refused():
    p = torch.ones(2, requires_grad=True)
    for lr in (torch.tensor(0.1), torch.tensor([0.1, 0.1])):
        with pytest.raises(ValueError, match="Invalid lr"):
            LARS([p], lr=lr)
    opt = LARS([p], lr=0.1)
    with pytest.raises(ValueError, match="Invalid lr in param group 1"):
        opt.add_param_group({"params": [torch.ones(1, requires_grad=True)], "lr": torch.tensor(0.1)})
