"""train.py and trainer.py end to end on tiny generated CIFAR files (real pickle format), on the CPU."""
import json
import os
import subprocess
import sys

import pytest
import torch

import config
import host_memory
import store
import train
import trainer
from conftest import ROOT, epoch_rows, only_trial, result_rows, run_expecting_error, tiny_flags

EPOCH_COLUMNS = {"iteration", "kind", "epoch", "learning_rate", "train_loss", "train_top1", "test_loss",
                 "test_top1", "test_top5", "epoch_seconds", "images_per_s", "batch_size"}


@pytest.mark.slow
def test_cli_lars_two_epochs_logs_and_checkpoints(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    logroot = tmp_path / "logs"
    cmd = [sys.executable, "train.py", "--optimizer", "LARS", "lars_results", *tiny_flags(root, logroot)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "epoch   2/2" in done.stdout
    trial_dir, trial = only_trial(logroot, "lars_results")
    assert f"results in {trial_dir}" in done.stdout  # the run says where its results went
    rows = epoch_rows(logroot, "lars_results")
    assert EPOCH_COLUMNS <= set(rows.columns)
    assert rows["epoch"].tolist() == [1, 2]
    assert rows["iteration"].tolist() == [4, 8]
    assert ((rows["test_top1"] >= 0) & (rows["test_top1"] <= rows["test_top5"]) & (rows["test_top5"] <= 100)).all()
    assert trial["finished"] is True and trial["optimizer"] == "LARS"
    assert os.path.exists(os.path.join(trial_dir, "last.pt")) and os.path.exists(os.path.join(trial_dir, "best.pt"))
    steps = [r for r in result_rows(logroot, "lars_results", trial["trial_id"]) if r["kind"] == "step"]
    assert [r["iteration"] for r in steps] == list(range(1, 9))


@pytest.mark.slow
def test_parameter_file_records_recipe_plan_and_runtime(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["sgd_results", "--optimizer", "SGD", "--nesterov", "--schedule", "step",
                *tiny_flags(root, tmp_path, epochs=1)])
    trial_dir, trial = only_trial(tmp_path, "sgd_results")
    state = torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)
    assert state["epoch"] == 1 and state["finished"]
    assert "momentum_buffer" in next(iter(state["optimizer"]["state"].values()))
    assert trial["optimizer"] == "SGD" and trial["recipe_keys"] == list(config.RECIPE_KEYS)
    # every value worked out at start is in the parameter file, not a null standing for a default
    assert (trial["resolved_lr_gamma"], trial["resolved_lr_milestones"]) == (0.1, [0])
    assert (trial["steps_per_epoch"], trial["total_steps"], trial["micro_batch"], trial["bn_batch_size"],
            trial["scaled_lr"], trial["amp"], trial["channels_last"]) == (4, 4, 25, 25, 0.1, "none", "off")


def test_poly_schedule_is_per_iteration_and_reaches_end_lr(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["sched", "--end_lr", "0.001", *tiny_flags(root, tmp_path)])
    _, trial = only_trial(tmp_path, "sched")
    rows = result_rows(tmp_path, "sched", trial["trial_id"])
    lrs = [r["learning_rate"] for r in rows if r["kind"] == "step"]
    assert len(set(lrs)) == 8 and lrs == sorted(lrs, reverse=True)  # changes every step, decays
    assert lrs[0] == pytest.approx(0.1)
    # the epoch row reports the lr its last step trained with (not the next step's)
    assert [r["learning_rate"] for r in rows if r["kind"] == "epoch"] == [lrs[3], lrs[7]]


class Linear(torch.nn.Module):
    """A BN-free model: its gradient does not depend on how a batch is cut."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 30 * 30, 10)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


@pytest.mark.parametrize("micro", [32, 24, 64])
def test_accumulated_gradient_equals_full_batch_gradient(micro):
    torch.manual_seed(0)
    model = Linear().double()  # float64, so that only the cutting of the batch could make a difference
    x, y = torch.randn(64, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (64,))
    loss_fn = torch.nn.CrossEntropyLoss()
    loss_fn(model(x), y).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    plan = config.plan(config.Recipe(batch_size=64, max_samples_per_gpu=micro), train_size=64)
    micro_batches = trainer.split_step(x, y, plan, "per_sample")
    assert max(len(b[1]) for b in micro_batches) <= micro and sum(len(b[1]) for b in micro_batches) == 64
    loss_sum, correct = trainer.accumulate_gradients(model, micro_batches, loss_fn)
    for g_full, p in zip(full, model.parameters()):
        assert torch.allclose(p.grad, g_full, rtol=1e-6, atol=1e-12)
    assert loss_sum.item() / 64 == pytest.approx(loss_fn(model(x), y).item(), rel=1e-5)
    assert correct.item() == (model(x).argmax(1) == y).sum().item()


@pytest.mark.slow
def test_resume_gives_identical_metrics_and_parameters(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["straight", *tiny_flags(root, tmp_path)])
    train.main(["split", "--stop_after_epoch", "1", *tiny_flags(root, tmp_path)])
    split_dir, trial = only_trial(tmp_path, "split")
    assert trial["finished"] is False
    assert torch.load(os.path.join(split_dir, "last.pt"), weights_only=True)["epoch"] == 1
    train.main(["split", "--resume", *tiny_flags(root, tmp_path)])

    _, trial = only_trial(tmp_path, "split")
    assert trial["finished"] is True
    metrics = ["epoch", "iteration", "learning_rate", "train_loss", "train_top1", "test_loss", "test_top1"]
    straight, split = epoch_rows(tmp_path, "straight"), epoch_rows(tmp_path, "split")
    assert straight[metrics].values.tolist() == split[metrics].values.tolist()
    steps = lambda name: [r["train_loss"] for r in result_rows(tmp_path, name, only_trial(tmp_path, name)[1]["trial_id"])
                          if r["kind"] == "step"]  # noqa: E731
    assert steps("straight") == steps("split")
    a = torch.load(os.path.join(only_trial(tmp_path, "straight")[0], "last.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(split_dir, "last.pt"), weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_trial_sets_the_allocator_it_is_given(tiny_cifar10, tmp_path, monkeypatch):
    root, _ = tiny_cifar10
    modes = []
    monkeypatch.setattr(host_memory, "use_malloc", lambda mode: modes.append(mode) or mode == "reuse")
    train.main(["system", "--malloc", "system", *tiny_flags(root, tmp_path, epochs=1)])
    train.main(["default", *tiny_flags(root, tmp_path, epochs=1)])
    assert modes == ["system", "reuse"]


@pytest.mark.slow
def test_malloc_setting_does_not_change_what_a_trial_computes(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    for mode in ("reuse", "system"):  # in processes of their own: the setting is process-wide
        cmd = [sys.executable, "train.py", mode, "--malloc", mode, *tiny_flags(root, tmp_path)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    metrics = ["epoch", "iteration", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5"]
    assert epoch_rows(tmp_path, "reuse")[metrics].values.tolist() == \
        epoch_rows(tmp_path, "system")[metrics].values.tolist()
    a, b = (torch.load(os.path.join(only_trial(tmp_path, mode)[0], "last.pt"), weights_only=True)["model"]
            for mode in ("reuse", "system"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_cifar10, tmp_path, monkeypatch, capsys):
    root, _ = tiny_cifar10
    real = trainer.accumulate_gradients
    calls = []

    def poisoned(*args, **kwargs):
        loss_sum, correct = real(*args, **kwargs)
        calls.append(1)
        return (loss_sum * float("nan") if len(calls) == 6 else loss_sum), correct

    monkeypatch.setattr(trainer, "accumulate_gradients", poisoned)
    err = run_expecting_error(["nan", *tiny_flags(root, tmp_path)], capsys, code=1)
    assert "training loss is nan" in err and "epoch 2" in err
    trial_dir, trial = only_trial(tmp_path, "nan")
    assert trial["finished"] is False and trial["diverged"] is True
    assert torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)["epoch"] == 1


def test_the_loop_reads_the_device_only_every_log_interval(tiny_cifar10, tmp_path, monkeypatch):
    """Host syncs (.item(), .tolist(), float()/int()/bool() of a tensor) happen only at the log points:
    with --log_interval 3 over 4 steps per epoch that is steps 3 and 4 (the epoch's end), plus one read
    of the evaluation totals per epoch.  On the CPU every tensor is a host tensor, so the reads stand for the
    syncs they would be on an accelerator."""
    root, _ = tiny_cifar10
    reads = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            reads.append(_name)
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    real_step = trainer.train_step
    steps = []

    def step(*a, **k):
        steps.append(len(reads))
        return real_step(*a, **k)

    monkeypatch.setattr(trainer, "train_step", step)
    flags = tiny_flags(root, tmp_path, epochs=2)
    flags[flags.index("--log_interval") + 1] = "3"
    train.main(["syncs", *flags])
    assert len(steps) == 8
    # reads between consecutive steps: none inside an interval, one at step 3 (after step 3's call)
    between = [b - a for a, b in zip(steps, steps[1:])]
    assert between == [0, 0, 1, 2, 0, 0, 1], between  # step 4 + evaluation read before epoch 2's first step
    assert reads.count("tolist") == len(reads)


def test_bad_flags_are_one_line_errors_and_write_nothing(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    logroot = tmp_path / "logs"
    for flag, value in (("--batch_size", "0"), ("--max_samples_per_gpu", "-1"), ("--epochs", "0"),
                        ("--lr", "-0.1"), ("--arch", "VGG"), ("--optimizer", "Adam"), ("--dataset", "mnist"),
                        ("--schedule", "linear"), ("--batch_size", "many"),
                        ("--malloc", "mmap")):
        err = run_expecting_error(["bad", *tiny_flags(root, logroot), flag, value], capsys, code=2)
        assert flag in err
    assert not logroot.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_an_error(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    err = run_expecting_error(["bad", "--cuda", *tiny_flags(root, tmp_path / "logs")], capsys, code=2)
    assert "--cuda" in err and not (tmp_path / "logs").exists()


def test_missing_data_without_internet_is_an_error(tmp_path, capsys, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    err = run_expecting_error(["bad", *tiny_flags(tmp_path / "nodata", tmp_path / "logs")], capsys, code=1)
    assert "cifar-10-batches-py" in err
    assert not (tmp_path / "logs").exists()


def test_resume_errors_leave_the_trial_untouched(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    err = run_expecting_error(["none", "--resume", *tiny_flags(root, tmp_path)], capsys, code=1)
    assert "--resume" in err and not (tmp_path / "none").exists()

    train.main(["run", "--stop_after_epoch", "1", *tiny_flags(root, tmp_path)])
    trial_dir, trial = only_trial(tmp_path, "run")
    result_file = os.path.join(tmp_path, "run", "trials", f"{trial['trial_id']}_result.json")
    before = open(result_file).read()

    err = run_expecting_error(["run", "--resume", "--arch", "ResNet34", *tiny_flags(root, tmp_path)], capsys, code=1)
    assert "another run" in err and "--arch 'ResNet18' in the checkpoint" in err

    with open(os.path.join(trial_dir, "last.pt"), "r+b") as f:
        f.truncate(100)
    err = run_expecting_error(["run", "--resume", *tiny_flags(root, tmp_path)], capsys, code=1)
    assert "last.pt is not a readable checkpoint" in err and "weights_only" not in err
    assert open(result_file).read() == before
    assert [t["trial_id"] for t in store.list_trials(str(tmp_path), "run")] == [trial["trial_id"]]


@pytest.mark.slow
def test_resume_continues_the_newest_unfinished_trial(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    flags = tiny_flags(root, tmp_path, epochs=1)
    train.main(["exp", "--stop_after_epoch", "1", *tiny_flags(root, tmp_path)])  # unfinished (1 of 2 epochs)
    train.main(["exp", *tiny_flags(root, tmp_path)])                             # finished, newer
    unfinished = [t for t in store.list_trials(str(tmp_path), "exp") if not t["finished"]]
    train.main(["exp", "--resume", *tiny_flags(root, tmp_path)])
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert all(t["finished"] for t in store.list_trials(str(tmp_path), "exp"))
    err = run_expecting_error(["exp", "--resume", *flags], capsys, code=1)
    assert "nothing to resume" in err and unfinished


def test_results_are_plain_json(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    flags = tiny_flags(root, tmp_path, epochs=1)
    flags[flags.index("--log_interval") + 1] = "50"
    train.main(["json", *flags])
    _, trial = only_trial(tmp_path, "json")
    with open(os.path.join(tmp_path, "json", "trials", f"{trial['trial_id']}_result.json")) as f:
        rows = [json.loads(line) for line in f]
    # one step row at the epoch's end (the interval is longer than the epoch), one epoch row
    assert [r["kind"] for r in rows] == ["step", "epoch"] and all(isinstance(r["train_loss"], float) for r in rows)


def test_a_trial_killed_before_closing_its_finished_run_is_marked_finished(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    train.main(["closing", *tiny_flags(root, tmp_path, epochs=1)])
    _, trial = only_trial(tmp_path, "closing")
    params_file = os.path.join(tmp_path, "closing", "trials", f"{trial['trial_id']}_param_map.json")
    with open(params_file, "w") as f:  # as if killed after the final last.pt, before the parameter file
        json.dump({**trial, "finished": False}, f)
    train.main(["closing", "--resume", *tiny_flags(root, tmp_path, epochs=1)])
    assert "nothing to do" in capsys.readouterr().out
    assert only_trial(tmp_path, "closing")[1]["finished"] is True


def test_resume_of_a_trial_without_checkpoint_checks_its_recipe(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    train.main(["early", "--stop_after_epoch", "1", *tiny_flags(root, tmp_path)])
    trial_dir, _ = only_trial(tmp_path, "early")
    os.remove(os.path.join(trial_dir, "last.pt"))  # as if killed before its first checkpoint
    os.remove(os.path.join(trial_dir, "best.pt"))
    err = run_expecting_error(["early", "--resume", "--lr", "0.5", *tiny_flags(root, tmp_path)], capsys, code=1)
    assert "belongs to another run" in err and "--lr 0.1 in the parameter file, 0.5 now" in err


@pytest.mark.parametrize("flags, needle", [(["--trials_per_gpu", "2"], "--trials_per_gpu"),
                                           (["--ray", "auto"], "--ray"),
                                           (["--gpus_per_trial", "2"], "--gpus_per_trial")])
def test_grid_only_flags_without_a_grid_are_errors(tmp_path, capsys, flags, needle):
    err = run_expecting_error(["x", *flags, "--logroot", str(tmp_path / "logs")], capsys, code=2)
    assert err.startswith(f"train.py: error: {needle}: needs") and not (tmp_path / "logs").exists()


def test_stop_after_an_epoch_the_trial_has_passed_is_an_error(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    train.main(["stop", "--stop_after_epoch", "1", *tiny_flags(root, tmp_path)])
    err = run_expecting_error(["stop", "--resume", "--stop_after_epoch", "1", *tiny_flags(root, tmp_path)], capsys,
                              code=2)
    assert "--stop_after_epoch: trial" in err and "already at epoch 1" in err


@pytest.mark.slow
def test_resume_from_an_older_checkpoint_drops_a_later_best(tiny_cifar10, tmp_path):
    """With --checkpoint_every > 1 a run killed after an improving epoch's best.pt resumes from an older
    last.pt; the rows after it are dropped, and so is that best.pt."""
    root, _ = tiny_cifar10
    train.main(["cadence", "--stop_after_epoch", "1", *tiny_flags(root, tmp_path)])
    trial_dir, params = only_trial(tmp_path, "cadence")
    best = os.path.join(trial_dir, "best.pt")
    state = torch.load(best, weights_only=True)
    for best_epoch, kept in ((1, True), (2, False)):
        torch.save({**state, "epoch": best_epoch}, best)
        trial = store.open_trial(str(tmp_path), "cadence", params, params["trial_id"], state["global_step"])
        trial.discard_checkpoint_after(1, "best.pt")
        trial.close(False)
        assert os.path.exists(best) is kept
