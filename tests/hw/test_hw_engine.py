"""qsim.hw.engine against the decode engine itself: an Engine build describes itself as the configuration the cost
model takes (its token_cycles is decode_step_cycles, which the simulations meet label by label:
tests/rtl/test_rtl_engine*.py), the loads are its program's, and every load and byte count equals the image
layout's (rtl.image.layout_of), for mamba-tiny and synthetic configurations."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qsim.bits import preset
from qsim.config import REGISTRY, Mamba2Config
from qsim.errors import QsimError
from qsim.hw.cli import add_parsers
from qsim.hw.cost import PROJECTION_MODELS, estimate
from qsim.hw.engine import (
    LABELS,
    EngineConfig,
    EngineModel,
    decode_step_cycles,
    decode_step_dram,
    final_loads,
    layer_loads,
    token_loads,
)
from qsim.hw.measured import with_synth_clock
from qsim.hw.shapes import model_shape
from qsim.hw.target import PRESETS_DIR, load_target
from rtl import image

ARTIFACT = Path(__file__).resolve().parents[2] / "qsim" / "artifacts" / "mamba-tiny-w8a8"
TINY = EngineModel(d_model=256, d_inner=512, d_state=16, dt_rank=16, d_conv=4, n_layer=5, vocab=256)
# (model, engine): mamba-tiny as simulated, and two synthetic ones (other bus, lanes, latency, layers)
CASES = [
    (TINY, EngineConfig(bus_bytes=16, gemv_lanes=16, scan_lanes=4, hadamard_lanes=4, dram_latency=8, clock_mhz=100)),
    (EngineModel(64, 128, 8, 8, 4, 2, 256),
     EngineConfig(bus_bytes=8, gemv_lanes=4, scan_lanes=2, hadamard_lanes=2, dram_latency=3, clock_mhz=50)),
    (EngineModel(128, 256, 16, 32, 2, 3, 512),
     EngineConfig(bus_bytes=32, gemv_lanes=8, scan_lanes=8, hadamard_lanes=8, dram_latency=20, clock_mhz=200)),
]


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="qsim")
    add_parsers(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def header(m: EngineModel, bus_bytes: int) -> dict:
    """The configuration words of an int8 image with the Hadamard transform (rtl/IMAGE.md section 3)."""
    h = {f.name: getattr(m, f.name) for f in m.__dataclass_fields__.values()}
    h |= {"bus_bytes": bus_bytes, "state_bits": 24, "hadamard": 1}
    return h | {f"{k}.{w}": 0 for k in image.LINEARS for w in ("format", "group")}


def test_mamba_tiny_header_is_the_committed_artifacts():
    from qsim import artifact

    data, _ = image.build_image(artifact.load(ARTIFACT), 16)
    h = image.read_header(data)
    assert {k: h[k] for k in header(TINY, 16)} == header(TINY, 16)


def test_mamba_tiny_step_is_the_simulated_figure():
    c = decode_step_cycles(*CASES[0])
    assert sum(c.values()) == 255_575  # rtl/engine.py's docstring, met by the simulation
    assert (c["in_proj"], c["out_proj"], c["scan"], c["lm_head"]) == (5 * 16_668, 5 * 8_732, 5 * 2_084, 4_369)


@pytest.mark.parametrize("m, e", CASES)
def test_the_engine_build_is_the_configuration(m, e):
    """rtl.engine.Engine built from the image header and lanes describes itself as (m, e): its token_cycles is then
    decode_step_cycles(m, e), which the simulations meet."""
    pytest.importorskip("amaranth")
    from rtl.engine import LABELS as RTL_LABELS
    from rtl.engine import Engine

    eng = Engine(header(m, e.bus_bytes), scan_lanes=e.scan_lanes, had_lanes=e.hadamard_lanes,
                 gemv_lanes=e.gemv_lanes)
    assert LABELS == RTL_LABELS
    assert eng.cost_model(e.dram_latency) == (m, replace(e, clock_mhz=None))


@pytest.mark.parametrize("m, e", CASES)
def test_loads_are_the_engine_programs(m, e):
    """The same fields, in the same order, as rtl.engine.Engine.program() loads (the embedding row aside)."""
    pytest.importorskip("amaranth")
    from rtl.engine import Engine

    steps, _ = Engine(header(m, e.bus_bytes)).program()
    loaded = [s[2][1] for s in steps if s[2][0] == "load" and s[2][2] != "embed"]
    ours = ([x.field for x in token_loads(m)] + [f"P.{x.field}" for x in layer_loads(m)]
            + [x.field for x in final_loads(m)])
    assert loaded == ours


@pytest.mark.parametrize("m, e", CASES)
def test_loads_match_the_image_layout(m, e):
    layout, _ = image.layout_of(header(m, e.bus_bytes))
    for x in token_loads(m) + final_loads(m):
        _, dt, shape = layout[x.field]
        assert (dt, int(np.prod(shape, dtype=np.int64))) == (x.dtype, x.count), x.field
    for x in layer_loads(m):
        _, dt, shape = layout[f"layers.0.{x.field}"]
        assert (dt, int(np.prod(shape, dtype=np.int64))) == (x.dtype, x.count), x.field


@pytest.mark.parametrize("m, e", CASES)
def test_dram_bytes_are_the_image_less_what_decode_does_not_read(m, e):
    """A step reads every layer record whole, the embedding's m, s and one row, the final norm and lm_head; not
    the header, the global tables (ROMs) or the other embedding rows."""
    _, off = image.layout_of(header(m, e.bus_bytes))
    B = e.bus_bytes
    dram = decode_step_dram(m, e)
    per_layer = sum(dram[k][0] for k in ("in_proj", "x_proj", "dt_proj", "out_proj")) // m.n_layer
    per_layer += sum(math.ceil(x.count * np.dtype(x.dtype).itemsize / B) * B for x in layer_loads(m))
    assert per_layer == off["layer_stride"]
    unread = off["embedding"] + (off["layers"] - off["embedding"] - 2 * B - m.d_model)
    assert sum(b for b, _ in dram.values()) == off["image_bytes"] - unread
    head = off["image_bytes"] - off["lm_head"]
    assert dram["lm_head"] == (head, e.dram_latency + head // B)


def test_registered_configs_and_refusals():
    assert EngineModel.of(REGISTRY["mamba-tiny"].config) == TINY
    with pytest.raises(QsimError, match="Mamba-1 only"):
        EngineModel.of(Mamba2Config(d_model=64, n_layer=2, vocab_size=256))
    e = CASES[0][1]
    with pytest.raises(QsimError, match="bus_bytes 16 .* dt_rank 8"):
        decode_step_cycles(EngineModel(64, 128, 8, 8, 4, 2, 256), e)
    with pytest.raises(QsimError, match="gemv_lanes 3"):
        decode_step_cycles(TINY, EngineConfig(16, 3, 4, 4, 8, 100))
    raw = {"bus_bytes": 16, "gemv_lanes": 16, "scan_lanes": 4, "hadamard_lanes": 4, "dram_latency": 8,
           "clock_mhz": 100}
    assert EngineConfig.from_dict(raw) == e
    with pytest.raises(QsimError, match="unknown key.*scan_lane\\b"):
        EngineConfig.from_dict(raw | {"scan_lane": 4})
    with pytest.raises(QsimError, match="dram_latency must be a positive integer"):
        EngineConfig.from_dict({k: v for k, v in raw.items() if k != "dram_latency"})
    with pytest.raises(QsimError, match="bus_bytes must be a positive integer, got 16.0"):
        EngineConfig.from_dict(raw | {"bus_bytes": 16.0})


# ---------------------------------------------------------------- the ECP5 preset's engine in the estimate

def test_ecp5_preset_describes_the_simulated_engine():
    t = load_target("ecp5-85f")
    assert t.engine == CASES[0][1]
    assert t.engine.bytes_per_s == t.offchip_bytes_per_s == 1.6e9  # 16 B a cycle at 100 MHz: the x16 DDR3
    assert all(load_target(n).engine is None for n in ("vck190", "asic-28nm"))


@pytest.mark.parametrize("edit, message", [
    ("dram_latency = 8", "dram_latency = 8\nlanes = 2"),
    ("bus_bytes = 16", "bus_bytes = 8"),
    ("dram_latency = 8", ""),
])
def test_engine_section_errors_name_the_key(tmp_path, edit, message):
    text = (PRESETS_DIR / "ecp5-85f.toml").read_text()
    path = tmp_path / "t.toml"
    path.write_text(text.replace(edit, message))
    expected = {"lanes = 2": r"\[engine\]: unknown key\(s\) lanes", "bus_bytes = 8": r"\[engine\] bus_bytes: 8 B a "
                "cycle at clock_mhz 100 is 0.8 GB/s, not \\[memory\\] offchip_gb_per_s 1.6", "": "dram_latency"}
    with pytest.raises(QsimError, match=expected[message.split("\n")[-1]]):
        load_target(str(path))


def test_ecp5_w8a8_decode_is_the_engines_and_other_cases_the_mac_array_models(tmp_path):
    t = with_synth_clock(load_target("ecp5-85f"), tmp_path)  # no synthesis: the preset's 100 MHz
    est = estimate(model_shape("mamba-tiny"), preset("w8a8"), t, 16)
    cycles = decode_step_cycles(TINY, t.engine)
    assert {o.name: o.cycles for o in est.decode.ops} == cycles
    assert est.decode.cycles == 255_575 and est.decode.tokens_per_s == pytest.approx(100e6 / 255_575)
    assert "the decode engine" in est.decode_source
    assert sum(o.offchip_bytes for o in est.decode.ops) == sum(b for b, _ in decode_step_dram(TINY, t.engine).values())
    assert all(o.compute_cycles + o.memory_cycles == o.cycles for o in est.decode.ops)
    fast = replace(t, clock_mhz=150.0)  # a faster synthesis Fmax: the bus still may not outrun the DDR3
    assert estimate(model_shape("mamba-tiny"), preset("w8a8"), fast, 16).decode.clock_hz == 100e6
    for shape, bits, hadamard, why in ((model_shape("mamba-tiny"), "w4a8", True, "w8a8 only"),
                                       (model_shape("mamba2-tiny"), "w8a8", True, "Mamba-1 only"),
                                       (model_shape("mamba-tiny"), "w8a8", False, "online Hadamard")):
        other = estimate(shape, preset(bits), t, 16, online_hadamard=hadamard)
        assert why in other.decode_source and "load" not in {o.name for o in other.decode.ops}
    assert "has no decode engine" in estimate(model_shape("mamba-tiny"), preset("w8a8"),
                                              load_target("vck190"), 16).decode_source


def test_engine_projection_cli(tmp_path, capsys):
    assert run("estimate", "--target", "ecp5-85f", "--engine-projection", "--reports", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in PROJECTION_MODELS) and "255,575" in out and f"{100e6 / 255_575:.4g}" in out
    with pytest.raises(QsimError, match="asic-28nm has no decode engine"):
        run("estimate", "--engine-projection", "--reports", str(tmp_path))
    with pytest.raises(QsimError, match="--model is required"):
        run("estimate", "--target", "ecp5-85f", "--reports", str(tmp_path))
