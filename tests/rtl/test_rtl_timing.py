"""rtl.timing's pre-route estimate on small hand-written yosys netlists (arrival times by its stated model)."""

from __future__ import annotations

import json

import pytest

from rtl import timing
from rtl.__main__ import main

NET1 = 0.4 + 0.3  # a net of fan-out 1: 0.4 + 0.3 log2(2)


def ff(d, q):
    return {"type": "TRELLIS_FF", "port_directions": {"CLK": "input", "DI": "input", "Q": "output"},
            "connections": {"CLK": [2], "DI": [d], "Q": [q]}}


def lut(a, z):
    return {"type": "LUT4", "port_directions": {"A": "input", "B": "input", "Z": "output"},
            "connections": {"A": [a], "B": ["0"], "Z": [z]}}


def ccu(a0, cin, s0, cout):
    return {"type": "CCU2C", "port_directions": {"A0": "input", "CIN": "input", "S0": "output", "COUT": "output"},
            "connections": {"A0": [a0], "CIN": [cin], "S0": [s0], "COUT": [cout]}}


def netlist(top_cells, sub_cells=None):
    mods = {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                    "ports": {"clk": {"direction": "input", "bits": [2]}}, "cells": top_cells, "netnames": {}}}
    if sub_cells is not None:
        mods["sub"] = {"attributes": {}, "ports": {"i": {"direction": "input", "bits": [3]},
                                                   "o": {"direction": "output", "bits": [4]}},
                       "cells": sub_cells, "netnames": {}}
    return {"modules": mods}


def worst(n):
    return timing.estimate(timing.flatten(n))[0]


def test_two_luts_between_flip_flops():
    t, end, steps = worst(netlist({"a": ff(9, 10), "l1": lut(10, 11), "l2": lut(11, 12), "b": ff(12, 13)}))
    assert end == "b.DI"
    assert t == pytest.approx(0.5 + NET1 + 0.45 + NET1 + 0.45 + NET1 + timing.SETUP)
    assert [s.split(":")[0] for s in steps] == ["a", "l1", "l2"]


def test_a_submodule_is_inlined_with_its_nets_renamed_apart():
    sub = {"l": lut(3, 4), "x": ff(10, 11)}  # net 10 inside the submodule is not the top's net 10
    top = {"a": ff(20, 10), "u": {"type": "sub", "connections": {"i": [10], "o": [12]}}, "b": ff(12, 21)}
    t, end, steps = worst(netlist(top, sub))
    assert end == "b.DI" and [s.split(":")[0] for s in steps] == ["a", "u.l"]
    assert t == pytest.approx(0.5 + 0.4 + 0.3 * 1.0 + 0.45 + NET1 + timing.SETUP)  # a's net: fan-out 1 (u.l)
    names = {c.name for c in timing.flatten(netlist(top, sub))}
    assert names == {"a", "b", "u.l", "u.x"}


def test_a_carry_chain_costs_no_routing_along_it():
    cells = {"a": ff(9, 10), "c0": ccu(10, "0", 20, 11), "c1": ccu("0", 11, 12, 21), "b": ff(12, 13)}
    t, end, _ = worst(netlist(cells))
    assert end == "b.DI"
    assert t == pytest.approx(0.5 + NET1 + 0.5 + 0.0 + 0.3 + NET1 + timing.SETUP)


@pytest.mark.parametrize("regmode,clk_to_out", [("NOREG", 4.0), ("OUTREG", 1.0)])
def test_a_block_ram_launches_from_its_output_register_when_in_use(regmode, clk_to_out):
    ram = {"type": "DP16KD", "parameters": {"REGMODE_A": "NOREG", "REGMODE_B": regmode},
           "port_directions": {"CLKB": "input", "DOB0": "output"}, "connections": {"CLKB": [2], "DOB0": [10]}}
    t, end, _ = worst(netlist({"r": ram, "l": lut(10, 11), "b": ff(11, 12)}))
    assert end == "b.DI"
    assert t == pytest.approx(clk_to_out + NET1 + 0.45 + NET1 + timing.SETUP)


def test_fan_out_lengthens_the_net_and_the_report_counts_endpoints():
    cells = {"a": ff(9, 10), **{f"b{i}": ff(10, 20 + i) for i in range(3)}}
    ends = timing.estimate(timing.flatten(netlist(cells)))
    fanned = [t for t, e, _ in ends if e.startswith("b")]
    assert fanned == pytest.approx([0.5 + 0.4 + 0.3 * 2.0 + timing.SETUP] * 3)
    text = timing.report(ends, top=2, over=(1.0, 2.0))
    assert text.splitlines()[0] == "4 endpoints; over 1 ns: 3; over 2 ns: 0"


def test_cli_reads_a_netlist_and_refuses_a_missing_or_foreign_one(tmp_path, capsys):
    path = tmp_path / "n.json"
    path.write_text(json.dumps(netlist({"a": ff(9, 10), "l1": lut(10, 11), "b": ff(11, 12)})))
    assert main(["timing", "--netlist", str(path), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "over 10 ns: 0" in out and "b.DI" in out
    assert main(["timing", "--netlist", str(tmp_path / "none.json")]) == 2
    assert "no such netlist" in capsys.readouterr().err
    path.write_text('{"x": 1}')
    assert main(["timing", "--netlist", str(path)]) == 2
    assert "not a yosys JSON netlist" in capsys.readouterr().err


def dsp(a, p, **params):
    return {"type": "MULT18X18D", "parameters": params, "port_directions": {"A0": "input", "CLK0": "input",
                                                                            "P0": "output"},
            "connections": {"A0": [a], "CLK0": [2], "P0": [p]}}


def test_a_dsp_with_its_output_register_splits_the_path():
    """Combinational, the multiply sits between two flip-flops; with REG_OUTPUT_CLK in use it is the block's setup
    on the way in and the block's register launches the way out."""
    comb = netlist({"a": ff(9, 10), "m": dsp(10, 11, REG_OUTPUT_CLK="NONE"), "b": ff(11, 12)})
    t, end, _ = worst(comb)
    assert end == "b.DI" and t == pytest.approx(0.5 + NET1 + 4.5 + NET1 + timing.SETUP)
    ends = timing.estimate(timing.flatten(netlist({"a": ff(9, 10), "m": dsp(10, 11, REG_OUTPUT_CLK="CLK0"),
                                                   "l": lut(11, 12), "b": ff(12, 13)})))
    arrival = {name: t for t, name, _ in ends}
    assert arrival["m.A0"] == pytest.approx(0.5 + NET1 + timing.DSP_OUT_REG[1])
    assert arrival["b.DI"] == pytest.approx(timing.DSP_OUT_REG[0] + NET1 + 0.45 + NET1 + timing.SETUP)
