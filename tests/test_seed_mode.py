"""The seed's behaviours (configs/seed_table.yaml) against a transcription of the seed's loop, and the knobs."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import config
import data
import models
import train
import trainer
from conftest import CONFIGS, only_trial, result_rows, run_expecting_error, tiny_flags

SEED_FLAGS = ["--last_batch", "keep", "--loss_weighting", "per_chunk", "--lr_update", "epoch",
              "--zero_norm_trust", "formula", "--bn_weight_init", "uniform", "--amp", "none"]


def seed_loop_transcription(dataroot, *, width, batch_size, max_samples, epochs, lr, eta, momentum, weight_decay, seed):
    """The seed's training loop as its README and code describe it, written out independently of trainer.py:
    ceil(N/B) steps per epoch, torch.chunk into max(1, B // 512-equivalent) chunks, each chunk's mean loss
    divided by the number of chunks, lr_e = lr * (1 - e/E)**2 held for the epoch, and LARS with
    lambda = eta * ||w|| / (||g|| + wd * ||w||), v = m * v + lr * lambda * (g + wd * w), w = w - v."""
    train_x, train_y, _, _ = data.load_cifar(dataroot)
    trainer.seed_everything(seed)
    model = models.build("ResNet18", width=width, bn_weight_init="uniform")
    batches = data.TrainBatches(train_x, train_y, batch_size, seed=seed, keep_last=True)
    assert batches.steps_per_epoch == math.ceil(len(train_y) / batch_size)
    buffers = {p: torch.zeros_like(p) for p in model.parameters()}
    num_chunks = max(1, batch_size // max_samples)
    sizes = []
    for epoch in range(epochs):
        model.train()
        epoch_lr = lr * (1 - epoch / epochs) ** 2
        for images, labels in batches.epoch(epoch):
            sizes.append(len(labels))
            for x, y in zip(torch.chunk(images, num_chunks), torch.chunk(labels, num_chunks)):
                (F.cross_entropy(model(x), y) / num_chunks).backward()
            with torch.no_grad():
                for p in model.parameters():
                    w_norm, g_norm = p.norm(), p.grad.norm()
                    trust = eta * w_norm / (g_norm + weight_decay * w_norm)
                    buffers[p].mul_(momentum).add_(epoch_lr * trust * (p.grad + weight_decay * p))
                    p.sub_(buffers[p])
                    p.grad = None
    return model, sizes


@pytest.mark.slow
def test_every_seed_behaviour_equals_a_transcription_of_the_seeds_loop(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    # 200 images at batch 48: ceil -> 5 steps per epoch, the last with 8 samples; 3 chunks per step (of 16;
    # of 3, 3 and 2 on the short step, each weighted 1/3).
    hyper = dict(width=4, batch_size=48, max_samples=16, epochs=2, lr=0.5, eta=0.02, momentum=0.9,
                 weight_decay=5e-4, seed=3)
    train.main(["seed", *SEED_FLAGS, "--width", "4", "--batch_size", "48", "--max_samples_per_gpu", "16",
                "--epochs", "2", "--lr", "0.5", "--eta", "0.02", "--seed", "3", "--log_interval", "1",
                "--dataroot", root, "--logroot", str(tmp_path)])
    expected, sizes = seed_loop_transcription(root, **hyper)
    assert sizes == [48, 48, 48, 48, 8] * 2
    trial_dir, trial = only_trial(tmp_path, "seed")
    assert (trial["steps_per_epoch"], trial["total_steps"], trial["micro_batches_per_step"]) == (5, 10, 3)
    lrs = [r["learning_rate"] for r in result_rows(tmp_path, "seed", trial["trial_id"]) if r["kind"] == "step"]
    assert lrs == [0.5] * 5 + [0.125] * 5  # the staircase: (1 - e/2)**2
    state = torch.load(os.path.join(trial_dir, "last.pt"), weights_only=True)["model"]
    trainer.seed_everything(3)
    initial = models.build("ResNet18", width=4, bn_weight_init="uniform").state_dict()
    # Float rounding (torch's multi-tensor norms vs Tensor.norm) is amplified by BatchNorm over 2-3-sample
    # chunks: measured 1e-3 after these 10 steps. One changed behaviour moves the weights ~100 times more
    # (per-sample weighting of the short step: 0.09; the lr updated per step: 0.09).
    for name, p in expected.named_parameters():
        assert (state[name] - p.detach()).abs().max() < 1e-2, name
    assert not torch.equal(initial["head.weight"], state["head.weight"])  # not two untrained networks
    # Under the seed's trust ratio every BatchNorm bias (initialised at 0) stays exactly 0.
    biases = [v for k, v in state.items() if k.endswith(".bias") and v.dim() == 1 and "head" not in k]
    assert biases and all(torch.equal(b, torch.zeros_like(b)) for b in biases)


class WithIdleZeroParameter(torch.nn.Module):
    """A network plus a parameter at 0 whose gradient is 0: the seed's trust ratio is then 0/0."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.idle = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.inner(x) + 0 * self.idle


def test_seed_trust_ratio_nan_is_the_one_line_divergence_error(tiny_cifar10, tmp_path, monkeypatch, capsys):
    root, _ = tiny_cifar10
    real = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", lambda *a, **k: WithIdleZeroParameter(real(*a, **k)))
    err = run_expecting_error(["nan", "--zero_norm_trust", "formula", *tiny_flags(root, tmp_path, epochs=1)],
                              capsys, code=1)
    assert "training loss is nan" in err


@pytest.mark.slow
def test_ghost_batch_size_and_zero_init_residual_reach_the_model(tiny_cifar10, tmp_path):
    root, _ = tiny_cifar10
    recipe = config.Recipe(width=4, ghost_batch_size=5, zero_init_residual=True)
    model = trainer.build_model(recipe, torch.device("cpu"))
    ghosts = [m for m in model.modules() if isinstance(m, models.GhostBatchNorm2d)]
    assert ghosts and all(m.ghost_batch_size == 5 for m in ghosts)
    assert all(torch.equal(b.residual_bn.weight, torch.zeros_like(b.residual_bn.weight))
               for b in model.modules() if isinstance(b, (models.BasicBlock, models.Bottleneck)))
    train.main(["ghost", "--ghost_batch_size", "5", "--zero_init_residual", *tiny_flags(root, tmp_path, epochs=1)])
    _, trial = only_trial(tmp_path, "ghost")
    assert (trial["ghost_batch_size"], trial["bn_batch_size"], trial["micro_batch"]) == (5, 5, 25)


@pytest.mark.parametrize("flags, warmup", [(["--warmup_steps", "3"], 3), (["--warmup_fraction", "0.25"], 2),
                                           (["--warmup_epochs", "0.5"], 2)])
def test_warmup_in_steps_fraction_or_epochs(flags, warmup):
    parser = config.make_parser()
    recipe, _ = config.from_namespace(parser.parse_args(["x", "--epochs", "2", "--batch_size", "50", *flags]))
    config.check(recipe)
    assert config.plan(recipe, train_size=200).resolved_warmup_steps == warmup


@pytest.mark.parametrize("flags, words", [
    (["--warmup_steps", "3", "--warmup_epochs", "1"], "at most one"),
    (["--ghost_batch_size", "7"], "does not divide"),
    (["--ghost_batch_size", "5", "--last_batch", "keep"], "--ghost_batch_size"),
    (["--zero_init_residual", "--arch", "AirbenchNet"], "no residual blocks"),
])
def test_knob_conflicts_are_one_line_errors(tiny_cifar10, tmp_path, capsys, flags, words):
    root, _ = tiny_cifar10
    err = run_expecting_error(["bad", *flags, *tiny_flags(root, tmp_path / "logs")], capsys, code=2)
    assert words in err and not (tmp_path / "logs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name, extra, trials", [("seed_table.yaml", [], 1),
                                                 ("lars_tuned.yaml", ["--ghost_batch_size", "5"], 4),
                                                 ("sgd_nesterov_tuned.yaml", ["--ghost_batch_size", "5"], 4)])
def test_shipped_configs_run_one_epoch_on_tiny_data(tiny_cifar10, tmp_path, name, extra, trials):
    root, _ = tiny_cifar10
    # --batch_size collapses each grid's batch axis; the lr axis at the largest batches stays (3 points).
    path = os.path.join(CONFIGS, name)
    train.main(["smoke", "--config", path, "--epochs", "1", *extra, "--batch_size", "50",
                "--max_samples_per_gpu", "25", "--width", "4", "--eval_batch_size", "100", "--dataroot", root,
                "--logroot", str(tmp_path)])
    import store
    done = store.list_trials(str(tmp_path), "smoke")
    assert len(done) == trials and all(t["finished"] for t in done)
