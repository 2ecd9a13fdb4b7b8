"""bench/gpu_check.sh --dry-run: every section of the GPU check runs on the CPU at tiny sizes, so that the one
call on a lent GPU cannot be lost to a typo."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SECTION_HEADERS = ["== environment [env]", "== CUDA-marked tests [tests]", "== throughput, eager [throughput]",
                   "== host syncs per step [syncs]", "== optimizer step [optimizer]",
                   "== accuracy on real CIFAR-10 [accuracy]", "== concurrent trials [concurrent]",
                   "== checkpoint write cost [checkpoint]",
                   "== throughput, compiled [compiled]", "== projection of the seed table [projection]"]


@pytest.mark.slow
def test_dry_run_runs_every_section(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_WORK": str(tmp_path / "work")}
    done = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    report = (out / "gpu_check.txt").read_text()
    assert done.returncode == 0, report[-3000:] + done.stderr[-2000:]
    for header in SECTION_HEADERS:
        assert header in report, header
    assert "== summary: 0 section(s) failed" in report
    for line in ("39 skipped", "eager fp32, batch 8", "compiled bf16 + channels_last, batch 32 = 4 x 8",
                 "SGD(foreach)", "LARS.compile()", "test top-1", "2 at once / one", "per write", "on paper:"):
        assert line in report, line
    assert "Traceback" not in report and "ERROR" not in report
    kept = out / "gpu_check_files"
    assert (kept / "throughput.json").exists() and list(kept.glob("*_result.json"))
