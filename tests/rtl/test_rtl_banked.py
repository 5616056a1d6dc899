"""rtl.banked: the bank arithmetic (cells, segments, bank depth per width) and, in the Amaranth simulator, reads
and writes at random addresses against a Python memory, reads and writes of one cycle in different and in the
same bank."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from rtl.banked import READ_STAGES, BankedMemory, bank_bits_for
from rtl.pipeline import Pipeline


def test_bank_depth_is_one_block_ram():
    assert [bank_bits_for(w) for w in (1, 9, 10, 18, 19, 24, 36, 72)] == [11, 11, 10, 10, 9, 9, 9, 9]


def test_banks_and_segments():
    mem = BankedMemory(width=8, depth=10, bank_bits=2, name="t")
    for bank in mem.banks:
        bank._MustUse__silence = True  # never elaborated here: only the arithmetic is tested
    assert [b.depth for b in mem.banks] == [4, 4, 2]
    assert mem.segments(range(3, 9)) == [(0, range(3, 4)), (1, range(4)), (2, range(1))]
    assert mem.segments(range(4, 8)) == [(1, range(4))]
    assert mem.segments(range(8, 10)) == [(2, range(2))]


@pytest.mark.parametrize("kw", [{"width": 0, "depth": 4, "bank_bits": 2}, {"width": 8, "depth": 0, "bank_bits": 2},
                                {"width": 8, "depth": 4, "bank_bits": 0}])
def test_refuses_empty_shapes(kw):
    with pytest.raises(ValueError, match="banked memory t"):
        BankedMemory(name="t", **kw)


@pytest.mark.parametrize("depth,bank_bits", [(10, 2), (7, 3), (16, 4)], ids=["three-banks", "one-partial", "one-bank"])
def test_reads_see_every_earlier_write(depth, bank_bits):
    """A read and a write each cycle at random addresses (often the same word, often the same bank): every read,
    READ_STAGES cycles after its issue, is the word as the writes of the earlier cycles left it; at the end, `cell`
    finds every word as the writes left it."""
    m = Module()
    pl = Pipeline(m)
    mem = BankedMemory(width=12, depth=depth, bank_bits=bank_bits, name="t")
    mem.build(m)
    raddr, waddr = pl.put(Signal(range(depth)), 0), Signal(range(depth))
    wdata, wen = Signal(12), Signal()
    out = mem.read(pl, raddr, 0, "r")
    mem.write(m, waddr, wdata, wen)
    rng = random.Random(depth)
    ops = [(rng.randrange(depth), rng.randrange(depth), rng.randrange(1 << 12), rng.random() < 0.7)
           for _ in range(400)]
    model, expected, got, cells = [0] * depth, [], [], []

    async def bench(ctx):
        for r, w, d, en in ops + [(0, 0, 0, False)] * READ_STAGES:
            expected.append(model[r])  # a read sees the writes of earlier cycles, not this cycle's
            if en:
                model[w] = d
            ctx.set(raddr, r)
            ctx.set(waddr, w)
            ctx.set(wdata, d)
            ctx.set(wen, en)
            await ctx.tick()
            got.append(ctx.get(out))
        cells.extend(ctx.get(mem.cell(w)) for w in range(depth))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got[READ_STAGES - 1:READ_STAGES - 1 + len(ops)] == expected[:len(ops)]
    assert cells == model
    assert len(set(expected)) > depth // 2  # the reads saw written data, not only the zeros memory starts with
