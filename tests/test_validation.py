"""The validation split (--val_size), evaluation on a step schedule (--eval_every) and what every trial records
about the code and machine that ran it."""
import os
import subprocess
import sys

import pytest
import torch

import data
import store
import train
import trainer
from conftest import ROOT, only_trial, result_rows, run_expecting_error, tiny_flags, tree

# 200 tiny images, 50 held out: 150 to train on, batch 50 -> 3 steps per epoch in 2 micro-batches of 25
VAL = ("--val_size", "50")


def rows(logroot, name, kind):
    return [r for r in result_rows(logroot, name, only_trial(logroot, name)[1]["trial_id"]) if r["kind"] == kind]


# ---------------------------------------------------------------- the split

def test_validation_split_is_class_balanced_disjoint_and_the_same_for_every_trial():
    x = torch.zeros(300, 3, 32, 32, dtype=torch.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = torch.arange(300) // 256, torch.arange(300) % 256  # image i says i
    y = torch.arange(300) % 10
    train_x, train_y, val_x, val_y = data.split_validation(x, y, 40)
    assert len(val_y) == 40 and len(train_y) == 260
    assert torch.bincount(val_y, minlength=10).tolist() == [4] * 10
    # the two parts are disjoint and together the whole set (pixels identify an image, with its label, here)
    pairs = lambda xs, ys: {(256 * int(a[0, 0, 0]) + int(a[0, 0, 1]), int(b)) for a, b in zip(xs, ys)}  # noqa
    assert pairs(train_x, train_y).isdisjoint(pairs(val_x, val_y))
    assert pairs(train_x, train_y) | pairs(val_x, val_y) == pairs(x, y)
    again = data.split_validation(x, y, 40)  # no trial seed goes in: every trial holds out the same images
    assert all(torch.equal(a, b) for a, b in zip(again, (train_x, train_y, val_x, val_y)))
    with pytest.raises(data.DataError, match="--val_size"):
        data.split_validation(x, y, 300)


def test_the_held_out_images_are_never_trained_on(tiny_cifar10, tmp_path):
    root, (train_x, _, _, _) = tiny_cifar10
    flags = tiny_flags(root, tmp_path, *VAL)
    args = train.config.make_parser().parse_args(["x", *flags])
    recipe, runtime = train.config.from_namespace(args)
    train_batches, val_batches, test_batches, plan = trainer._batches(recipe, runtime, 0, 1, torch.device("cpu"))
    assert len(val_batches.images) == 50 and len(train_batches.images) == 150 == plan.train_size
    key = lambda images: {bytes(img.numpy()) for img in images}  # noqa: E731
    assert key(train_batches.images).isdisjoint(key(val_batches.images))
    assert key(train_batches.images) | key(val_batches.images) == key(torch.from_numpy(train_x))
    assert len(test_batches.images) == 100  # the test set stays as it was


# ---------------------------------------------------------------- evaluation on a step schedule

def test_eval_rows_come_every_k_steps_and_at_each_epoch_end(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["sched", *tiny_flags(root, tmp_path, *VAL, "--eval_every", "2")])
    evals = rows(tmp_path, "sched", "eval")
    # 3 steps per epoch, 2 epochs: steps 2, 4, 6 (every 2) and 3, 6 (the epochs' ends), each once
    assert [(r["iteration"], r["epoch"]) for r in evals] == [(2, 1), (3, 1), (4, 2), (6, 2)]
    for r in evals:
        assert {"val_loss", "val_top1", "val_top5", "eval_seconds"} <= set(r)
        assert 0 <= r["val_top1"] <= r["val_top5"] <= 100 and isinstance(r["val_loss"], float)
    epochs = rows(tmp_path, "sched", "epoch")
    assert [r["val_top1"] for r in epochs] == [evals[1]["val_top1"], evals[3]["val_top1"]]
    assert all("test_top1" in r for r in epochs)
    _, params = only_trial(tmp_path, "sched")
    assert params["val_size"] == 50 and params["eval_every"] == 2 and params["train_size"] == 150


def test_test_eval_end_reads_the_test_set_once_after_the_last_epoch(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    train.main(["once", *tiny_flags(root, tmp_path, *VAL, "--test_eval", "end", epochs=3)])
    epochs = rows(tmp_path, "once", "epoch")
    assert [("test_top1" in r, "test_loss" in r, "val_top1" in r) for r in epochs] == \
        [(False, False, True), (False, False, True), (True, True, True)]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert ["test loss" in line for line in lines] == [False, False, True]
    _, params = only_trial(tmp_path, "once")
    assert params["test_eval"] == "end" and params["finished"] is True


@pytest.mark.slow
def test_evaluating_changes_no_training_step(tiny_cifar10, tmp_path):
    """Evaluations between steps (with micro-batches: accumulation) leave the training bit-identical."""
    root, _ = tiny_cifar10
    train.main(["epoch_ends", *tiny_flags(root, tmp_path, *VAL)])
    train.main(["every_step", *tiny_flags(root, tmp_path, *VAL, "--eval_every", "1")])
    assert [r["train_loss"] for r in rows(tmp_path, "epoch_ends", "step")] == \
        [r["train_loss"] for r in rows(tmp_path, "every_step", "step")]
    assert len(rows(tmp_path, "every_step", "eval")) == 6
    a, b = (torch.load(os.path.join(only_trial(tmp_path, n)[0], "last.pt"), weights_only=True)["model"]
            for n in ("epoch_ends", "every_step"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_killed_mid_epoch_after_evaluations_then_resumed_gives_the_same_rows(tiny_cifar10, tmp_path, monkeypatch):
    """Also the noise scale's averages: they continue from the checkpoint."""
    root, _ = tiny_cifar10
    flags = tiny_flags(root, tmp_path, *VAL, "--eval_every", "1", "--noise_scale")
    train.main(["straight", *flags])
    real = trainer.evaluate_validation
    calls = []

    def killed_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # epoch 2's second evaluation: its first row is written, the epoch not finished
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_validation", killed_in_epoch_two)
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C: one line, exit 130 (interrupts.py)
        train.main(["killed", *flags])
    assert stopped.value.code == 130
    assert [r["iteration"] for r in rows(tmp_path, "killed", "eval")] == [1, 2, 3, 4]
    assert all("noise_trace" in r for r in rows(tmp_path, "killed", "step"))
    monkeypatch.setattr(trainer, "evaluate_validation", real)
    train.main(["killed", "--resume", *flags])
    for kind in ("eval", "step", "epoch"):
        keep = lambda r: {k: v for k, v in r.items() if not k.endswith("seconds") and k not in ("trial_id",  # noqa
                                                                                               "images_per_s")}
        assert [keep(r) for r in rows(tmp_path, "straight", kind)] == [keep(r) for r in rows(tmp_path, "killed", kind)]
    a, b = (torch.load(os.path.join(only_trial(tmp_path, n)[0], "last.pt"), weights_only=True)["model"]
            for n in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_loop_reads_the_device_only_at_log_and_eval_points(tiny_cifar10, tmp_path, monkeypatch):
    """As test_train's sync count, with validation every 2 steps: one read per evaluation, nothing else; the
    noise scale is read with the loss."""
    root, _ = tiny_cifar10
    reads = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            reads.append(_name)
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    real_step, steps = trainer.train_step, []
    monkeypatch.setattr(trainer, "train_step", lambda *a, **k: steps.append(len(reads)) or real_step(*a, **k))
    flags = tiny_flags(root, tmp_path, *VAL, "--eval_every", "2", "--noise_scale", epochs=2)
    flags[flags.index("--log_interval") + 1] = "50"
    train.main(["syncs", *flags])
    assert len(steps) == 6
    between = [b - a for a, b in zip(steps, steps[1:])]
    # after step 2: an evaluation; after 3 (epoch end): the loss, an evaluation, the test evaluation;
    # after 4: an evaluation
    assert between == [0, 1, 3, 1, 0], between
    assert reads.count("tolist") == len(reads)
    assert all("noise_trace" in r for r in rows(tmp_path, "syncs", "step"))


# ---------------------------------------------------------------- bad values

@pytest.mark.parametrize("extra, words, code", [
    (["--val_size", "-1"], "--val_size: expected an integer >= 0", 2),
    (["--val_size", "200"], "--val_size: 200 is not fewer than the 200 training images", 2),
    (["--val_size", "500"], "--val_size: 500 is not fewer than the 200 training images", 2),
    (["--eval_every", "0"], "--eval_every: expected an integer >= 1", 2),
    (["--val_size", "50", "--eval_every", "-3"], "--eval_every: expected an integer >= 1", 2),
    (["--eval_every", "5"], "--eval_every: needs --val_size", 2),
    (["--test_eval", "end"], "--test_eval end: needs --val_size", 2),
    (["--val_size", "50", "--test_eval", "last"], "--test_eval", 2),
])
def test_bad_validation_flags_are_one_line_errors_that_write_nothing(tiny_cifar10, tmp_path, capsys, extra, words,
                                                                     code):
    root, _ = tiny_cifar10
    before = tree(tmp_path)
    err = run_expecting_error(["bad", *tiny_flags(root, tmp_path / "logs"), *extra], capsys, code=code)
    assert words in err, err
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- provenance

def test_every_trial_records_threads_torch_and_commit(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["prov", *tiny_flags(root, tmp_path, epochs=1)])
    _, params = only_trial(tmp_path, "prov")
    assert params["torch_threads"] == torch.get_num_threads() and params["torch_version"] == torch.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:  # not a git checkout (an unpacked archive)
        assert params["git_hash"] == "unknown" and params["git_dirty"] is None
        return
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                             ":(exclude)results", ":(exclude)images"], cwd=ROOT, capture_output=True, text=True).stdout
    assert params["git_hash"] == head.stdout.strip() and params["git_dirty"] is bool(status.strip())


def test_changed_outputs_do_not_make_the_code_dirty(tmp_path):
    """A study commits its results while its trials run: a changed file under results/ is not changed code."""
    import shutil
    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "store.py"), repo / "store.py")
    (repo / "results" / "r.json").write_text("{}\n")
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo,  # noqa
                                    capture_output=True, text=True, check=True)
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    version = lambda: subprocess.run([sys.executable, "-c", "import store; print(store.code_version())"],  # noqa
                                     cwd=repo, capture_output=True, text=True, check=True).stdout
    assert "'git_dirty': False" in version()
    (repo / "results" / "r.json").write_text('{"a": 1}\n')
    assert "'git_dirty': False" in version()
    with open(repo / "store.py", "a") as f:
        f.write("\n# changed\n")
    assert "'git_dirty': True" in version()


def test_code_version_outside_a_checkout_is_unknown(monkeypatch):
    monkeypatch.setattr(store, "_git", lambda *args: None)
    assert store.code_version() == {"git_hash": "unknown", "git_dirty": None}


@pytest.mark.slow
def test_a_trial_logged_before_a_recipe_field_existed_still_matches_and_resumes(tiny_cifar10, tmp_path):
    """A parameter file without `val_size` (logged before it existed) is the default recipe: the sweep finds it
    and --resume accepts it."""
    import json
    import config
    root, _ = tiny_cifar10
    train.main(["old", "--stop_after_epoch", "1", *tiny_flags(root, tmp_path)])
    trial_dir, params = only_trial(tmp_path, "old")
    del params["val_size"]
    with open(store.params_path(os.path.join(tmp_path, "old"), params["trial_id"]), "w") as f:
        json.dump(params, f)
    assert config.recipe_json(params)["val_size"] == 0
    train.main(["old", "--resume", *tiny_flags(root, tmp_path)])
    assert only_trial(tmp_path, "old")[1]["finished"] is True
