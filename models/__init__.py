"""Registry of the CIFAR nets the training loop can build by name."""

from torch import nn

from .airbench import AirbenchNet
from .ghost_norm import GhostBatchNorm2d, convert_to_ghost_batch_norm
from .resnet import BasicBlock, Bottleneck, ResNet8, ResNet18, ResNet20, ResNet34, ResNet50

__all__ = ["ARCHS", "RESIDUAL_ARCHS", "BN_WEIGHT_INITS", "build", "GhostBatchNorm2d", "BasicBlock", "Bottleneck"]

_CONSTRUCTORS = {
    "ResNet18": ResNet18,
    "ResNet34": ResNet34,
    "ResNet50": ResNet50,
    "ResNet8": ResNet8,
    "ResNet20": ResNet20,
    "AirbenchNet": AirbenchNet,
}
ARCHS = tuple(_CONSTRUCTORS)
# The nets made of residual blocks (zero_init_residual applies to them).
RESIDUAL_ARCHS = tuple(name for name, constructor in _CONSTRUCTORS.items() if constructor is not AirbenchNet)
BN_WEIGHT_INITS = ("ones", "uniform")


def build(
    arch: str,
    num_classes: int = 10,
    width: int = 64,
    *,
    ghost_batch_size: int = 0,
    zero_init_residual: bool = False,
    bn_weight_init: str = "ones",
) -> nn.Module:
    """Build `arch` with `width` channels in its first stage or block.

    width: 64 is standard for ResNet18/34/50 and AirbenchNet (airbench94's 64/256/256);
        the paper's ResNet8/20 have 16, so build them with width=16.
    ghost_batch_size: G > 0 makes every BatchNorm a GhostBatchNorm2d that, in training,
        normalises groups of G consecutive samples separately; 0 is plain BatchNorm.
    zero_init_residual: start the BatchNorm weight that ends each residual branch at 0, so
        every residual block starts as the identity (Goyal et al. 2017); an error for
        AirbenchNet, which has no residual blocks.
    bn_weight_init: "ones" (PyTorch's default) or "uniform": every BatchNorm weight drawn
        from U[0, 1), as PyTorch <= 0.4 did, which the original pytorch-lars used. The
        draws come from the global RNG after the convolutions are initialised, so a seed
        gives the same convolutions under either choice. zero_init_residual overrides it
        for the weights it zeroes. Biases start at 0 either way.
    """
    if arch not in _CONSTRUCTORS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if ghost_batch_size < 0:
        raise ValueError(f"ghost_batch_size must be >= 0 (0 is off), got {ghost_batch_size}")
    if bn_weight_init not in BN_WEIGHT_INITS:
        raise ValueError(
            f"bn_weight_init must be one of {', '.join(BN_WEIGHT_INITS)}, got {bn_weight_init!r}"
        )
    model = _CONSTRUCTORS[arch](num_classes=num_classes, width=width)
    residual_blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    if zero_init_residual and not residual_blocks:
        raise ValueError(f"zero_init_residual: {arch} has no residual blocks")
    if ghost_batch_size:
        convert_to_ghost_batch_norm(model, ghost_batch_size)
    if bn_weight_init == "uniform":
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight)
                nn.init.zeros_(module.bias)
    if zero_init_residual:
        for block in residual_blocks:
            nn.init.zeros_(block.residual_bn.weight)
    return model
