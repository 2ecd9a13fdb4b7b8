"""CIFAR-style ResNets (He et al. 2016) as adapted for 32x32 inputs.

Unlike the ImageNet variant, the stem is a single 3x3 stride-1 convolution
with no max-pool, so the first stage still sees the full 32x32 image.
ResNet18/34/50 have the ImageNet nets' four stages; ResNet8/20 are the paper's
three-stage CIFAR nets (Section 4.2), here with projection shortcuts where the
shape changes (its option B) rather than zero-padded identities (option A).
"""

import torch
from torch import nn


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every convolution is followed by BatchNorm, which has its own shift.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Shortcut for the residual sum; identity unless the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = _projection(in_channels, out_channels, stride)

    @property
    def residual_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm that ends the residual branch."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _projection(in_channels, out_channels, stride)

    @property
    def residual_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm that ends the residual branch."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """One stage per entry of `blocks_per_stage`, with channels width, 2w, 4w, ...

    Every stage after the first halves the resolution in its first block.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: tuple[int, ...],
        num_classes: int,
        width: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv3x3(3, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages = []
        in_channels = width
        for stage_index, num_blocks in enumerate(blocks_per_stage):
            channels = width * 2**stage_index
            first_stride = 1 if stage_index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                stride = first_stride if block_index == 0 else 1
                blocks.append(block(in_channels, channels, stride))
                in_channels = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.stages(self.stem(x)))
        return self.head(torch.flatten(features, 1))


def ResNet18(num_classes: int = 10, width: int = 64) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, width)


def ResNet34(num_classes: int = 10, width: int = 64) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, width)


def ResNet50(num_classes: int = 10, width: int = 64) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, width)


def ResNet8(num_classes: int = 10, width: int = 16) -> ResNet:
    return ResNet(BasicBlock, (1, 1, 1), num_classes, width)


def ResNet20(num_classes: int = 10, width: int = 16) -> ResNet:
    return ResNet(BasicBlock, (3, 3, 3), num_classes, width)
