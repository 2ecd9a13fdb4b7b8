"""Tests for lars.py (CPU only, small tensors)."""

import copy
import math
import os
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lars import LARS, lars_param_groups  # noqa: E402

F64 = torch.float64

# --------------------------------------------------------------------------- #
# Hand-computed values: w0 = [3, 4], g1 = [0.8, -0.6], g2 = [0, 0.5],
# momentum 0.9, weight_decay 0.1, eta 0.1, eps 0, lr 1.0 then 0.5.
# Step 1 (paper): ||w|| = 5, ||g|| = 1, lambda = 0.1*5/(1 + 0.1*5) = 1/3,
#   d = g + 0.1 w = [1.1, -0.2], v = lr*lambda*d = [0.3667, -0.0667], w = [2.6333, 4.0667].
# wd0: lambda = 0.1*5/1 = 0.5, v = [0.4, -0.3], w = [2.6, 4.3].
# no_adapt: v = 1.0*d = [1.1, -0.2], w = [1.9, 4.2].
# trust_clip (lr 0.25 then 0.5): lambda = 1/3 > lr -> rate min(lambda, lr) = 0.25,
#   v = 0.25*d = [0.275, -0.05], w = [2.725, 4.05].
# norm_update: ||d|| = sqrt(1.25), lambda = 0.5/sqrt(1.25) = 0.4472.
# Second-step values worked through with the same formulas (lambda in comments).
# --------------------------------------------------------------------------- #
HAND = {
    # name: (kwargs, group overrides, lrs, w after step 1, w after step 2)
    "paper": ({}, {}, (1.0, 0.5),
              [2.6333333333333333, 4.066666666666666], [2.238537745855499, 3.9035729983885545]),  # lambda 1/3, 0.492118
    "sgd": ({"momentum_style": "sgd"}, {}, (1.0, 0.5),
            [2.6333333333333333, 4.066666666666666], [2.403537745855499, 3.8735729983885547]),  # 1/3, 0.492118
    "nesterov_paper": ({"nesterov": True}, {}, (1.0, 0.5),
                       [2.3033333333333332, 4.126666666666667], [1.9000076746619876, 3.7593647079949677]),
    "nesterov_sgd": ({"nesterov": True, "momentum_style": "sgd"}, {}, (1.0, 0.5),
                     [2.3033333333333332, 4.126666666666667], [2.0485076746619875, 3.732364707994968]),
    "norm_update": ({"norm_mode": "update"}, {}, (1.0, 0.5),
                    [2.508065044950046, 4.089442719099991], [2.0015217878098692, 3.938717982591053]),
    "trust_clip": ({"trust_clip": True}, {}, (0.25, 0.5),
                   [2.725, 4.05], [2.3428852355078313, 3.647930782145274]),  # factor 1, 0.987998
    "no_adapt": ({}, {"lars_adapt": False}, (1.0, 0.5),
                 [1.9, 4.2], [0.8149999999999997, 3.92]),
    "wd0": ({}, {"weight_decay": 0.0}, (1.0, 0.5),
            [2.6, 4.3], [2.24, 4.318753109471977]),  # lambda 0.5, 1.00499
}


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", list(HAND))
def test_hand_computed_two_steps(name, foreach):
    kwargs, overrides, lrs, w1, w2 = HAND[name]
    w = torch.tensor([3.0, 4.0], dtype=F64, requires_grad=True)
    group = {"params": [w], **overrides}
    opt = LARS([group], lr=lrs[0], momentum=0.9, weight_decay=0.1, eta=0.1, foreach=foreach, **kwargs)
    for lr, g, expected in zip(lrs, ([0.8, -0.6], [0.0, 0.5]), (w1, w2)):
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.tensor(g, dtype=F64)
        opt.step()
        torch.testing.assert_close(w.detach(), torch.tensor(expected, dtype=F64), rtol=0, atol=1e-13)


# --------------------------------------------------------------------------- #
# Independent reference, straight from the formulas (Python floats for lambda).
# --------------------------------------------------------------------------- #
def reference_step(ws, gs, bufs, lr, cfg):
    m, wd, eta, eps = cfg["momentum"], cfg["weight_decay"], cfg["eta"], cfg["eps"]
    for i, (w, g) in enumerate(zip(ws, gs)):
        g = -g if cfg["maximize"] else g
        d = g + wd * w
        wn = torch.linalg.norm(w).item()
        gn = torch.linalg.norm(g).item()
        dn = torch.linalg.norm(d).item()
        if cfg["lars_adapt"]:
            if cfg["norm_mode"] == "paper":
                lam = eta * wn / (gn + wd * wn + eps) if wn > 0 and gn > 0 else 1.0
            else:
                lam = eta * wn / (dn + eps) if wn > 0 and dn > 0 else 1.0
            if cfg["trust_clip"]:
                lam = min(lam, lr) / lr  # effective rate min(lambda, lr)
        else:
            lam = 1.0
        if cfg["momentum_style"] == "paper":
            bufs[i] = m * bufs[i] + lr * lam * d
            upd = m * bufs[i] + lr * lam * d if cfg["nesterov"] else bufs[i]
        else:
            bufs[i] = m * bufs[i] + lam * d
            upd = lr * (lam * d + m * bufs[i]) if cfg["nesterov"] else lr * bufs[i]
        ws[i] = w - upd


BASE = dict(momentum=0.9, weight_decay=5e-3, eta=0.02, eps=0.0, nesterov=False, momentum_style="paper",
            norm_mode="paper", trust_clip=False, maximize=False, lars_adapt=True)
VARIANTS = {
    "paper": {},
    "sgd": {"momentum_style": "sgd"},
    "nesterov_paper": {"nesterov": True},
    "nesterov_sgd": {"nesterov": True, "momentum_style": "sgd"},
    "norm_update": {"norm_mode": "update"},
    "norm_update_maximize": {"norm_mode": "update", "maximize": True},
    "trust_clip": {"trust_clip": True},
    "trust_clip_sgd_eps": {"trust_clip": True, "momentum_style": "sgd", "eps": 1e-3},
    "no_adapt": {"lars_adapt": False},
    "no_adapt_sgd_nesterov": {"lars_adapt": False, "momentum_style": "sgd", "nesterov": True},
    "wd0": {"weight_decay": 0.0},
    "maximize": {"maximize": True},
    "momentum0": {"momentum": 0.0},
}
SHAPES = [(4, 3, 3, 3), (4,), (6, 4), (6,), (5,)]
LRS = [0.5, 0.1, 2.0, 0.05, 1.0]  # changes every step; some below and above lambda


def _make(shapes, dtype=F64, seed=0, zero_idx=()):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    for i in zero_idx:
        ps[i].zero_()
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes] for _ in LRS]
    return ps, grads


def _run_lars(ps0, grads, lrs, cfg, foreach, dtype=None):
    ps = [p.clone().requires_grad_() for p in ps0]
    hp = {k: v for k, v in cfg.items() if k != "lars_adapt"}
    opt = LARS([{"params": ps, "lars_adapt": cfg["lars_adapt"]}], lr=lrs[0], foreach=foreach, **hp)
    for lr, gs in zip(lrs, grads):
        opt.param_groups[0]["lr"] = lr
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in ps], opt


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_independent_reference(variant, foreach):
    cfg = {**BASE, **VARIANTS[variant]}
    ps0, grads = _make(SHAPES, zero_idx=(3,))  # one zero-weight tensor
    got, _ = _run_lars(ps0, grads, LRS, cfg, foreach)
    ws = [p.clone() for p in ps0]
    bufs = [torch.zeros_like(p) for p in ps0]
    for lr, gs in zip(LRS, grads):
        reference_step(ws, gs, bufs, lr, cfg)
    moved = max((a - b).abs().max().item() for a, b in zip(ws, ps0))
    assert moved > 1e-3  # the reference actually moved the parameters
    err = max((a - b).abs().max().item() for a, b in zip(got, ws))
    assert err <= 1e-12, err


def test_paper_and_sgd_styles_equal_iff_lr_constant():
    ps0, grads = _make(SHAPES)
    const = [0.3] * len(LRS)
    a, _ = _run_lars(ps0, grads, const, {**BASE}, True)
    b, _ = _run_lars(ps0, grads, const, {**BASE, "momentum_style": "sgd"}, True)
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) <= 1e-13
    a, _ = _run_lars(ps0, grads, LRS, {**BASE}, True)
    b, _ = _run_lars(ps0, grads, LRS, {**BASE, "momentum_style": "sgd"}, True)
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) > 1e-3


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_weight_zero_grad(foreach):
    lr, m, wd = 0.5, 0.9, 0.1
    z_w = torch.zeros(3, dtype=F64, requires_grad=True)           # ||w|| = 0, g != 0
    z_g = torch.tensor([1.0, -2.0, 2.0], dtype=F64, requires_grad=True)  # ||g|| = 0
    z_b = torch.zeros(3, dtype=F64, requires_grad=True)           # both zero
    opt = LARS([z_w, z_g, z_b], lr=lr, momentum=m, weight_decay=wd, foreach=foreach)
    g = torch.tensor([0.3, 0.0, -0.4], dtype=F64)
    z_w.grad, z_g.grad, z_b.grad = g.clone(), torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64)
    opt.step()
    for p in (z_w, z_g, z_b):
        assert torch.isfinite(p).all() and torch.isfinite(opt.state[p]["momentum_buffer"]).all()
    # lambda = 1: v = lr * (g + wd * w)
    torch.testing.assert_close(z_w.detach(), -lr * g, rtol=0, atol=1e-15)
    w0 = torch.tensor([1.0, -2.0, 2.0], dtype=F64)
    torch.testing.assert_close(z_g.detach(), w0 - lr * wd * w0, rtol=0, atol=1e-15)  # decay still applied
    assert torch.equal(z_b.detach(), torch.zeros(3, dtype=F64))
    # bfloat16 / float16 zeros are finite as well
    for dt in (torch.bfloat16, torch.float16):
        p = torch.zeros(4, dtype=dt, requires_grad=True)
        p.grad = torch.zeros(4, dtype=dt)
        LARS([p], lr=1.0, foreach=foreach).step()
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("style", ["paper", "sgd"])
def test_gradient_scale_invariance_without_weight_decay(foreach, style):
    ps0, grads = _make(SHAPES)
    cfg = {**BASE, "weight_decay": 0.0, "momentum_style": style}
    a, _ = _run_lars(ps0, grads, LRS, cfg, foreach)
    b, _ = _run_lars(ps0, [[g * 1024 for g in gs] for gs in grads], LRS, cfg, foreach)
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) <= 1e-13
    # and the adaptation is really on with weight_decay 0 (differs from plain SGD)
    c, _ = _run_lars(ps0, grads, LRS, {**cfg, "lars_adapt": False}, foreach)
    assert max((x - y).abs().max().item() for x, y in zip(a, c)) > 1e-2


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-14), (torch.float32, 1e-6), (torch.bfloat16, 2e-2),
                                       (torch.float16, 2e-3)])
def test_foreach_equals_single_tensor(variant, dtype, tol):
    cfg = {**BASE, **VARIANTS[variant]}
    ps0, grads = _make(SHAPES, dtype=dtype, zero_idx=(3,))
    grads_before = [[g.clone() for g in gs] for gs in grads]
    # keep the gradient tensors themselves attached, to check they are not modified
    outs = []
    for foreach in (True, False):
        ps = [p.clone().requires_grad_() for p in ps0]
        hp = {k: v for k, v in cfg.items() if k != "lars_adapt"}
        opt = LARS([{"params": ps, "lars_adapt": cfg["lars_adapt"]}], lr=LRS[0], foreach=foreach, **hp)
        for lr, gs in zip(LRS, grads):
            opt.param_groups[0]["lr"] = lr
            for p, g in zip(ps, gs):
                p.grad = g
            opt.step()
            for p in ps:
                assert p.dtype == dtype and torch.isfinite(p).all()
        outs.append(([p.detach() for p in ps],
                     [opt.state[p].get("momentum_buffer") for p in ps]))
    for gs, gb in zip(grads, grads_before):
        for g, g0 in zip(gs, gb):
            assert torch.equal(g, g0)  # p.grad never modified
    (pa, ba), (pb, bb) = outs
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    if cfg["momentum"] != 0:
        assert all(b is not None for b in ba + bb)
        assert all(torch.equal(x, y) for x, y in zip(ba, bb))


def test_foreach_none_follows_torch_default():
    from torch.optim.optimizer import _default_to_fused_or_foreach
    p = torch.zeros(2, requires_grad=True)
    _, expected = _default_to_fused_or_foreach([p], differentiable=False, use_fused=False)
    # foreach=None runs whichever path torch would pick; results equal both explicit paths here
    ps0, grads = _make(SHAPES)
    a, _ = _run_lars(ps0, grads, LRS, {**BASE}, None)
    b, _ = _run_lars(ps0, grads, LRS, {**BASE}, expected)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert expected is False  # CPU tensors: torch picks the single-tensor path


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip(foreach):
    cfg = {**BASE, "nesterov": True, "momentum_style": "sgd"}
    ps0, grads = _make(SHAPES)
    full, _ = _run_lars(ps0, grads, LRS, cfg, foreach)

    hp = {k: v for k, v in cfg.items() if k != "lars_adapt"}
    ps = [p.clone().requires_grad_() for p in ps0]
    opt = LARS(ps, lr=LRS[0], foreach=foreach, **hp)
    for lr, gs in zip(LRS[:2], grads[:2]):
        opt.param_groups[0]["lr"] = lr
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    assert set(sd["state"][0]) == {"momentum_buffer"}
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    del opt, ps
    opt2 = LARS(ps2, lr=123.0, foreach=foreach)  # hyper-parameters come from the state dict
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["nesterov"] is True and opt2.param_groups[0]["momentum_style"] == "sgd"
    for lr, gs in zip(LRS[2:], grads[2:]):
        opt2.param_groups[0]["lr"] = lr
        for p, g in zip(ps2, gs):
            p.grad = g.clone()
        opt2.step()
    assert all(torch.equal(x, y.detach()) for x, y in zip(full, ps2))


def test_lr_scheduler_drives_lr():
    ps0, grads = _make(SHAPES)
    ps = [p.clone().requires_grad_() for p in ps0]
    opt = LARS(ps, lr=1.0, momentum=0.9, weight_decay=5e-3, eta=0.02, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: LRS[e] if e < len(LRS) else 0.0)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        sched.step()
    expected, _ = _run_lars(ps0, grads, LRS, {**BASE}, True)
    assert all(torch.equal(x, y.detach()) for x, y in zip(expected, ps))


def test_grad_none_skipped_and_sparse_rejected():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = LARS([a, b], lr=0.1)
    a.grad = torch.full((3,), 0.5)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(3)) and "momentum_buffer" in opt.state[a]

    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        LARS(emb.parameters(), lr=0.1).step()


@pytest.mark.parametrize("foreach", [False, True])
def test_grad_scaler_skips_inf_step(foreach):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    twin = copy.deepcopy(model)
    opt = LARS(model.parameters(), lr=0.1, foreach=foreach)
    twin_opt = LARS(twin.parameters(), lr=0.1, foreach=foreach)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    x = torch.randn(16, 4, dtype=F64)

    # a normal scaled step equals an unscaled step (power-of-two scale: exact)
    for mdl, o, scale in ((model, opt, True), (twin, twin_opt, False)):
        o.zero_grad()
        loss = mdl(x).pow(2).mean()
        if scale:
            scaler.scale(loss).backward()
            scaler.step(o)
            scaler.update()
        else:
            loss.backward()
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))

    params_before = [p.detach().clone() for p in model.parameters()]
    bufs_before = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(model(x).pow(2).mean()).backward()
    next(model.parameters()).grad[0, 0] = float("inf")  # injected overflow
    scale_before = scaler.get_scale()
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale_before  # GradScaler saw the inf
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), params_before))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], b) for p, b in zip(model.parameters(), bufs_before))


def _small_resnet_like():
    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.short(x))

    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         Block(4, 8, 2), nn.GroupNorm(2, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.LayerNorm(8), nn.Linear(8, 10))


def test_lars_param_groups_excludes_exactly_ndim_le_1():
    model = _small_resnet_like()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    groups = lars_param_groups(model, weight_decay=5e-4)
    assert len(groups) == 2
    adapted, excluded = groups
    assert adapted["weight_decay"] == 5e-4 and adapted["lars_adapt"] is True
    assert excluded["weight_decay"] == 0.0 and excluded["lars_adapt"] is False
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    want_ex = {id(p) for p in model.parameters() if p.requires_grad and p.ndim <= 1}
    want_ad = {id(p) for p in model.parameters() if p.requires_grad and p.ndim > 1}
    assert ids(excluded["params"]) == want_ex and len(want_ex) == 13  # 4 BN, GN, LN (weight+bias each), linear bias
    assert ids(adapted["params"]) == want_ad and len(want_ad) == 4    # 3 convs (1 frozen) + linear weight
    assert id(frozen) not in ids(adapted["params"]) | ids(excluded["params"])
    # the groups feed LARS and the excluded group behaves as plain momentum SGD without decay
    opt = LARS(groups, lr=0.1, weight_decay=1.0)
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[1]["lars_adapt"] is False
    bias = model[-1].bias
    before = bias.detach().clone()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    g = bias.grad.clone()
    opt.step()
    torch.testing.assert_close(bias.detach(), before - 0.1 * g, rtol=0, atol=1e-7)
    # empty groups are omitted
    only_bn = lars_param_groups(nn.BatchNorm1d(3), weight_decay=5e-4)
    assert len(only_bn) == 1 and only_bn[0]["lars_adapt"] is False


@pytest.mark.parametrize("kwargs,name", [
    ({"lr": -0.1}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.1}, "momentum"),
    ({"eta": 0.0}, "eta"),
    ({"eta": -1e-3}, "eta"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"eps": -1e-8}, "eps"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov"),
    ({"momentum_style": "timm"}, "momentum_style"),
    ({"norm_mode": "layer"}, "norm_mode"),
])
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
    p = torch.zeros(2, requires_grad=True)
    args = {"lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        LARS([p], **args)


@pytest.mark.parametrize("override,name", [
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"lr": -1.0}, "lr"),
    ({"momentum": 1.5}, "momentum"),
    ({"lars_adapt": "yes"}, "lars_adapt"),
    ({"norm_mode": "foo"}, "norm_mode"),
])
def test_invalid_group_overrides(override, name):
    p, q = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=rf"\b{name}\b.*param group 1"):
        LARS([{"params": [p]}, {"params": [q], **override}], lr=0.1)
    opt = LARS([p], lr=0.1)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        opt.add_param_group({"params": [q], **override})


def test_torch_compile_of_step():
    try:
        import torch._dynamo  # noqa: F401
        torch._dynamo.reset()
    except Exception as e:  # pragma: no cover - depends on the platform
        pytest.skip(f"torch.compile unavailable here: {e!r}")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    twin = copy.deepcopy(model)
    opt = LARS(model.parameters(), lr=0.1, foreach=True)
    twin_opt = LARS(twin.parameters(), lr=0.1, foreach=True)

    # aot_eager: full Dynamo capture + AOTAutograd functionalisation without a C
    # compiler, so the test stays fast; fullgraph=True fails on any graph break,
    # e.g. a host synchronisation such as .item() or a branch on a tensor value.
    @torch.compile(backend="aot_eager", fullgraph=True)
    def compiled_step():
        opt.step()

    x = torch.randn(16, 4)
    w0 = model[0].weight.detach().clone()
    for _ in range(3):
        for mdl, step in ((model, compiled_step), (twin, twin_opt.step)):
            mdl.zero_grad()
            mdl(x).pow(2).sum().backward()
            step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (model[0].weight - w0).abs().max() > 1e-4  # the compiled step did update
