"""rtl.loadable's decoders of a loaded shift s, bit by bit, against their definitions for every s in 0..63."""

from __future__ import annotations

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from rtl.loadable import half_of, sat_mask


def test_half_and_mask_for_every_shift():
    m = Module()
    s = Signal(6)
    halves = {w: Signal(w) for w in (17, 42, 62)}
    masks = {(ob, w): Signal(w) for ob, w in ((8, 42), (8, 62), (16, 40))}
    m.d.comb += [h.eq(half_of(s, w)) for w, h in halves.items()]
    m.d.comb += [k.eq(sat_mask(s, ob, w)) for (ob, w), k in masks.items()]
    seen = []

    async def bench(ctx):
        for v in range(64):
            ctx.set(s, v)
            for w, h in halves.items():  # 2**(s-1), 0 for s == 0, in w bits
                seen.append((ctx.get(h), (1 << (v - 1)) % (1 << w) if v else 0))
            for (ob, w), k in masks.items():  # ones at bits >= ob - 1 + s
                seen.append((ctx.get(k), ((1 << w) - 1) & ~((1 << min(w, ob - 1 + v)) - 1)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen) == 64 * 6
    assert all(got == want for got, want in seen), [(i, g, w) for i, (g, w) in enumerate(seen) if g != w][:3]
