import io
import math

import pytest
import torch

from config import LR_SCALING_RULES, SCHEDULES, scale_lr
from schedulers import make_scheduler

PEAKS = (0.1, 0.4)


def two_group_sgd() -> torch.optim.SGD:
    first, second = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD(
        [{"params": [first], "lr": PEAKS[0]}, {"params": [second], "lr": PEAKS[1]}],
        momentum=0.9,
    )


def advance(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The lrs of both groups after each of `steps` optimizer steps."""
    lrs = []
    for _ in range(steps):
        # optimizer.step() first, as in training; torch warns otherwise.
        optimizer.step()
        scheduler.step()
        lrs.append([group["lr"] for group in optimizer.param_groups])
    return lrs


def lr_sequence(schedule: str, steps: int, **kwargs) -> list[list[float]]:
    """lr_sequence(...)[t] is [lr of group 0, lr of group 1] at step t, for t = 0..steps."""
    optimizer = two_group_sgd()
    scheduler = make_scheduler(optimizer, schedule, **kwargs)
    initial = [group["lr"] for group in optimizer.param_groups]
    return [initial] + advance(optimizer, scheduler, steps)


def expect(lrs: list[float], values: list[float]) -> None:
    assert lrs == pytest.approx(values, rel=1e-12, abs=1e-15)


DECAY = dict(
    total_steps=100, steps_per_epoch=10, warmup_steps=10, warmup_start_lr=0.01, end_lr=1e-3
)


def test_schedule_names():
    assert SCHEDULES == ("poly", "cosine", "step", "geometric")
    assert LR_SCALING_RULES == ("none", "linear", "sqrt")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_linear_warmup(schedule):
    # Warmup ends inside epoch 0, before step/geometric first decay.
    lrs = lr_sequence(schedule, 10, **(DECAY | {"steps_per_epoch": 50}))
    expect(lrs[0], [0.01, 0.01])
    expect(lrs[4], [0.01 + (peak - 0.01) * 0.4 for peak in PEAKS])
    expect(lrs[10], list(PEAKS))


def test_poly_follows_formula_and_stays_at_end_lr():
    lrs = lr_sequence("poly", 130, **DECAY)
    # Middle of the decay: s/S = 45/90, so the power-2 factor is 0.25.
    expect(lrs[55], [1e-3 + (peak - 1e-3) * 0.25 for peak in PEAKS])
    expect(lrs[91], [1e-3 + (peak - 1e-3) * (9 / 90) ** 2 for peak in PEAKS])
    for t in (100, 101, 130):
        expect(lrs[t], [1e-3, 1e-3])
    after_warmup = [lr[1] for lr in lrs[10:]]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))


def test_poly_power_is_honoured():
    lrs = lr_sequence("poly", 100, total_steps=100, steps_per_epoch=10, power=1.0)
    expect(lrs[0], list(PEAKS))
    expect(lrs[50], [peak / 2 for peak in PEAKS])
    expect(lrs[75], [peak / 4 for peak in PEAKS])


def test_cosine_follows_formula_and_stays_at_end_lr():
    lrs = lr_sequence("cosine", 120, **DECAY)
    expect(lrs[55], [1e-3 + (peak - 1e-3) * 0.5 for peak in PEAKS])
    half_cosine = 0.5 * (1 + math.cos(math.pi * 30 / 90))
    expect(lrs[40], [1e-3 + (peak - 1e-3) * half_cosine for peak in PEAKS])
    for t in (100, 101, 120):
        expect(lrs[t], [1e-3, 1e-3])


def test_step_decays_at_milestones():
    lrs = lr_sequence("step", 110, total_steps=100, steps_per_epoch=10, milestones=[3, 6])
    for t, decays in [(0, 0), (29, 0), (30, 1), (59, 1), (60, 2), (99, 2), (110, 2)]:
        expect(lrs[t], [peak * 0.1**decays for peak in PEAKS])


def test_step_is_floored_at_end_lr():
    lrs = lr_sequence(
        "step", 60, total_steps=100, steps_per_epoch=10, milestones=[3, 6], end_lr=0.002
    )
    expect(lrs[30], [0.01, 0.04])
    expect(lrs[60], [0.002, 0.004])


def test_geometric_decays_every_epoch_with_floor():
    lrs = lr_sequence("geometric", 100, total_steps=100, steps_per_epoch=10, gamma=0.5)
    for t, epoch in [(0, 0), (9, 0), (10, 1), (35, 3), (99, 9)]:
        expect(lrs[t], [peak * 0.5**epoch for peak in PEAKS])
    floored = lr_sequence(
        "geometric", 30, total_steps=100, steps_per_epoch=10, gamma=0.5, end_lr=0.03
    )
    expect(floored[30], [0.03, 0.05])


def test_geometric_counts_epochs_from_start_of_training():
    lrs = lr_sequence(
        "geometric", 25, total_steps=100, steps_per_epoch=10, gamma=0.5, warmup_steps=15
    )
    expect(lrs[5], [peak * 5 / 15 for peak in PEAKS])
    expect(lrs[15], [peak * 0.5 for peak in PEAKS])
    expect(lrs[20], [peak * 0.25 for peak in PEAKS])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_state_dict_round_trip_continues_the_same_sequence(schedule):
    kwargs = dict(DECAY, milestones=[4, 7], gamma=0.5)
    uninterrupted = lr_sequence(schedule, 120, **kwargs)

    optimizer = two_group_sgd()
    scheduler = make_scheduler(optimizer, schedule, **kwargs)
    advance(optimizer, scheduler, 37)
    checkpoint = io.BytesIO()
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, checkpoint
    )
    checkpoint.seek(0)
    state = torch.load(checkpoint)

    resumed_optimizer = two_group_sgd()
    # The scheduler is built before loading the optimizer, as torch recommends:
    # construction resets the groups' lr.
    resumed = make_scheduler(resumed_optimizer, schedule, **kwargs)
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["scheduler"])
    expect(resumed.get_last_lr(), uninterrupted[37])
    continued = advance(resumed_optimizer, resumed, 120 - 37)
    for t, lrs in enumerate(continued, start=38):
        expect(lrs, uninterrupted[t])


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match="choose one of poly, cosine, step, geometric"):
        make_scheduler(two_group_sgd(), "linear", total_steps=10, steps_per_epoch=1)


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"total_steps": 0}, "total_steps"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 11}, "warmup_steps"),
        ({"power": 0.0}, "power"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": -0.5}, "gamma"),
        ({"end_lr": -1e-3}, "end_lr"),
        ({"warmup_start_lr": -1e-3}, "warmup_start_lr"),
        ({"milestones": [5, 5]}, "milestones"),
        ({"milestones": [6, 3]}, "milestones"),
        ({"milestones": [-1, 3]}, "milestones"),
    ],
)
def test_invalid_arguments_name_the_argument(overrides, name):
    kwargs = dict(total_steps=10, steps_per_epoch=2) | overrides
    with pytest.raises(ValueError, match=name):
        make_scheduler(two_group_sgd(), "poly", **kwargs)


def test_negative_optimizer_lr_is_rejected():
    optimizer = two_group_sgd()
    optimizer.param_groups[1]["lr"] = -0.1
    with pytest.raises(ValueError, match="lr of param group 1"):
        make_scheduler(optimizer, "cosine", total_steps=10, steps_per_epoch=2)


def test_warmup_may_span_all_steps():
    lrs = lr_sequence("poly", 10, total_steps=10, steps_per_epoch=2, warmup_steps=10)
    expect(lrs[5], [peak / 2 for peak in PEAKS])
    expect(lrs[10], [0.0, 0.0])


@pytest.mark.parametrize(
    "rule, expected",
    [("none", 0.1), ("linear", 0.1 * 4096 / 256), ("sqrt", 0.1 * 4.0)],
)
def test_scale_lr(rule, expected):
    assert scale_lr(0.1, 4096, 256, rule) == pytest.approx(expected)


@pytest.mark.parametrize(
    "args, name",
    [
        ((0.1, 512, 256, "cubic"), "rule"),
        ((0.1, 0, 256, "linear"), "batch_size"),
        ((0.1, 512, 0, "linear"), "base_batch_size"),
        ((0.1, 512, -256, "sqrt"), "base_batch_size"),
    ],
)
def test_scale_lr_rejects_bad_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        scale_lr(*args)


def test_scale_lr_unknown_rule_lists_choices():
    with pytest.raises(ValueError, match="choose one of none, linear, sqrt"):
        scale_lr(0.1, 512, 256, "cubic")
