"""GPU roofline and the comparison with published (committed) and measured (optional) latency."""

import json

import pytest

from qsim.bits import PRESETS
from qsim.hw.compare import Comparison, measured_comparisons, published_comparisons
from qsim.hw.devices import DEVICES, predict
from qsim.hw.shapes import model_shape


def test_tpot_is_bytes_over_bandwidth_and_ttft_the_roofline():
    shape, bits, dev = model_shape("mamba-130m"), PRESETS["w8a8"], DEVICES["a5000"]
    p = predict(shape, bits, dev, 1024)
    step = shape.weight_bytes(bits) + 2 * shape.state_bytes(bits)
    assert p.tpot_ms == pytest.approx(step / 768e9 * 1e3)
    macs = sum(op.macs * k for op, k in shape.ops(bits)) * 1024 - shape.lm_head.macs * 1023
    compute = 2 * macs / 222.2e12 * 1e3
    memory = (shape.weight_bytes(bits) + shape.state_bytes(bits)) / 768e9 * 1e3
    assert p.ttft_ms == pytest.approx(max(compute, memory))


def test_h100_uses_its_measured_bandwidth():
    h100 = DEVICES["h100-sxm"]
    assert h100.bandwidth_gb_per_s == 3040.0 and h100.datasheet_gb_per_s == 3350.0


def test_memory_capacity_decides_out_of_memory():
    shape, orin = model_shape("mamba2-8b"), DEVICES["orin-nano-8g"]
    assert not predict(shape, PRESETS["fp16"], orin, 1).fits
    assert predict(shape, PRESETS["w4a8"], orin, 1).fits


def test_comparison_error_and_verdicts():
    assert Comparison("s", "d", "m", "b", "", "TPOT ms", 10.0, 8.0).error == pytest.approx(-0.2)
    assert Comparison("s", "d", "m", "b", "", "TPOT ms", 10.0, 8.0).verdict == "-20.0%"
    assert Comparison("s", "d", "m", "b", "", "TPOT ms", None, None).verdict == "both out of memory"
    assert Comparison("s", "d", "m", "b", "", "TPOT ms", 5.0, None).verdict == "predicted out of memory"


def test_published_comparison_runs_from_the_committed_file():
    rows = published_comparisons()
    where = {(c.where, c.model) for c in rows}
    assert {("orin-nano-8g", "mamba-2.8b"), ("a5000", "mamba2-8b"), ("orin-nano-8g", "mamba2-8b"),
            ("vck190", "mamba2-2.7b")} <= where
    for c in rows:
        if c.error is not None:
            assert c.error == pytest.approx((c.predicted - c.reference) / c.reference)
    # Quamba2 reports FP16 and W8A8 Mamba2-8B out of memory on the Orin Nano; the model predicts it too
    oom = [c for c in rows if c.where == "orin-nano-8g" and c.model == "mamba2-8b" and c.bits in ("fp16", "w8a8")]
    assert oom and all(c.verdict == "both out of memory" for c in oom)


def test_measured_hook_absent_then_present(tmp_path):
    assert measured_comparisons(tmp_path) is None
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "bench.json").write_text(json.dumps([
        {"model": "mamba-2.8b", "config": "fp16-baseline", "ttft_ms": 100.0, "tpot_ms": 3.0},
        {"model": "mamba-130m", "config": "w8a8-fixed", "tpot_ms": 0.5, "prompt_len": 256},
        {"model": "mamba-130m", "config": "transformers", "tpot_ms": 24.0},
    ]))
    rows, notes = measured_comparisons(tmp_path)
    assert [(c.model, c.bits, c.metric) for c in rows] == [
        ("mamba-2.8b", "fp16", "TPOT ms"), ("mamba-2.8b", "fp16", "TTFT ms"), ("mamba-130m", "w8a8", "TPOT ms")]
    expected = predict(model_shape("mamba-2.8b"), PRESETS["fp16"], DEVICES["h100-sxm"], 1024).tpot_ms
    assert rows[0].predicted == pytest.approx(expected) and rows[0].reference == 3.0
    assert len(notes) == 1 and "transformers" in notes[0]
