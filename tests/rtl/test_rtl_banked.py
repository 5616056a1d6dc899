"""rtl.banked: the bank arithmetic (cells, segments, bank depth per width) and, in the Amaranth simulator, reads
and writes at random addresses against a Python memory, reads and writes of one cycle in different and in the
same bank; the DP16KD build the same way, its instances run by a pin-level model of the modes it sets."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Cat, ClockSignal, Elaboratable, Module, ResetSignal, Signal, Value
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

import rtl.banked
from rtl.banked import READ_STAGES, BankedMemory, bank_bits_for
from rtl.pipeline import Pipeline

# the DP16KD configuration rtl.banked.dp16kd_column instantiates, which DP16KDModel implements
MODES = {"DATA_WIDTH_A": 18, "DATA_WIDTH_B": 18, "REGMODE_A": "NOREG", "REGMODE_B": "OUTREG", "RESETMODE": "SYNC",
         "ASYNC_RESET_RELEASE": "SYNC", "CSDECODE_A": "0b000", "CSDECODE_B": "0b000", "WRITEMODE_A": "NORMAL",
         "WRITEMODE_B": "NORMAL", "GSR": "DISABLED"}


class DP16KDModel(Elaboratable):
    """A DP16KD in the modes of MODES, pin by pin (Lattice FPGA-TN-02204, ECP5 memory usage guide): x18 ports
    address AD[13:4]; port A writes DIA where WEA and CEA with its byte enables ADA0/ADA1; port B latches the word
    at ADB where CEB, and its output register (OUTREG) takes the latch where OCEB, cleared by RSTB (SYNC)."""

    def __init__(self, kind: str, **kw):
        assert kind == "DP16KD"
        self.params = {k[2:]: v for k, v in kw.items() if k.startswith("p_")}
        self.pins = {k[2:]: v for k, v in kw.items() if not k.startswith("p_")}

    def elaborate(self, platform):
        assert self.params == MODES
        pin = {k: Value.cast(v) for k, v in self.pins.items()}
        for k in ("CLKA", "CLKB"):
            assert isinstance(self.pins[k], ClockSignal) and self.pins[k].domain == "sync"
        assert isinstance(self.pins["RSTB"], ResetSignal) and self.pins["RSTB"].domain == "sync"
        m = Module()
        m.submodules.mem = mem = Memory(shape=18, depth=1024, init=[])
        w, r = mem.write_port(), mem.read_port()
        m.d.comb += [r.en.eq(pin["CEB"]), w.addr.eq(Cat(pin[f"ADA{i}"] for i in range(4, 14))),
                     w.data.eq(Cat(pin[f"DIA{i}"] for i in range(18))),
                     w.en.eq(pin["WEA"] & pin["CEA"] & pin["ADA0"] & pin["ADA1"] & ~pin["RSTA"]),
                     r.addr.eq(Cat(pin[f"ADB{i}"] for i in range(4, 14)))]
        out = Signal(18)
        with m.If(pin["RSTB"]):
            m.d.sync += out.eq(0)
        with m.Elif(pin["OCEB"]):
            m.d.sync += out.eq(r.data)
        m.d.comb += [pin[f"DOB{i}"].eq(out[i]) for i in range(18)]
        assert all(self.pins[k] == 0 for k in ("WEB", "CSA0", "CSA1", "CSA2", "CSB0", "CSB1", "CSB2"))
        return m


def test_bank_depth_is_one_block_ram():
    assert [bank_bits_for(w) for w in (1, 9, 10, 18, 19, 24, 36, 72)] == [11, 11, 10, 10, 10, 10, 10, 10]


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


@pytest.mark.parametrize("primitive", [False, True], ids=["memories", "dp16kd"])
@pytest.mark.parametrize("depth,bank_bits", [(10, 2), (7, 3), (16, 4)], ids=["three-banks", "one-partial", "one-bank"])
def test_reads_see_every_earlier_write(depth, bank_bits, primitive, monkeypatch):
    """A read and a write each cycle at random addresses (often the same bank, the word written the cycle before
    or after; never the word written that cycle, which is undefined): every read, READ_STAGES cycles after its
    issue, is the word as the writes of the earlier cycles left it; at the end, `cell` finds every word as the
    writes left it. Words of 30 bits: two DP16KD columns, the second partly used."""
    if primitive:
        monkeypatch.setattr(rtl.banked, "Instance", DP16KDModel)
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
