"""--trials_per_gpu: trials run at once in spawned processes give the results the same grid gives in turn."""
import pytest

import store
import train
from conftest import result_rows, tiny_flags


def _epoch_results(logroot, experiment):
    """{seed: [(epoch, train_loss, test_top1)]} of every trial of an experiment."""
    out = {}
    for trial in store.list_trials(str(logroot), experiment):
        assert trial["finished"] is True
        rows = [r for r in result_rows(str(logroot), experiment, trial["trial_id"]) if r["kind"] == "epoch"]
        out[trial["seed"]] = [(r["epoch"], r["train_loss"], r["test_top1"]) for r in rows]
    return out


@pytest.mark.slow
def test_two_trials_at_once_match_the_sequential_sweep(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    grid = tmp_path / "grid.yaml"
    grid.write_text("seed: [1, 2]\n")
    logroot = tmp_path / "logs"
    flags = tiny_flags(root, logroot, "--config", str(grid), epochs=2)
    train.main(["in_turn", *flags])
    train.main(["at_once", *flags, "--trials_per_gpu", "2"])
    in_turn, at_once = _epoch_results(logroot, "in_turn"), _epoch_results(logroot, "at_once")
    assert sorted(in_turn) == [1, 2] and all(len(rows) == 2 for rows in in_turn.values())
    assert at_once == in_turn
