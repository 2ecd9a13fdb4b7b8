"""The scaling study's figures and tables regenerate from the committed logs alone (no training), by the one
command docs/scaling_study.md gives."""
import csv
import glob
import json
import os
import subprocess

import pytest

from conftest import ROOT

STUDY = os.path.join(ROOT, "results", "scaling_study")


def committed_trials():
    """{trial_id: param map} of the committed trials that have at least one validation row."""
    trials = {}
    for path in glob.glob(os.path.join(STUDY, "scaling_*", "trials", "*_param_map.json")):
        with open(path) as f:
            params = json.load(f)
        with open(path.replace("_param_map.json", "_result.json")) as f:
            if any(json.loads(line).get("kind") == "eval" for line in f if line.strip()):
                trials[params["trial_id"]] = params
    return trials


@pytest.mark.slow
def test_the_scaling_study_figures_regenerate_from_the_committed_results(tmp_path):
    trials = committed_trials()
    assert trials, f"no committed trials with validation rows under {STUDY}"
    run = subprocess.run(["bash", os.path.join(ROOT, "configs", "scaling_study", "figures.sh"), str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    for stem in ("steps_to_target", "noise_scale", "accuracy_vs_batch"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0 and (tmp_path / f"{stem}.pdf").stat().st_size > 0
    # every committed setting is in the steps table, each with the seeds it has
    with open(tmp_path / "steps_to_target.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["seeds"]) for r in rows) == len(trials)
    assert {r["optimizer"] for r in rows} == {p["optimizer"] for p in trials.values()}
    assert "## Final test top-1" in (tmp_path / "steps_to_target.md").read_text()
    assert "| LARS |" in (tmp_path / "noise_scale.md").read_text()
