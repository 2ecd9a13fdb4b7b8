"""plot_results.py on trial files written here in track-ml's layout (no training): several experiments,
batch sizes, seeds and setting sweeps, one partial trial, one diverged trial, one measured on a test subset."""
import json
import math
import os
import struct

import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.collections import PolyCollection

import plot_results

RECIPE = ["arch", "width", "dataset", "train_subset", "optimizer", "lr", "batch_size", "epochs", "schedule",
          "max_samples_per_gpu", "seed"]
EPOCHS = 4
STEPS_PER_EPOCH = {64: 157, 1024: 10, 16384: 1}


def top1(exp, batch, seed, epoch, lr=1.0, micro=512):
    """A made-up, distinct test top-1 for every trial and epoch."""
    base = {"seed_table": 60.0, "sgd_nesterov_tuned": 70.0, "lars_tuned": 65.0}[exp]
    return round(base - 3 * math.log2(batch / 64) + 2 * epoch + 0.7 * seed + lr + micro / 512, 4)


def trial_spec():
    """[(experiment, params overrides, diverge_at_epoch, epochs_done, test_subset)]"""
    specs = []
    for b in (64, 1024, 16384):
        for seed in (0, 1, 2):
            specs.append(("seed_table", dict(batch_size=b, seed=seed, optimizer="LARS", lr=0.1),
                          3 if (b, seed) == (16384, 2) else None, EPOCHS, 0))
    for b in (64, 1024):
        for seed in (0, 1):
            specs.append(("sgd_nesterov_tuned", dict(batch_size=b, seed=seed, optimizer="SGD", lr=0.2),
                          None, 2 if (b, seed) == (1024, 1) else EPOCHS, 1000))
    for seed in (0, 1):  # lars_tuned: batch 64 plain, batch 1024 an lr grid and a ghost-batch sweep at lr 2
        specs.append(("lars_tuned", dict(batch_size=64, seed=seed, optimizer="LARS", lr=1.0), None, EPOCHS, 0))
        for lr in (1.0, 2.0, 4.0):
            specs.append(("lars_tuned", dict(batch_size=1024, seed=seed, optimizer="LARS", lr=lr), None, EPOCHS, 0))
        specs.append(("lars_tuned", dict(batch_size=1024, seed=seed, optimizer="LARS", lr=2.0,
                                         max_samples_per_gpu=128), None, EPOCHS, 0))
    return specs


def write_trial(logroot, exp, trial_id, params, rows):
    folder = os.path.join(logroot, exp, "trials")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{trial_id}_param_map.json"), "w") as f:
        json.dump(params, f)
    with open(os.path.join(folder, f"{trial_id}_result.json"), "w") as f:
        for row in rows:
            f.write(json.dumps({**row, "trial_id": trial_id}) + "\n")  # as store.Trial.log writes them


def make_logs(logroot):
    """Writes the trials; returns {trial_id: (experiment, params, epoch rows)} for the checks."""
    logs = {}
    for n, (exp, over, diverge, done, subset) in enumerate(trial_spec()):
        params = {"arch": "ResNet18", "width": 8, "dataset": "cifar10", "train_subset": 10000, "lr": 0.1,
                  "schedule": "poly", "max_samples_per_gpu": 512, "epochs": EPOCHS, **over,
                  "recipe_keys": RECIPE, "trial_id": f"trial{n:05d}", "start_time": f"2026-01-01T00:{n:02d}",
                  "logroot": logroot, "dataroot": "/data", "cuda": False, "git_hash": "abc",
                  "scaled_lr": over["lr"] * 2, "steps_per_epoch": STEPS_PER_EPOCH[over["batch_size"]],
                  "finished": done == EPOCHS, "test_subset": subset}
        b, seed = params["batch_size"], params["seed"]
        rows = []
        for e in range(1, done + 1):
            loss = 2.0 / e + 0.01 * seed
            if diverge is not None and e >= diverge:
                loss = float("nan")
            elif diverge is not None and e == diverge - 1:
                loss = 50.0  # blows up before the NaN: must not set the axis range
            it = e * params["steps_per_epoch"]
            rows.append({"kind": "step", "iteration": it - 1, "train_loss": loss})
            rows.append({"kind": "epoch", "iteration": it, "epoch": e, "learning_rate": 0.1, "train_loss": loss,
                         "train_top1": 50.0, "test_loss": 1.0,
                         "test_top1": top1(exp, b, seed, e, params["lr"], params["max_samples_per_gpu"]),
                         "test_top5": 90.0, "epoch_seconds": 30.0 + n + e, "images_per_s": 100.0, "batch_size": b})
        rows = [{**row, "trial_id": params["trial_id"]} for row in rows]  # as write_trial writes them
        write_trial(logroot, exp, params["trial_id"], params, rows)
        logs[params["trial_id"]] = (exp, params, [r for r in rows if r["kind"] == "epoch"])
    return logs


EXPERIMENTS = ("seed_table", "sgd_nesterov_tuned", "lars_tuned")


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    logroot = str(tmp_path_factory.mktemp("plot_logs") / "logs")
    return logroot, make_logs(logroot)


@pytest.fixture(scope="module")
def figures(logs):
    logroot, _ = logs
    trials = plot_results.read_all([os.path.join(logroot, e) for e in EXPERIMENTS])
    figs = plot_results.build_figures(trials, command="python plot_results.py logs/{a,b,c} --out x", note="2-core CPU")
    yield figs
    for fig in figs.values():
        plot_results.plt.close(fig)


def table_rows(path):
    with open(path) as f:
        lines = [line for line in f if line.startswith("| ") and not line.startswith("| ---")]
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|")))) for line in lines[1:]]


FIGURES = ("accuracy_vs_batch", "test_accuracy_curves", "train_loss", "setting_lr", "setting_max_samples_per_gpu")


def test_read_experiment_returns_plain_trial_dicts(logs):
    logroot, written = logs
    trials = plot_results.read_experiment(os.path.join(logroot, "sgd_nesterov_tuned"))
    assert [t["trial_id"] for t in trials] == sorted(t for t, v in written.items() if v[0] == "sgd_nesterov_tuned")
    t = trials[0]
    assert set(t) == {"experiment", "path", "param_path", "trial_id", "params", "epochs", "evals", "trust", "noise",
                      "name"}
    assert t["evals"] == [] and t["trust"] == [] and t["noise"] == []  # without --val_size, trust ratios, noise
    assert t["experiment"] == "sgd_nesterov_tuned" and t["param_path"].endswith("_param_map.json")
    assert t["params"] == written[t["trial_id"]][1]
    # epoch rows only, in order (skeletor's pandas reader may round floats in the last digit)
    expected = written[t["trial_id"]][2]
    assert [row.keys() for row in t["epochs"]] == [row.keys() for row in expected]
    assert all(row[k] == (pytest.approx(want[k], rel=1e-12) if isinstance(want[k], float) else want[k])
               for row, want in zip(t["epochs"], expected) for k in want)


def test_every_output_is_written_and_nothing_else(logs, tmp_path, capsys):
    logroot, _ = logs
    out = tmp_path / "plots"
    plot_results.main([os.path.join(logroot, e) for e in EXPERIMENTS] + ["--out", str(out), "--note", "2-core CPU"])
    expected = {f"{stem}.{ext}" for stem in FIGURES for ext in ("png", "pdf")} | {"results_table.md"}
    assert set(os.listdir(out)) == expected  # no temporary folder left behind
    for stem in FIGURES:
        head = (out / f"{stem}.png").read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, _ = struct.unpack(">II", head[16:24])
        assert width in (700, 1400)  # 3.5 in or 7 in at 200 dpi
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    assert f"{len(trial_spec())} trial(s) from 3 experiment(s)" in capsys.readouterr().out


def test_default_out_is_plots_not_images(logs, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_results.main(["--help"])
    assert exit_info.value.code == 0 and "default: ./plots" in " ".join(capsys.readouterr().out.split())
    seen = {}
    monkeypatch.setattr(plot_results, "write_all", lambda trials, out, *a, **k: seen.setdefault("out", out) and [])
    plot_results.main([os.path.join(logs[0], "seed_table")])
    assert seen["out"] == "plots"


def test_legends_outside_axes_and_texts_inside_figure(figures):
    assert set(figures) == set(FIGURES)
    for name, fig in figures.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        fig_box = fig.bbox
        axes_boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax_box in axes_boxes:
                assert not box.overlaps(ax_box), f"{name}: legend overlaps the axes"
            assert box.x0 >= fig_box.x0 - 1 and box.x1 <= fig_box.x1 + 1 and box.y0 >= fig_box.y0 - 1, name
        if name in ("accuracy_vs_batch", "test_accuracy_curves", "train_loss"):
            assert legends, f"{name}: no legend"
        title = fig._suptitle
        assert title is not None and title.get_text()
        for legend in legends:
            assert not legend.get_window_extent(renderer).overlaps(title.get_window_extent(renderer)), name
        texts = [title] + list(fig.texts) + [ax.title for ax in fig.axes if ax.get_visible()]
        for text in texts:
            box = text.get_window_extent(renderer)
            assert (box.x0 >= fig_box.x0 - 1 and box.x1 <= fig_box.x1 + 1 and box.y0 >= fig_box.y0 - 1
                    and box.y1 <= fig_box.y1 + 1), f"{name}: {text.get_text()[:40]!r} leaves the figure"
        footer = " ".join(t.get_text() for t in fig.texts)
        assert "python plot_results.py" in footer and "2-core CPU" in footer, name


def test_accuracy_vs_batch_has_error_bars_n_and_the_seed_beside(figures):
    ax, ax_seed = figures["accuracy_vs_batch"].axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3  # one per experiment
    spans = [seg[1][1] - seg[0][1] for c in bars for col in c.lines[2] for seg in col.get_segments()]
    assert any(s > 0 for s in spans)  # several seeds: a visible spread
    labels = [h.get_label() for h in ax_seed.get_legend().legend_handles]
    assert labels[:3] == ["lars_tuned (LARS)", "seed_table (LARS)", "sgd_nesterov_tuned (SGD)"]
    lines = {line.get_label(): line for line in ax_seed.get_lines()}
    assert list(lines["seed's table, poly power 2"].get_ydata()) == [89.39, 85.45, 81.2, 73.41, 64.13]
    assert list(lines["seed's table, poly power 1"].get_ydata()) == [89.97, 86.59, 83.05, 76.92, 68.33]
    assert lines["seed's table, poly power 1"].get_linestyle() == "--"
    # the data's own panel: its batch sizes only, a y-range that fits the data (no chance line at 10% here)
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "1024", "16384"]
    lo, hi = ax.get_ylim()
    assert 10 < lo < hi < 100 and not any(list(line.get_ydata()) == [10, 10] for line in ax.get_lines())
    ns = [t.get_text() for t in ax.texts if t.get_text().startswith("n=")]
    assert ns.count("n=3") >= 2 and "n=1" not in ns  # every drawn point has several seeds here
    footer = " ".join(" ".join(t.get_text() for t in figures["accuracy_vs_batch"].texts).split())
    assert "different scale" in footer and "min-max" in footer
    assert "final" in ax.get_ylabel() and "best" not in " ".join(lines)  # final only, no best


def test_curves_one_row_per_experiment_on_epoch_and_step_axes(figures, logs):
    fig = figures["test_accuracy_curves"]
    assert len(fig.axes) == 6  # three experiments, two axes each
    rows = [fig.axes[i:i + 2] for i in (0, 2, 4)]
    for ax_e, ax_s in rows:
        assert ax_e.get_xlabel() == "epoch" and "steps" in ax_s.get_xlabel() and ax_s.get_xscale() == "log"
    # lars_tuned 64 and its best 1024 setting; seed_table 64, 1024, 16384; sgd 64, 1024: one line each
    assert [len(ax_e.get_lines()) for ax_e, _ in rows] == [2, 3, 2]
    assert [ax_e.get_title(loc="left") for ax_e, _ in rows] == ["lars_tuned (LARS)", "seed_table (LARS)",
                                                                "sgd_nesterov_tuned (SGD)"]
    ax_e, ax_s = rows[1]
    assert sum(isinstance(c, PolyCollection) for c in ax_e.collections) == 3  # several seeds everywhere
    _, written = logs
    seed64 = [rows_ for exp, p, rows_ in written.values() if exp == "seed_table" and p["batch_size"] == 64]
    means = [sum(r[e]["test_top1"] for r in seed64) / 3 for e in range(EPOCHS)]
    assert any(list(line.get_ydata()) == pytest.approx(means) for line in ax_e.get_lines())
    steps = [e * STEPS_PER_EPOCH[64] for e in range(1, EPOCHS + 1)]
    assert any(list(line.get_xdata()) == pytest.approx(steps) for line in ax_s.get_lines())


def test_train_loss_is_log_scale_and_diverged_trial_marked_not_scaling(figures):
    ax = figures["train_loss"].axes[0]
    assert ax.get_yscale() == "log"
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [3]  # diverged at epoch 3
    assert ax.get_ylim()[1] < 50  # the 50.0 before the NaN does not set the range
    assert crosses[0].get_ydata()[0] == pytest.approx(ax.get_ylim()[1])  # pinned to the top edge
    ax_s = figures["train_loss"].axes[1]  # and against optimizer steps
    assert "steps" in ax_s.get_xlabel() and ax_s.get_xscale() == "log" and len(ax_s.get_lines()) >= 7


def test_setting_figures_panel_per_sweep(figures):
    lr = [ax for ax in figures["setting_lr"].axes if ax.get_visible()]
    assert len(lr) == 1 and lr[0].get_xlabel() == "base lr (--lr) (lr used)" and "batch 1024" in lr[0].get_title()
    assert [t.get_text() for t in lr[0].get_xticklabels()] == ["1\n(2)", "2\n(4)", "4\n(8)"]  # scaled_lr = 2 lr
    assert [t.get_text() for t in lr[0].texts] == ["n=2"] * 3
    assert "max_samples_per_gpu=512" in lr[0].get_title()  # the lr grid at the default micro-batch
    ghost = [ax for ax in figures["setting_max_samples_per_gpu"].axes if ax.get_visible()]
    assert len(ghost) == 1 and [t.get_text() for t in ghost[0].get_xticklabels()] == ["128", "512"]
    assert any(isinstance(c, ErrorbarContainer) for c in lr[0].containers)


def test_colour_per_recipe_is_deterministic_and_shared(figures):
    colours = plot_results.recipe_colours(EXPERIMENTS)
    assert colours == plot_results.recipe_colours(reversed(EXPERIMENTS)) and len(set(colours.values())) == 3
    assert plot_results.recipe_colours(["lars_tuned"]) == {"lars_tuned": colours["lars_tuned"]}  # by name alone
    handles = {h.get_label(): h.get_color() for h in figures["test_accuracy_curves"].axes[1].get_legend().legend_handles
               if hasattr(h, "get_color")}
    acc = {h.get_label(): h.get_color() for h in figures["accuracy_vs_batch"].axes[1].get_legend().legend_handles}
    for label in ("lars_tuned (LARS)", "seed_table (LARS)", "sgd_nesterov_tuned (SGD)"):
        assert handles[label] == acc[label] == colours[label.split(" ")[0]]


def test_table_rows_are_means_over_seeds(logs, tmp_path):
    logroot, written = logs
    out = tmp_path / "out"
    plot_results.main([os.path.join(logroot, e) for e in EXPERIMENTS] + ["--out", str(out)])
    rows = table_rows(out / "results_table.md")
    keys = [(r["experiment"], int(r["batch size"]), r["setting"]) for r in rows]
    assert keys == sorted(keys) and len(keys) == 3 + 2 + 1 + 4
    assert ("lars_tuned", 1024, "lr=2, max_samples_per_gpu=128") in keys and ("seed_table", 64, "—") in keys
    for row in rows:
        settings = dict(s.split("=") for s in row["setting"].split(", ")) if row["setting"] != "—" else {}
        seeds = [(p, rows_) for exp, p, rows_ in written.values() if exp == row["experiment"]
                 and p["batch_size"] == int(row["batch size"])
                 and all(plot_results._fmt(p[k]) == v for k, v in settings.items())]
        finals = [rows_[-1]["test_top1"] for _, rows_ in seeds]
        assert int(row["seeds"]) == len(seeds)
        assert row["final top-1 (%)"] == f"{sum(finals) / len(finals):.2f}"
        assert row["min-max (%)"] == f"{min(finals):.2f}–{max(finals):.2f}"
        assert row["steps"] == str(max(r[-1]["iteration"] for _, r in seeds))
        minutes = sum(sum(x["epoch_seconds"] for x in r) for _, r in seeds) / len(seeds) / 60
        assert row["wall time per seed (min)"] == f"{minutes:.1f}"
    by = {(r["experiment"], int(r["batch size"]), r["setting"]): r for r in rows}
    assert by[("seed_table", 64, "—")]["seed's LARS top-1 (%) power 2 / 1"] == "89.39 / 89.97"
    assert by[("seed_table", 1024, "—")]["seed's LARS top-1 (%) power 2 / 1"] == "81.20 / 83.05"
    seed_column = "seed's LARS top-1 (%) power 2 / 1"
    assert by[("lars_tuned", 1024, "lr=1, max_samples_per_gpu=512")][seed_column] == "81.20 / 83.05"
    assert "diverged: 1 of 3 seeds (epoch 3)" in by[("seed_table", 16384, "—")]["notes"]
    sgd = by[("sgd_nesterov_tuned", 1024, "—")]
    assert sgd["epochs"] == "2–4/4" and "partial: 1 of 2 seeds at 2/4 epochs" in sgd["notes"]
    assert "test subset: 1000 images" in sgd["notes"]
    assert by[("seed_table", 64, "—")]["notes"] == "—" and by[("seed_table", 64, "—")]["epochs"] == "4/4"
    text = (out / "results_table.md").read_text()
    assert "minutes" in text and " s |" not in text and "different scale" in text


def test_grouping_uses_recipe_keys_only():
    def trial(tid, seed, lr, **extra):
        params = {"trial_id": tid, "batch_size": 256, "optimizer": "LARS", "lr": lr, "seed": seed, "epochs": 1,
                  "finished": True, "recipe_keys": ["optimizer", "lr", "batch_size", "epochs", "seed"],
                  "start_time": tid, "logroot": f"/x/{tid}", **extra}
        return {"experiment": "e", "path": "e", "param_path": f"e/trials/{tid}_param_map.json", "trial_id": tid,
                "params": params, "epochs": [{"kind": "epoch", "epoch": 1, "iteration": 5, "test_top1": 10.0 + lr,
                                               "train_loss": 1.0, "test_loss": 1.0, "epoch_seconds": 6.0}]}

    # bookkeeping that differs (logroot, start_time, scaled_lr) is no setting; seeds fold into one point
    points = plot_results.group_points([plot_results.summarize(t) for t in (
        trial("a", 0, 0.1, scaled_lr=0.2), trial("b", 1, 0.1, scaled_lr=0.3), trial("c", 0, 0.2))])
    assert [(p["setting_label"], p["n"]) for p in points] == [("lr=0.1", 2), ("lr=0.2", 1)]
    assert points[0]["mean"] == pytest.approx(10.1)
    old = trial("d", 0, 0.1)
    del old["params"]["recipe_keys"]
    with pytest.raises(plot_results.ResultsError, match=r"^e/trials/d_param_map.json: no recipe_keys"):
        plot_results.summarize(old)


def _damage(logroot, tmp_path, how):
    import shutil
    exp = tmp_path / "seed_table"
    shutil.copytree(os.path.join(logroot, "seed_table"), exp)
    folder = exp / "trials"
    if how == "corrupt":
        result = sorted(folder.glob("*_result.json"))[0]
        lines = result.read_text().splitlines(keepends=True)
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
        result.write_text("".join(lines))
        return str(exp), f"{result}: line {len(lines)} is not valid JSON"
    if how == "no_recipe_keys":
        param = sorted(folder.glob("*_param_map.json"))[0]
        params = json.loads(param.read_text())
        del params["recipe_keys"]
        param.write_text(json.dumps(params))
        return str(exp), f"{param}: no recipe_keys"
    if how == "no_epochs":
        for result in folder.glob("*_result.json"):
            result.write_text("")
        return str(exp), f"{exp}: no results yet"
    if how == "missing":
        return str(tmp_path / "nope"), f"{tmp_path / 'nope'}: no such directory"
    if how == "empty":
        (tmp_path / "empty").mkdir()
        return str(tmp_path / "empty"), f"{tmp_path / 'empty'}: no trials here"
    if how == "logroot":
        return logroot, f"{logroot}: no trials here"


def test_an_experiment_without_a_finished_epoch_is_left_out_with_a_note(logs, tmp_path, capsys):
    """A study in progress: an experiment whose trials have not finished an epoch yet."""
    logroot, _ = logs
    folder, message = _damage(logroot, tmp_path, "no_epochs")
    written = plot_results.main([os.path.join(logroot, "lars_tuned"), folder, "--out", str(tmp_path / "out")])
    assert f"plot_results.py: note: left out {message}" in capsys.readouterr().err
    assert "seed_table" not in (tmp_path / "out" / "results_table.md").read_text()
    assert written
    with pytest.raises(SystemExit) as exit_info:  # alone, it is an error
        plot_results.main([folder, "--out", str(tmp_path / "out2")])
    assert exit_info.value.code == 2 and f"plot_results.py: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("how", ["corrupt", "no_recipe_keys", "missing", "empty", "logroot"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(logs, tmp_path, capsys, how):
    logroot, _ = logs
    folder, message = _damage(logroot, tmp_path, how)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        plot_results.main([os.path.join(logroot, "lars_tuned"), folder, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"plot_results.py: error: {message}")
    assert not out.exists()  # nothing written, even for the readable folder


def test_existing_output_folder_keeps_other_files(logs, tmp_path):
    logroot, _ = logs
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    plot_results.main([os.path.join(logroot, "seed_table"), "--out", str(out)])
    names = set(os.listdir(out))
    assert "keep.txt" in names and "results_table.md" in names and not any(n.startswith(".") for n in names)
    assert not any(n.startswith("setting_") for n in names)  # seed_table sweeps nothing


def test_output_path_that_is_a_file_is_one_line_exit_2(logs, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        plot_results.main([os.path.join(logs[0], "seed_table"), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"plot_results.py: error: {out}: cannot write")
    assert out.read_text() == "a file"


def test_settings_sort_numerically_and_whole_micro_batch_sits_at_its_size(tmp_path):
    """lr 16 after 4 (not as text), ghost_batch_size 0 (the whole micro-batch of 512) after 128."""
    recipe = ["arch", "optimizer", "lr", "batch_size", "ghost_batch_size", "epochs", "seed"]
    n = 0
    for lr, ghost in ((4.0, 128), (16.0, 128), (8.0, 128), (8.0, 0), (8.0, 32)):
        params = {"arch": "AirbenchNet", "optimizer": "LARS", "lr": lr, "batch_size": 2048, "ghost_batch_size": ghost,
                  "epochs": 1, "seed": 1, "recipe_keys": recipe, "trial_id": f"g{n}", "finished": True,
                  "bn_batch_size": ghost or 512, "start_time": f"2026-01-01T00:0{n}"}
        write_trial(str(tmp_path / "logs"), "grid", f"g{n}", params,
                    [{"kind": "epoch", "iteration": 10, "epoch": 1, "train_loss": 1.0, "test_loss": 1.0,
                      "test_top1": 50.0 + n}])
        n += 1
    out = tmp_path / "out"
    plot_results.main([str(tmp_path / "logs" / "grid"), "--out", str(out)])
    settings = [r["setting"] for r in table_rows(out / "results_table.md")]
    assert settings == ["ghost_batch_size=32, lr=8", "ghost_batch_size=128, lr=4", "ghost_batch_size=128, lr=8",
                        "ghost_batch_size=128, lr=16", "ghost_batch_size=0 (whole micro-batch of 512), lr=8"]
    trials = plot_results.read_all([str(tmp_path / "logs" / "grid")])
    figures = plot_results.build_figures(trials)
    (ax,) = [a for a in figures["setting_ghost_batch_size"].axes if a.get_visible()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "128", "512\n(whole)"]
    for fig in figures.values():
        plot_results.plt.close(fig)


def test_experiments_are_named_by_their_configs_name(tmp_path):
    (tmp_path / "grid.yaml").write_text('- name: "3: tuned LARS"\n  lr: [1.0, 2.0]\n- lr: 4.0\n')
    params = {"arch": "AirbenchNet", "optimizer": "LARS", "lr": 1.0, "batch_size": 64, "epochs": 1, "seed": 1,
              "recipe_keys": ["arch", "optimizer", "lr", "batch_size", "epochs", "seed"], "trial_id": "n1",
              "finished": True, "invocation": f"train.py --config {tmp_path / 'grid.yaml'} --epochs 1 exp"}
    write_trial(str(tmp_path / "logs"), "exp", "n1", params,
                [{"kind": "epoch", "iteration": 10, "epoch": 1, "train_loss": 1.0, "test_top1": 50.0}])
    (trial,) = plot_results.read_all([str(tmp_path / "logs" / "exp")])
    assert trial["name"] == "3: tuned LARS"
    points = plot_results.group_points([plot_results.summarize(trial)])
    assert plot_results.recipe_label("exp", points) == "3: tuned LARS (LARS)"
    import sweep
    assert sweep.load_config(str(tmp_path / "grid.yaml")) == [{"lr": [1.0, 2.0]}, {"lr": [4.0]}]
    (tmp_path / "bad.yaml").write_text("name: 3\nlr: 1.0\n")
    with pytest.raises(sweep.ConfigError, match="name: expected a readable name"):
        sweep.load_config(str(tmp_path / "bad.yaml"))


def test_a_sweep_is_drawn_at_its_best_setting_on_validation_when_it_has_a_split():
    def point(setting, test, val):
        return {"experiment": "grid", "batch_size": 512, "setting": setting, "mean": test, "val_mean": val}
    with_split = [point("lr=1", 80.0, 70.0), point("lr=2", 78.0, 72.0)]  # the better test top-1 is not chosen
    assert [p["setting"] for p in plot_results.line_points(with_split)] == ["lr=2"]
    assert plot_results.picked_on_validation(with_split)
    without = [point("lr=1", 80.0, None), point("lr=2", 78.0, None)]  # no split: test top-1, said so
    assert [p["setting"] for p in plot_results.line_points(without)] == ["lr=1"]
    assert not plot_results.picked_on_validation(without)
