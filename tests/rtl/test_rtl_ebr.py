"""rtl.ebr: the registered-read memory and ROM in the Amaranth simulator against Python, both builds (the DP16KD
one through the pin-level model, INITVAL layout included): reads held while not enabled, per-granule writes, two
ROM ports; the fallback of a memory deeper than one block RAM."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator
from dp16kd_model import DP16KDModel

import rtl.ebr
from rtl.ebr import RegisteredMemory, RegisteredRom


@pytest.mark.parametrize("primitive", [False, True], ids=["memory", "dp16kd"])
@pytest.mark.parametrize("width,granularity,depth", [(20, None, 40), (64, 16, 40), (8, None, 40), (64, 16, 1500)],
                         ids=["two-columns", "granules", "narrow", "x9-granules"])
def test_reads_two_clocks_later_and_hold_while_not_enabled(primitive, width, granularity, depth, monkeypatch):
    """Each cycle a random read (enabled 60 % of the time) and a random write (per granule) of another word: the
    output is the word the last enabled read addressed, as the writes before that read left it, two clocks on.
    A memory deeper than 1024 words is built of 2048 x 9 blocks (a 16-bit granule two of them)."""
    monkeypatch.setattr(rtl.ebr, "Instance", DP16KDModel)
    g = granularity or width
    lanes = width // g
    m = Module()
    mem = RegisteredMemory(width=width, depth=depth, name="t", primitive=primitive, granularity=granularity)
    assert mem.primitive == primitive
    mem.build(m)
    raddr, ren, waddr, wdata, wen = Signal(range(depth)), Signal(), Signal(range(depth)), Signal(width), Signal(lanes)
    q = mem.read(m, raddr, ren)
    mem.write(m, waddr, wdata, wen)
    rng = random.Random(width)
    pool = rng.sample(range(depth), min(depth, 40))  # words spread over the whole depth, each used often
    model, want, got = [0] * depth, [], []
    latch = out = 0  # the enabled read's word, then the registered one (the hardware's two steps)

    async def bench(ctx):
        nonlocal latch, out
        for _ in range(500):
            r, en = rng.choice(pool), rng.random() < 0.6
            w = rng.choice([a for a in pool if a != r])  # never the word read this cycle
            d, we = rng.randrange(1 << width), rng.randrange(1 << lanes)
            if en:  # both steps move together: the output takes the previous enabled read's word
                latch, out = model[r], latch
            want.append(out)
            for j in range(lanes):
                if we >> j & 1:
                    mask = ((1 << g) - 1) << (j * g)
                    model[w] = model[w] & ~mask | d & mask
            for sig, v in ((raddr, r), (ren, en), (waddr, w), (wdata, d), (wen, we)):
                ctx.set(sig, v)
            await ctx.tick()
            got.append(ctx.get(q))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
    assert len(set(want)) > 50  # reads saw written data


def test_deeper_than_one_block_keeps_the_memory_build():
    assert RegisteredMemory(width=8, depth=2048, name="t", primitive=True).column == (11, 9)
    mem = RegisteredMemory(width=8, depth=2049, name="t", primitive=True)
    assert not mem.primitive and mem.memory.depth == 2049
    mem.memory._MustUse__silence = True


def test_refuses_a_granularity_that_does_not_divide_the_width():
    with pytest.raises(ValueError, match="memory t: width 20"):
        RegisteredMemory(width=20, depth=4, name="t", granularity=16)


@pytest.mark.parametrize("primitive", [False, True], ids=["memory", "dp16kd"])
def test_rom_ports_read_the_init_two_clocks_later(primitive, monkeypatch):
    """Two ports at random addresses, each enabled at random: each port's output is the init word its last
    enabled read addressed (the words random 16-bit values, 700 of them: INITVAL blocks partly filled)."""
    monkeypatch.setattr(rtl.ebr, "Instance", DP16KDModel)
    rng = random.Random(5)
    init = [rng.randrange(1 << 16) for _ in range(700)]
    m = Module()
    rom = RegisteredRom(width=16, init=init, name="t", primitive=primitive)
    rom.build(m)
    addrs, ens = [Signal(range(700)) for _ in range(2)], [Signal() for _ in range(2)]
    qs = [rom.read(m, i, addrs[i], ens[i]) for i in range(2)]
    state = [[0, 0], [0, 0]]  # per port: latched word, output word
    want, got = [], []

    async def bench(ctx):
        for _ in range(400):
            row = []
            for i in range(2):
                a, en = rng.randrange(700), rng.random() < 0.7
                if en:
                    state[i] = [init[a], state[i][0]]
                row.append(state[i][1])
                ctx.set(addrs[i], a)
                ctx.set(ens[i], en)
            want.append(row)
            await ctx.tick()
            got.append([ctx.get(q) for q in qs])

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
    assert len({w for row in want for w in row}) > 200


def test_rom_refuses_what_one_block_ram_cannot_hold():
    with pytest.raises(ValueError, match="rom t"):
        RegisteredRom(width=19, init=[0], name="t")
    with pytest.raises(ValueError, match="rom t"):
        RegisteredRom(width=8, init=[0] * 1025, name="t")
