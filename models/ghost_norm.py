"""Ghost BatchNorm (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better").

In training, BatchNorm normalises each group of `ghost_batch_size` consecutive samples
with that group's own statistics, so the batch BatchNorm sees is a recipe choice of its
own, independent of the micro-batch that memory dictates.
"""

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics come from groups of `ghost_batch_size` samples.

    A batch of N > G = `ghost_batch_size` samples is split into N / G groups of consecutive
    samples, each normalised with its own mean and biased variance, exactly as if each group
    were forwarded through nn.BatchNorm2d on its own. N <= G is plain BatchNorm2d over the
    whole batch; N > G that G does not divide raises ValueError. Eval mode uses the running
    statistics, as BatchNorm2d does.

    Running statistics get one momentum update per forward, towards the mean over groups of
    each group's batch mean and of each group's unbiased variance (what BatchNorm2d would
    track for a batch of G). Momentum updates are linear, so this equals averaging the
    running statistics that N / G separate BatchNorm2d forwards from the same start would
    reach, each with momentum as given; num_batches_tracked counts forwards, not groups.

    The parameters and buffers are BatchNorm2d's, so state_dicts are interchangeable.
    """

    def __init__(self, num_features: int, ghost_batch_size: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if ghost_batch_size < 1:
            raise ValueError(f"ghost_batch_size must be >= 1, got {ghost_batch_size}")
        self.ghost_batch_size = ghost_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size = x.shape[0]
        uses_batch_statistics = self.training or self.running_mean is None
        if not uses_batch_statistics or batch_size <= self.ghost_batch_size:
            return super().forward(x)
        if batch_size % self.ghost_batch_size:
            raise ValueError(
                f"ghost_batch_size {self.ghost_batch_size} does not divide the batch size {batch_size}"
            )
        self._check_input_dim(x)
        num_groups = batch_size // self.ghost_batch_size
        _, channels, height, width = x.shape
        # BatchNorm normalises per channel over dim 0 and the spatial dims, so folding the
        # group index into the channel dim, (G, groups * C, H, W), lets one fused
        # batch_norm kernel compute every group's statistics at once.
        folded = (
            x.reshape(num_groups, self.ghost_batch_size, channels, height, width)
            .transpose(0, 1)
            .reshape(self.ghost_batch_size, num_groups * channels, height, width)
        )
        momentum = self._count_forward()
        tracks = self.training and self.running_mean is not None
        # Each group gets its own copy of the running statistics to update; averaging the
        # copies afterwards gives the one update the class docstring describes.
        running_mean = self.running_mean.repeat(num_groups) if tracks else None
        running_var = self.running_var.repeat(num_groups) if tracks else None
        weight = self.weight.repeat(num_groups) if self.affine else None
        bias = self.bias.repeat(num_groups) if self.affine else None
        out = F.batch_norm(
            folded, running_mean, running_var, weight, bias, True, momentum, self.eps
        )
        if tracks:
            with torch.no_grad():
                self.running_mean.copy_(running_mean.view(num_groups, channels).mean(0))
                self.running_var.copy_(running_var.view(num_groups, channels).mean(0))
        out = (
            out.reshape(self.ghost_batch_size, num_groups, channels, height, width)
            .transpose(0, 1)
            .reshape(batch_size, channels, height, width)
        )
        # The folding copies to NCHW; give the next layer the layout it was given.
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _count_forward(self) -> float:
        """Count this forward in num_batches_tracked and return the running statistics'
        averaging factor, as _BatchNorm.forward does."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        return momentum


def convert_to_ghost_batch_norm(module: nn.Module, ghost_batch_size: int) -> nn.Module:
    """Replace every nn.BatchNorm2d in `module` by a GhostBatchNorm2d with the same state.

    The replacements are created on the CPU in float32: convert before moving the model.
    """
    if type(module) is nn.BatchNorm2d:
        ghost = GhostBatchNorm2d(
            module.num_features,
            ghost_batch_size,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        ghost.load_state_dict(module.state_dict())
        ghost.train(module.training)
        return ghost
    for name, child in module.named_children():
        module.add_module(name, convert_to_ghost_batch_norm(child, ghost_batch_size))
    return module
