"""cocotb bench of the Hadamard unit's Verilog: each golden set's m, s loaded through `cfg`, then its vectors
through (a burst timed, then gaps and back-pressure)."""

from __future__ import annotations

import cocotb
from amaranth.hdl import signed as sshape
from amaranth.lib import data
from rtl_tb import TB, Sink, Source, pack, scoreboard, signed
from rtl_vectors import hadamard_beats

from golden.generate import load
from rtl.hadamard_unit import HadamardUnit


async def run_set(tb, cfg, src, out, name, gap):
    """Load one golden set's constants, then stream its vectors through; returns the number of vectors."""
    lanes = tb.env["lanes"]
    u = HadamardUnit(n=tb.env["n"], lanes=lanes)
    u._MustUse__silence = True  # never elaborated here: it turns the set's constants into cfg beats
    manifest, arrays = load(name)
    await cfg.send([pack(u.cfg_layout, b) for b in u.config_beats(**manifest["constants"])], gap)
    rows, ref = hadamard_beats(arrays, lanes)
    layout = data.ArrayLayout(sshape(16), lanes)
    feed = cocotb.start_soon(src.send([pack(layout, r) for r in rows], gap))
    got = await out.receive(len(rows), gap)
    await feed
    per_vector = arrays["y"].shape[1] // lanes
    scoreboard(got, [list(r) for r in ref.tolist()],
               lambda i: f"{name} vector {i // per_vector} row {i % per_vector} lanes "
                         f"{[j for j in range(lanes) if got[i][j] != ref[i][j]]} field yo")
    return arrays["y"].shape[0]


@cocotb.test()
async def hadamard_golden(dut):
    tb = TB(dut)
    await tb.reset()
    env, lanes = tb.env, tb.env["lanes"]
    cfg, src = Source(tb, "cfg"), Source(tb, "i")
    out = Sink(tb, "o", lambda v: [signed(v.to_unsigned() >> (8 * j), 8) for j in range(lanes)])
    vectors = await run_set(tb, cfg, src, out, env["sets"][0], 0.0)  # timed: back to back
    tb.record(unit="hadamard", lanes=lanes, n=env["n"], vectors=vectors, cycles=out.last - src.first + 1,
              set=env["sets"][0], load_cycles=cfg.last - cfg.first + 1)
    for name in env["sets"]:
        await run_set(tb, cfg, src, out, name, 0.3)
