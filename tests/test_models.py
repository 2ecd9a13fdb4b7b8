import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_archs_registry():
    assert models.ARCHS == ("ResNet18", "ResNet34", "ResNet50", "ResNet8", "ResNet20", "AirbenchNet")


@pytest.mark.parametrize(
    "arch, expected",
    # Reference counts of the standard CIFAR ResNets (kuangliu/pytorch-cifar).
    [("ResNet18", 11_173_962), ("ResNet34", 21_282_122), ("ResNet50", 23_520_842)],
)
def test_standard_width_parameter_count(arch, expected):
    assert num_parameters(models.build(arch, num_classes=10, width=64)) == expected


@pytest.mark.parametrize(
    "arch, width, expected",
    # Counted by hand: ResNet20 is He et al.'s 0.27M net plus two projection shortcuts
    # (16*32 + 64 and 32*64 + 128); AirbenchNet width 64 has airbench94's 64/256/256 layers.
    [("ResNet20", 16, 269_722 + 576 + 2_176), ("AirbenchNet", 64, 1_972_816)],
)
def test_small_net_parameter_count(arch, width, expected):
    assert num_parameters(models.build(arch, width=width)) == expected


def test_resnet18_width16_is_small():
    assert 600_000 <= num_parameters(models.build("ResNet18", width=16)) <= 800_000


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize(
    "arch, width",
    [
        ("ResNet18", 8), ("ResNet18", 16), ("ResNet34", 8), ("ResNet34", 16), ("ResNet50", 8),
        ("ResNet8", 16), ("ResNet20", 16), ("AirbenchNet", 8), ("AirbenchNet", 16),
    ],
)
def test_forward_shape(arch, width, num_classes):
    torch.manual_seed(0)
    model = models.build(arch, num_classes=num_classes, width=width).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


def test_head_has_bias_and_matches_widest_stage():
    head = models.build("ResNet50", num_classes=7, width=8).head
    assert head.in_features == 8 * 8 * 4
    assert head.out_features == 7
    assert head.bias is not None


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = models.build("ResNet18", width=8).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
        model_cl = model.to(memory_format=torch.channels_last)
        actual = model_cl(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_forward_and_backward():
    torch.manual_seed(0)
    model = models.build("ResNet18", width=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(2, 3, 32, 32)).float().logsumexp(dim=1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_unknown_arch_lists_choices():
    expected = "unknown arch 'VGG': choose one of ResNet18, ResNet34, ResNet50, ResNet8, ResNet20, AirbenchNet"
    with pytest.raises(ValueError, match=expected):
        models.build("VGG")


@pytest.mark.parametrize(
    "arch, kwargs, name",
    [
        ("ResNet18", {"width": 0}, "width"),
        ("ResNet18", {"num_classes": 0}, "num_classes"),
        ("ResNet18", {"ghost_batch_size": -1}, "ghost_batch_size"),
        ("ResNet18", {"bn_weight_init": "zeros"}, "bn_weight_init"),
        ("AirbenchNet", {"zero_init_residual": True}, "zero_init_residual"),
    ],
)
def test_invalid_arguments_name_the_argument(arch, kwargs, name):
    with pytest.raises(ValueError, match=name):
        models.build(arch, **kwargs)


# Ghost BatchNorm


def batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def running_stats(model: nn.Module) -> list[torch.Tensor]:
    return [t for bn in batch_norms(model) for t in (bn.running_mean, bn.running_var)]


@pytest.mark.parametrize("arch", models.ARCHS)
def test_ghost_batch_size_replaces_every_batch_norm_and_keeps_state_dict_keys(arch):
    torch.manual_seed(0)
    plain = models.build(arch, width=4)
    torch.manual_seed(0)
    ghost = models.build(arch, width=4, ghost_batch_size=8)
    assert all(type(bn) is models.GhostBatchNorm2d for bn in batch_norms(ghost))
    assert all(bn.ghost_batch_size == 8 for bn in batch_norms(ghost))
    assert not any(type(bn) is models.GhostBatchNorm2d for bn in batch_norms(plain))
    plain_state, ghost_state = plain.state_dict(), ghost.state_dict()
    assert list(ghost_state) == list(plain_state)
    assert all(torch.equal(ghost_state[k], plain_state[k]) for k in plain_state)


@pytest.mark.parametrize("ghost_batch_size", [8, 16])
def test_ghost_batch_norm_at_or_above_the_batch_is_plain_batch_norm(ghost_batch_size):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    ghost = models.GhostBatchNorm2d(3, ghost_batch_size)
    ghost.load_state_dict(plain.state_dict())
    x = torch.randn(8, 3, 5, 5)
    x_plain, x_ghost = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn(8, 3, 5, 5)
    out_plain, out_ghost = plain(x_plain), ghost(x_ghost)
    (out_plain * weights).sum().backward()
    (out_ghost * weights).sum().backward()
    assert torch.equal(out_ghost, out_plain)
    assert torch.equal(x_ghost.grad, x_plain.grad)
    assert torch.equal(ghost.weight.grad, plain.weight.grad)
    assert torch.equal(ghost.bias.grad, plain.bias.grad)
    for name, buffer in plain.named_buffers():
        assert torch.equal(ghost.get_buffer(name), buffer), name


def forward_backward_in_groups(plain: nn.Module, images, labels, group_size):
    """Each group through its own copy of `plain` in train mode.

    Returns the concatenated logits, the parameter gradients of the mean loss over the whole
    batch (the sum over copies), and the copies' running statistics averaged over copies.
    """
    logits, copies = [], []
    for group_images, group_labels in zip(images.split(group_size), labels.split(group_size)):
        model = copy.deepcopy(plain).train()
        group_logits = model(group_images)
        F.cross_entropy(group_logits, group_labels, reduction="sum").div(len(images)).backward()
        logits.append(group_logits.detach())
        copies.append(model)
    grads = [torch.stack([p.grad for p in ps]).sum(0) for ps in zip(*(m.parameters() for m in copies))]
    stats = [torch.stack(ts).mean(0) for ts in zip(*(running_stats(m) for m in copies))]
    return torch.cat(logits), grads, stats


@pytest.mark.parametrize("arch", ["ResNet18", "AirbenchNet"])
def test_ghost_batch_norm_matches_groups_forwarded_separately(arch):
    torch.manual_seed(0)
    plain = models.build(arch, width=4)
    ghost = models.build(arch, width=4, ghost_batch_size=4).train()
    ghost.load_state_dict(plain.state_dict())
    images, labels = torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,))

    expected_logits, expected_grads, expected_stats = forward_backward_in_groups(plain, images, labels, 4)
    logits = ghost(images)
    F.cross_entropy(logits, labels).backward()

    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)
    for grad, expected in zip([p.grad for p in ghost.parameters()], expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-3, atol=1e-5)
    for stat, expected in zip(running_stats(ghost), expected_stats, strict=True):
        torch.testing.assert_close(stat, expected, rtol=1e-4, atol=1e-6)
    assert all(bn.num_batches_tracked == 1 for bn in batch_norms(ghost))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ghost_batch_norm_layer_matches_plain_layers_per_group(momentum, channels_last):
    torch.manual_seed(0)
    ghost = models.GhostBatchNorm2d(3, 2, momentum=momentum)
    nn.init.uniform_(ghost.weight)
    nn.init.uniform_(ghost.bias)
    plain = nn.BatchNorm2d(3, momentum=momentum)
    plain.load_state_dict(ghost.state_dict())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(6, 3, 4, 5).to(memory_format=memory_format)
    weights = torch.randn(6, 3, 4, 5)
    for _ in range(2):  # the second step checks the running statistics' update rule again
        copies = [copy.deepcopy(plain) for _ in range(3)]
        expected = torch.cat([bn(group) for bn, group in zip(copies, x.split(2))])
        (expected * weights).sum().backward()
        out = ghost(x)
        (out * weights).sum().backward()
        torch.testing.assert_close(out, expected)
        assert out.is_contiguous(memory_format=memory_format)
        for name in ("weight", "bias"):
            expected_grad = sum(getattr(bn, name).grad for bn in copies)
            torch.testing.assert_close(getattr(ghost, name).grad, expected_grad)
        for name in ("running_mean", "running_var"):
            expected_stat = torch.stack([getattr(bn, name) for bn in copies]).mean(0)
            torch.testing.assert_close(getattr(ghost, name), expected_stat)
        ghost.zero_grad()
        plain.load_state_dict(ghost.state_dict())
    assert ghost.num_batches_tracked == 2


def test_ghost_batch_size_that_does_not_divide_the_batch_is_an_error():
    model = models.build("ResNet8", width=4, ghost_batch_size=4).train()
    with pytest.raises(ValueError, match="ghost_batch_size 4 does not divide the batch size 6"):
        model(torch.randn(6, 3, 32, 32))


def test_ghost_batch_norm_eval_uses_running_statistics():
    torch.manual_seed(0)
    ghost = models.GhostBatchNorm2d(3, 2)
    for _ in range(3):
        ghost(torch.randn(8, 3, 4, 4) * 2 + 1)
    ghost.eval()
    x = torch.randn(5, 3, 4, 4)  # 2 does not divide 5: no groups in eval
    expected = F.batch_norm(x, ghost.running_mean, ghost.running_var, ghost.weight, ghost.bias, eps=ghost.eps)
    with torch.no_grad():
        torch.testing.assert_close(ghost(x), expected)
    assert ghost.num_batches_tracked == 3


def test_ghost_batch_norm_under_bf16_autocast():
    torch.manual_seed(0)
    model = models.build("ResNet18", width=8, ghost_batch_size=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(4, 3, 32, 32)).float().logsumexp(dim=1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# BatchNorm weight initialisation


@pytest.mark.parametrize("arch, residual_bn", [("ResNet18", "bn2"), ("ResNet50", "bn3"), ("ResNet20", "bn2")])
def test_zero_init_residual_zeroes_the_last_batch_norm_of_each_block(arch, residual_bn):
    model = models.build(arch, width=8, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, (models.BasicBlock, models.Bottleneck))]
    assert blocks
    zeroed = {id(getattr(block, residual_bn).weight) for block in blocks}
    for bn in batch_norms(model):
        expected = 0.0 if id(bn.weight) in zeroed else 1.0
        assert torch.all(bn.weight == expected)
        assert torch.all(bn.bias == 0)


def test_zero_init_residual_blocks_start_as_identity():
    torch.manual_seed(0)
    block = models.build("ResNet18", width=8, zero_init_residual=True).stages[0][1]
    x = torch.relu(torch.randn(2, 8, 8, 8))
    torch.testing.assert_close(block(x), x)


def test_uniform_bn_weight_init():
    torch.manual_seed(0)
    model = models.build("ResNet18", width=8, bn_weight_init="uniform")
    weights = torch.cat([bn.weight.detach() for bn in batch_norms(model)])
    assert torch.all((weights >= 0) & (weights < 1))
    assert weights.std() > 0.2  # U[0, 1) has std 0.29
    assert all(torch.all(bn.bias == 0) for bn in batch_norms(model))

    torch.manual_seed(0)
    same_seed = models.build("ResNet18", width=8, bn_weight_init="uniform")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same_seed.parameters()))
    torch.manual_seed(0)
    ones = models.build("ResNet18", width=8)
    convs = [(a, b) for a, b in zip(model.parameters(), ones.parameters()) if a.ndim > 1]
    assert all(torch.equal(a, b) for a, b in convs)


def test_zero_init_residual_wins_over_uniform_bn_weight_init():
    torch.manual_seed(0)
    model = models.build("ResNet18", width=8, bn_weight_init="uniform", zero_init_residual=True)
    residual = {id(m.residual_bn) for m in model.modules() if isinstance(m, models.BasicBlock)}
    for bn in batch_norms(model):
        if id(bn) in residual:
            assert torch.all(bn.weight == 0)
        else:
            assert torch.all((bn.weight >= 0) & (bn.weight < 1)) and bn.weight.std() > 0


def test_uniform_init_applies_to_ghost_batch_norms():
    torch.manual_seed(0)
    model = models.build("AirbenchNet", width=4, ghost_batch_size=2, bn_weight_init="uniform")
    assert all(type(bn) is models.GhostBatchNorm2d and bn.weight.std() > 0 for bn in batch_norms(model))
