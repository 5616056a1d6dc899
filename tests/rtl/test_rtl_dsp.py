"""rtl.dsp and the pipeline's primitive build: products in MULT18X18D output registers (through the pin-level model)
equal the fabric build's, value for value, over operands of every signedness and of one to three pieces."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator
from mult18x18d_model import MULT18X18DModel

import rtl.dsp
from rtl.loadable import mul_add
from rtl.pipeline import MUL_LATENCY, Pipeline

SHAPES = [(signed(32), signed(32)), (unsigned(20), signed(16)), (signed(18), unsigned(17)), (signed(8), signed(8)),
          (signed(40), unsigned(31)), (unsigned(35), unsigned(2))]


def _extremes(shape):
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed else (0, (1 << shape.width) - 1)
    return [lo, hi, 0, -1 if shape.signed else 1, lo + 1, hi - 1]


@pytest.mark.parametrize("sa,sb", SHAPES, ids=lambda s: repr(s))
@pytest.mark.parametrize("primitive", [False, True], ids=["fabric", "mult18x18d"])
def test_products_equal_the_integers(sa, sb, primitive, monkeypatch):
    """a * b (Pipeline.mul) and a * b + c (mul_add) MUL_LATENCY cycles after their operands, one pair a cycle: the
    extremes of each shape against each other, then random values. The primitive build places a MULT18X18D for each
    pair of pieces both 2 bits wide or more."""
    made = []

    def model(*args, **kw):
        made.append(args[0])
        return MULT18X18DModel(*args, **kw)

    monkeypatch.setattr(rtl.dsp, "Instance", model)
    m = Module()
    pl = Pipeline(m, primitive=primitive)
    a, b, c = Signal(sa), Signal(sb), Signal(unsigned(8))  # c: a rounding half, never negative
    for s in (a, b, c):
        pl.put(s, 0)
    prod = pl.mul(a, b, 0, "ab")
    fused = mul_add(pl, a, b, c, 0, "abc")
    rng = random.Random(sa.width * 100 + sb.width)
    pairs = [(x, y) for x in _extremes(sa) for y in _extremes(sb)]
    pairs += [(rng.choice(range(*_span(sa))), rng.choice(range(*_span(sb)))) for _ in range(150)]
    cs = [rng.randrange(1 << 8) for _ in pairs]
    got = []

    async def bench(ctx):
        for (x, y), z in zip(pairs + [(0, 0)] * MUL_LATENCY, cs + [0] * MUL_LATENCY, strict=True):
            ctx.set(a, x)
            ctx.set(b, y)
            ctx.set(c, z)
            await ctx.tick()
            got.append((ctx.get(prod), ctx.get(fused)))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got[MUL_LATENCY - 1:MUL_LATENCY - 1 + len(pairs)] == [(x * y, x * y + z) for (x, y), z in zip(pairs, cs)]
    pieces = (-(-sa.width // 17) if sa.width > (18 if sa.signed else 17) else 1,
              -(-sb.width // 17) if sb.width > (18 if sb.signed else 17) else 1)
    assert (len(made) > 0) == primitive
    if primitive:
        assert len(made) <= 2 * pieces[0] * pieces[1] and len(made) % 2 == 0  # the same pieces in mul and mul_add


def _span(shape):
    return (-(1 << (shape.width - 1)), 1 << (shape.width - 1)) if shape.signed else (0, 1 << shape.width)


def test_refuses_operands_wider_than_the_block():
    m = Module()
    with pytest.raises(ValueError, match="t: operands of"):
        rtl.dsp.registered_product(m, Signal(unsigned(18)), Signal(signed(8)), "t")
    with pytest.raises(ValueError, match="t: operands of"):
        rtl.dsp.registered_product(m, Signal(signed(8)), Signal(signed(19)), "t")
    m._MustUse__silence = True
