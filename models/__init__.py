"""Registry of the CIFAR ResNets the training loop can build by name."""

from torch import nn

from .resnet import ResNet18, ResNet34, ResNet50

_CONSTRUCTORS = {"ResNet18": ResNet18, "ResNet34": ResNet34, "ResNet50": ResNet50}
ARCHS = tuple(_CONSTRUCTORS)


def build(arch: str, num_classes: int = 10, width: int = 64) -> nn.Module:
    """Build `arch`; `width` is the first stage's channel count (64 is standard)."""
    if arch not in _CONSTRUCTORS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return _CONSTRUCTORS[arch](num_classes=num_classes, width=width)
