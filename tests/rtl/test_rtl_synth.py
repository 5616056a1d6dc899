"""ECP5 synthesis of a small unit: resources, and Fmax as the lowest over place-and-route seeds."""

from __future__ import annotations

from rtl import synth


def test_small_hadamard_unit_synthesizes_and_takes_the_lowest_fmax_over_seeds(yowasp):
    rec = synth.synth_one("hadamard", 4, "hadamard_random_n64", 150.0, seeds=(1, 2))
    assert set(rec["fmax_by_seed"]) == {"1", "2"} and rec["fmax_mhz"] == min(rec["fmax_by_seed"].values()) > 0
    assert rec["luts"] > 0 and rec["ffs"] > 0 and rec["part"] == synth.PART
    assert "--seed S" in rec["commands"][1]
    assert "(s1: " in synth.markdown([rec], {"command": "c", "date": "d", "machine": "m"})


def test_engine_report_pieces_without_synthesis():
    """`synth --engine`: cells per unit from a -noflatten `stat`, the critical path's units, the report section."""
    top = "engine_x"
    stat = {"modules": {"\\engine_x": {"num_cells_by_type": {"LUT4": 10, "DP16KD": 2, "\\engine_x.scan": 1}},
                        "\\engine_x.scan": {"num_cells_by_type": {"LUT4": 5, "CCU2C": 3, "MULT18X18D": 4}},
                        "\\engine_x.scan.fifo": {"num_cells_by_type": {"TRELLIS_DPR16X4": 1}}}}
    units = synth.per_unit(stat, top)
    assert list(units) == ["scan", ""]
    assert units["scan"] == {"lut4": 5, "carry_ccu2c": 3, "dsp_mult18x18d": 4, "lutram_dpr16x4": 1, "comb_est": 13}
    assert units[""]["bram_dp16kd"] == 2 and units[""]["comb_est"] == 10

    def step(kind, a, b, d):
        return {"type": kind, "delay": d, "from": {"cell": a}, "to": {"cell": b}, "net": "n", "sources": []}

    report = {"critical_paths": [{"from": "posedge clk", "to": "posedge clk", "path": [
        step("clk-to-q", "gemv.acc", "gemv.acc", 0.5), step("routing", "gemv.acc", "rq.x", 2.0),
        step("logic", "rq.x", "rq.x", 0.25), step("routing", "rq.x", "cnt_ff", 1.0)]}]}
    cp = synth.critical_path(report)
    assert cp["units"] == ["GEMV", "requant", "controller + on-chip buffers"]
    assert cp["delay_ns"] == 3.75 and cp["routing_ns"] == 3.0 and cp["logic_steps"] == 1
    rec = {"unit": "engine", "artifact": "a", "top": top, "target_mhz": 150.0, "lut_mapper": "abc9",
           "commands": ["y", "n"], "units": units, "fmax_by_seed": {"1": 90.0}, "critical_paths": {"1": cp},
           "seeds_pending": ["2"], "luts": 100, "ffs": 50, "dsp": 4, "bram": 2, "lutram": 1, "fits": True,
           "fmax_mhz": 90.0, "seconds": {"verilog": 1, "yosys": 2, "nextpnr": {"1": 3}},
           "config": {"d_model": 1, "d_inner": 2, "d_state": 3, "dt_rank": 4, "d_conv": 4, "n_layer": 1,
                      "vocab": 5, "state_bits": 24, "bus_bytes": 16, "gemv_lanes": 16, "scan_lanes": 4,
                      "had_lanes": 4}}
    md = synth.markdown([rec], {"command": "c", "date": "d", "machine": "m"})
    assert "Incomplete" in md and "NOT met" in md and "GEMV -> requant" in md and "| scan | 13 |" in md
