"""The CPU-scale study's figures and table regenerate from the committed logs alone (no training)."""
import glob
import os

import pytest

import plot_results
from conftest import ROOT

STUDY = os.path.join(ROOT, "results", "cpu_study")


@pytest.mark.slow
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


def test_the_comparisons_follow_the_rule_on_the_committed_results(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "compare_arms", os.path.join(ROOT, "configs", "cpu_study", "compare_arms.py"))
    compare_arms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_arms)
    out = tmp_path / "comparisons.md"
    text = compare_arms.main([STUDY, "--out", str(out)])
    assert out.read_text() == text + "\n"
    assert all(f"## {question}" in text for question, *_ in compare_arms.COMPARISONS)
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and " steps)" in line]
    assert [row.split(" | ")[0][2:] for row in table_rows] == [row for row, *_ in compare_arms.MAIN_TABLE]
    # the rule itself, on made-up numbers
    assert "counts" in compare_arms.verdict([80.0, 81.0], [70.0, 70.5])  # 10.25 > 2 x 1.0
    assert "inconclusive" in compare_arms.verdict([80.0, 83.0], [78.0, 78.5])  # 3.25 < 2 x 3.0
    assert "inconclusive" in compare_arms.verdict([80.0, 80.1], [79.2, 79.3])  # 0.8 < 1 point
    assert "too few seeds" in compare_arms.verdict([90.0], [10.0, 11.0])
