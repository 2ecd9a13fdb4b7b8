"""train.py end to end on tiny generated CIFAR files (real pickle format), on the CPU."""
import json
import os
import subprocess
import sys

import pytest
import torch

import tracking
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH_COLUMNS = {"iteration", "kind", "epoch", "learning_rate", "train_loss", "train_top1", "test_loss",
                 "test_top1", "test_top5", "epoch_seconds", "images_per_s", "batch_size"}


def tiny_args(root, logroot, *extra, epochs=2):
    # 200 training images, batch 50 -> 4 optimizer steps per epoch, each in 2 micro-batches.
    return ["--width", "8", "--epochs", str(epochs), "--batch_size", "50", "--max_samples_per_gpu", "25",
            "--eval_batch_size", "64", "--dataroot", root, "--logroot", str(logroot), *extra]


def epoch_rows(logroot, experiment):
    df = tracking.read_results(os.path.join(logroot, experiment))
    return df[df["kind"] == "epoch"].sort_values("epoch")


def only_trial_dir(logroot, experiment):
    (trial,) = tracking.list_trials(str(logroot), experiment)
    return os.path.join(logroot, experiment, trial["trial_id"]), trial


def test_cli_lars_two_epochs_logs_and_checkpoints(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    logroot = tmp_path / "logs"
    cmd = [sys.executable, "train.py", "--optimizer", "LARS", "lars_results", *tiny_args(root, logroot)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "epoch   2/2" in done.stdout
    rows = epoch_rows(logroot, "lars_results")
    assert EPOCH_COLUMNS <= set(rows.columns)
    assert rows["epoch"].tolist() == [1, 2]
    assert rows["iteration"].tolist() == [4, 8]
    assert ((rows["test_top1"] >= 0) & (rows["test_top1"] <= rows["test_top5"]) & (rows["test_top5"] <= 100)).all()
    trial_dir, trial = only_trial_dir(logroot, "lars_results")
    assert trial["finished"] is True and trial["optimizer"] == "LARS"
    assert os.path.exists(os.path.join(trial_dir, "last.pt")) and os.path.exists(os.path.join(trial_dir, "best.pt"))
    steps = tracking.read_results(os.path.join(logroot, "lars_results")).query("kind == 'step'")
    assert steps["iteration"].tolist() == list(range(1, 9))


def test_sgd_two_epochs(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["sgd_results", "--optimizer", "SGD", "--nesterov", *tiny_args(root, tmp_path)])
    rows = epoch_rows(tmp_path, "sgd_results")
    assert rows["epoch"].tolist() == [1, 2]
    trial_dir, trial = only_trial_dir(tmp_path, "sgd_results")
    state = torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)
    assert state["epoch"] == 2 and state["finished"]
    assert "momentum_buffer" in next(iter(state["optimizer"]["state"].values()))
    assert trial["optimizer"] == "SGD"


def test_poly_schedule_is_per_iteration_and_reaches_end_lr(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["sched", "--end_lr", "0.001", *tiny_args(root, tmp_path)])
    df = tracking.read_results(os.path.join(tmp_path, "sched"))
    lrs = df[df["kind"] == "step"].sort_values("iteration")["learning_rate"].tolist()
    assert len(set(lrs)) == 8 and lrs == sorted(lrs, reverse=True)  # changes every step, decays
    assert lrs[0] == pytest.approx(0.1)
    assert epoch_rows(tmp_path, "sched")["learning_rate"].tolist()[-1] == pytest.approx(0.001)


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
    loss_sum, correct = train.accumulate_gradients(model, x, y, max_samples=micro, loss_fn=loss_fn)
    for g_full, p in zip(full, model.parameters()):
        assert torch.allclose(p.grad, g_full, rtol=1e-6, atol=1e-12)
    assert loss_sum.item() / 64 == pytest.approx(loss_fn(model(x), y).item(), rel=1e-5)
    assert correct.item() == (model(x).argmax(1) == y).sum().item()


def test_resume_gives_identical_metrics_and_parameters(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["straight", *tiny_args(root, tmp_path)])
    train.main(["split", "--stop_after_epoch", "1", *tiny_args(root, tmp_path)])
    split_dir, trial = only_trial_dir(tmp_path, "split")
    assert trial["finished"] is False
    assert torch.load(os.path.join(split_dir, "last.pt"), weights_only=True)["epoch"] == 1
    train.main(["split", "--resume", *tiny_args(root, tmp_path)])

    _, trial = only_trial_dir(tmp_path, "split")
    assert trial["finished"] is True
    metrics = ["epoch", "iteration", "learning_rate", "train_loss", "train_top1", "test_loss", "test_top1"]
    straight, split = epoch_rows(tmp_path, "straight"), epoch_rows(tmp_path, "split")
    assert straight[metrics].values.tolist() == split[metrics].values.tolist()
    steps = lambda name: tracking.read_results(os.path.join(tmp_path, name)).query("kind == 'step'")  # noqa: E731
    assert steps("straight")["train_loss"].tolist() == steps("split")["train_loss"].tolist()
    a = torch.load(os.path.join(only_trial_dir(tmp_path, "straight")[0], "last.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(split_dir, "last.pt"), weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_cifar10, tmp_path, monkeypatch, capsys):
    root, _ = tiny_cifar10
    real = train.accumulate_gradients
    calls = []

    def poisoned(*args, **kwargs):
        loss_sum, correct = real(*args, **kwargs)
        calls.append(1)
        return (loss_sum * float("nan") if len(calls) == 6 else loss_sum), correct

    monkeypatch.setattr(train, "accumulate_gradients", poisoned)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["nan", *tiny_args(root, tmp_path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "training loss is nan" in err and "epoch 2" in err
    trial_dir, trial = only_trial_dir(tmp_path, "nan")
    assert trial["finished"] is False
    assert torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)["epoch"] == 1


def run_expecting_error(argv, capsys, code=None):
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code != 0 if code is None else exit_info.value.code == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error:") and "\n" not in err, err
    return err


@pytest.mark.parametrize("flag, value, needle", [
    ("--batch_size", "0", "--batch_size"),
    ("--max_samples_per_gpu", "-1", "--max_samples_per_gpu"),
    ("--epochs", "0", "--epochs"),
    ("--lr", "-0.1", "--lr"),
    ("--arch", "VGG", "--arch"),
    ("--optimizer", "Adam", "--optimizer"),
    ("--dataset", "mnist", "--dataset"),
    ("--schedule", "linear", "--schedule"),
    ("--batch_size", "many", "--batch_size"),
])
def test_bad_flags_are_one_line_errors_and_write_nothing(tiny_cifar10, tmp_path, capsys, flag, value, needle):
    root, _ = tiny_cifar10
    logroot = tmp_path / "logs"
    err = run_expecting_error(["bad", *tiny_args(root, logroot), flag, value], capsys)
    assert needle in err
    assert not logroot.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_an_error(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    err = run_expecting_error(["bad", "--cuda", *tiny_args(root, tmp_path / "logs")], capsys, code=2)
    assert "--cuda" in err and not (tmp_path / "logs").exists()


def test_missing_data_without_internet_is_an_error(tmp_path, capsys, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    err = run_expecting_error(["bad", *tiny_args(str(tmp_path / "nodata"), tmp_path / "logs")], capsys, code=1)
    assert "cifar-10-batches-py" in err
    assert not (tmp_path / "logs").exists()


def test_resume_errors_leave_the_trial_untouched(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    err = run_expecting_error(["none", "--resume", *tiny_args(root, tmp_path)], capsys, code=1)
    assert "--resume" in err and not (tmp_path / "none").exists()

    train.main(["run", "--stop_after_epoch", "1", *tiny_args(root, tmp_path)])
    trial_dir, trial = only_trial_dir(tmp_path, "run")
    result_file = os.path.join(tmp_path, "run", "trials", f"{trial['trial_id']}_result.json")
    before = open(result_file).read()

    err = run_expecting_error(["run", "--resume", "--arch", "ResNet34", *tiny_args(root, tmp_path)], capsys, code=1)
    assert "another run" in err and "--arch 'ResNet18' in the checkpoint" in err

    with open(os.path.join(trial_dir, "last.pt"), "r+b") as f:
        f.truncate(100)
    err = run_expecting_error(["run", "--resume", *tiny_args(root, tmp_path)], capsys, code=1)
    assert "last.pt is not a readable checkpoint" in err
    assert open(result_file).read() == before
    assert [t["trial_id"] for t in tracking.list_trials(str(tmp_path), "run")] == [trial["trial_id"]]


def test_results_are_plain_json(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["json", *tiny_args(root, tmp_path, epochs=1)])
    _, trial = only_trial_dir(tmp_path, "json")
    with open(os.path.join(tmp_path, "json", "trials", f"{trial['trial_id']}_result.json")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 5 and all(isinstance(r["train_loss"], float) for r in rows)
