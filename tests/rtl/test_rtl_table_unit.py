"""rtl.table_unit's arithmetic helpers in the Amaranth simulator: compare_const (a wide compare against a constant
split into AND/OR trees over the high bits and a short carry chain) and round_saturate_halves, against Python
integers at the boundaries and at random."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from qsim import spec
from rtl.table_unit import compare_const, round_saturate_halves


def evaluate(shape, exprs_of, values) -> list[list[int]]:
    """Each expression of exprs_of(t) for t = every value, combinationally."""
    m = Module()
    t = Signal(shape)
    outs = []
    for i, e in enumerate(exprs_of(t)):
        o = Signal(e.shape(), name=f"o{i}")
        m.d.comb += o.eq(e)
        outs.append(o)
    got = []

    async def bench(ctx):
        for v in values:
            ctx.set(t, v)
            got.append([ctx.get(o) for o in outs])

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return got


def values_near(consts, shape, rng) -> list[int]:
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed else (0, (1 << shape.width) - 1)
    near = {min(max(c + d, lo), hi) for c in consts for d in range(-3, 4)} | {lo, hi, 0, -1 if shape.signed else 1}
    return sorted(near) + [rng.randint(lo, hi) for _ in range(500)] + [rng.randint(max(lo, -600), min(hi, 600))
                                                                       for _ in range(300)]


@pytest.mark.parametrize("shape", [signed(62), signed(40), unsigned(40), signed(10), unsigned(9)],
                         ids=["s62", "s40", "u40", "s10", "u9"])
def test_compare_const_equals_the_integer_compare(shape):
    rng = random.Random(shape.width)
    k = 9
    consts = [255, 511, 0, 1, -1, -257, -512, -300]
    values = values_near(consts, shape, rng)
    got = evaluate(shape, lambda t: [compare_const(t, c, k, ge=g) for c in consts for g in (True, False)], values)
    for v, row in zip(values, got):
        assert row == [int(v >= c if g else v < c) for c in consts for g in (True, False)], v


@pytest.mark.parametrize("shape", [signed(8), unsigned(8), signed(spec.RESIDUAL_BITS)], ids=["int8", "uint8", "res"])
def test_round_saturate_halves(shape):
    """saturate((t + 1) >> 1) for t of 62 bits (a requantizer's halves)."""
    rng = random.Random(shape.width)
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed else (0, (1 << shape.width) - 1)
    values = values_near([2 * hi + 1, 2 * lo - 1], signed(62), rng)
    got = evaluate(signed(62), lambda t: [round_saturate_halves(t, shape)], values)
    for v, (q,) in zip(values, got):
        assert q == min(max((v + 1) >> 1, lo), hi), v
