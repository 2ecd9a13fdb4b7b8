"""--trials_per_gpu: trials run at once in spawned processes give the results the same grid gives in turn."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import store
import sweep
import train
from conftest import ROOT, result_rows, tiny_flags


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
    # each of two trials at once gets half the CPU threads; in turn with as many, CPU results are the same bits
    threads, saved = sweep._threads_per_trial(2) or torch.get_num_threads(), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train.main(["in_turn", *flags])
    finally:
        torch.set_num_threads(saved)
    train.main(["at_once", *flags, "--trials_per_gpu", "2"])
    in_turn, at_once = _epoch_results(logroot, "in_turn"), _epoch_results(logroot, "at_once")
    assert sorted(in_turn) == [1, 2] and all(len(rows) == 2 for rows in in_turn.values())
    assert at_once == in_turn
    assert {t["torch_threads"] for t in store.list_trials(str(logroot), "at_once")} == {threads}


def test_concurrent_trials_share_the_cpu_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert [sweep._threads_per_trial(n) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's choice: each worker keeps torch's default
    assert sweep._threads_per_trial(2) is None


_ORPHAN_SCRIPT = """
import concurrent.futures, multiprocessing, os, sys, time
sys.path.insert(0, {root!r})
import sweep
if __name__ == "__main__":
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=sweep._end_with_parent, initargs=(os.getpid(),))
    print(pool.submit(os.getpid).result(), flush=True)  # the worker is up, its initializer has run
    pool.submit(time.sleep, 300)
    time.sleep(300)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_trial_worker_ends_when_the_sweep_is_killed(tmp_path):
    """A killed sweep leaves no orphan trial running (and holding its trial's lock)."""
    script = tmp_path / "sweep_like.py"
    script.write_text(_ORPHAN_SCRIPT.format(root=ROOT))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(worker_pid):
        time.sleep(0.2)
    assert not _alive(worker_pid)


def _alive(pid):
    """Whether pid runs (a zombie waiting to be reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
