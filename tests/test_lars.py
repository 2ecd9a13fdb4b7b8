"""Tests for lars.py (CPU, small tensors; one CUDA test skips cleanly without a GPU)."""

import copy
import dataclasses
import os
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lars import LARS, LarsOptions, lars, lars_param_groups  # noqa: E402

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
            un = gn if cfg["norm_mode"] == "paper" else dn
            denominator = gn + wd * wn + eps if cfg["norm_mode"] == "paper" else dn + eps
            if cfg["zero_norm_trust"] == "one" and not (wn > 0 and un > 0):
                lam = 1.0
            else:
                lam = eta * wn / denominator
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
            norm_mode="paper", trust_clip=False, maximize=False, lars_adapt=True, zero_norm_trust="one")
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
    "momentum0_sgd_maximize": {"momentum": 0.0, "momentum_style": "sgd", "maximize": True},
    "formula": {"zero_norm_trust": "formula"},
    "formula_update_trust_clip_sgd": {"zero_norm_trust": "formula", "norm_mode": "update", "trust_clip": True,
                                      "momentum_style": "sgd"},
    "formula_nesterov_eps": {"zero_norm_trust": "formula", "nesterov": True, "eps": 1e-3},
}
SHAPES = [(4, 3, 3, 3), (4,), (6, 4), (6,), (5,), (26, 25)]
LRS = [0.5, 0.1, 2.0, 0.05, 1.0]  # changes every step; some below and above lambda


def _make(shapes, dtype=F64, seed=0, zero_idx=()):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    for i in zero_idx:
        ps[i].zero_()
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes] for _ in LRS]
    return ps, grads


def _run_lars(ps0, grads, lrs, cfg, foreach, dtype=None, device="cpu"):
    ps = [p.to(device, copy=True).requires_grad_() for p in ps0]
    hp = {k: v for k, v in cfg.items() if k != "lars_adapt"}
    opt = LARS([{"params": ps, "lars_adapt": cfg["lars_adapt"]}], lr=lrs[0], foreach=foreach, **hp)
    for lr, gs in zip(lrs, grads):
        opt.param_groups[0]["lr"] = lr
        for p, g in zip(ps, gs):
            p.grad = g.to(device, copy=True)
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
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_foreach_equals_single_tensor(variant, dtype):
    """Same bits from both paths, in every variant and dtype."""
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


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_factors_repeated_over_elements_give_the_same_bits(monkeypatch, variant, dtype):
    """The accelerator route (per-tensor factors repeated over each tensor's elements, so that the
    _foreach ops are fused) forced on the CPU: same bits as the 0-d route, with a channels-last
    tensor among them; with a tensor that is not dense it falls back to 0-d factors."""
    import lars as lars_module
    cfg = {**BASE, **VARIANTS[variant]}
    shapes = [*SHAPES, (4, 3, 2, 2)]
    outs = []
    real_repeat = torch.repeat_interleave
    for expand, dense in ((False, True), (True, True), (False, False), (True, False)):
        monkeypatch.setattr(lars_module, "SCALAR_FACTOR_DEVICES", ("cpu",) if not expand else ())
        repeats = []
        monkeypatch.setattr(torch, "repeat_interleave", lambda *a, **k: repeats.append(1) or real_repeat(*a, **k))
        ps0, grads = _make(shapes, dtype=dtype, zero_idx=(3,))
        ps0[-1] = ps0[-1].contiguous(memory_format=torch.channels_last)
        for gs in grads:
            gs[-1] = gs[-1].contiguous(memory_format=torch.channels_last)
        ps = [p.clone(memory_format=torch.preserve_format) for p in ps0]
        if not dense:
            ps[0] = torch.cat([ps[0], ps[0]], dim=-1)[..., ::2]  # strided: no flat view fits it
        hp = {k: v for k, v in cfg.items() if k != "lars_adapt"}
        opt = LARS([{"params": [p.requires_grad_() for p in ps], "lars_adapt": cfg["lars_adapt"]}],
                   lr=LRS[0], foreach=True, **hp)
        for lr, gs in zip(LRS, grads):
            opt.param_groups[0]["lr"] = lr
            for p, g in zip(ps, gs):
                p.grad = g
            opt.step()
        outs.append([p.detach() for p in ps] + [opt.state[p].get("momentum_buffer", torch.zeros(())) for p in ps])
        # the flat route when the factors differ per tensor, unless a tensor is not dense (bfloat16 parameters
        # are updated through dense float32 copies)
        assert (len(repeats) == len(LRS)) == (expand and cfg["lars_adapt"] and (dense or dtype != torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))
    assert all(torch.equal(a, b) for a, b in zip(outs[2], outs[3]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_follows_float64_to_float32_rounding(variant):
    cfg = {**BASE, **VARIANTS[variant]}
    ps0, grads = _make(SHAPES, dtype=torch.float32, zero_idx=(3,))
    got, _ = _run_lars(ps0, grads, LRS, cfg, True)
    ref, _ = _run_lars([p.double() for p in ps0], [[g.double() for g in gs] for gs in grads], LRS, cfg, True)
    for x, exact in zip(got, ref):
        torch.testing.assert_close(x.double(), exact, rtol=1e-5, atol=1e-6)


def test_foreach_none_picks_multi_tensor_on_cpu():
    # the functional core reports its buckets: one per device and dtype (multi-tensor), one per tensor (single)
    ps0, grads = _make(SHAPES)
    ps = [p.clone() for p in ps0]
    buckets = lars(ps, grads[0], [None] * len(ps), lr=0.1, options=LarsOptions(), foreach=None)
    assert [indices for indices, _ in buckets] == [list(range(len(SHAPES)))]
    single = [p.clone() for p in ps0]
    buckets = lars(single, grads[0], [None] * len(ps), lr=0.1, options=LarsOptions(), foreach=False)
    assert [indices for indices, _ in buckets] == [[i] for i in range(len(SHAPES))]
    assert all(torch.equal(x, y) for x, y in zip(ps, single))


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


def test_state_dict_without_zero_norm_trust_loads():
    # checkpoints written before the option existed lack the key
    p = torch.ones(2, requires_grad=True)
    opt = LARS([p], lr=0.1)
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        del group["zero_norm_trust"]
    opt2 = LARS([p], lr=0.1)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["zero_norm_trust"] == "one"
    p.grad = torch.ones(2)
    opt2.step()


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


# --------------------------------------------------------------------------- #
# zero_norm_trust
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("foreach", [False, True])
def test_zero_initialised_bias_never_moves_with_formula(foreach):
    results = {}
    for mode in ("one", "formula"):
        torch.manual_seed(0)  # same initialisation in both modes
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        nn.init.zeros_(model[2].bias)
        opt = LARS(model.parameters(), lr=1.0, eta=0.1, foreach=foreach, zero_norm_trust=mode)
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
        for _ in range(4):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            assert model[2].bias.grad.abs().max() > 0
            opt.step()
        results[mode] = model[2].bias.detach().clone()
    assert torch.equal(results["formula"], torch.zeros(2))  # lambda = 0 * eta / ||g|| = 0 at every step
    assert results["one"].abs().min() > 0                   # lambda = 1 for ||w|| == 0


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("style", ["paper", "sgd"])
def test_formula_zero_weight_and_grad_gives_nan_without_raising(foreach, style):
    w = torch.zeros(3, requires_grad=True)
    other = torch.ones(3, requires_grad=True)
    opt = LARS([w, other], lr=0.1, foreach=foreach, zero_norm_trust="formula", momentum_style=style)
    w.grad, other.grad = torch.zeros(3), torch.full((3,), 0.5)
    opt.step()  # no exception: 0 / 0 is NaN, as in the original formula
    assert torch.isnan(w).all() and torch.isnan(opt.state[w]["momentum_buffer"]).all()
    assert torch.isfinite(other).all()  # other tensors unaffected
    with_one = torch.zeros(3, requires_grad=True)
    with_one.grad = torch.zeros(3)
    LARS([with_one], lr=0.1, foreach=foreach).step()
    assert torch.equal(with_one.detach(), torch.zeros(3))


# --------------------------------------------------------------------------- #
# Half precision: the update is computed in float32
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("style", ["paper", "sgd"])
@pytest.mark.parametrize("grad_value", [1e2, 1e3, 1e4, 3e4])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 4e-2)])
def test_half_precision_update_matches_float64(dtype, tol, grad_value, style, foreach):
    # small weights, large gradients: lr * lambda ~ 1e-7 .. 3e-10, below float16's range
    # (a float16 scale of the update would be 0 or far off); lr = 100 makes the update
    # ~10% of w, so the rounding of w itself stays below the tolerance
    w0 = (torch.tensor([1.0, -2.0, 3.0, -4.0]) * 1e-2).to(dtype)
    g = (torch.tensor([1.0, 1.0, -1.0, 1.0]) * grad_value).to(dtype)
    runs = {}
    for dt in (dtype, torch.float64):
        w = w0.to(dt).clone().requires_grad_()
        opt = LARS([w], lr=100.0, foreach=foreach, momentum_style=style)
        for _ in range(2):
            w.grad = g.to(dt)
            opt.step()
        runs[dt] = (w.detach().double() - w0.double(), opt.state[w]["momentum_buffer"].double())
    (upd, buf), (upd_ref, buf_ref) = runs[dtype], runs[torch.float64]
    assert upd_ref.abs().min() > 1e-4
    assert ((upd - upd_ref).abs() / upd_ref.abs()).max() <= tol
    assert ((buf - buf_ref).abs() / buf_ref.abs()).max() <= tol


# --------------------------------------------------------------------------- #
# Complex parameters: pairs of reals, norms of the complex values
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("variant", ["paper", "sgd", "nesterov_sgd", "norm_update_maximize", "momentum0"])
def test_complex_params_equal_their_real_view(variant, foreach):
    cfg = {**BASE, **VARIANTS[variant]}
    hp = {k: v for k, v in cfg.items() if k != "lars_adapt"}
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,)]
    zs = [torch.randn(s, dtype=torch.complex128, generator=gen) for s in shapes]
    gs = [[torch.randn(s, dtype=torch.complex128, generator=gen) for s in shapes] for _ in LRS]
    cplx = [z.clone().requires_grad_() for z in zs]
    real = [torch.view_as_real(z).clone().requires_grad_() for z in zs]
    opt_c = LARS(cplx, lr=LRS[0], foreach=foreach, **hp)
    opt_r = LARS(real, lr=LRS[0], foreach=foreach, **hp)
    for lr, grads in zip(LRS, gs):
        for opt, ps, conv in ((opt_c, cplx, lambda t: t), (opt_r, real, torch.view_as_real)):
            opt.param_groups[0]["lr"] = lr
            for p, g in zip(ps, grads):
                p.grad = conv(g).clone()
            opt.step()
    for c, r in zip(cplx, real):
        assert torch.equal(torch.view_as_real(c.detach()), r.detach())
    assert torch.linalg.vector_norm(cplx[0]) != torch.linalg.vector_norm(zs[0])  # it moved


# --------------------------------------------------------------------------- #
# Safety: groups validated before they are added, tensor lr refused at step()
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("override,name", [
    ({"momentum": 1.0}, "momentum"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov"),
    ({"momentum_style": "timm"}, "momentum_style"),
    ({"zero_norm_trust": "zero"}, "zero_norm_trust"),
])
def test_rejected_group_leaves_param_groups_unchanged(override, name):
    p, q = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = LARS([p], lr=0.1)
    with pytest.raises(ValueError, match=rf"\b{name}\b.*param group 1"):
        opt.add_param_group({"params": [q], **override})
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["params"] == [p]
    p.grad, q.grad = torch.full((2,), 0.5), torch.full((2,), 0.5)
    opt.step()  # the old groups still work
    assert not torch.equal(p.detach(), torch.ones(2)) and torch.equal(q.detach(), torch.ones(2))
    opt.add_param_group({"params": [q]})  # and q can still be added properly
    assert len(opt.param_groups) == 2


def test_tensor_lr_refused_at_construction_and_at_step():
    p = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError) as at_init:
        LARS([p], lr=torch.tensor(0.1))
    opt = LARS([p], lr=0.1)
    opt.param_groups[0]["lr"] = torch.tensor(0.1)
    p.grad = torch.ones(2)
    with pytest.raises(ValueError) as at_step:
        opt.step()
    assert str(at_init.value) == "Invalid lr: tensor(0.1000) (expected a Python float >= 0)"
    assert str(at_step.value) == "Invalid lr in param group 0: tensor(0.1000) (expected a Python float >= 0)"
    assert torch.equal(p.detach(), torch.ones(2))


def test_changed_params_and_grads_between_steps():
    # the tensors with a gradient change from step to step, and a parameter is added to the group in place
    ps0, grads = _make(SHAPES)
    ref = [p.clone().requires_grad_() for p in ps0]
    got = [p.clone().requires_grad_() for p in ps0]
    opts = [LARS(ps, lr=0.1, foreach=fe, weight_decay=5e-3, eta=0.02) for ps, fe in ((ref, False), (got, True))]
    for step, gs in enumerate(grads):
        for ps in (ref, got):
            for i, (p, g) in enumerate(zip(ps, gs)):
                p.grad = None if (i + step) % 3 == 0 else g.clone()
        for opt in opts:
            opt.step()
        if step == 2:  # a param added to the group's list in place
            for ps, opt in zip((ref, got), opts):
                extra = torch.ones(3, dtype=F64, requires_grad=True)
                ps.append(extra)
                opt.param_groups[0]["params"].append(extra)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))


@pytest.mark.parametrize("compiled", [False, True])
def test_a_step_under_inference_mode_leaves_no_inference_tensor_behind(monkeypatch, compiled):
    # the tensors step() keeps between steps (factor vector, lr tensor) are made by the first step of a layout:
    # under inference_mode they would be inference tensors, which a later normal step may not write
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)  # the update "compiled" by a stub
    p, q = torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    opt = LARS([p, q], lr=0.1, momentum=0.9)
    if compiled:
        opt.compile()
    p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
    opt.step()
    q.grad = None  # another set of tensors with a gradient: a new layout, first used under inference_mode
    with torch.inference_mode():
        opt.step()
    before = p.detach().clone()
    opt.step()
    assert not torch.equal(p.detach(), before)


# --------------------------------------------------------------------------- #
# CUDA: same bits from both paths (skipped without a GPU)
# --------------------------------------------------------------------------- #
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", ["paper", "sgd", "nesterov_paper", "norm_update_maximize", "trust_clip",
                                     "no_adapt", "wd0", "momentum0", "formula"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_foreach_equals_single_tensor_on_cuda(variant, dtype):
    cfg = {**BASE, **VARIANTS[variant]}
    ps0, grads = _make(SHAPES, dtype=dtype, zero_idx=(3,))
    outs = []
    for foreach in (True, False):
        ps, opt = _run_lars(ps0, grads, LRS, cfg, foreach, device="cuda")
        outs.append([p.cpu() for p in ps] + [opt.state[p].get("momentum_buffer", torch.zeros(())).cpu()
                                             for p in ps])
    assert all(torch.equal(a, b) for a, b in zip(*outs))


# --------------------------------------------------------------------------- #
# Compiled step: LARS.compile()
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_compiled_step_equals_eager_without_recompiles():
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    twin = copy.deepcopy(model)
    opt = LARS(lars_param_groups(model, weight_decay=5e-4), lr=0.5, eta=0.02)
    opt.compile()
    twin_opt = LARS(lars_param_groups(twin, weight_decay=5e-4), lr=0.5, eta=0.02)
    x = torch.randn(16, 4)
    w0 = model[0].weight.detach().clone()
    for step, lr in enumerate([0.5, 0.3, 0.2, 0.1, 0.05]):  # lr changes every step, as under a scheduler
        for mdl, o in ((model, opt), (twin, twin_opt)):
            for group in o.param_groups:
                group["lr"] = lr
            mdl.zero_grad()
            mdl(x).pow(2).sum().backward()
            if o is opt and step > 0:
                with torch._dynamo.config.patch(error_on_recompile=True):
                    o.step()
            else:
                o.step()
        if step == 0:
            graphs_after_first_step = counters["stats"]["unique_graphs"]
    assert graphs_after_first_step == 2  # one graph per param group, compiled at the first step
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert (model[0].weight - w0).abs().max() > 1e-3  # the compiled step did update


def _steps(params, opt, grads_per_step):
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.slow
def test_compiled_configurations_each_run_their_own_graph():
    # two optimizers with different momentum, compiled in one process, must not run each other's graph
    torch.manual_seed(0)
    w0 = [torch.randn(8, 4), torch.randn(8)]
    grads_per_step = [[torch.randn_like(w) for w in w0] for _ in range(3)]
    for momentum in (0.9, 0.5):
        results = []
        for compiled in (False, True):
            params = [w.clone().requires_grad_() for w in w0]
            opt = LARS(params, lr=0.3, momentum=momentum, eta=0.02)
            if compiled:
                opt.compile()
            results.append(_steps(params, opt, grads_per_step))
        for eager, compiled in zip(*results):
            torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["trust_clip_sgd_eps", "norm_update_maximize", "formula_update_trust_clip_sgd",
                                     "nesterov_paper"])
def test_compiled_step_equals_eager_in_variants(variant):
    # the variants whose factor takes lr as a tensor or the sign (clipping by the lr tensor, maximize, the update
    # norm, no zero-norm case), with a zero weight among the tensors and the lr changing every step
    cfg = {**BASE, **VARIANTS[variant]}
    hp = {k: v for k, v in cfg.items() if k != "lars_adapt"}
    ps0, grads = _make(SHAPES, dtype=torch.float32, zero_idx=(3,))
    results = []
    for compiled in (False, True):
        params = [p.clone().requires_grad_() for p in ps0]
        opt = LARS(params, lr=LRS[0], **hp)
        if compiled:
            opt.compile()
        for lr, gs in zip(LRS, grads):
            opt.param_groups[0]["lr"] = lr
            _steps(params, opt, [gs])
        results.append([p.detach().clone() for p in params])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert not torch.equal(results[1][0], ps0[0])  # it moved


@pytest.mark.slow
def test_compiled_step_follows_a_hyper_parameter_changed_between_steps():
    # a momentum changed on the group must switch to the update compiled for it, and lr is read at every step
    torch.manual_seed(2)
    w0 = [torch.randn(8, 4), torch.randn(8)]
    grads_per_step = [[torch.randn_like(w) for w in w0] for _ in range(4)]
    results = []
    for compiled in (False, True):
        params = [w.clone().requires_grad_() for w in w0]
        opt = LARS(params, lr=0.3, momentum=0.9, eta=0.02)
        if compiled:
            opt.compile()
        for step, grads in enumerate(grads_per_step):
            opt.param_groups[0]["momentum"] = 0.9 if step < 2 else 0.5
            opt.param_groups[0]["lr"] = 0.3 / (step + 1)
            _steps(params, opt, [grads])
        results.append([p.detach().clone() for p in params])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_compiled_step_recompiles_when_a_tensor_layout_changes():
    # the tensor guards are kept: a parameter whose strides change (same shape, same configuration) gets a
    # new graph instead of running the old one's indexing on the new memory layout (its gradient stays
    # contiguous, so the old graph would pair the wrong elements)
    torch.manual_seed(1)
    w0 = torch.randn(6, 5)
    grads = [torch.randn(6, 5) for _ in range(4)]
    results = []
    for compiled in (False, True):
        p = w0.clone().requires_grad_()
        opt = LARS([p], lr=0.5, eta=0.05)
        if compiled:
            opt.compile()
        _steps([p], opt, [grads[:1]])
        with torch.no_grad():  # same values, transposed memory layout
            p.data = p.data.t().contiguous().t()
            opt.state[p]["momentum_buffer"] = opt.state[p]["momentum_buffer"].t().contiguous().t()
        results.append(_steps([p], opt, [[g] for g in grads[1:]]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)




@pytest.mark.parametrize("user_options", [{}, {"dynamic": None}, {"backend": "eager"}, {"mode": "max-autotune"}])
def test_compile_options_go_to_torch_compile(monkeypatch, user_options):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    p = torch.ones(3, requires_grad=True)
    opt = LARS([p], lr=0.1)
    opt.compile(**user_options)
    p.grad = torch.ones(3)
    opt.step()
    assert seen == [{"fullgraph": True, "isolate_recompiles": True, "dynamic": False, **user_options}]
    assert not torch.equal(p.detach(), torch.ones(3))


def test_compile_on_a_torch_without_isolate_recompiles(monkeypatch):
    # torch 2.11's torch.compile has no isolate_recompiles and rejects it (found on the GPU machine)
    seen = []

    def compile_of_torch_2_11(model=None, *, fullgraph=False, dynamic=None, backend="inductor", mode=None,
                              options=None, disable=False):
        seen.append(dict(fullgraph=fullgraph, dynamic=dynamic, backend=backend))
        return model

    monkeypatch.setattr(torch, "compile", compile_of_torch_2_11)
    p = torch.ones(3, requires_grad=True)
    opt = LARS([p], lr=0.1)
    opt.compile(backend="eager")
    p.grad = torch.ones(3)
    opt.step()
    assert seen == [{"fullgraph": True, "dynamic": False, "backend": "eager"}]
    assert not torch.equal(p.detach(), torch.ones(3))


def test_compiled_configurations_past_the_limit_run_eagerly(monkeypatch):
    # a momentum schedule compiles a function per value: past 8 in one optimizer new values run eagerly
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compiled.append(fn) or fn)
    p = torch.ones(3, requires_grad=True)
    opt = LARS([p], lr=0.1)
    opt.compile()
    for k in range(9):
        opt.param_groups[0]["momentum"] = 0.9 - 0.01 * k
        p.grad = torch.ones(3)
        if k == 8:
            with pytest.warns(UserWarning, match="runs eagerly"):
                opt.step()
        else:
            opt.step()
    assert len(compiled) == 8


@pytest.mark.slow
def test_compiled_step_recompiles_when_two_parameters_stop_sharing_a_gradient():
    # a gradient tensor passed twice is an aliasing Dynamo guards (DUPLICATE_INPUT); the portable guard
    # set drops it, LARS.compile keeps it: the graph traced with the shared tensor must not run later
    torch.manual_seed(2)
    w0 = [torch.randn(5), torch.randn(5)]
    shared, g0, g1 = torch.randn(5), torch.randn(5), torch.randn(5)
    results = []
    for compiled in (False, True):
        params = [w.clone().requires_grad_() for w in w0]
        opt = LARS(params, lr=0.5, eta=0.05, weight_decay=0.0)
        if compiled:
            opt.compile()
        params[0].grad = params[1].grad = shared  # one tensor, passed twice
        opt.step()
        params[0].grad, params[1].grad = g0, g1
        opt.step()
        results.append([p.detach().clone() for p in params])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_compiled_step_with_every_layout_equals_eager():
    # a tail after full vector rows, channels-last, transposed, strided (not dense) and a small tensor in one
    # graph, against the eager step (the compiled norms sum in another order: close, not equal)
    torch.manual_seed(3)
    w0 = [torch.randn(4099), torch.randn(16, 8, 3, 3).to(memory_format=torch.channels_last),
          torch.randn(64, 33).t(), torch.randn(40, 64)[:, ::2], torch.randn(8)]
    assert not w0[3].is_contiguous() and not w0[3].is_contiguous(memory_format=torch.channels_last)
    grads_per_step = [[torch.randn_like(w) for w in w0] for _ in range(3)]
    results = []
    for compiled in (False, True):
        # same strides as w (clone would make the strided one contiguous)
        params = [torch.empty_strided(w.shape, w.stride()).copy_(w).requires_grad_() for w in w0]
        opt = LARS(params, lr=0.5, eta=0.02, weight_decay=5e-4)
        if compiled:
            opt.compile()
        results.append(_steps(params, opt, grads_per_step))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamic,expect_static", [(False, True), (None, False)], ids=["default", "automatic"])
def test_compiled_groups_get_static_shapes(dynamic, expect_static):
    # with torch.compile's automatic dynamic shapes the second configuration traced (here the second param
    # group: other shapes) got a graph with symbolic sizes, ~2x slower: LARS.compile() makes shapes static
    import torch._dynamo
    torch._dynamo.reset()
    graphs_static = []

    def backend(gm, example_inputs):
        graphs_static.append(all(isinstance(x, torch.Tensor) and not any(
            isinstance(size, torch.SymInt) for size in x.shape) for x in example_inputs))
        return gm.forward

    params = [torch.randn(6, 5, requires_grad=True), torch.randn(7, 3, requires_grad=True)]
    opt = LARS([{"params": [params[0]]}, {"params": [params[1]]}], lr=0.1)
    opt.compile(backend=backend, **({} if dynamic is False else {"dynamic": dynamic}))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert len(graphs_static) == 2 and graphs_static[0]
    assert graphs_static[1] is expect_static


# --------------------------------------------------------------------------- #
# trust_ratio_stats(): the step's own norms and trust ratios
# --------------------------------------------------------------------------- #
def _expected_stats(ws, gs, lr, cfg):
    """(||w||, denominator norm, lambda) per tensor in float64, by the formulas of the class docstring."""
    out = []
    for w, g in zip(ws, gs):
        w, g = w.double(), g.double() * (-1.0 if cfg["maximize"] else 1.0)
        w_norm = w.norm()
        u_norm = (g + cfg["weight_decay"] * w).norm() if cfg["norm_mode"] == "update" else g.norm()
        denominator = u_norm + (cfg["weight_decay"] * w_norm if cfg["norm_mode"] == "paper" else 0.0) + cfg["eps"]
        ratio = cfg["eta"] * w_norm / denominator
        if cfg["zero_norm_trust"] == "one" and (w_norm == 0 or u_norm == 0):
            ratio = torch.tensor(1.0, dtype=F64)
        if cfg["trust_clip"]:
            ratio = torch.clamp(ratio, max=lr) / lr
        out.append((w_norm, u_norm, ratio))
    return out


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("variant", ["paper", "norm_update_maximize", "trust_clip_sgd_eps", "momentum0", "formula"])
def test_trust_ratio_stats_are_the_step_own_values(variant, foreach):
    cfg = {**BASE, **VARIANTS[variant]}
    hp = {k: v for k, v in cfg.items() if k != "lars_adapt"}
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float32, torch.float16, torch.float64]
    ps0, grads = _make(SHAPES, zero_idx=(3,))
    ps = [p.to(d).requires_grad_() for p, d in zip(ps0, dtypes)]
    bias = torch.ones(3, requires_grad=True)
    opt = LARS([{"params": ps}, {"params": [bias], "lars_adapt": False}], lr=0.5, foreach=foreach, **hp)
    assert opt.trust_ratio_stats() == []
    for step in range(2):
        before = [p.detach().clone() for p in ps]
        for i, (p, g) in enumerate(zip(ps, grads[step])):
            p.grad = None if (step == 1 and i == 1) else g.to(p.dtype)
        bias.grad = torch.ones(3)
        opt.step()
        stats = opt.trust_ratio_stats()
        # one entry per device/dtype of the adapted group with a gradient, in order of first appearance
        with_grad = [i for i in range(len(ps)) if ps[i].grad is not None]
        keys = list(dict.fromkeys(ps[i].dtype for i in with_grad))
        assert [entry[0][0].dtype for entry in stats] == keys
        seen = []
        for params, w_norms, g_norms, ratios in stats:
            assert all(q.dtype == params[0].dtype for q in params)
            want = torch.float32 if params[0].dtype in (torch.float16, torch.bfloat16) else params[0].dtype
            for t in (w_norms, g_norms, ratios):
                assert t.dim() == 1 and len(t) == len(params) and t.dtype == want and t.device == params[0].device
            for k, q in enumerate(params):
                i = next(j for j in with_grad if ps[j] is q)
                seen.append(i)
                exact = _expected_stats([before[i]], [q.grad], 0.5, cfg)[0]
                for got, value in zip((w_norms[k], g_norms[k], ratios[k]), exact):
                    torch.testing.assert_close(got.double(), value, rtol=2e-3 if want == torch.float32 else 1e-12,
                                               atol=0, equal_nan=True)
        assert sorted(seen) == with_grad


def test_trust_ratio_stats_need_no_host_sync(monkeypatch):
    reads = []
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, **k: reads.append(1) or _real(self, *a, **k))
    ps0, grads = _make(SHAPES)
    ps = [p.clone().requires_grad_() for p in ps0]
    for foreach in (True, False):
        opt = LARS(ps, lr=0.1, foreach=foreach)
        for p, g in zip(ps, grads[0]):
            p.grad = g
        opt.step()
        stats = opt.trust_ratio_stats()
        assert len(stats) == 1 and len(stats[0][0]) == len(ps)
    assert reads == []


@pytest.mark.slow
def test_trust_ratio_stats_under_compile():
    ps0, grads = _make(SHAPES, dtype=torch.float32)
    runs = []
    for compiled in (False, True):
        ps = [p.clone().requires_grad_() for p in ps0]
        adapted = [p for p in ps if p.ndim > 1]
        groups = [{"params": adapted}, {"params": [p for p in ps if p.ndim <= 1], "lars_adapt": False}]
        opt = LARS(groups, lr=0.3, eta=0.02, weight_decay=5e-3)
        if compiled:
            opt.compile()
        _steps(ps, opt, grads[:2])
        stats = opt.trust_ratio_stats()
        assert len(stats) == 1 and all(a is b for a, b in zip(stats[0][0], adapted, strict=True))
        runs.append(stats[0])
    eager, compiled = runs
    for a, b in zip(eager[1:], compiled[1:]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_options_are_defined_once_and_unknown_ones_refused():
    p = torch.ones(2, requires_grad=True)
    opt = LARS([p], lr=0.1)
    assert {k: v for k, v in opt.defaults.items() if k not in ("lr", "foreach", "differentiable")} == \
        dataclasses.asdict(LarsOptions())
    with pytest.raises(TypeError, match="momemtum"):
        LARS([p], lr=0.1, momemtum=0.9)
    with pytest.raises(TypeError):
        LARS([p], 0.1, 0.9)  # the options are keyword-only
