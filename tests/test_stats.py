import json

import numpy as np
import pytest

from qsim.cli import main
from qsim.stats import describe


def test_describe_on_known_distributions():
    x = np.array([-1.0, 1.0] * 500)
    d = describe(x)
    assert d["max_over_std"] == 1.0 and abs(d["kurtosis"] - 1.0) < 1e-12
    g = describe(np.random.default_rng(0).standard_normal(200_000))
    assert abs(g["kurtosis"] - 3.0) < 0.1


def test_stats_command_writes_json_and_plot(hf_checkpoint, tmp_path, capsys):
    j, p = tmp_path / "s.json", tmp_path / "s.png"
    assert main(["stats", "--model", str(hf_checkpoint[0]), "--seq-len", "128", "--layer", "1",
                 "--json", str(j), "--plot", str(p)]) == 0
    r = json.loads(j.read_text())
    assert set(r["per_layer"]) == {"in_proj", "ssm_x", "dt", "B", "C", "scan_out"}
    assert len(r["per_layer"]["dt"]) == 2 and p.stat().st_size > 1000
    assert main(["stats", "--model", str(hf_checkpoint[0]), "--layer", "7"]) == 2


# ---- Mamba-2 ----

def _mamba2_folder(folder):
    from dataclasses import replace

    from safetensors.numpy import save_file
    from test_weights_mamba2 import SMALL

    from qsim.weights import synthetic_weights, to_hf_tensors

    cfg = replace(SMALL, vocab_size=256)  # byte tokens; headdim 12, d_state 10, 8 heads in 2 SSD groups
    w = synthetic_weights(cfg, seed=4)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in to_hf_tensors(cfg, w).items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg.to_hf()))
    return folder, cfg


def test_x_per_head_dt_per_head_and_b_c_per_group():
    from qsim.stats import dt_per_head, per_group, x_per_head

    x = np.zeros((5, 6))
    x[:, :3] = [[1.0, -2.0, 0.5]] * 5  # head 0: channel ranges 1, 2, 0.5
    x[0, 3:] = [4.0, 4.0, -4.0]  # head 1: every channel's range 4, mean |x| 4/5
    h = x_per_head(x, 2)
    assert h[0] == {"absmax": 2.0, "mean_abs": pytest.approx(3.5 / 3), "channel_range_min": 0.5, "channel_range_median": 1.0,
                    "channel_range_spread": 4.0}
    assert h[1]["absmax"] == 4.0 and h[1]["mean_abs"] == pytest.approx(0.8) and h[1]["channel_range_spread"] == 1.0
    assert x_per_head(np.zeros((2, 4)), 2)[0]["channel_range_spread"] == float("inf")
    dt = np.array([[0.1, 1.0], [0.3, 2.0]])
    assert dt_per_head(dt) == [{"min": 0.1, "mean": pytest.approx(0.2), "max": 0.3}, {"min": 1.0, "mean": 1.5, "max": 2.0}]
    b = np.concatenate([np.full((4, 3), 1.0), np.full((4, 3), 5.0)], axis=1)
    assert [g["absmax"] for g in per_group(b, 2)] == [1.0, 5.0]


def test_reorder_effect_on_outlier_channels():
    """One head with channels 30x the others: per-tensor int8 spends its range on them, grouped scales do not."""
    from qsim.config import Mamba2Config
    from qsim.stats import reorder_effect

    cfg = Mamba2Config(d_model=32, n_layer=1, vocab_size=256, d_state=4, headdim=8, ngroups=2)
    x = np.random.default_rng(0).standard_normal((64, cfg.d_inner)).astype(np.float32)
    x[:, 2 * 8 : 2 * 8 + 2] *= 30
    e = reorder_effect(x, cfg)
    assert sorted(e["chan_perm"]) == list(range(cfg.d_inner)) and sorted(e["head_perm"]) == list(range(8))
    assert e["n_groups"] == 2 * 4 * 4 and len(e["groups"]) == cfg.d_inner
    assert e["x_sqnr_db"]["grouped"] > e["x_sqnr_db"]["per_tensor"] + 10
    assert e["mean_scale_ratio"] > 5


def test_stats_command_on_mamba2(tmp_path, capsys):
    folder, cfg = _mamba2_folder(tmp_path / "m2")
    j, p = tmp_path / "s.json", tmp_path / "s.png"
    assert main(["stats", "--model", str(folder), "--seq-len", "64", "--layer", "1", "--json", str(j),
                 "--plot", str(p)]) == 0
    out = capsys.readouterr().out
    assert "quamba2 reorder per layer" in out and "layer 1, SSM input x per head" in out
    r = json.loads(j.read_text())
    assert r["family"] == "mamba2"
    assert set(r["per_layer"]) == {"in_proj", "ssm_x", "dt", "B", "C", "scan_out"}
    assert len(r["x_per_head"]) == cfg.n_layer and len(r["x_per_head"][1]) == cfg.nheads
    assert len(r["dt_per_head"][0]) == cfg.nheads and 0 < r["dt_per_head"][0][0]["min"] <= r["dt_per_head"][0][0]["max"]
    assert len(r["B_per_group"][0]) == len(r["C_per_group"][1]) == cfg.ngroups
    for e in r["reorder"]:
        assert sorted(e["chan_perm"]) == list(range(cfg.d_inner))
        assert e["x_sqnr_db"]["grouped"] >= e["x_sqnr_db"]["per_tensor"]
    assert p.stat().st_size > 1000
    assert main(["stats", "--model", str(folder), "--layer", "2"]) == 2


def test_mamba1_report_has_no_mamba2_keys(hf_checkpoint, tmp_path):
    j = tmp_path / "s.json"
    assert main(["stats", "--model", str(hf_checkpoint[0]), "--seq-len", "64", "--json", str(j)]) == 0
    assert set(json.loads(j.read_text())) == {"model", "weights", "tokens", "text", "per_layer", "date"}
