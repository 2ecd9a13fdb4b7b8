import pytest
import torch

import models


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_archs_registry():
    assert models.ARCHS == ("ResNet18", "ResNet34", "ResNet50")


@pytest.mark.parametrize(
    "arch, expected",
    # Reference counts of the standard CIFAR ResNets (kuangliu/pytorch-cifar).
    [("ResNet18", 11_173_962), ("ResNet34", 21_282_122), ("ResNet50", 23_520_842)],
)
def test_standard_width_parameter_count(arch, expected):
    assert num_parameters(models.build(arch, num_classes=10, width=64)) == expected


def test_resnet18_width16_is_small():
    assert 600_000 <= num_parameters(models.build("ResNet18", width=16)) <= 800_000


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize(
    "arch, width",
    [("ResNet18", 8), ("ResNet18", 16), ("ResNet34", 8), ("ResNet34", 16), ("ResNet50", 8)],
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
    expected = "unknown arch 'VGG': choose one of ResNet18, ResNet34, ResNet50"
    with pytest.raises(ValueError, match=expected):
        models.build("VGG")


@pytest.mark.parametrize(
    "kwargs, name", [({"width": 0}, "width"), ({"num_classes": 0}, "num_classes")]
)
def test_invalid_sizes_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        models.build("ResNet18", **kwargs)
