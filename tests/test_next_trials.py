"""configs/scaling_study/next_trials.py: the scaling study's next trials by its design's rules, on trial files
written here (no training)."""
import importlib.util
import os
import re

import pytest
import yaml

from conftest import ROOT
from test_plot_results import write_trial

spec = importlib.util.spec_from_file_location(
    "next_trials", os.path.join(ROOT, "configs", "scaling_study", "next_trials.py"))
next_trials = importlib.util.module_from_spec(spec)
spec.loader.exec_module(next_trials)

RECIPE = ["optimizer", "lr", "batch_size", "epochs", "seed"]
CONFIG = """- &base
  optimizer: {optimizer}
  seed: 1
  lr: {lrs}
  batch_size: 4096
  epochs: 14
  warmup_fraction: 0.125
  eval_every: 3
- <<: *base
  batch_size: 512
  epochs: 4
  warmup_fraction: 0.05
  eval_every: 20
"""
STEPS_PER_EPOCH = {4096: 10, 512: 88}


def trial(logroot, exp, n, optimizer, batch, lr, epochs, seed, reach_fraction, final, diverged=False):
    """A finished trial whose validation top-1 crosses the target at `reach_fraction` of its steps (None: never,
    topping out below it) and ends at `final`."""
    total = STEPS_PER_EPOCH[batch] * epochs
    target = next_trials.TARGET
    evals = []
    for k in range(1, 21):
        step = total * k // 20
        top1 = final * k / 20 if reach_fraction is None else min(final, target * step / (reach_fraction * total))
        evals.append((step, top1))
    params = {"optimizer": optimizer, "lr": lr, "batch_size": batch, "epochs": epochs, "seed": seed,
              "recipe_keys": RECIPE, "trial_id": f"t{n:04d}", "start_time": f"2026-01-01T00:{n:02d}", "finished": not diverged}
    if diverged:
        params["diverged"] = True
    rows = [{"kind": "eval", "iteration": s, "epoch": 1, "val_top1": v, "val_loss": 1.0} for s, v in evals]
    rows.append({"kind": "epoch", "iteration": total, "epoch": epochs, "train_loss": 1.0, "test_top1": 0.0,
                 "test_loss": 1.0, "val_top1": evals[-1][1]})
    write_trial(logroot, exp, params["trial_id"], params, rows)


def empty_study(tmp_path):
    """(logroot, configs folder) of a study whose configs hold the two first grids and which has no trials."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "lars.yaml").write_text(CONFIG.format(optimizer="LARS", lrs="[4.0, 8.0, 16.0]"))
    (configs / "sgd.yaml").write_text(CONFIG.format(optimizer="SGD", lrs="[0.1, 0.2, 0.4]"))
    return str(tmp_path / "results"), str(configs)


@pytest.fixture
def study(tmp_path):
    logroot, configs = empty_study(tmp_path)
    specs = [  # (experiment, optimizer, batch, lr, epochs, seed, reach fraction, final val top-1)
        ("scaling_lars", "LARS", 4096, 4.0, 14, 1, 0.7, 74.0),   # inside the grid, early: second horizon next
        ("scaling_lars", "LARS", 4096, 8.0, 14, 1, 0.5, 75.0),   # (best 8, better neighbour 4)
        ("scaling_lars", "LARS", 4096, 16.0, 14, 1, None, 70.0),
        ("scaling_lars", "LARS", 512, 4.0, 4, 1, 0.4, 76.0),     # best at the grid's low end: grow to 2
        ("scaling_lars", "LARS", 512, 8.0, 4, 1, 0.6, 75.0),
        ("scaling_lars", "LARS", 512, 16.0, 4, 1, 0.8, 74.0),
        ("scaling_sgd", "SGD", 4096, 0.1, 14, 1, None, 70.0),    # second horizon done: seeds 2 and 3 of the best
        ("scaling_sgd", "SGD", 4096, 0.2, 14, 1, 0.8, 73.0),
        ("scaling_sgd", "SGD", 4096, 0.4, 14, 1, None, 71.0),
        ("scaling_sgd", "SGD", 4096, 0.2, 21, 1, 0.5, 74.0),   # 105 steps, fewer than 112
        ("scaling_sgd", "SGD", 4096, 0.4, 21, 1, 0.7, 73.0),
        ("scaling_sgd", "SGD", 512, 0.1, 4, 1, None, 70.0),      # inside the grid, in time: seeds 2 and 3
        ("scaling_sgd", "SGD", 512, 0.2, 4, 1, 0.8, 73.0),
        ("scaling_sgd", "SGD", 512, 0.4, 4, 1, None, 69.0),
    ]
    for n, spec_ in enumerate(specs):
        trial(logroot, *spec_[:1], n, *spec_[1:])
    return logroot, configs


def section(report, optimizer, batch):
    text = "\n".join(report)
    return re.search(rf"^{optimizer}, batch {batch}:.*?(?=^\S|\Z)", text, re.S | re.M).group(0)


def test_each_rule_of_the_design(study, capsys):
    logroot, configs = study
    report = next_trials.main(["--results", logroot, "--configs", configs])
    assert "second horizon (21 epochs) at lr 8 and 4" in section(report, "LARS", 4096)
    assert "grow it to lr 2" in section(report, "LARS", 512)
    assert "best setting lr 0.2, 21 epochs: seeds 2, 3 to run" in section(report, "SGD", 4096)
    assert "best setting lr 0.2, 4 epochs: seeds 2, 3 to run" in section(report, "SGD", 512)
    assert "lr 16: not reached" in section(report, "LARS", 4096)


def test_the_config_entries_it_prints_are_the_trials_it_names(study):
    logroot, configs = study
    text = "\n".join(next_trials.main(["--results", logroot, "--configs", configs]))
    lars = text.split("append to configs/scaling_study/lars.yaml:\n")[1].split("\n\n")[0]
    with open(os.path.join(configs, "lars.yaml")) as f:
        added = yaml.safe_load(f.read() + lars)[2:]  # the config as it reads once they are appended
    assert {(e["batch_size"], e["epochs"], e["seed"], tuple(e["lr"])) for e in added} == {
        (4096, 21, 1, (4.0, 8.0)), (512, 4, 1, (2.0,))}
    assert all(e["warmup_fraction"] == (0.125 if e["batch_size"] == 4096 else 0.05) for e in added)


def test_nothing_is_decided_while_a_configured_trial_is_missing(study):
    logroot, configs = study
    with open(os.path.join(configs, "lars.yaml"), "a") as f:
        f.write("- <<: *base\n  lr: [32.0]\n")  # asked for, not run yet
    report = next_trials.main(["--results", logroot, "--configs", configs])
    assert "1 configured trial(s) not finished" in section(report, "LARS", 4096)
    assert "second horizon" not in section(report, "LARS", 4096)


def test_the_target_is_the_one_the_figures_use():
    with open(os.path.join(ROOT, "configs", "scaling_study", "figures.sh")) as f:
        assert f"TARGET={next_trials.TARGET:g}\n" in f.read()


def test_at_4096_a_target_never_reached_leads_to_the_second_horizon_not_a_growth(tmp_path):
    logroot, configs = empty_study(tmp_path)
    for n, (lr, final) in enumerate(((0.1, 69.0), (0.2, 71.0), (0.4, 68.0))):  # none reaches 72.5
        trial(logroot, "scaling_sgd", n, "SGD", 4096, lr, 14, 1, None, final)
    report = next_trials.main(["--results", logroot, "--configs", configs])
    assert "second horizon (21 epochs) at lr 0.2 and 0.1" in section(report, "SGD", 4096)
    assert "grows the horizon" not in section(report, "SGD", 4096)
    for n, (lr, final) in enumerate(((0.2, 72.0), (0.1, 70.0)), start=3):  # still not at 21 epochs
        trial(logroot, "scaling_sgd", n, "SGD", 4096, lr, 21, 1, None, final)
    text = section(next_trials.main(["--results", logroot, "--configs", configs]), "SGD", 4096)
    assert "not reached within 210 steps (a lower bound)" in text
    assert "best setting lr 0.2, 21 epochs: seeds 2, 3 to run" in text


def test_a_late_best_grows_the_horizon_for_both_optimizers(study):
    logroot, configs = study
    for name in ("lars", "sgd"):  # the 512 trials so far are replaced by SGD's, whose best is late
        folder = os.path.join(logroot, f"scaling_{name}", "trials")
        for f in [f for f in os.listdir(folder) if f.endswith("_param_map.json")]:
            if '"batch_size": 512' in open(os.path.join(folder, f)).read():
                os.remove(os.path.join(folder, f))
                os.remove(os.path.join(folder, f.replace("_param_map.json", "_result.json")))
    for n, (lr, reach, final) in enumerate(((0.1, None, 70.0), (0.2, 0.95, 73.0), (0.4, None, 69.0)), start=50):
        trial(logroot, "scaling_sgd", n, "SGD", 512, lr, 4, 1, reach, final)
    text = "\n".join(next_trials.main(["--results", logroot, "--configs", configs]))
    for optimizer, lrs in (("LARS", "4 / 8 / 16"), ("SGD", "0.1 / 0.2 / 0.4")):  # LARS has not run its 512 grid
        assert ("the horizon grows to 6 epochs for both optimizers (SGD's best reaches the target late): its "
                f"seed-1 grid again at 6 epochs, lr {lrs}") in section(text.splitlines(), optimizer, 512)
    # the grown grid is appended to both configs (the 4-epoch entries stay: the configs hold every trial run)
    for name, lrs in (("lars", [4.0, 8.0, 16.0]), ("sgd", [0.1, 0.2, 0.4])):
        added = text.split(f"append to configs/scaling_study/{name}.yaml:\n")[1].split("\n\n")[0]
        with open(os.path.join(configs, f"{name}.yaml"), "a") as f:
            f.write(added + "\n")
        with open(os.path.join(configs, f"{name}.yaml")) as f:
            entry = [e for e in yaml.safe_load(f) if e["batch_size"] == 512][-1]
        assert (entry["epochs"], entry["lr"], entry["seed"], entry["warmup_fraction"]) == (6, lrs, 1, 0.05)
    # from then on the batch size's horizon is the grown one, and its new grid is awaited
    report = next_trials.main(["--results", logroot, "--configs", configs])
    assert section(report, "SGD", 512).startswith("SGD, batch 512: horizon 6 epochs")
    assert "3 configured trial(s) not finished (run run_study.sh): lr 0.1, 6 epochs, seed 1" in \
        section(report, "SGD", 512)


def test_a_diverged_trial_is_done_and_ranks_last(tmp_path):
    logroot, configs = empty_study(tmp_path)
    for n, (lr, reach, final, bad) in enumerate(((4.0, None, 70.0, False), (8.0, None, 71.0, False),
                                                 (16.0, 0.5, 75.0, True))):
        trial(logroot, "scaling_lars", n, "LARS", 4096, lr, 14, 1, reach, final, diverged=bad)
    text = section(next_trials.main(["--results", logroot, "--configs", configs]), "LARS", 4096)
    assert "lr 16: diverged" in text and "not finished" not in text
    assert "second horizon (21 epochs) at lr 8 and 4" in text


def test_below_2048_the_best_is_chosen_over_lrs_and_horizons_together(tmp_path):
    """A grown horizon adds a grid; the shorter one's trials stay candidates. LARS's late best grew the horizon
    while SGD's own grid had its best at an end: SGD's best over both horizons is there, so that grid grows."""
    logroot, configs = empty_study(tmp_path)
    specs = [("LARS", 4.0, 4, None, 70.0), ("LARS", 8.0, 4, 0.95, 73.0), ("LARS", 16.0, 4, None, 69.0),
             ("SGD", 0.1, 4, 0.9, 73.0), ("SGD", 0.2, 4, 0.8, 74.0), ("SGD", 0.4, 4, 0.6, 75.0),
             ("LARS", 4.0, 6, 0.9, 74.0), ("LARS", 8.0, 6, 0.7, 76.0), ("LARS", 16.0, 6, None, 71.0),
             ("SGD", 0.1, 6, 0.9, 74.0), ("SGD", 0.2, 6, 0.7, 76.0), ("SGD", 0.4, 6, 0.8, 75.0)]
    for n, (optimizer, lr, epochs, reach, final) in enumerate(specs):
        trial(logroot, f"scaling_{optimizer.lower()}", n, optimizer, 512, lr, epochs, 1, reach, final)
    for name, lrs in (("lars", "[4.0, 8.0, 16.0]"), ("sgd", "[0.1, 0.2, 0.4]")):
        with open(os.path.join(configs, f"{name}.yaml"), "a") as f:
            f.write(f"- <<: *base\n  batch_size: 512\n  epochs: 6\n  warmup_fraction: 0.05\n  lr: {lrs}\n")
    report = next_trials.main(["--results", logroot, "--configs", configs])
    # LARS: 4 epochs at lr 8 reaches the target at step 334, 6 epochs at lr 8 at step 370
    assert "best setting lr 8, 4 epochs: seeds 2, 3 to run" in section(report, "LARS", 512)
    # SGD: 4 epochs at lr 0.4 (step 211) beats every 6-epoch lr, and is the top of its grid
    assert ("the best over lrs and horizons, lr 0.4 at 4 epochs, is at an end of that horizon's grid: grow it to "
            "lr 0.8") in section(report, "SGD", 512)
    sgd = "\n".join(report).split("append to configs/scaling_study/sgd.yaml:\n")[1]
    with open(os.path.join(configs, "sgd.yaml")) as f:
        added = yaml.safe_load(f.read() + sgd.split("\n\n")[0])[-1]
    assert (added["batch_size"], added["epochs"], added["lr"], added["seed"]) == (512, 4, [0.8], 1)
