"""cocotb benches on the generated Verilog, on Icarus and Verilator, for several parameter sets.

Each run builds the unit for a configuration (a golden set's dimensions) and
streams golden sets through it, each preceded by a load of its constants
through the unit's `cfg` stream (timed burst, then random valid gaps and
back-pressure; sets of different layers run on the one build), and its
measured cycles (the timed set's tokens or vectors, and its constant load) are merged into
reports/rtl/cycles.json (stamped with the command, date and machine that
measured them) and held to the qsim.hw.units formulas.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path

import pytest

from golden.generate import SETS
from qsim.hw import units

HERE = Path(__file__).parent
CYCLES = Path(__file__).parents[2] / "reports" / "rtl" / "cycles.json"
KEY = ("unit", "lanes", "d_inner", "d_state", "n", "simulator", "set", "tokens")  # a record replaces one with equal key
STAMP = ("command", "date", "machine")  # where a record came from (rtl.build.stamp), not what it measured
LAST = sorted(p.name for p in SETS.glob("scan_real_l*"))[-1][len("scan_real_"):]  # last layer of the model

# id: unit, lanes, golden sets (the first is timed and gives the build's configuration; each set's constants are
# loaded before its vectors, so one build runs several layers), channels (None: all; a number: the layer's first
# channels, a smaller but exact problem since channels only share B and C)
CASES = {
    "scan-lanes4": ("scan", 4, ["scan_real_l0", "scan_edge_l0", f"scan_real_{LAST}"], 128),
    "scan-lanes8": ("scan", 8, [f"scan_real_{LAST}"], None),
    "hadamard-lanes4": ("hadamard", 4, ["hadamard_real_l0"], None),
    "hadamard-lanes8": ("hadamard", 8, [f"hadamard_real_{LAST}"], None),
    "hadamard12x16-lanes8": ("hadamard", 8, ["hadamard_random_n192"], None),
}


def merge_record(record: dict, path: Path = CYCLES) -> None:
    """Replace the record with the same key (or add it); locked, then written atomically. A record
    that only re-measures the same figures keeps its stamp, so a rerun leaves the file's bytes alone."""
    from rtl.build import BUILD

    path.parent.mkdir(parents=True, exist_ok=True)
    BUILD.mkdir(exist_ok=True)
    with open(BUILD / "cycles.lock", "w") as lock:  # parallel runs (pytest -n) merge one at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = json.loads(path.read_text()) if path.is_file() else []
        key = [record.get(k) for k in KEY]
        same = [r for r in records if [r.get(k) for k in KEY] == key]
        if same and _figures(same[0]) == _figures(record):
            return
        records = [r for r in records if [r.get(k) for k in KEY] != key] + [record]
        records.sort(key=lambda r: [str(r.get(k)) for k in KEY])
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cycles.")
        with os.fdopen(fd, "w") as f:
            json.dump(records, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)


def _figures(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in STAMP}


@pytest.mark.parametrize("simulator", ["icarus", "verilator"], indirect=True)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_unit_verilog(simulator, case, request):
    from cocotb_tools.runner import get_runner

    from rtl.build import BUILD, make_unit, stamp, tag, write_verilog

    unit, lanes, sets, channels = CASES[case]
    comp, manifest, _ = make_unit(unit, lanes, sets[0], channels)
    top = tag(comp)
    build_dir = BUILD / "cocotb" / f"{top}_{simulator}"
    source = write_verilog(comp, build_dir, top)
    runner = get_runner(simulator)
    # Icarus: Yosys' Verilog relies on `reg x = 0` raising a time-0 event to settle its always @* blocks,
    # which Icarus does under -g2005 semantics only (the runner passes -g2012 first; the last -g wins)
    runner.build(sources=[source], hdl_toplevel=top, build_dir=build_dir, timescale=("1ns", "1ps"),
                  build_args=["-Wno-fatal"] if simulator == "verilator" else ["-g2005"])
    result = build_dir / "cycles.result.json"
    result.unlink(missing_ok=True)
    dims = {"d_inner": comp.d_inner, "d_state": comp.d_state, "state_bits": comp.state_bits} if unit == "scan" \
        else {"n": comp.n}
    bench = {"lanes": lanes, "sets": sets, "channels": channels, "result": str(result), **dims}
    try:
        runner.test(hdl_toplevel=top, test_module=f"cocotb_{unit}", test_dir=HERE, build_dir=build_dir,
                    results_xml=str(build_dir / "results.xml"), extra_env={"RTL_BENCH": json.dumps(bench)})
    except SystemExit as exc:  # cocotb_tools reports failed cocotb tests by exiting
        pytest.fail(f"cocotb bench failed on {simulator} (exit {exc.code}); see the log above")
    record = {**json.loads(result.read_text()), "simulator": simulator,
              **stamp(f"QSIM_REQUIRE_HW=1 python -m pytest '{request.node.nodeid}'")}
    merge_record(record)
    assert record["load_cycles"] == comp.load_cycles()  # one cfg beat a cycle
    if unit == "scan":
        formula = units.scan_unit_cycles(lanes, comp.d_inner, comp.d_state, record["tokens"])
        assert record["cycles"] == formula == comp.cycles(record["tokens"])
    else:
        formula = units.hadamard_unit_cycles(lanes, comp.n, record["vectors"])
        assert record["cycles"] == formula == comp.cycles(record["vectors"])


def test_merge_record_keeps_the_stamp_of_an_unchanged_measurement(tmp_path):
    path = tmp_path / "cycles.json"
    rec = {"unit": "scan", "lanes": 4, "set": "s", "simulator": "icarus", "cycles": 10}
    merge_record({**rec, "command": "a", "date": "d1", "machine": "m"}, path)
    before = path.read_bytes()
    merge_record({**rec, "command": "a", "date": "d2", "machine": "m"}, path)
    assert path.read_bytes() == before
    merge_record({**rec, "cycles": 11, "command": "a", "date": "d3", "machine": "m"}, path)
    assert json.loads(path.read_text()) == [{**rec, "cycles": 11, "command": "a", "date": "d3", "machine": "m"}]
