"""The CPU-scale study's figures and table regenerate from the committed logs alone (no training)."""
import glob
import os

import plot_results
from conftest import ROOT

STUDY = os.path.join(ROOT, "results", "cpu_study")


def test_the_study_figures_regenerate_from_the_committed_results(tmp_path):
    experiments = sorted(glob.glob(os.path.join(STUDY, "cpu_*")))
    assert experiments, f"no experiment folders under {STUDY}"
    written = plot_results.main([*experiments, "--out", str(tmp_path)])
    names = {os.path.basename(p) for p in written}
    assert {"accuracy_vs_batch.png", "accuracy_vs_batch.pdf", "test_accuracy_curves.png", "train_loss.png",
            "results_table.md"} <= names
    table = (tmp_path / "results_table.md").read_text()
    trials = plot_results.read_all(experiments)
    finished = {t["experiment"] for t in trials if t["epochs"]}
    assert finished and all(name in table for name in finished)
