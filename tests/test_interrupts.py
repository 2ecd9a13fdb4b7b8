"""Ctrl-C and SIGTERM, end to end: one `train.py: stopped by` line saying where each trial stopped and the
command that continues, exit status 128 + the signal, every trial closed with its last checkpoint intact."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import store
import trainer
from conftest import ROOT, only_trial, run_expecting_stop, tiny_flags

QUICK = ("--train_subset", "100", "--test_subset", "50", "--max_samples_per_gpu", "50")


def _checkpoints(logroot, experiment):
    return glob.glob(os.path.join(logroot, experiment, "*", "last.pt"))


def _start_and_wait(argv, logroot, experiment, trials, timeout=240):
    """train.py started in its own process group; returns once `trials` trials each have a checkpoint."""
    process = subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_checkpoints(logroot, experiment)) == trials:
            return process
        if process.poll() is not None:
            pytest.fail(f"train.py ended early: {process.stderr.read()}")
        time.sleep(0.2)
    process.kill()
    pytest.fail("no checkpoint in time")


def _alive(pid):
    """Whether pid runs (a zombie waiting to be reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid):
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return done.stdout.split()


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_the_trial_with_one_line(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    logroot = str(tmp_path / "logs")
    argv = ["ctrl_c", *tiny_flags(root, logroot, *QUICK, epochs=100)]
    process = _start_and_wait(argv, logroot, "ctrl_c", trials=1)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: every process of the foreground group
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    trial_dir, trial = only_trial(logroot, "ctrl_c")
    saved = store.load_checkpoint(os.path.join(trial_dir, "last.pt"))["epoch"]
    assert err.count("\n") == 1 and err.startswith(
        f"train.py: stopped by SIGINT: trial {trial['trial_id']} stopped in epoch ")
    assert f"/100 (after step " in err and f"; last.pt holds epoch {saved}; continue with: python train.py " \
        f"ctrl_c " in err and err.endswith(" --resume\n")
    assert trial["finished"] is False and saved >= 1


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pthread_sigmask and prctl are Linux's")
@pytest.mark.parametrize("name, to_group", [("SIGTERM", False), ("SIGINT", True)], ids=["sigterm", "ctrl-c"])
def test_a_parallel_sweep_stops_its_workers_cleanly(name, to_group, tiny_cifar10, tmp_path):
    """SIGTERM (`kill`) reaches the sweep's process only: it passes it on to the trials' processes and waits for
    them. Ctrl-C reaches them all at once."""
    signum = getattr(signal, name)
    root, _ = tiny_cifar10
    grid = tmp_path / "grid.yaml"
    grid.write_text("seed: [1, 2]\n")
    logroot = str(tmp_path / "logs")
    argv = ["sweep", "--config", str(grid), "--trials_per_gpu", "2", *tiny_flags(root, logroot, *QUICK, epochs=100)]
    process = _start_and_wait(argv, logroot, "sweep", trials=2)
    workers = _children(process.pid)
    if to_group:
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    trials = store.list_trials(logroot, "sweep")
    assert len(trials) == 2 and err.count("\n") == 1 and err.startswith(f"train.py: stopped by {name}: sweep stopped: ")
    assert err.endswith(f"run the same command to continue the sweep: python train.py {' '.join(argv)}\n")
    for trial in trials:
        saved = store.load_checkpoint(store.checkpoint_path(logroot, "sweep", trial["trial_id"]))["epoch"]
        assert f"trial {trial['trial_id']} stopped in epoch " in err and f"last.pt holds epoch {saved}" in err
        assert trial["finished"] is False and saved >= 1
    deadline = time.monotonic() + 20  # (and multiprocessing's resource tracker, which ends on its own)
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert len(workers) >= 2 and not any(_alive(pid) for pid in workers)
    assert not glob.glob(os.path.join(logroot, "**", "*.tmp"), recursive=True)


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_names_the_grid_point(tiny_cifar10, tmp_path, monkeypatch, capsys):
    root, _ = tiny_cifar10
    grid = tmp_path / "grid.yaml"
    grid.write_text("seed: [1, 2]\n")
    real = trainer.evaluate
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second trial's first epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    logroot = tmp_path / "logs"
    argv = ["grid", "--config", str(grid), *tiny_flags(root, logroot, *QUICK, epochs=1)]
    err = run_expecting_stop(argv, capsys, code=130)
    first, = [t for t in store.list_trials(str(logroot), "grid")]  # the second, without a checkpoint, is removed
    assert first["finished"] is True and first["seed"] == 1
    assert err.startswith(f"train.py: stopped by SIGINT: sweep {grid} [2/2] seed=2: trial ")
    assert err.endswith("stopped in epoch 1/1 (after step 2); no checkpoint yet: the trial is removed; run the same "
                        f"command to continue the sweep: python train.py {' '.join(argv)}")
    with open(os.path.join(logroot, "grid", "trials", f"{first['trial_id']}_result.json")) as f:
        assert [json.loads(line)["kind"] for line in f] == ["step", "step", "epoch"]
