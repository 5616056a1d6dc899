"""ECP5 synthesis of a small unit: resources, and Fmax as the lowest over place-and-route seeds."""

from __future__ import annotations

from rtl import synth


def test_small_hadamard_unit_synthesizes_and_takes_the_lowest_fmax_over_seeds(yowasp):
    rec = synth.synth_one("hadamard", 4, "hadamard_random_n64", 150.0, seeds=(1, 2))
    assert set(rec["fmax_by_seed"]) == {"1", "2"} and rec["fmax_mhz"] == min(rec["fmax_by_seed"].values()) > 0
    assert rec["luts"] > 0 and rec["ffs"] > 0 and rec["part"] == synth.PART
    assert "--seed S" in rec["commands"][1]
    assert "(s1: " in synth.markdown([rec], {"command": "c", "date": "d", "machine": "m"})
