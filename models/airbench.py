"""A small fast CIFAR net after Keller Jordan's airbench94 (github.com/KellerJordan/cifar10-airbench).

Its layout: a 2x2 stem convolution to 24 channels, three blocks of
conv-maxpool-BN-GELU then conv-BN-GELU, a global max-pool and a linear head
whose logits are scaled down by a constant. `width` w gives the blocks
w, 4w, 4w channels, so w = 64 is airbench94's 64/256/256.

Departures from airbench94, which rely on its own training recipe: the stem
is a learned convolution followed by BatchNorm (airbench fixes it to whiten
the data's 2x2 patches), the BatchNorm weights are trained (airbench freezes
them at 1) and BatchNorm keeps PyTorch's default momentum and eps.
"""

import torch
from torch import nn

# 2x2 patches of 3 channels span 12 dimensions; airbench whitens onto them
# with both signs, hence 24 stem channels.
STEM_CHANNELS = 24
# airbench94's logit scale, which keeps the initial logits small.
LOGIT_SCALE = 1 / 9


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    # No bias: every convolution is followed by BatchNorm, which has its own shift.
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


class ConvGroup(nn.Module):
    """conv-maxpool-BN-GELU then conv-BN-GELU: halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling before BatchNorm normalises a quarter of the activations.
        out = self.activation(self.bn1(self.pool(self.conv1(x))))
        return self.activation(self.bn2(self.conv2(out)))


class AirbenchNet(nn.Module):
    """Stem, three ConvGroups of width, 4w, 4w channels, global max-pool, scaled linear head."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        block_channels = (width, 4 * width, 4 * width)
        # 2x2 without padding, as airbench: 32x32 -> 31x31 -> (pools) 15, 7, 3.
        self.stem = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 2, bias=False),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.GELU(),
        )
        groups = []
        in_channels = STEM_CHANNELS
        for channels in block_channels:
            groups.append(ConvGroup(in_channels, channels))
            in_channels = channels
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(in_channels, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.groups(self.stem(x)))
        return LOGIT_SCALE * self.head(torch.flatten(features, 1))
