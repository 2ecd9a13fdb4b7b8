"""torchrun with 2 CPU ranks (gloo) against one process with the same batch and micro-batch composition."""
import os
import subprocess
import sys

import pytest
import torch

import store
import train
from conftest import ROOT


def last_state(logroot, experiment):
    (trial,) = store.list_trials(str(logroot), experiment)
    return trial, torch.load(os.path.join(logroot, experiment, trial["trial_id"], "last.pt"), weights_only=True)


@pytest.mark.slow
def test_two_ranks_give_the_single_process_parameters(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    # 200 images in batches of 100: 2 optimizer steps. Each rank takes 50 samples as 2 micro-batches of 25;
    # the single process cuts its 100 into the same 4 micro-batches in the same order, so even BatchNorm
    # sees identical micro-batches and the parameters must agree.
    common = ["--width", "8", "--epochs", "1", "--batch_size", "100", "--max_samples_per_gpu", "25",
              "--eval_batch_size", "64", "--log_interval", "1", "--dataroot", root, "--logroot", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "train.py", "ddp", *common], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch   1/1") == 1  # only rank 0 prints
    train.main(["single", *common])

    ddp_trial, ddp = last_state(tmp_path, "ddp")
    single_trial, single = last_state(tmp_path, "single")
    assert ddp_trial["world_size"] == 2 and single_trial["world_size"] == 1
    assert ddp["global_step"] == single["global_step"] == 2
    for name, p in single["model"].items():
        if p.is_floating_point() and "running" not in name:
            q = ddp["model"][name]
            assert torch.allclose(q, p, rtol=1e-5, atol=1e-5 * p.abs().max()), name
    losses = lambda name: store.read_results(os.path.join(tmp_path, name)).query("kind == 'step'")  # noqa: E731
    assert torch.allclose(torch.tensor(losses("ddp")["train_loss"].tolist()),
                          torch.tensor(losses("single")["train_loss"].tolist()), rtol=1e-5)
    # Only rank 0 wrote a trial.
    assert len(store.list_trials(str(tmp_path), "ddp")) == 1


def test_batch_that_does_not_split_over_ranks_is_an_error(tiny_cifar10, tmp_path, monkeypatch, capsys):
    root, _ = tiny_cifar10
    # As torchrun would set them for rank 0 of 2; the check comes before any process group is formed.
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["odd", "--width", "8", "--epochs", "1", "--batch_size", "51", "--dataroot", root,
                    "--logroot", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--batch_size: 51 does not split evenly over 2 ranks" in capsys.readouterr().err
    assert not (tmp_path / "odd").exists()
