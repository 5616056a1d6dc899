"""Amaranth-simulator tests of rtl.pipeline's fabric multiplier (the GEMV's int8 products, no DSP)."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from rtl.pipeline import Pipeline


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
