"""Per-iteration learning-rate schedules; call `scheduler.step()` once per optimizer step.

Notation: t is the optimizer step (the scheduler's `last_epoch`), T = total_steps,
W = warmup_steps, peak = the param group's lr when the scheduler was built
(`base_lrs`), epoch = t // steps_per_epoch, s = t - W, S = T - W.

Every schedule first warms up linearly, for t < W:
    lr = warmup_start_lr + (peak - warmup_start_lr) * t / W
so step 0 gives warmup_start_lr and step W gives the peak. Afterwards:

    poly       lr = end_lr + (peak - end_lr) * (1 - s/S)**power
    cosine     lr = end_lr + (peak - end_lr) * 0.5 * (1 + cos(pi * s/S))
    step       lr = max(end_lr, peak * gamma**(number of milestones <= epoch))
    geometric  lr = max(end_lr, peak * gamma**epoch)

poly and cosine are exactly end_lr from t = T on, so running past the planned
length never makes the lr rise again. step and geometric use end_lr only as a
floor, and count epochs from the start of training, warmup included.

With `per_epoch=True` the lr changes only at epoch boundaries (a staircase): every step of an epoch gets the
lr of its first step, t = epoch * steps_per_epoch. Poly without warmup then gives the seed's
lr_e = peak * (1 - e/E)**power for all steps of epoch e.
"""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from config import SCHEDULES


class WarmupSchedule(LRScheduler):
    """Linear warmup followed by the decay `_decayed_lr` computes in closed form.

    Everything is a plain attribute so `state_dict()` captures the whole schedule.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        total_steps: int,
        steps_per_epoch: int,
        warmup_steps: int,
        warmup_start_lr: float,
        end_lr: float,
        power: float,
        gamma: float,
        milestones: tuple[int, ...],
        per_epoch: bool = False,
    ) -> None:
        self.per_epoch = per_epoch
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = warmup_steps
        self.warmup_start_lr = warmup_start_lr
        self.end_lr = end_lr
        self.power = power
        self.gamma = gamma
        self.milestones = milestones
        # Set last: the base constructor already computes the step-0 lr.
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [self._lr(peak, self.last_epoch) for peak in self.base_lrs]

    def _lr(self, peak: float, step: int) -> float:
        if self.per_epoch:
            step -= step % self.steps_per_epoch
        if step < self.warmup_steps:
            ramp = step / self.warmup_steps
            return self.warmup_start_lr + (peak - self.warmup_start_lr) * ramp
        return self._decayed_lr(peak, step)

    def _decay_progress(self, step: int) -> float:
        """s/S in [0, 1]: fraction of the post-warmup steps done, clamped at the end."""
        if step >= self.total_steps:
            return 1.0
        return (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)

    def _decayed_lr(self, peak: float, step: int) -> float:
        raise NotImplementedError


class PolySchedule(WarmupSchedule):
    def _decayed_lr(self, peak: float, step: int) -> float:
        remaining = 1.0 - self._decay_progress(step)
        return self.end_lr + (peak - self.end_lr) * remaining**self.power


class CosineSchedule(WarmupSchedule):
    def _decayed_lr(self, peak: float, step: int) -> float:
        progress = self._decay_progress(step)
        half_cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.end_lr + (peak - self.end_lr) * half_cosine


class StepSchedule(WarmupSchedule):
    def _decayed_lr(self, peak: float, step: int) -> float:
        epoch = step // self.steps_per_epoch
        decays = sum(1 for milestone in self.milestones if milestone <= epoch)
        return max(self.end_lr, peak * self.gamma**decays)


class GeometricSchedule(WarmupSchedule):
    def _decayed_lr(self, peak: float, step: int) -> float:
        epoch = step // self.steps_per_epoch
        return max(self.end_lr, peak * self.gamma**epoch)


_SCHEDULE_CLASSES = {
    "poly": PolySchedule,
    "cosine": CosineSchedule,
    "step": StepSchedule,
    "geometric": GeometricSchedule,
}


def make_scheduler(
    optimizer: Optimizer,
    schedule: str,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_steps: int = 0,
    warmup_start_lr: float = 0.0,
    end_lr: float = 0.0,
    power: float = 2.0,
    gamma: float = 0.1,
    milestones: tuple[int, ...] | list[int] = (),
    per_epoch: bool = False,
) -> LRScheduler:
    """Build `schedule` (one of SCHEDULES) over `total_steps` optimizer steps."""
    if schedule not in _SCHEDULE_CLASSES:
        choices = ", ".join(SCHEDULES)
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {choices}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if warmup_start_lr < 0:
        raise ValueError(f"warmup_start_lr must be >= 0, got {warmup_start_lr}")
    if end_lr < 0:
        raise ValueError(f"end_lr must be >= 0, got {end_lr}")
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    milestones = tuple(milestones)
    increasing = all(a < b for a, b in zip(milestones, milestones[1:]))
    if not increasing or any(m < 0 for m in milestones):
        raise ValueError(
            f"milestones must be strictly increasing epochs >= 0, got {list(milestones)}"
        )
    for index, group in enumerate(optimizer.param_groups):
        peak = group.get("initial_lr", group["lr"])
        if peak < 0:
            raise ValueError(f"lr of param group {index} must be >= 0, got {peak}")
    return _SCHEDULE_CLASSES[schedule](
        optimizer,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=warmup_steps,
        warmup_start_lr=warmup_start_lr,
        end_lr=end_lr,
        power=power,
        gamma=gamma,
        milestones=milestones,
        per_epoch=per_epoch,
    )

