"""The decode engine's Verilog on Icarus and Verilator (cocotb): greedy decoding of 16 tokens from an empty state,
every layer's residual, SSM state and conv window and the logits equal to the `fixed` executor's after every token,
and every op's cycles equal to the cost model's prediction (qsim.hw.engine.decode_step_cycles).

Configurations: mamba-tiny from its committed artifact (every layer), and a small synthetic one (other d_model,
d_state, bus and lanes, state width 16) quantized here from random weights. The DRAM model is Verilog
(dram_model.v, rtl/dram.py's cycle rules), so the simulation runs without a Python call per cycle; the bench only
wakes at layer and token boundaries. Measured cycles go to reports/rtl/cycles.json (unit "engine").
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import ClockSignal, Instance, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from rtl_vectors import engine_reference
from test_rtl_cocotb import merge_record

from qsim import artifact, spec
from qsim.fixed.executor import FixedExecutor
from qsim.hw.engine import EngineConfig, EngineModel, decode_step_cycles
from rtl.engine import LABELS, TOKEN, Engine
from rtl.image import build_image

HERE = Path(__file__).parent
ARTIFACT = Path(__file__).resolve().parents[2] / "qsim" / "artifacts" / "mamba-tiny-w8a8"
LATENCY = 8
STEPS = 16
PROMPT = [ord(c) for c in "The "]


class EngineBench(wiring.Component):
    """The engine with the Verilog DRAM model on its memory port: a token stream in, the engine's observation ports
    out (the bench reads buffers and state memories by hierarchy under `engine`)."""

    def __init__(self, engine: Engine, image_words: int, latency: int):
        self.engine, self.words, self.latency = engine, image_words, latency
        sig = {"tok": In(stream.Signature(TOKEN)), "layer_done": Out(1), "done": Out(1)}
        sig |= {f"cyc_{lab}": Out(32) for lab in LABELS}
        super().__init__(sig)

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = e = self.engine
        wiring.connect(m, wiring.flipped(self.tok), e.tok)
        m.d.comb += [self.layer_done.eq(e.layer_done), self.done.eq(e.done)]
        m.d.comb += [getattr(self, f"cyc_{lab}").eq(getattr(e, f"cyc_{lab}")) for lab in LABELS]
        req, dat = e.mem.req, e.mem.data
        m.submodules.dram = Instance(
            "qsim_dram", p_BUS_BYTES=e.B, p_LATENCY=self.latency, p_WORDS=self.words,
            p_ADDR_W=len(req.payload.addr), p_LEN_W=len(req.payload.beats), i_clk=ClockSignal(),
            i_req_valid=req.valid, o_req_ready=req.ready, i_req_addr=req.payload.addr, i_req_beats=req.payload.beats,
            o_data_valid=dat.valid, i_data_ready=dat.ready, o_data_payload=dat.payload)
        return m


def write_hex(data: bytes, bus: int, path: Path) -> int:
    """The image as $readmemh words (one bus-wide word a line, little-endian); returns the word count."""
    data = data + bytes(-len(data) % bus)
    words = np.frombuffer(data, np.uint8).reshape(-1, bus)[:, ::-1]
    path.write_text("\n".join(w.tobytes().hex() for w in words) + "\n")
    return len(words)


def state_views(dut: Engine) -> tuple[list, list]:
    """Per layer: where the bench finds its SSM state words and conv window words (hierarchy path under the bench
    top, word range, element packing; rtl/engine.py's "Recurrent state")."""
    scan, conv = dut.scan, dut.conv
    scans = [{"segments": [{"path": ["engine", "scan", f"state{b}"], "words": [ws.start, ws.stop]}
                           for b, ws in scan.state_segments(i)], "lanes": scan.lanes, "bits": scan.state_bits}
             for i in range(dut.n_layer)]
    convs = [{"segments": [{"path": ["engine", "conv", f"win{b}"], "words": [ws.start, ws.stop]}
                           for b, ws in conv.window_segments(i)], "taps": dut.K - 1}
             for i in range(dut.n_layer)]
    return scans, convs


def run_bench(simulator: str, qm, bus: int, name: str, nodeid: str, steps: int = STEPS, **engine_kw) -> dict:
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    from rtl.build import BUILD, stamp

    data, _ = build_image(qm, bus)
    dut = Engine.for_image(data, **engine_kw)
    build_dir = BUILD / "cocotb" / f"engine_{name}_{simulator}"
    build_dir.mkdir(parents=True, exist_ok=True)
    words = write_hex(data, bus, build_dir / "image.hex")
    bench = EngineBench(dut, words, LATENCY)
    source = build_dir / "engine_bench.v"  # converting elaborates dut: its unit lists exist after this
    source.write_text(verilog.convert(bench, name="engine_bench", emit_src=False))
    ex = FixedExecutor(qm, "numpy")
    ref = engine_reference(ex, PROMPT, steps, dut.n_layer)
    np.savez(build_dir / "reference.npz", **ref)
    scans, convs = state_views(dut)
    result = build_dir / "result.json"
    result.unlink(missing_ok=True)
    env = {"reference": str(build_dir / "reference.npz"), "n_layer": dut.n_layer, "prompt": PROMPT, "tokens": steps,
           "rbuf": ["engine", "rbuf"], "lbuf": ["engine", "lbuf"], "residual_bits": spec.RESIDUAL_BITS,
           "d_model": dut.dm, "vocab": dut.V, "scan_state": scans, "conv_window": convs, "result": str(result)}
    runner = get_runner(simulator)
    t0 = time.time()
    runner.build(sources=[source, HERE / "dram_model.v"], hdl_toplevel="engine_bench", build_dir=build_dir,
                 timescale=("1ns", "1ps"),
                 build_args=["-Wno-fatal", "-O3"] if simulator == "verilator" else ["-g2005"])
    built = time.time()
    try:
        runner.test(hdl_toplevel="engine_bench", test_module="cocotb_engine", test_dir=HERE, build_dir=build_dir,
                    results_xml=str(build_dir / "results.xml"), plusargs=[f"+image={build_dir / 'image.hex'}"],
                    extra_env={"RTL_BENCH": json.dumps(env)})
    except SystemExit as exc:  # cocotb_tools reports failed cocotb tests by exiting
        pytest.fail(f"cocotb engine bench failed on {simulator} (exit {exc.code}); see the log above")
    got = json.loads(result.read_text())
    model = EngineModel(dut.dm, dut.D, dut.N, dut.R, dut.K, dut.n_layer, dut.V)
    engine = {"bus_bytes": bus, "gemv_lanes": dut.gemv_lanes, "scan_lanes": dut.scan_lanes,
              "hadamard_lanes": dut.had_lanes, "dram_latency": LATENCY}
    expected = decode_step_cycles(model, EngineConfig(**engine))  # the cost model's prediction
    assert expected == dut.token_cycles(LATENCY)
    for t, cyc in enumerate(got["cycles"]):
        assert cyc == expected, (t, cyc, expected)  # every op's cycles as predicted, every token
    total = sum(expected.values())
    print(f"\n{name} on {simulator}: {steps} tokens {got['tokens']}, {total} cycles a token; build "
          f"{built - t0:.0f} s, simulation {got['wall_s']:.0f} s")
    merge_record({"unit": "engine", "set": name, "simulator": simulator, "model": asdict(model), "engine": engine,
                  "tokens": steps, "per_op": got["cycles"][-1],
                  **stamp(f"QSIM_REQUIRE_HW=1 python -m pytest '{nodeid}'")})
    return got


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A second configuration: d_model 32, d_inner 64, d_state 8, dt_rank 8, two layers, state width 16, from a
    random checkpoint calibrated here (w8a8, Hadamard on) on the shipped calibration text."""
    from checkpoints import write_hf_checkpoint

    from calib.calibrate import CalibSettings, calibrate
    from qsim.bits import preset
    from qsim.config import MambaConfig
    from qsim.text import read_text
    from qsim.tokenizer import for_model
    from qsim.weights import load_folder

    folder = tmp_path_factory.mktemp("engine_synthetic")
    write_hf_checkpoint(folder, MambaConfig(d_model=32, n_layer=2, vocab_size=256, d_state=8, dt_rank=8), seed=3)
    text, _ = read_text("shakespeare/calib.txt")
    tokens = for_model(None, 256).encode(text[:50_000])
    return calibrate(load_folder(folder), preset("w8a8"), CalibSettings(samples=2, seq_len=64, state_bits=16),
                     tokens, "calib.txt")


@pytest.mark.parametrize("simulator", ["icarus", "verilator"], indirect=True)
def test_engine_mamba_tiny(simulator, request):
    """Every layer of mamba-tiny, bus 16 (the ECP5 preset's engine). Icarus runs this design at about 2,300 cycles
    a second (30 minutes for 16 tokens), so there it decodes QSIM_ENGINE_ICARUS_TOKENS tokens (default 2: the
    second reads every layer's state); Verilator always decodes 16."""
    steps = int(os.environ.get("QSIM_ENGINE_ICARUS_TOKENS", "2")) if simulator == "icarus" else STEPS
    run_bench(simulator, artifact.load(ARTIFACT), 16, "mamba-tiny-w8a8", request.node.nodeid, steps)


@pytest.mark.parametrize("simulator", ["icarus", "verilator"], indirect=True)
def test_engine_synthetic(simulator, synthetic, request):
    """Bus 8 bytes, GEMV 4 lanes (two passes a beat), scan 2 lanes, Hadamard 8 lanes."""
    run_bench(simulator, synthetic, 8, "synthetic-d32-n8-w16", request.node.nodeid, gemv_lanes=4, scan_lanes=2,
              had_lanes=8)
