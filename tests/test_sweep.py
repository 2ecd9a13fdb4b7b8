"""sweep.py: configs, the grid, skip/resume on re-runs, command-line overrides, and a local Ray run (CPU)."""
import contextlib
import os

import pytest

import config
import store
import sweep
import train
import trainer
from conftest import ROOT, result_rows, write_tiny_cifar

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_cifar"))
    write_tiny_cifar(root)
    return root


def tiny(dataroot, logroot, *extra):
    # 200 training images: batch 50 -> 4 steps/epoch, batch 100 -> 2; width-8 ResNet18.
    return ["--width", "8", "--epochs", "2", "--max_samples_per_gpu", "25", "--eval_batch_size", "100",
            "--log_interval", "1", "--dataroot", dataroot, "--logroot", str(logroot), *extra]


def plan_of(config_path, argv):
    recipe, runtime = config.from_namespace(config.make_parser().parse_args(argv))
    return sweep.grid_entries(config_path, recipe, runtime, config.given_flags(argv))


def write_config(path, text):
    path.write_text(text)
    return str(path)


def trials_by_batch(logroot, experiment):
    return {t["batch_size"]: t for t in store.list_trials(str(logroot), experiment)}


def result_files(logroot, experiment):
    folder = os.path.join(logroot, experiment, "trials")
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_grid_interrupted_resumed_then_skipped(dataroot, tmp_path, capsys, monkeypatch):
    # The config says 200 epochs; --epochs 2 on the command line wins for every trial.
    # warmup_fraction: its resolved step count is logged beside the recipe, not over --warmup_steps
    path = write_config(tmp_path / "grid.yaml",
                        "optimizer: LARS\nepochs: 200\nbatch_size: [50, 100]\nlr: 0.05\nwarmup_fraction: 0.25\n")
    logroot = tmp_path / "logs"
    train.main(["grid", "--config", path, *tiny(dataroot, logroot, "--stop_after_epoch", "1")])
    out = capsys.readouterr().out
    assert "2 trial(s)" in out and "batch_size=50: new" in out and "batch_size=100: new" in out
    first = trials_by_batch(logroot, "grid")
    assert sorted(first) == [50, 100]
    assert all(t["finished"] is False and t["epochs"] == 2 and t["lr"] == 0.05 for t in first.values())
    epoch1 = {b: [r for r in result_rows(logroot, "grid", t["trial_id"]) if r["kind"] == "epoch"]
              for b, t in first.items()}
    assert all([r["epoch"] for r in rows] == [1] for rows in epoch1.values())

    # Re-run: both interrupted trials resume from their checkpoints and finish; no new trial.
    train.main(["grid", "--config", path, *tiny(dataroot, logroot)])
    out = capsys.readouterr().out
    assert out.count("unfinished: resume") == 2 and "resuming after epoch 1" in out
    done = trials_by_batch(logroot, "grid")
    assert {b: t["trial_id"] for b, t in done.items()} == {b: t["trial_id"] for b, t in first.items()}
    for batch, steps in ((50, 4), (100, 2)):
        rows = result_rows(logroot, "grid", done[batch]["trial_id"])
        epochs = [r for r in rows if r["kind"] == "epoch"]
        assert done[batch]["finished"] is True
        assert [r["epoch"] for r in epochs] == [1, 2]  # exactly one row per epoch
        assert [r["iteration"] for r in rows if r["kind"] == "step"] == list(range(1, 2 * steps + 1))
        assert epochs[0] == epoch1[batch][0]  # epoch 1 was not trained again
        assert os.path.exists(os.path.join(logroot, "grid", done[batch]["trial_id"], "last.pt"))

    # Re-run again: everything is finished, nothing trains, no file changes.
    before = result_files(logroot, "grid")

    def no_training(*a, **k):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(trainer, "run_trial", no_training)
    train.main(["grid", "--config", path, *tiny(dataroot, logroot)])
    out = capsys.readouterr().out
    assert out.count("already finished: skipped") == 2
    assert result_files(logroot, "grid") == before


def test_parameter_file_sections_share_no_key():
    """A parameter file holds the recipe, the plan and the runtime side by side: a shared key would overwrite
    a recipe value, and the sweep would no longer recognise the trial (as a plan's warmup_steps once did)."""
    import dataclasses
    recipe, plan, runtime = ({f.name for f in dataclasses.fields(c)} for c in (config.Recipe, config.Plan, config.Runtime))
    assert not recipe & plan and not recipe & runtime and not plan & runtime


def test_command_line_overrides_the_config(tmp_path):
    path = write_config(tmp_path / "c.yaml", "epochs: 200\nbatch_size: [64, 256]\nlr: [0.1, 0.2]\nnesterov: true\n"
                                              "lr_milestones: [[1, 2], [3]]\nweight_decay: 5e-4\n")
    entries = plan_of(path, ["exp", "--config", path, "--epochs", "3", "--lr", "0.05", "--logroot",
                             str(tmp_path / "logs")])
    # --lr collapses the lr axis: 2 batch sizes x 2 milestone lists remain, in file order (last axis fastest).
    points = [(a.batch_size, a.lr_milestones) for _, a, _, _ in entries]
    assert points == [(64, (1, 2)), (64, (3,)), (256, (1, 2)), (256, (3,))]
    for _, a, _, existing in entries:
        assert a.epochs == 3 and a.lr == 0.05 and a.nesterov is True and existing is None
        assert a.weight_decay == 5e-4  # YAML reads 5e-4 as a string; converted like the command line
    assert [label for label, _, _, _ in entries][0] == "batch_size=64, lr_milestones=[1, 2]"


def test_a_grid_sets_how_often_its_trials_are_observed(tmp_path):
    """eval_every and log_interval are steps, so each batch size's grid gives its own; the command line wins,
    and they do not tell trials apart (not in the recipe)."""
    path = write_config(tmp_path / "c.yaml", "- &a\n  val_size: 50\n  batch_size: 64\n  eval_every: 20\n"
                                              "- <<: *a\n  batch_size: 256\n  eval_every: 5\n  log_interval: 2\n")
    entries = plan_of(path, ["exp", "--config", path, "--logroot", str(tmp_path / "logs")])
    assert [(r.batch_size, rt.eval_every, rt.log_interval) for _, r, rt, _ in entries] == [(64, 20, 50), (256, 5, 2)]
    entries = plan_of(path, ["exp", "--config", path, "--eval_every", "7", "--logroot", str(tmp_path / "logs")])
    assert [rt.eval_every for _, _, rt, _ in entries] == [7, 7]


def test_the_scaling_study_configs_find_their_committed_trials(tmp_path):
    """The study's pilot trials were run as single commands; the sweep must recognise them as its grid points."""
    logroot = os.path.join(ROOT, "results", "scaling_study")
    finished = 0
    for optimizer in ("lars", "sgd"):
        path = os.path.join(CONFIGS, "scaling_study", f"{optimizer}.yaml")
        entries = plan_of(path, [f"scaling_{optimizer}", "--config", path, "--logroot", logroot])
        # first the seed-1 grids, 6 batch sizes x 3 lrs; then what the design's rules added (next_trials.py)
        assert len({(r.batch_size, r.lr, r.epochs, r.seed) for _, r, _, _ in entries[:18]}) == 18
        assert len({(r.batch_size, r.lr, r.epochs, r.seed) for _, r, _, _ in entries}) == len(entries)
        assert {rt.eval_every for _, _, rt, _ in entries} == {3, 5, 10, 20, 40, 150}
        finished += sum(bool(e and e.get("finished")) for _, _, _, e in entries)
    committed = [t for name in ("scaling_lars", "scaling_sgd") for t in store.list_trials(logroot, name)
                 if t.get("finished")]
    assert finished == len(committed) > 0


def test_shipped_configs_expand(tmp_path):
    for name, n in (("seed_table.yaml", 5), ("lars_tuned.yaml", 9), ("sgd_nesterov_tuned.yaml", 9),
                    ("sgd_baseline.yaml", 1)):
        path = os.path.join(CONFIGS, name)
        entries = plan_of(path, ["exp", "--config", path, "--logroot", str(tmp_path)])
        assert len(entries) == n
    (axes,) = sweep.load_config(os.path.join(CONFIGS, "seed_table.yaml"))
    assert axes["batch_size"] == [64, 256, 1024, 4096, 16384]
    assert (axes["optimizer"], axes["lr"], axes["eta"], axes["momentum"], axes["weight_decay"], axes["poly_power"],
            axes["epochs"], axes["max_samples_per_gpu"]) == (["LARS"], [0.1], [0.001], [0.9], [5e-4], [2.0], [200], [512])
    # every seed behaviour is on
    assert (axes["last_batch"], axes["loss_weighting"], axes["zero_norm_trust"], axes["lr_update"],
            axes["bn_weight_init"], axes["amp"]) == (["keep"], ["per_chunk"], ["formula"], ["epoch"], ["uniform"], ["none"])
    (sgd,) = sweep.load_config(os.path.join(CONFIGS, "sgd_baseline.yaml"))
    assert sgd["optimizer"] == ["SGD"] and sgd["batch_size"] == [128] and sgd["schedule"] == ["geometric"]


@pytest.mark.parametrize("text, key, words", [
    ("batch_size: [64]\nlearning_rate: 0.1\n", "learning_rate", "not a train.py flag"),
    ("config: other.yaml\n", "config", "command line"),
    ("experimentname: x\n", "experimentname", "command line"),
    ("logroot: /tmp/x\n", "logroot", "command line"),
    ("batch_size: [64, big]\n", "batch_size", "integer"),
    ("batch_size: 6.5\n", "batch_size", "integer"),
    ("lr: fast\n", "lr", "number"),
    ("nesterov: 1\n", "nesterov", "true or false"),
    ("optimizer: Adam\n", "optimizer", "one of LARS, SGD"),
    ("optimizer: [LARS, Adam]\n", "optimizer", "one of LARS, SGD"),
    ("lr_milestones: [[10], [x]]\n", "lr_milestones", "integers"),
    ("lr_milestones: ['100,150', 200]\n", "lr_milestones", "one comma-separated string"),
    ("batch_size: []\n", "batch_size", "empty grid"),
    ("batch_size: [64, 64]\n", "batch_size", "repeats"),
    ("eval_every: [5, 10]\nval_size: 50\n", "eval_every", "not a grid axis"),
    ("eval_every: 5\n", "eval_every", "needs --val_size"),
    ("warmup_epochs: [1, 500]\nepochs: 10\n", "warmup_epochs", "grid point"),
])
def test_config_errors_name_the_file_and_key(tmp_path, capsys, text, key, words):
    path = write_config(tmp_path / "bad.yaml", text)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["exp", "--config", path, "--logroot", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith(f"train.py: error: {path}: ")
    assert key in err and words in err
    assert not os.path.exists(tmp_path / "logs")  # nothing ran


@pytest.mark.parametrize("text, words", [(None, "cannot read"), ("- a\n- b\n", "mapping"), ("a: [1\n", "YAML"),
                                         ("", "mapping")])
def test_unreadable_configs_name_the_file(tmp_path, capsys, text, words):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["exp", "--config", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"train.py: error: {path}: ") and words in err


@pytest.mark.slow
def test_ray_local_runs_the_grid_and_names_a_failed_trial(dataroot, tmp_path, capsys, monkeypatch):
    # Two trials that finish and one that diverges, on a private local Ray instance (2 CPUs here).
    path = write_config(tmp_path / "ray.yaml", "optimizer: SGD\nbatch_size: 50\nlr: [0.1, 0.05, 1.0e+9]\n")
    logroot = tmp_path / "logs"
    monkeypatch.chdir(tmp_path)  # relative paths must reach the workers as absolute ones
    with pytest.raises(SystemExit) as exit_info:
        train.main(["raysweep", "--config", path, "--ray", "local",
                    *tiny(dataroot, os.path.relpath(logroot, tmp_path))])
    captured = capsys.readouterr()
    # Ray forwards its workers' stderr to ours whenever it likes: find our error line among theirs.
    errors = [line for line in captured.err.splitlines() if line.startswith("train.py: error:")]
    assert exit_info.value.code == 1, captured.err[-3000:]
    assert len(errors) == 1, captured.err[-3000:]
    assert errors[0].startswith(f"train.py: error: 1 of 3 trial(s) of {path} failed: lr=1000000000.0: "
                                "training loss is")
    trials = {t["lr"]: t for t in store.list_trials(str(logroot), "raysweep")}
    assert set(trials) == {0.1, 0.05, 1e9}
    for lr in (0.1, 0.05):
        assert trials[lr]["finished"] is True
        assert [r["epoch"] for r in result_rows(logroot, "raysweep", trials[lr]["trial_id"])
                if r["kind"] == "epoch"] == [1, 2]
    assert trials[1e9]["finished"] is False
    assert os.path.isdir(logroot / "raysweep" / "ray") and not os.path.exists(tmp_path / "raydata")

    # Without Ray, the same command skips the two finished trials (only the diverged one would run again).
    entries = plan_of(path, ["raysweep", "--config", path, *tiny(dataroot, logroot)])
    assert [(e or {}).get("finished") for _, _, _, e in entries] == [True, True, False]


def test_a_single_milestone_is_a_one_element_list(tmp_path):
    path = write_config(tmp_path / "m.yaml", "schedule: step\nepochs: 200\nlr_milestones: 100\n")
    (axes,) = sweep.load_config(path)
    assert axes["lr_milestones"] == [(100,)]


def test_trials_failing_in_different_ways_are_one_line(dataroot, tmp_path, capsys, monkeypatch):
    path = write_config(tmp_path / "g.yaml", "batch_size: 50\nlr: [0.1, 0.2]\n")

    def failing(recipe, runtime, resume_id=None):
        error = trainer.Diverged if recipe.lr == 0.1 else store.CheckpointError
        raise error(f"failure of lr {recipe.lr}")

    monkeypatch.setattr(trainer, "run_trial", failing)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["mixed", "--config", path, *tiny(dataroot, tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "2 of 2 trial(s)" in err and "failure of lr 0.1" in err and "failure of lr 0.2" in err


def test_an_unexpected_error_in_one_trial_does_not_stop_the_others(dataroot, tmp_path, capsys, monkeypatch):
    path = write_config(tmp_path / "g.yaml", "batch_size: 50\nlr: [0.1, 0.2]\n")
    ran = []

    def flaky(recipe, runtime, resume_id=None):
        ran.append(recipe.lr)
        if recipe.lr == 0.1:
            raise RuntimeError("a torch error")
        return {"trial_id": "x", "finished": True}

    monkeypatch.setattr(trainer, "run_trial", flaky)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["unexpected", "--config", path, *tiny(dataroot, tmp_path)])
    err = capsys.readouterr().err
    assert ran == [0.1, 0.2] and exit_info.value.code == 1 and err.count("\n") == 1
    assert "1 of 2 trial(s)" in err and "RuntimeError: a torch error" in err


def test_two_sweeps_over_one_config_share_its_points(dataroot, tmp_path, capsys, monkeypatch):
    """A grid point claimed by another sweep (store.claim) is left to it; one another sweep finished after this
    one listed the trials is skipped, not run twice; the claims' files are not results (nothing is left when no
    trial was written)."""
    path = write_config(tmp_path / "grid.yaml", "optimizer: SGD\nepochs: 1\nbatch_size: [50, 100]\nlr: 0.05\n")
    logroot = tmp_path / "logs"
    argv = ["grid", "--config", path, *tiny(dataroot, logroot, "--epochs", "1")]
    (_, recipe50, runtime50, _), _ = plan_of(path, argv)
    point50 = config.as_json(trainer.prepare(recipe50, runtime50))
    with store.claim(str(logroot), "grid", point50) as mine:  # "another sweep" runs batch 50
        assert mine is True
        with store.claim(str(logroot), "grid", point50) as theirs:
            assert theirs is False
        train.main(argv)
    out = capsys.readouterr().out
    assert "batch_size=50: being run by another sweep: left to it" in out
    assert "batch_size=50: trial None left to the other sweep running it" in out
    assert sorted(trials_by_batch(logroot, "grid")) == [100]

    # a sweep lists both points as new; another sweep (over a config of batch 50 alone) finishes batch 50 while
    # the first one trains batch 100: the first one then skips batch 50 rather than train it a second time
    logroot = tmp_path / "logs2"
    first = write_config(tmp_path / "first.yaml", "optimizer: SGD\nepochs: 1\nbatch_size: [100, 50]\nlr: 0.05\n")
    other = write_config(tmp_path / "other.yaml", "optimizer: SGD\nepochs: 1\nbatch_size: 50\nlr: 0.05\n")
    real_run_trial = trainer.run_trial

    def other_sweep_meanwhile(recipe, runtime, resume_id=None):
        if recipe.batch_size == 100:
            train.main(["grid", "--config", other, *tiny(dataroot, logroot, "--epochs", "1")])
        return real_run_trial(recipe, runtime, resume_id=resume_id)

    monkeypatch.setattr(trainer, "run_trial", other_sweep_meanwhile)
    train.main(["grid", "--config", first, *tiny(dataroot, logroot, "--epochs", "1")])
    out = capsys.readouterr().out
    assert "batch_size=50: new" in out and "batch_size=50: trial" in out and "skipped (already finished)" in out
    trials = store.list_trials(str(logroot), "grid")
    assert sorted(t["batch_size"] for t in trials) == [50, 100] and all(t["finished"] for t in trials)


def test_a_claim_that_wrote_no_trial_leaves_no_folder(tmp_path):
    logroot = tmp_path / "new" / "logs"
    with store.claim(str(logroot), "exp", {"lr": 0.1}) as held:
        assert held and (logroot / "exp" / store.CLAIMS_FOLDER).is_dir()
    assert not (tmp_path / "new").exists()


def test_a_claim_lost_to_another_process_leaves_its_files_alone(tmp_path, monkeypatch):
    """This sweep makes the claims' folder, another one locks the point first: this one must not tidy away the
    folder and lock file the other one holds."""
    logroot, other = str(tmp_path / "logs"), contextlib.ExitStack()
    make_folders = store._make_folders

    def then_another_sweep_claims(path, created):
        make_folders(path, created)
        monkeypatch.setattr(store, "_make_folders", make_folders)
        assert other.enter_context(store.claim(logroot, "exp", {"lr": 0.1})) is True

    monkeypatch.setattr(store, "_make_folders", then_another_sweep_claims)
    with store.claim(logroot, "exp", {"lr": 0.1}) as held:
        assert held is False
    claims = tmp_path / "logs" / "exp" / store.CLAIMS_FOLDER
    assert len(os.listdir(claims)) == 1  # the other sweep's lock file, still there while it runs the point
    with store.claim(logroot, "exp", {"lr": 0.1}) as again:
        assert again is False  # and still held
    other.close()


def test_under_torchrun_every_rank_runs_every_point_without_claims(dataroot, tmp_path, monkeypatch):
    """Ranks run a sweep's points in step: a rank must not leave a point to another rank's claim."""
    path = write_config(tmp_path / "grid.yaml", "optimizer: SGD\nepochs: 1\nbatch_size: 50\nlr: 0.05\n")
    logroot = tmp_path / "logs"
    ((_, recipe, runtime, _),) = plan_of(path, ["grid", "--config", path, *tiny(dataroot, logroot)])
    point = config.as_json(trainer.prepare(recipe, runtime))
    monkeypatch.setattr(trainer, "run_trial", lambda recipe, runtime, resume_id=None: {"ran": True})
    monkeypatch.setenv("WORLD_SIZE", "2")
    with store.claim(str(logroot), "grid", point):  # as rank 0 would hold it
        assert sweep._run_one(config.as_json(recipe), config.as_json(runtime), None) == {"ran": True}
