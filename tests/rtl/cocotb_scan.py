"""cocotb bench of the scan unit's Verilog: golden sets through, a burst timed, then gaps and back-pressure."""

from __future__ import annotations

import cocotb
from cocotb.triggers import Combine
from rtl_tb import TB, Sink, Source, pack, scoreboard, signed
from rtl_vectors import scan_beats

from golden.generate import load
from rtl.scan_unit import CHANNEL, bc_layout


async def run_set(tb, bc, ch, out, name, channels, gap):
    """Stream one golden set through; returns the number of tokens."""
    _, arrays = load(name)
    tokens, y_ref = scan_beats(arrays, channels)
    layout = bc_layout(arrays["B"].shape[1])
    feed = [cocotb.start_soon(bc.send([pack(layout, b) for b, _ in tokens], gap)),
            cocotb.start_soon(ch.send([pack(CHANNEL, c) for _, cs in tokens for c in cs], gap))]
    got = await out.receive(y_ref.size, gap)
    await Combine(*feed)
    D = y_ref.shape[1]
    # one channel per output beat: the channel is the output lane
    scoreboard(got, y_ref.ravel().tolist(), lambda i: f"{name} token {i // D} channel {i % D} field y")
    return y_ref.shape[0]


@cocotb.test()
async def scan_golden(dut):
    tb = TB(dut)
    await tb.reset()
    env = tb.env
    bc, ch = Source(tb, "bc"), Source(tb, "i")
    out = Sink(tb, "o", lambda v: signed(v.to_unsigned(), 16) if v.is_resolvable else str(v))
    tokens = await run_set(tb, bc, ch, out, env["sets"][0], env["channels"], 0.0)  # timed: back to back
    tb.record(unit="scan", lanes=env["lanes"], d_inner=env["d_inner"], d_state=env["d_state"], tokens=tokens,
              cycles=out.last - bc.first + 1, set=env["sets"][0])
    for name in env["sets"]:
        await run_set(tb, bc, ch, out, name, env["channels"], 0.3)
