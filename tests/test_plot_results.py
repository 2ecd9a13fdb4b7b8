"""plot_results.py on real logs from a tiny sweep (one finished trial, one stopped early) and a single SGD run."""
import json
import os
import shutil
import struct

import pytest

import plot_results
import train
from conftest import write_tiny_cifar


def tiny(dataroot, logroot, *extra):
    return ["--width", "8", "--epochs", "2", "--max_samples_per_gpu", "25", "--eval_batch_size", "100",
            "--dataroot", dataroot, "--logroot", logroot, *extra]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """LOGROOT with `lars` (batch 64 finished, batch 100 stopped after 1 of 2 epochs) and `sgd` (batch 128)."""
    base = tmp_path_factory.mktemp("plot_logs")
    dataroot, logroot = str(base / "data"), str(base / "logs")
    write_tiny_cifar(dataroot)
    config = base / "lars.yaml"
    config.write_text("optimizer: LARS\nbatch_size: [64, 100]\n")
    train.main(["lars", "--config", str(config), *tiny(dataroot, logroot, "--stop_after_epoch", "1")])
    train.main(["lars", "--config", str(config), *tiny(dataroot, logroot, "--batch_size", "64")])  # resumes 64 only
    train.main(["sgd", "--optimizer", "SGD", "--batch_size", "128", *tiny(dataroot, logroot, "--epochs", "1")])
    return logroot


def logged(logroot, experiment):
    """{batch_size: (param map, epoch rows)}, read straight from track's files."""
    folder = os.path.join(logroot, experiment, "trials")
    out = {}
    for name in os.listdir(folder):
        if name.endswith("_param_map.json"):
            with open(os.path.join(folder, name)) as f:
                params = json.load(f)
            with open(os.path.join(folder, f"{params['trial_id']}_result.json")) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            out[params["batch_size"]] = (params, [r for r in rows if r["kind"] == "epoch"])
    return out


def table_rows(path):
    with open(path) as f:
        lines = [line for line in f if line.startswith("| ") and not line.startswith("| ---")]
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|")))) for line in lines[1:]]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_figures_and_table_from_real_logs(logs, tmp_path, capsys):
    out = tmp_path / "images"
    plot_results.main([os.path.join(logs, "lars"), os.path.join(logs, "sgd"), "--out", str(out), "--title", "Tiny"])
    assert sorted(os.listdir(out)) == sorted(plot_results.OUTPUTS)  # no temporary files left behind
    for name in ("lars_test_curves.png", "train_loss_curves.png", "accuracy_vs_batch_size.png"):
        assert png_size(out / name) == (1050, 675)  # 7 x 4.5 in at 150 dpi
    assert (out / "lars_test_curves.pdf").read_bytes()[:5] == b"%PDF-"

    rows = table_rows(out / "results_table.md")
    assert [(r["experiment"], r["batch size"], r["optimizer"]) for r in rows] == [
        ("lars", "64", "LARS"), ("lars", "100", "LARS"), ("sgd", "128", "SGD")]
    expected = {**{("lars", b): v for b, v in logged(logs, "lars").items()},
                **{("sgd", b): v for b, v in logged(logs, "sgd").items()}}
    for row in rows:
        params, epochs = expected[(row["experiment"], int(row["batch size"]))]
        final = f"{epochs[-1]['test_top1']:.2f}"
        best = f"{max(r['test_top1'] for r in epochs):.2f}"
        assert row["final top-1 (%)"].split(" ")[0] == final and row["best top-1 (%)"] == best
        assert row["epochs"] == f"{len(epochs)}/{params['epochs']}"
        assert row["wall time"] == f"{sum(r['epoch_seconds'] for r in epochs):.1f} s"
    lars64, lars100, sgd128 = rows
    assert "partial" not in lars64["final top-1 (%)"] and lars64["seed top-1 (%)"] == "89.39"
    assert lars100["final top-1 (%)"].endswith("(partial: 1/2 epochs)") and lars100["seed top-1 (%)"] == "—"
    assert lars100["epochs"] == "1/2"
    assert sgd128["seed top-1 (%)"].startswith("~93.5") and "partial" not in sgd128["final top-1 (%)"]
    text = (out / "results_table.md").read_text()
    assert "# Tiny: results" in text and "last completed epoch" in text
    assert "3 trial(s) from 2 experiment(s)" in capsys.readouterr().out


def test_partial_trials_are_dashed_and_legend_sorted_by_batch(logs, monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plot_results.plt, "close", figures.append)
    trials = plot_results.read_all([os.path.join(logs, "lars"), os.path.join(logs, "sgd")])
    assert [(t["batch_size"], t["finished"]) for t in trials] == [(64, True), (100, False), (128, True)]
    plot_results.write_all(trials, str(tmp_path), "Tiny")
    curves = figures[0].axes[0]
    styles = {line.get_label(): line.get_linestyle() for line in curves.get_lines()}
    assert styles == {"batch 64 LARS [lars]": "-", "batch 100 LARS [lars] (partial 1/2)": "--",
                      "batch 128 SGD [sgd]": "-"}
    assert [t.get_text() for t in curves.get_legend().get_texts()] == list(styles)  # batch order
    assert curves.get_xlabel() == "epoch" and curves.get_ylabel() == "test top-1 (%)" and "Tiny" in curves.get_title()
    by_batch = figures[2].axes[0]
    assert by_batch.get_xscale() == "log"
    seed = [line for line in by_batch.get_lines() if line.get_label().startswith("seed's table")][0]
    assert list(seed.get_ydata()) == [89.39, 85.45, 81.2, 73.41, 64.13]


def test_trial_without_results_yet_is_read_directly_and_marked(logs, tmp_path):
    exp = tmp_path / "lars"
    shutil.copytree(os.path.join(logs, "lars"), exp)
    # A trial that has just started: its param map exists, its result file not yet (skeletor's reader fails).
    with open(next(p for p in (exp / "trials").iterdir() if p.name.endswith("_param_map.json"))) as f:
        params = json.load(f)
    params.update(trial_id="0000000new", batch_size=200, finished=False)
    (exp / "trials" / "0000000new_param_map.json").write_text(json.dumps(params))
    plot_results.main([str(exp), "--out", str(tmp_path / "out")])
    rows = table_rows(tmp_path / "out" / "results_table.md")
    assert [r["batch size"] for r in rows] == ["64", "100", "200"]
    assert rows[2]["final top-1 (%)"] == "— (partial: 0/2 epochs)" and rows[2]["epochs"] == "0/2"
    assert rows[0]["final top-1 (%)"] == f"{logged(logs, 'lars')[64][1][-1]['test_top1']:.2f}"


@pytest.mark.parametrize("damage", ["numpy_scalar", "truncated"])
def test_corrupt_results_file_is_one_line_error_and_writes_nothing(logs, tmp_path, capsys, damage):
    exp = tmp_path / "lars"
    shutil.copytree(os.path.join(logs, "lars"), exp)
    result = sorted(p for p in (exp / "trials").iterdir() if p.name.endswith("_result.json"))[0]
    lines = result.read_text().splitlines(keepends=True)
    if damage == "numpy_scalar":  # what track writes for a numpy float: not JSON
        lines[1] = lines[1].replace('"train_loss": ', '"train_loss": array(').replace(', "train_top1"', '), "train_top1"')
    else:
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    result.write_text("".join(lines))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        plot_results.main([str(exp), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and err.count("\n") == 1
    line = 2 if damage == "numpy_scalar" else len(lines)
    assert err.startswith(f"plot_results.py: error: {result}: line {line} is not valid JSON")
    assert not out.exists()


@pytest.mark.parametrize("make", ["empty", "missing", "logroot"])
def test_folder_without_results_is_one_line_error(logs, tmp_path, capsys, make):
    folder = {"empty": tmp_path / "empty", "missing": tmp_path / "nope", "logroot": logs}[make]
    if make == "empty":
        folder.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(SystemExit) as exit_info:
        plot_results.main([os.path.join(logs, "lars"), str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and err.count("\n") == 1 and err.startswith(f"plot_results.py: error: {folder}: ")
    assert os.listdir(out) == ["keep.txt"]  # nothing written, even for the readable folder


def test_trials_sharing_a_batch_size_are_told_apart_by_what_differs():
    def trial(trial_id, micro, experiment="ghost"):
        params = {"trial_id": trial_id, "start_time": trial_id, "batch_size": 2048, "optimizer": "LARS",
                  "max_samples_per_gpu": micro, "lr": 0.1}
        return {"experiment": experiment, "optimizer": "LARS", "batch_size": 2048, "params": params,
                "final_top1": 10.0, "best_top1": 11.0, "finished": True, "epochs_done": 1, "epochs_planned": 1,
                "epoch": [1], "wall_seconds": 3.0}

    trials = [trial("a", 128), trial("b", 2048), trial("c", 512, experiment="other")]
    settings = plot_results._settings(trials)
    assert [settings[id(t)] for t in trials] == ["max_samples_per_gpu=128", "max_samples_per_gpu=2048", ""]
    rows = [line for line in plot_results.table(trials, "t").splitlines() if line.startswith("| ")]
    assert "| setting |" in rows[0] and "| max_samples_per_gpu=128 |" in rows[2]
    assert "setting" not in plot_results.table(trials[2:], "t")
