"""Amaranth-simulator tests of rtl.pipeline's fabric multiplier (the GEMV's int8 products, no DSP) and its
saturation against qsim.spec."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from qsim import spec
from rtl.pipeline import Pipeline, saturate


def products(b_signed: bool, pairs: list[tuple[int, int]]) -> list[int]:
    """mul_fabric(a, b) for each pair, one pair issued a cycle, read two cycles later."""
    m = Module()
    pl = Pipeline(m)
    a, b = pl.put(Signal(signed(8)), 0), pl.put(Signal(signed(8) if b_signed else unsigned(8)), 0)
    out = pl.mul_fabric(a, b, 0, "p")
    got = []

    async def bench(ctx):
        for x, y in pairs + [(0, 0)]:
            ctx.set(a, x)
            ctx.set(b, y)
            await ctx.tick()
            got.append(ctx.get(out))  # the product of the pair issued a cycle before this one

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got[1:]


@pytest.mark.parametrize("b_signed", [True, False])
def test_fabric_product_equals_a_times_b(b_signed):
    lo, hi = (-128, 127) if b_signed else (0, 255)
    corners = [(x, y) for x in (-128, -127, -1, 0, 1, 127) for y in (lo, lo + 1, -1 if b_signed else 1, 0, hi)]
    rng = random.Random(7)
    pairs = corners + [(rng.randint(-128, 127), rng.randint(lo, hi)) for _ in range(3000)]
    assert products(b_signed, pairs) == [x * y for x, y in pairs]


@pytest.mark.parametrize("vbits,wbits", [(12, 5), (9, 8), (6, 6), (4, 7)])
def test_saturate_equals_the_integer_clamp(vbits, wbits):
    """Every value of a signed vbits-bit signal into signed(wbits): the carry-free fit test (vbits > wbits) and
    the plain cases give qsim.spec.saturate's clamp."""
    m = Module()
    v, out = Signal(signed(vbits)), Signal(signed(wbits))
    m.d.comb += out.eq(saturate(v, signed(wbits)))
    got = {}

    async def bench(ctx):
        for x in range(-(1 << (vbits - 1)), 1 << (vbits - 1)):
            ctx.set(v, x)
            got[x] = ctx.get(out)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    want = dict(zip(got, spec.saturate(list(got), wbits)[0].tolist(), strict=True))
    assert got == want and len(got) == 1 << vbits
