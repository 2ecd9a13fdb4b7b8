"""--log_trust_ratios: the trainer logs what LARS.trust_ratio_stats() reports, per layer, every --log_interval
(lars.py's own tests check that method against its update); plot_results draws it."""
import pytest
import torch

import lars
import train
from conftest import only_trial, result_rows, run_expecting_error, tiny_flags


def test_trust_rows_name_each_adapted_layer_every_log_interval(tiny_cifar10, tmp_path, monkeypatch):
    """The rows hold what the optimizer reported for the step just taken (recorded here as it is read)."""
    reported = []
    real = lars.LARS.trust_ratio_stats

    def recorded(self):
        stats = real(self)
        reported.append([(list(p), w.clone(), g.clone(), r.clone()) for p, w, g, r in stats])
        return stats

    monkeypatch.setattr(lars.LARS, "trust_ratio_stats", recorded)
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
    assert len(reported) == len(trust)  # read once per log point
    for r, stats in zip(trust, reported):
        assert sorted(r["layers"]) == sorted(adapted)
        assert len(r["weight_norm"]) == len(r["grad_norm"]) == len(r["trust_ratio"]) == len(adapted)
        flat = [torch.cat([s[k] for s in stats]).tolist() for k in (1, 2, 3)]
        assert r["weight_norm"] == pytest.approx(flat[0]) and r["grad_norm"] == pytest.approx(flat[1])
        assert r["trust_ratio"] == pytest.approx(flat[2])
        for w, g, ratio in zip(r["weight_norm"], r["grad_norm"], r["trust_ratio"]):  # the paper's formula
            assert w > 0 and g > 0 and ratio == pytest.approx(0.001 * w / (g + 5e-4 * w), rel=1e-4)

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


def test_trust_ratios_need_lars(tiny_cifar10, tmp_path, capsys):
    root, _ = tiny_cifar10
    err = run_expecting_error(["bad", *tiny_flags(root, tmp_path / "logs"), "--log_trust_ratios", "--optimizer",
                               "SGD"], capsys, code=2)
    assert "--log_trust_ratios: needs --optimizer LARS" in err and not (tmp_path / "logs").exists()
