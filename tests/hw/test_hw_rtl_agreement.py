"""Issue 6, item 3: the scan and Hadamard cycle counts measured in cocotb equal qsim/hw/units.py.

The agreement test reads reports/rtl/cycles.json, which the RTL regressions write; it skips,
saying so, until that file exists.
"""

from pathlib import Path

import pytest

from qsim.errors import QsimError
from qsim.hw.measured import records
from qsim.hw.rtl_check import check
from qsim.hw.units import hadamard_unit_cycles, scan_unit_cycles

CYCLES = Path(__file__).resolve().parents[2] / "reports" / "rtl" / "cycles.json"


def test_rtl_cycles_equal_the_model():
    recs = records(CYCLES)
    if recs is None:
        pytest.skip(f"{CYCLES} absent: the RTL cocotb runs have not recorded cycle counts yet")
    checks = check(recs, CYCLES)
    assert checks, f"{CYCLES} holds no records"
    bad = [f"{c.unit} {c.params} ({c.extra}): RTL {c.measured}, model {c.model}" for c in checks if not c.agrees]
    assert not bad, "RTL and model cycles differ:\n" + "\n".join(bad)


def test_check_flags_disagreement_and_names_bad_records(tmp_path):
    good = {"unit": "scan", "lanes": 8, "d_inner": 16, "d_state": 16, "tokens": 4,
            "cycles": scan_unit_cycles(8, 16, 16, 4), "simulator": "icarus"}
    off = {"unit": "hadamard", "lanes": 4, "n": 64, "vectors": 2, "cycles": hadamard_unit_cycles(4, 64, 2) + 1}
    checks = check([good, off], tmp_path / "cycles.json")
    assert [c.agrees for c in checks] == [True, False]
    assert checks[0].extra == "simulator=icarus"
    with pytest.raises(QsimError, match="record 0 \\(scan\\)"):
        check([{"unit": "scan", "lanes": 8, "cycles": 3}], tmp_path / "cycles.json")
    with pytest.raises(QsimError, match="record 0 \\(engine\\)"):
        check([{"unit": "engine", "model": {}, "per_op": {}}], tmp_path / "cycles.json")
    with pytest.raises(QsimError, match="unit 'fft'"):
        check([{"unit": "fft"}], tmp_path / "cycles.json")


def test_engine_records_are_held_to_the_cost_model_per_operation(tmp_path):
    from qsim.hw.engine import LABELS, EngineConfig, EngineModel, decode_step_cycles

    model = {"d_model": 32, "d_inner": 64, "d_state": 8, "dt_rank": 8, "d_conv": 4, "n_layer": 2, "vocab": 256}
    engine = {"bus_bytes": 8, "gemv_lanes": 4, "scan_lanes": 2, "hadamard_lanes": 8, "dram_latency": 8}
    per_op = decode_step_cycles(EngineModel(**model), EngineConfig(**engine))
    rec = {"unit": "engine", "model": model, "engine": engine, "per_op": dict(per_op), "simulator": "verilator"}
    checks = check([rec], tmp_path / "cycles.json")
    assert [c.unit for c in checks] == [f"engine {lab}" for lab in LABELS] + ["engine step"]
    assert all(c.agrees for c in checks)
    rec["per_op"]["scan"] += 1
    assert [c.unit for c in check([rec], tmp_path / "cycles.json") if not c.agrees] == ["engine scan", "engine step"]
