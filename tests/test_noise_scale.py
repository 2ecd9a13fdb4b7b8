"""The gradient noise scale (--noise_scale, noise_scale.py): a problem with a known answer, independence of how
a step is cut, DDP ranks as units, and the trainer's rows."""
import os
import subprocess
import sys

import pytest
import torch

import config
import store
import train
import trainer
from conftest import ROOT, only_trial, result_rows, run_expecting_error, tiny_flags
from noise_scale import NoiseScale

DIM, NOISE_VAR, DELTA_SQ = 10, 1.0, 1.0


def linear_regression_noise_scale(batch, micro, steps, loss_weighting="per_sample", seed=0):
    """B_simple measured on least squares with Gaussian inputs at fixed weights w = w* + delta.

    Per-sample gradient g = x (x.delta - eps), x ~ N(0, I_d), eps ~ N(0, s^2): G = delta and, by Isserlis,
    Sigma = delta delta^T + (|delta|^2 + s^2) I, so tr(Sigma) = |delta|^2 + d (|delta|^2 + s^2)."""
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(DIM, 1, bias=False).double()
    w_star = torch.randn(DIM, generator=generator, dtype=torch.float64)
    delta = torch.randn(DIM, generator=generator, dtype=torch.float64)
    delta *= (DELTA_SQ / delta.square().sum()).sqrt()
    with torch.no_grad():
        model.weight.copy_((w_star + delta)[None])
    loss_fn = lambda out, y: 0.5 * (out[:, 0] - y).square().mean()  # noqa: E731
    noise = NoiseScale(model.parameters(), decay=1 - 1 / steps)
    plan = config.plan(config.Recipe(batch_size=batch, max_samples_per_gpu=micro, loss_weighting=loss_weighting),
                       train_size=batch)
    for _ in range(steps):
        x = torch.randn(batch, DIM, generator=generator, dtype=torch.float64)
        y = x @ w_star + NOISE_VAR ** 0.5 * torch.randn(batch, generator=generator, dtype=torch.float64)
        micro_batches = trainer.split_step(x, y, plan, loss_weighting)
        noise.start_step(micro_batches)
        trainer.accumulate_gradients(model, micro_batches, loss_fn, after_backward=noise.after_backward)
        noise.end_step()
        model.zero_grad(set_to_none=True)
    return noise.row(noise.readout("cpu").tolist())


TRACE = DELTA_SQ + DIM * (DELTA_SQ + NOISE_VAR)  # 21


@pytest.mark.parametrize("batch, micro, weighting", [
    (64, 16, "per_sample"), (64, 32, "per_sample"),
    pytest.param(60, 25, "per_sample", marks=pytest.mark.slow), pytest.param(60, 25, "per_chunk", marks=pytest.mark.slow)])
def test_noise_scale_of_linear_regression_is_the_analytic_one(batch, micro, weighting):
    """Within 10% of tr(Sigma)/|G|^2 = 21 whatever the cut: 4 or 2 equal micro-batches, 25+25+10 weighted by size
    (exact accumulation), or the seed's per-chunk weighting (two chunks of 30, weighted 1/2)."""
    row = linear_regression_noise_scale(batch, micro, steps=3000)
    assert row["noise_grad_sq"] == pytest.approx(DELTA_SQ, rel=0.10)
    assert row["noise_trace"] == pytest.approx(TRACE, rel=0.10)
    assert row["noise_scale"] == pytest.approx(TRACE / DELTA_SQ, rel=0.10)


@pytest.mark.slow
def test_how_a_step_is_cut_changes_the_estimate_only_by_noise():
    """The same steps (same data) cut into 8, 4 or 2 micro-batches: the estimates agree within 10%, and with
    different data (another seed) as closely: the cut adds no difference beyond the noise of the estimate."""
    by_cut = [linear_regression_noise_scale(64, micro, steps=2000)["noise_scale"] for micro in (8, 16, 32)]
    other_data = linear_regression_noise_scale(64, 16, steps=2000, seed=1)["noise_scale"]
    assert max(by_cut) / min(by_cut) < 1.10, by_cut
    assert max(by_cut + [other_data]) / min(by_cut + [other_data]) < 1.15, (by_cut, other_data)


@pytest.mark.slow
def test_one_micro_batch_per_step_says_so_once_and_trains_on(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    flags = tiny_flags(root, tmp_path, "--noise_scale")
    flags[flags.index("--max_samples_per_gpu") + 1] = "50"
    train.main(["one", *flags])
    out = capsys.readouterr().out
    assert out.count("--noise_scale: one micro-batch per step") == 1 and "finished" in out
    rows = result_rows(tmp_path, "one", only_trial(tmp_path, "one")[1]["trial_id"])
    assert rows and not any("noise_scale" in r for r in rows)


@pytest.mark.slow
def test_steps_log_the_noise_scale_every_log_interval(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    train.main(["gns", *tiny_flags(root, tmp_path, "--noise_scale")])
    steps = [r for r in result_rows(tmp_path, "gns", only_trial(tmp_path, "gns")[1]["trial_id"])
             if r["kind"] == "step"]
    assert len(steps) == 8
    for r in steps:
        assert isinstance(r["noise_trace"], float) and isinstance(r["noise_grad_sq"], float)
        assert r["noise_scale"] is None or r["noise_scale"] == pytest.approx(r["noise_trace"] / r["noise_grad_sq"])
    assert len({r["noise_trace"] for r in steps}) == 8  # a new value every step


def test_noise_scale_with_loss_scaling_is_refused(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    err = run_expecting_error(["bad", *tiny_flags(root, tmp_path / "logs"), "--noise_scale", "--cuda", "--amp",
                               "fp16"], capsys, code=2)
    assert "--noise_scale: not with --amp fp16" in err and not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_two_ranks_measure_what_one_process_measures_with_two_micro_batches(tiny_cifar10, tmp_path):
    """Each rank's 50 samples are one unit under DDP, as each micro-batch of 50 is in one process: the same
    gradients, so the same estimates. The validation split is evaluated on both ranks' halves and summed."""
    root, _ = tiny_cifar10
    common = ["--width", "8", "--epochs", "2", "--batch_size", "100", "--max_samples_per_gpu", "50",
              "--eval_batch_size", "64", "--log_interval", "1", "--dataroot", root, "--logroot", str(tmp_path),
              "--noise_scale", "--train_subset", "150", "--val_size", "50", "--eval_every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "train.py", "ddp", *common], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    train.main(["single", *common])
    rows = {name: result_rows(tmp_path, name, store.list_trials(str(tmp_path), name)[0]["trial_id"])
            for name in ("ddp", "single")}
    ddp, single = ([r for r in rows[n] if r["kind"] == "step"] for n in ("ddp", "single"))
    assert [r["iteration"] for r in ddp] == [r["iteration"] for r in single] == [1, 2]
    for a, b in zip(ddp, single):
        for key in ("train_loss", "noise_trace", "noise_grad_sq"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-9), (key, a, b)
    # every validation image counted once over the two ranks' halves (rank 0's BatchNorm statistics, which
    # saw half the samples the single process's did: the values themselves differ)
    evals = [r for r in rows["ddp"] if r["kind"] == "eval"]
    assert [r["iteration"] for r in evals] == [1, 2]
    assert all(abs(r["val_top1"] / 100 * 50 - round(r["val_top1"] / 100 * 50)) < 1e-9 for r in evals)
