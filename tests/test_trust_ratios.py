"""--log_trust_ratios: the trainer logs what LARS.trust_ratio_stats() reports, per layer, every --log_interval.

The optimizer's side (LARS.trust_ratio_stats, lars.py) is tested with lars.py; here a stand-in subclass reports,
for each step, (params, ||w||, ||g||, trust ratio) per adapted group as that contract says, so that the
trainer's side is tested on its own."""
import pytest
import torch

import lars
import train
import trainer
from conftest import only_trial, result_rows, run_expecting_error, tiny_flags


class StandInLARS(lars.LARS):
    """LARS that reports the contract's statistics of each step (computed here, before the step, from the
    paper's formula with the zero case: only the stand-in recomputes them)."""

    def step(self, closure=None):
        self._stats = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not group["lars_adapt"] or not params:
                continue
            w = torch.stack([p.detach().norm() for p in params])
            g = torch.stack([p.grad.norm() for p in params])
            ratio = torch.where((w > 0) & (g > 0), group["eta"] * w / (g + group["weight_decay"] * w),
                                torch.ones_like(w))
            self._stats.append((params, w, g, ratio))
        return super().step(closure)

    def trust_ratio_stats(self):
        return getattr(self, "_stats", [])


def test_trust_rows_name_each_adapted_layer_every_log_interval(tiny_cifar10, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "LARS", StandInLARS)
    root, _ = tiny_cifar10
    flags = tiny_flags(root, tmp_path, "--arch", "AirbenchNet", "--log_trust_ratios", "--exclude_bn_bias",
                       epochs=1)
    flags[flags.index("--log_interval") + 1] = "2"
    train.main(["trust", *flags])
    rows = result_rows(tmp_path, "trust", only_trial(tmp_path, "trust")[1]["trial_id"])
    trust = [r for r in rows if r["kind"] == "trust"]
    assert [r["iteration"] for r in trust] == [r["iteration"] for r in rows if r["kind"] == "step"] == [2, 4]
    import models
    model = models.build("AirbenchNet", width=8)
    adapted = [name for name, p in model.named_parameters() if p.ndim > 1]  # --exclude_bn_bias: ndim <= 1 not
    for r in trust:
        assert sorted(r["layers"]) == sorted(adapted)
        assert len(r["weight_norm"]) == len(r["grad_norm"]) == len(r["trust_ratio"]) == len(adapted)
        for w, g, ratio in zip(r["weight_norm"], r["grad_norm"], r["trust_ratio"]):
            assert w > 0 and g > 0 and ratio == pytest.approx(0.001 * w / (g + 5e-4 * w), rel=1e-5)

    import plot_results  # draws them: trust ratio per layer over steps, and the per-layer table
    written = plot_results.main([str(tmp_path / "trust"), "--out", str(tmp_path / "plots")])
    assert str(tmp_path / "plots" / "trust_ratios.png") in written
    table = (tmp_path / "plots" / "trust_ratios.md").read_text()
    first, last = trust[0], trust[-1]
    for layer in adapted:
        line = next(line for line in table.splitlines() if line.startswith(f"| {layer} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        i, j = first["layers"].index(layer), last["layers"].index(layer)
        assert float(cells[4]) == pytest.approx(first["trust_ratio"][i], rel=1e-3)
        assert float(cells[8]) == pytest.approx(last["trust_ratio"][j], rel=1e-3)


def test_trust_ratios_need_lars_and_its_statistics(tiny_cifar10, tmp_path, capsys, monkeypatch):
    root, _ = tiny_cifar10
    err = run_expecting_error(["bad", *tiny_flags(root, tmp_path / "logs"), "--log_trust_ratios", "--optimizer",
                               "SGD"], capsys, code=2)
    assert "--log_trust_ratios: needs --optimizer LARS" in err
    monkeypatch.setattr(trainer, "LARS", type("LARSWithoutStatistics", (), {}))
    err = run_expecting_error(["bad", *tiny_flags(root, tmp_path / "logs"), "--log_trust_ratios"], capsys, code=2)
    assert "has no LARS.trust_ratio_stats()" in err and not (tmp_path / "logs").exists()
