"""rtl.banked: the bank arithmetic (cells, segments, bank depth per width) and, in the Amaranth simulator, reads
and writes at random addresses against a Python memory, reads and writes of one cycle in different and in the
same bank; the DP16KD build the same way, its instances run by a pin-level model of the modes it sets."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator
from dp16kd_model import DP16KDModel

import rtl.ebr
from rtl.banked import READ_STAGES, BankedMemory, bank_bits_for
from rtl.pipeline import Pipeline


def test_bank_depth_is_one_block_ram():
    assert [bank_bits_for(w) for w in (1, 9, 10, 18, 19, 24, 36, 72)] == [11, 11, 10, 10, 10, 10, 10, 10]


def test_banks_and_segments():
    mem = BankedMemory(width=8, depth=10, bank_bits=2, name="t")
    for bank in mem.banks:
        bank.memory._MustUse__silence = True  # never elaborated here: only the arithmetic is tested
    assert [b.depth for b in mem.banks] == [4, 4, 2]
    assert mem.segments(range(3, 9)) == [(0, range(3, 4)), (1, range(4)), (2, range(1))]
    assert mem.segments(range(4, 8)) == [(1, range(4))]
    assert mem.segments(range(8, 10)) == [(2, range(2))]


@pytest.mark.parametrize("kw", [{"width": 0, "depth": 4, "bank_bits": 2}, {"width": 8, "depth": 0, "bank_bits": 2},
                                {"width": 8, "depth": 4, "bank_bits": 0}])
def test_refuses_empty_shapes(kw):
    with pytest.raises(ValueError, match="banked memory t"):
        BankedMemory(name="t", **kw)


@pytest.mark.parametrize("primitive", [False, True], ids=["memories", "dp16kd"])
@pytest.mark.parametrize("depth,bank_bits", [(10, 2), (7, 3), (16, 4)], ids=["three-banks", "one-partial", "one-bank"])
def test_reads_see_every_earlier_write(depth, bank_bits, primitive, monkeypatch):
    """A read and a write each cycle at random addresses (often the same bank, the word written the cycle before
    or after; never the word written that cycle, which is undefined): every read, READ_STAGES cycles after its
    issue, is the word as the writes of the earlier cycles left it; at the end, `cell` finds every word as the
    writes left it. Words of 30 bits: two DP16KD columns, the second partly used."""
    if primitive:
        monkeypatch.setattr(rtl.ebr, "Instance", DP16KDModel)
    width = 30
    m = Module()
    pl = Pipeline(m)
    mem = BankedMemory(width=width, depth=depth, bank_bits=bank_bits, name="t", primitive=primitive)
    mem.build(m)
    raddr, waddr = pl.put(Signal(range(depth)), 0), Signal(range(depth))
    wdata, wen = Signal(width), Signal()
    out = mem.read(pl, raddr, 0, "r")
    mem.write(m, waddr, wdata, wen)
    rng = random.Random(depth)
    ops = []
    for _ in range(400):
        r, w, en = rng.randrange(depth), rng.randrange(depth), rng.random() < 0.7
        ops.append((r, (r + 1 + rng.randrange(depth - 1)) % depth if en else w, rng.randrange(1 << width), en))
    readback = [(r, 0, 0, False) for r in range(depth)]  # every word once more: what the writes left
    model, expected, got, cells = [0] * depth, [], [], []

    async def bench(ctx):
        for r, w, d, en in ops + readback + [(0, 0, 0, False)] * READ_STAGES:
            expected.append(model[r])  # a read sees the writes of earlier cycles
            if en:
                model[w] = d
            ctx.set(raddr, r)
            ctx.set(waddr, w)
            ctx.set(wdata, d)
            ctx.set(wen, en)
            await ctx.tick()
            got.append(ctx.get(out))
        if not primitive:  # (a DP16KD has no cell to peek at)
            cells.extend(ctx.get(mem.cell(w)) for w in range(depth))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    n = len(ops) + depth
    assert got[READ_STAGES - 1:READ_STAGES - 1 + n] == expected[:n]
    assert expected[len(ops):n] == model
    assert cells == ([] if primitive else model)
    assert len(set(expected)) > depth // 2  # the reads saw written data, not only the zeros memory starts with
