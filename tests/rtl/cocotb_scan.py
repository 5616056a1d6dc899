"""cocotb bench of the scan unit's Verilog: each golden set's constants loaded through `cfg`, then its tokens
through (a burst timed, then gaps and back-pressure); one build runs every set, reloading in between."""

from __future__ import annotations

import cocotb
from cocotb.triggers import Combine
from rtl_tb import TB, Sink, Source, pack, scoreboard, signed
from rtl_vectors import scan_beats

from golden.generate import load
from rtl.scan_unit import CHANNEL, ScanUnit, bc_layout


def unit(env) -> ScanUnit:
    """The build's configuration as a Python object: it turns a set's constants into cfg beats."""
    u = ScanUnit(lanes=env["lanes"], d_inner=env["d_inner"], d_state=env["d_state"], state_bits=env["state_bits"])
    u._MustUse__silence = True  # never elaborated here
    return u


async def run_set(tb, cfg, bc, ch, out, name, gap):
    """Load one golden set's constants, then stream its tokens through; returns the number of tokens."""
    u = unit(tb.env)
    manifest, arrays = load(name)
    await cfg.send([pack(u.cfg_layout, b) for b in u.golden_config(manifest, arrays)], gap)
    tokens, y_ref = scan_beats(arrays, u.d_inner)
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
    cfg, bc, ch = Source(tb, "cfg"), Source(tb, "bc"), Source(tb, "i")
    out = Sink(tb, "o", lambda v: signed(v.to_unsigned(), 16) if v.is_resolvable else str(v))
    tokens = await run_set(tb, cfg, bc, ch, out, env["sets"][0], 0.0)  # timed: back to back
    tb.record(unit="scan", lanes=env["lanes"], d_inner=env["d_inner"], d_state=env["d_state"], tokens=tokens,
              cycles=out.last - bc.first + 1, set=env["sets"][0], load_cycles=cfg.last - cfg.first + 1)
    for name in env["sets"]:
        await run_set(tb, cfg, bc, ch, out, name, 0.3)
