"""plot_results.py --target: steps to a validation top-1, best setting per batch size, the critical batch fit,
on trial files written here (no training)."""
import csv
import json
import os

import pytest

import plot_results
from test_plot_results import write_trial

RECIPE = ["arch", "dataset", "optimizer", "lr", "batch_size", "epochs", "seed"]
TARGET = 50.0
# The steps each optimizer needs at its best lr follow S(B) = S_min (1 + B_crit / B)
TRUTH = {"LARS": (100.0, 1000.0), "SGD": (150.0, 400.0)}
SIZES = (64, 256, 1024, 4096)
NOISE_PER_STEP = 10.0


def curve(steps_needed, total, every):
    """Validation top-1 rising linearly, crossing TARGET exactly at steps_needed: (step, top1) pairs."""
    return [(s, TARGET * s / steps_needed) for s in range(every, total + 1, every)]


def make_logs(logroot):
    n = 0
    for optimizer, (s_min, b_crit) in TRUTH.items():
        exp = f"{optimizer.lower()}_grid"
        for b in SIZES:
            best = s_min * (1 + b_crit / b)
            for lr, factor in ((1.0, 1.0), (2.0, 1.3), (0.5, None)):  # lr 0.5 never reaches the target
                for seed in (1, 2, 3):
                    jitter = 1 + 0.02 * (seed - 2)
                    needed = best * factor * jitter if factor else 1e9
                    evals = curve(needed, int(best * 3), max(1, int(best / 10)))
                    params = {"arch": "AirbenchNet", "dataset": "cifar10", "optimizer": optimizer, "lr": lr,
                              "batch_size": b, "epochs": 3, "seed": seed, "recipe_keys": RECIPE,
                              "trial_id": f"t{n:05d}", "start_time": f"2026-01-01T{n // 60:02d}:{n % 60:02d}",
                              "finished": True, "val_size": 5000, "noise_scale": True, "total_steps": int(best * 3)}
                    # B_simple grows linearly with the step (the parameter of the same name must not mask it)
                    rows = [row for s, v in evals for row in (
                        {"kind": "step", "iteration": s, "epoch": 1, "train_loss": 1.0,
                         "noise_scale": NOISE_PER_STEP * s},
                        {"kind": "eval", "iteration": s, "epoch": 1, "val_top1": v, "val_loss": 1.0})]
                    rows.append({"kind": "epoch", "iteration": evals[-1][0], "epoch": 3, "train_loss": 1.0,
                                 "test_top1": 40.0, "test_loss": 1.0, "val_top1": evals[-1][1]})
                    write_trial(logroot, exp, params["trial_id"], params, rows)
                    n += 1
    return [os.path.join(logroot, f"{o.lower()}_grid") for o in TRUTH]


def test_steps_to_target_interpolates_between_evaluations():
    evals = [(10, 20.0), (20, 40.0), (30, 60.0)]
    assert plot_results.steps_to_target(evals, 50.0) == pytest.approx(25.0)
    assert plot_results.steps_to_target(evals, 60.0) == pytest.approx(30.0)
    assert plot_results.steps_to_target(evals, 10.0) == 10.0  # the first evaluation already reaches it
    assert plot_results.steps_to_target(evals, 60.5) is None  # not reached


def test_the_fit_recovers_a_known_critical_batch():
    sizes = [64, 128, 512, 2048, 8192]
    s_min, b_crit = plot_results.fit_critical_batch(sizes, [300 * (1 + 700 / b) for b in sizes])
    assert s_min == pytest.approx(300, rel=0.01) and b_crit == pytest.approx(700, rel=0.01)
    assert plot_results.fit_critical_batch([64], [100]) is None


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stt")
    experiments = make_logs(str(root / "logs"))
    out = root / "plots"
    written = plot_results.main([*experiments, "--out", str(out), "--target", str(TARGET)])
    return out, written


def test_target_writes_the_figure_and_tables(outputs):
    out, written = outputs
    for name in ("steps_to_target.png", "steps_to_target.pdf", "steps_to_target.md", "steps_to_target.csv",
                 "noise_scale.png", "noise_scale.pdf", "noise_scale.md", "results_table.md"):
        assert str(out / name) in written and (out / name).stat().st_size > 0


def test_best_settings_and_critical_batch(outputs):
    out, _ = outputs
    with open(out / "steps_to_target.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(TRUTH) * len(SIZES) * 3
    best = {(r["optimizer"], int(r["batch_size"])): r for r in rows if r["best"] == "yes"}
    assert set(best) == {(o, b) for o in TRUTH for b in SIZES}
    for (optimizer, b), r in best.items():
        s_min, b_crit = TRUTH[optimizer]
        assert r["setting"] == "lr=1" and int(r["reached"]) == 3
        assert float(r["steps_mean"]) == pytest.approx(s_min * (1 + b_crit / b), rel=0.02)
    never = [r for r in rows if r["setting"] == "lr=0.5"]
    assert all(r["reached"] == "0" and r["steps_mean"] == "" for r in never)
    text = (out / "steps_to_target.md").read_text()
    assert "not reached" in text and "interpolated" in text
    test_rows = [line for line in text.split("## Final test top-1")[1].splitlines() if line.startswith("| LARS")
                 or line.startswith("| SGD")]
    assert len(test_rows) == len(best) and all("| 40.00 ± 0.00 | 3 |" in line for line in test_rows)
    for optimizer, (_, b_crit) in TRUTH.items():
        line = next(line for line in text.splitlines() if line.startswith(f"- {optimizer}: B_crit"))
        fitted = float(line.split("B_crit = ")[1].split()[0])
        low, high = (float(v) for v in line.split("interval ")[1].split(")")[0].split("–"))
        assert fitted == pytest.approx(b_crit, rel=0.1) and low <= fitted <= high


def test_steps_ratio_between_the_optimizers_and_the_schedule(outputs):
    out, _ = outputs
    with open(out / "steps_to_target.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(int(r["schedule_steps"]) == int(TRUTH[r["optimizer"]][0] * (1 + TRUTH[r["optimizer"]][1]
                                                                          / int(r["batch_size"])) * 3) for r in rows)
    text = (out / "steps_to_target.md").read_text().split("## Steps ratio")[1]
    for b in SIZES:
        cells = next(line for line in text.splitlines() if line.startswith(f"| {b} |")).split(" | ")
        truth = {o: s_min * (1 + b_crit / b) for o, (s_min, b_crit) in TRUTH.items()}
        assert cells[1] == "SGD / LARS"
        assert float(cells[4]) == pytest.approx(truth["SGD"] / truth["LARS"], rel=0.01)
        low, high = (float(v) for v in cells[5].split("–"))  # seeds jitter the steps by ±2%
        assert low == pytest.approx(truth["SGD"] * 0.98 / (truth["LARS"] * 1.02), rel=0.01)
        assert high == pytest.approx(truth["SGD"] * 1.02 / (truth["LARS"] * 0.98), rel=0.01)
        assert cells[6].startswith("apart (3 and 3 seeds)")  # the truths differ by far more than the jitter


def test_a_steps_ratio_against_a_never_reached_target_is_a_bound():
    def point(steps, total, reached=True):
        trials = [{"params": {"total_steps": total}}] * len(steps)
        return {"all_reached": reached, "n_reached": len(steps) if reached else 0, "n_val": len(steps),
                "n_running": 0, "trials": trials, "steps_mean": sum(steps) / len(steps) if reached else None,
                "steps_min": min(steps) if reached else None, "steps_max": max(steps) if reached else None,
                "reached": list(steps) if reached else []}
    best = {("LARS", 4096): point([110, 117, 120], 140), ("SGD", 4096): point([0, 0, 0], 210, reached=False),
            ("LARS", 2048): point([130, 139, 150], 168), ("SGD", 2048): point([140, 155, 160], 168)}
    lines = plot_results.ratio_lines(best)
    row4096 = next(line for line in lines if line.startswith("| 4096"))
    assert "> 210 (not reached)" in row4096 and f"> {210 / (347 / 3):.2f}" in row4096 and "apart" in row4096
    row2048 = next(line for line in lines if line.startswith("| 2048"))
    assert "overlap (3 and 3 seeds)" in row2048 and "0.93–1.23" in row2048
    # the first optimizer never reaching it: an upper bound; a schedule shorter than the other's slowest seed
    # cannot say whether the ranges overlap; a seed still running gives no bound yet
    best = {("LARS", 1024): point([0, 0], 150, reached=False), ("SGD", 1024): point([140, 160], 200)}
    (row,) = [line for line in plot_results.ratio_lines(best) if line.startswith("| 1024")]
    assert f"< {150 / 150:.2f}" in row and "may overlap (2 and 2 seeds)" in row
    best[("LARS", 1024)]["n_running"] = 1
    (row,) = [line for line in plot_results.ratio_lines(best) if line.startswith("| 1024")]
    assert "<" not in row and "0/2 reached, 1 running" in row


def _partly_reached(steps, missed, total):
    """A best setting `steps` of whose seeds reached the target and `missed` more ended without, schedule `total`."""
    n = len(steps) + missed
    return {"all_reached": False, "n_reached": len(steps), "n_val": n, "n_running": 0, "reached": list(steps),
            "trials": [{"params": {"total_steps": total}}] * n, "steps_mean": sum(steps) / len(steps),
            "steps_min": min(steps), "steps_max": max(steps)}


def test_a_seed_that_missed_the_target_bounds_the_ratio_it_enters():
    lars = {"all_reached": True, "n_reached": 3, "n_val": 3, "n_running": 0, "reached": [109.0, 117.0, 119.0],
            "trials": [{"params": {"total_steps": 140}}] * 3, "steps_mean": 115.0, "steps_min": 109.0,
            "steps_max": 119.0}
    # two SGD seeds above every LARS seed, the third never reached the target in 210 steps: still apart
    best = {("LARS", 4096): lars, ("SGD", 4096): _partly_reached([128.0, 148.0], 1, 210)}
    (row,) = [line for line in plot_results.ratio_lines(best) if line.startswith("| 4096")]
    cells = row.split(" | ")
    assert cells[3] == "> 162 (128–148; 1 of 3 > 210)"
    assert cells[4] == f"> {(128 + 148 + 210) / 3 / 115:.2f}"        # the mean if it had reached it at 210
    assert cells[5] == f"{128 / 119:.2f} to > {210 / 109:.2f}"
    assert cells[6].startswith("apart (3 and 3 seeds)")
    # a reached seed inside LARS's range: the ranges overlap whatever the missing seed needed
    best[("SGD", 4096)] = _partly_reached([110.0, 130.0], 1, 210)
    (row,) = [line for line in plot_results.ratio_lines(best) if line.startswith("| 4096")]
    assert "| overlap (3 and 3 seeds) |" in row
    # one LARS seed missing the target below SGD's: the lower bound cannot tell whether the ranges meet
    best = {("LARS", 4096): _partly_reached([100.0, 105.0], 1, 120), ("SGD", 4096): _partly_reached([125.0], 0, 140)}
    best[("SGD", 4096)]["all_reached"] = True
    (row,) = [line for line in plot_results.ratio_lines(best) if line.startswith("| 4096")]
    assert "| may overlap (3 and 1 seeds) |" in row and f"< {125 / ((100 + 105 + 120) / 3):.2f}" in row


def _steps_figure_with_schedules(experiment, total_steps):
    """(target points, the steps_to_target figure's axes) of a written grid whose trials log `total_steps`."""
    for name in os.listdir(os.path.join(experiment, "trials")):
        if name.endswith("_param_map.json"):
            path = os.path.join(experiment, "trials", name)
            with open(path) as f:
                params = json.load(f)
            with open(path, "w") as f:
                json.dump({**params, "total_steps": total_steps}, f)
    trials = [plot_results.summarize(t) for t in plot_results.read_all([experiment])]
    points = plot_results.target_points(plot_results.group_points(trials), TARGET)
    fig = plot_results.fig_steps_to_target(points, TARGET, "cmd", None)
    (ax,) = [a for a in fig.axes if a.get_ylabel()]
    return points, ax


def test_a_best_setting_that_some_seeds_missed_is_drawn_as_the_bound_of_its_mean(tmp_path):
    # lr 1 is best on seed 1 (reaches the target at step 200); its seed 2 ends without reaching it
    experiment = write_grid(str(tmp_path / "logs"), [(1.0, 1, 200, True), (2.0, 1, 250, True),
                                                     (1.0, 2, None, True)])
    points, ax = _steps_figure_with_schedules(experiment, 300)
    (bound,) = [line for line in ax.get_lines() if line.get_marker() == "^"]
    (steps,) = [p["reached"][0] for p in points if p["setting_label"] == "lr=1"]
    assert list(bound.get_xdata()) == [512] and list(bound.get_ydata()) == [pytest.approx((steps + 300) / 2)]
    assert any(t.get_text() == f"1/2 reached in 300: mean > {(steps + 300) / 2:.0f}" for t in ax.texts)


def test_noise_scale_at_the_target_of_each_best_setting(outputs):
    out, _ = outputs
    with open(out / "steps_to_target.csv") as f:
        best = {(r["optimizer"], r["batch_size"]): float(r["steps_mean"]) for r in csv.DictReader(f) if r["best"]}
    rows = [line.split(" | ") for line in (out / "noise_scale.md").read_text().splitlines()
            if line.startswith("| LARS") or line.startswith("| SGD")]
    assert {(r[0][2:], r[1]) for r in rows} == set(best)
    for r in rows:
        at_target = float(r[4].split()[0])  # mean over the seeds, then their range
        assert at_target == pytest.approx(NOISE_PER_STEP * best[(r[0][2:], r[1])], abs=1.0)
        assert float(r[6].split()[0]) > 0  # the optimizer's fitted B_crit beside it


def test_noise_at_interpolates_between_logged_steps():
    curve = [(10, 100.0), (20, 300.0)]
    assert plot_results.noise_at(curve, 15) == pytest.approx(200.0)
    assert plot_results.noise_at(curve, 10) == 100.0 and plot_results.noise_at(curve, 20) == 300.0
    assert plot_results.noise_at(curve, 5) is None and plot_results.noise_at(curve, 25) is None


def test_a_row_value_is_not_masked_by_a_parameter_of_the_same_name(tmp_path):
    # skeletor's frame joins the parameters to the rows; the param map has noise_scale: true (the flag)
    experiments = make_logs(str(tmp_path))
    trial = plot_results.read_experiment(experiments[0])[0]
    assert trial["params"]["noise_scale"] is True
    assert [r["noise_scale"] for r in trial["noise"]] == [NOISE_PER_STEP * r["iteration"] for r in trial["noise"]]


@pytest.mark.parametrize("value", ["-1", "100.5", "nan"])
def test_a_target_outside_0_to_100_is_one_line_and_writes_nothing(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        plot_results.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "out"), "--target", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plot_results.py: error: --target: expected") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_target_without_validation_rows_is_an_error(tmp_path, capsys):
    params = {"arch": "AirbenchNet", "dataset": "cifar10", "optimizer": "LARS", "lr": 1.0, "batch_size": 64,
              "epochs": 1, "seed": 1, "recipe_keys": RECIPE, "trial_id": "a1", "finished": True}
    write_trial(str(tmp_path / "logs"), "plain", "a1", params,
                [{"kind": "epoch", "iteration": 10, "epoch": 1, "train_loss": 1.0, "test_top1": 40.0}])
    with pytest.raises(SystemExit):
        plot_results.main([str(tmp_path / "logs" / "plain"), "--out", str(tmp_path / "out"), "--target", "50"])
    assert "--target: no trial has validation rows" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_best_setting_is_chosen_on_the_first_seed_and_reported_over_all(tmp_path):
    # lr 1: seed 1 needs 100 steps, seeds 2 and 3 need 140 (mean 127); lr 2: one seed, 110 steps. The grid was
    # tuned on seed 1 (lr 1 wins there); its later seeds must not hand the choice to the single-seed lr 2
    logroot = str(tmp_path / "logs")
    runs = [(1.0, 1, 100), (1.0, 2, 140), (1.0, 3, 140), (2.0, 1, 110), (0.5, 1, None)]
    for n, (lr, seed, needed) in enumerate(runs):
        evals = curve(needed or 1e9, 300, 10)
        params = {"arch": "AirbenchNet", "dataset": "cifar10", "optimizer": "LARS", "lr": lr, "batch_size": 512,
                  "epochs": 3, "seed": seed, "recipe_keys": RECIPE, "trial_id": f"t{n:05d}",
                  "start_time": f"2026-01-01T00:{n:02d}", "finished": True, "val_size": 5000}
        rows = [{"kind": "eval", "iteration": s, "epoch": 1, "val_top1": v, "val_loss": 1.0} for s, v in evals]
        rows.append({"kind": "epoch", "iteration": 300, "epoch": 3, "train_loss": 1.0, "test_top1": 60.0 + seed,
                     "test_loss": 1.0, "val_top1": evals[-1][1]})
        write_trial(logroot, "grid", params["trial_id"], params, rows)
    out = tmp_path / "plots"
    plot_results.main([os.path.join(logroot, "grid"), "--out", str(out), "--target", str(TARGET)])
    with open(out / "steps_to_target.csv") as f:
        (best,) = [r for r in csv.DictReader(f) if r["best"]]
    assert best["setting"] == "lr=1" and best["seeds"] == "3"
    assert float(best["steps_mean"]) == pytest.approx((100 + 140 + 140) / 3, rel=0.01)
    text = (out / "steps_to_target.md").read_text()
    assert "| LARS | 512 | lr=1 | 62.00 ± 1.00 | 3 |" in text  # test top-1 over its three seeds


def write_grid(logroot, runs):
    """runs: [(lr, seed, steps needed or None, finished)]: one trial each, evaluations every 10 steps to step
    300 (a finished trial) or to step 100 (one still running, or stopped early)."""
    for n, (lr, seed, needed, finished) in enumerate(runs):
        evals = curve(needed or 1e9, 300 if finished else 100, 10)
        params = {"arch": "AirbenchNet", "dataset": "cifar10", "optimizer": "LARS", "lr": lr, "batch_size": 512,
                  "epochs": 3, "seed": seed, "recipe_keys": RECIPE, "trial_id": f"t{n:05d}",
                  "start_time": f"2026-01-01T00:{n:02d}", "finished": finished, "val_size": 5000}
        rows = [{"kind": "eval", "iteration": s, "epoch": 1, "val_top1": v, "val_loss": 1.0} for s, v in evals]
        rows.append({"kind": "epoch", "iteration": evals[-1][0], "epoch": 3 if finished else 1, "train_loss": 1.0,
                     "test_top1": 60.0, "test_loss": 1.0, "val_top1": evals[-1][1]})
        write_trial(logroot, "grid", params["trial_id"], params, rows)
    return os.path.join(logroot, "grid")


def test_a_running_trial_counts_once_it_reaches_the_target(tmp_path):
    # lr 1: finished, 200 steps. lr 2: still running at step 100, below the target: not "not reached" and not a
    # candidate. lr 4: running, but it crossed the target at step 80: that crossing is final, and it wins.
    # Seed 2 of lr 1: running, below the target: the setting's seeds count 1 of 2.
    runs = [(1.0, 1, 200, True), (2.0, 1, 250, False), (4.0, 1, 80, False), (1.0, 2, 210, False)]
    experiment = write_grid(str(tmp_path / "logs"), runs)
    trials = [plot_results.summarize(t) for t in plot_results.read_all([experiment])]
    points = plot_results.target_points(plot_results.group_points(trials), TARGET)
    by_lr = {p["setting_label"]: p for p in points}
    assert (by_lr["lr=1"]["n_val"], by_lr["lr=1"]["n_running"], by_lr["lr=1"]["all_reached"]) == (1, 1, True)
    assert by_lr["lr=2"]["rank"] is None and by_lr["lr=2"]["n_val"] == 0 and by_lr["lr=2"]["final_val"] is None
    assert by_lr["lr=4"]["steps_mean"] == pytest.approx(80.0)
    (best,) = plot_results.best_per_batch(points).values()
    assert best["setting_label"] == "lr=4"
    text, _ = plot_results.steps_to_target_table(points, TARGET)
    assert "| LARS | 512 | grid | lr=2 | 1 | — | 0/0 (1 running) | running |" in text  # no total_steps logged


def test_a_best_setting_that_never_reaches_the_target_is_drawn_as_a_lower_bound(tmp_path):
    experiment = write_grid(str(tmp_path / "logs"), [(1.0, 1, None, True), (2.0, 1, None, True)])
    points, ax = _steps_figure_with_schedules(experiment, 300)
    bounds = [line for line in ax.get_lines() if line.get_marker() == "^"]
    assert [(list(b.get_xdata()), list(b.get_ydata())) for b in bounds] == [([512], [300])]
    assert any(t.get_text() == "not reached in 300" for t in ax.texts)


def test_no_bootstrap_interval_from_one_seed_per_batch_size():
    assert plot_results.bootstrap_critical_batch({64: [1000.0], 512: [300.0], 4096: [120.0]}) is None
    low, high = plot_results.bootstrap_critical_batch({64: [1000.0, 1100.0], 512: [300.0, 280.0], 4096: [120.0]})
    assert low < high


def test_with_a_target_trust_ratios_are_drawn_at_the_smallest_and_largest_batch_best_settings(tmp_path):
    # batches 64 / 512 / 4096, lr 1 (reaches the target first) and lr 2 (later); every trial logs trust rows
    # except batch 4096's lr 2: the panels are 64 and 4096 at lr 1, and the table names them
    logroot, n = str(tmp_path / "logs"), 0
    for b in (64, 512, 4096):
        for lr, needed in ((1.0, 100), (2.0, 150)):
            params = {"arch": "AirbenchNet", "dataset": "cifar10", "optimizer": "LARS", "lr": lr, "batch_size": b,
                      "epochs": 3, "seed": 1, "recipe_keys": RECIPE, "trial_id": f"t{n:05d}",
                      "start_time": f"2026-01-01T00:{n:02d}", "finished": True, "val_size": 5000}
            rows = [{"kind": "eval", "iteration": s, "epoch": 1, "val_top1": v, "val_loss": 1.0}
                    for s, v in curve(needed, 300, 10)]
            if (b, lr) != (4096, 2.0):
                rows += [{"kind": "trust", "iteration": s, "layers": ["conv", "head"], "weight_norm": [2.0, 1.0],
                          "grad_norm": [0.5, 0.25], "trust_ratio": [0.001 * b, 0.002 * b]} for s in (10, 300)]
                rows.sort(key=lambda r: r["iteration"])  # in step order, as a trial writes them
            rows.append({"kind": "epoch", "iteration": 300, "epoch": 3, "train_loss": 1.0, "test_top1": 60.0,
                         "test_loss": 1.0, "val_top1": 60.0})
            write_trial(logroot, "grid", params["trial_id"], params, rows)
            n += 1
    out = tmp_path / "plots"
    written = plot_results.main([os.path.join(logroot, "grid"), "--out", str(out), "--target", str(TARGET)])
    assert str(out / "trust_ratios.png") in written
    headings = [line for line in (out / "trust_ratios.md").read_text().splitlines() if line.startswith("## ")]
    assert headings == ["## grid, batch 64 (lr=1), seed 1: steps 10 and 300",
                        "## grid, batch 4096 (lr=1), seed 1: steps 10 and 300"]
