"""gpu.bench's report logic on hand-made rows (the timing itself needs a GPU): floors, the issue's
targets, the markdown table, and that qsim's cost model reads the JSON it writes."""

import json

import pytest

from gpu.bench import evaluate, finish_row, markdown
from qsim.hw.compare import measured_comparisons

GB = 1e9


def _report():
    rows = [finish_row(r, "mamba-2.8b", 2000.0) for r in (
        {"config": "fp16", "ttft_ms": 80.0, "tpot_ms": 3.0, "decode_bytes": 4 * GB},
        {"config": "torch-graph", "ttft_ms": None, "tpot_ms": 8.0, "decode_bytes": 4 * GB},
        {"config": "w8a8", "ttft_ms": 50.0, "tpot_ms": 1.9, "decode_bytes": 2 * GB},
        {"config": "transformers", "ttft_ms": 900.0, "tpot_ms": 60.0, "decode_bytes": 4 * GB},
    )] + [finish_row({"config": "w8a8", "error": "RuntimeError: boom"}, "mamba-130m", 2000.0)]
    return {"device": "test GPU", "driver": "0", "read_bandwidth_GBps": 2000.0, "date": "today",
            "results": rows, "targets": evaluate(rows)}


def test_rows_get_their_memory_floor():
    r = _report()["results"]
    assert r[0]["floor_ms"] == pytest.approx(2.0) and r[0]["tpot_over_floor"] == pytest.approx(1.5)
    assert r[2]["floor_ms"] == pytest.approx(1.0) and "floor_ms" not in r[4]


def test_targets_are_judged_on_mamba_2p8b():
    t = _report()["targets"]
    assert t["fp16_beats_torch_graph"] and t["fp16_within_2x_floor"] and t["w8a8_within_2x_floor"]
    assert t["w8a8_speedup_vs_fp16"] == pytest.approx(3.0 / 1.9, abs=1e-3) and t["w8a8_at_least_1.5x"]
    assert t["transformers_tpot_over_w8a8"] == pytest.approx(31.6)
    slow = [finish_row({"config": "w8a8", "tpot_ms": 2.1, "decode_bytes": 2 * GB}, "mamba-2.8b", 2000.0),
            finish_row({"config": "fp16", "tpot_ms": 3.0, "decode_bytes": 4 * GB}, "mamba-2.8b", 2000.0)]
    assert evaluate(slow)["w8a8_at_least_1.5x"] is False and evaluate(slow)["w8a8_within_2x_floor"] is False


def test_markdown_shows_every_row_and_the_error():
    md = markdown(_report())
    assert md.count("\n| mamba-") == 5 and "RuntimeError: boom" in md and "| - |" in md
    assert "w8a8_at_least_1.5x: True" in md


def test_cost_model_reads_the_bench_json(tmp_path):
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "bench.json").write_text(json.dumps(_report()))
    rows, notes = measured_comparisons(tmp_path)
    assert sorted((c.bits, c.metric, c.reference) for c in rows) == [
        ("fp16", "TPOT ms", 3.0), ("fp16", "TTFT ms", 80.0), ("w8a8", "TPOT ms", 1.9), ("w8a8", "TTFT ms", 50.0)]
    assert len(notes) == 2 and any("torch-graph" in n for n in notes) and any("transformers" in n for n in notes)
