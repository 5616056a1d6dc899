"""Amaranth-simulator tests of the GEMV unit (weights read from the DRAM model at run time) and the DRAM model."""

from __future__ import annotations

import gc
import random

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from qsim.hw import units
from rtl import stream
from rtl.dram import Dram, read_port
from rtl.gemv_unit import GemvUnit


def weights_image(rng, mats, bus_bytes: int, size: int) -> tuple[bytes, list[int]]:
    """A memory image of random bytes with each (n, k) int8 matrix at a bus-aligned base, rows padded to the bus
    (the pad bytes stay random: they must not count). Returns (image, bases)."""
    img = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    bases, at = [], bus_bytes * 3  # not at address 0
    for w in mats:
        n, k = w.shape
        stride = -(-k // bus_bytes) * bus_bytes
        for i in range(n):
            img[at + i * stride:at + i * stride + k] = w[i].astype(np.int8).tobytes()
        bases.append(at)
        at += n * stride + 5 * bus_bytes
    assert at <= size
    return bytes(img), bases


def run_gemv(dut: GemvUnit, image: bytes, latency: int, cmds, gaps: float = 0.0, seed: int = 0):
    """Commands [(base, W, x)] back to back; returns [(y, accept cycle, last output cycle)] and the DRAM model."""
    m = Module()
    m.submodules.dut = dut
    cyc = Signal(32)
    m.d.sync += cyc.eq(cyc + 1)
    sim = Simulator(m)
    sim.add_clock(1e-8)
    dram = Dram(dut.mem, image, bus_bytes=dut.bus_bytes, latency=latency)
    dram.add(sim)
    rng = random.Random(seed)
    accepted, outs = [], []

    async def idle(ctx):
        while rng.random() < gaps:
            await ctx.tick()

    async def commands(ctx):
        for base, w, _ in cmds:
            await stream.put(ctx, dut.cmd, {"base": base, "n": w.shape[0], "k": w.shape[1]})
            accepted.append(ctx.get(cyc) - 1)

    async def xs(ctx):
        for _, _, x in cmds:
            for v in x:
                await idle(ctx)
                await stream.put(ctx, dut.x, int(v))

    async def drain(ctx):
        for _, w, _ in cmds:
            y = []
            for _ in range(w.shape[0]):
                await idle(ctx)
                y.append(await stream.get(ctx, dut.o))
            outs.append((np.array(y, dtype=np.int64), ctx.get(cyc) - 1))

    sim.add_testbench(commands)
    sim.add_testbench(xs)
    sim.add_testbench(drain)
    sim.run()
    return [(y, a, t) for a, (y, t) in zip(accepted, outs)], dram


def extremes(rng, shape):
    """Random int8 with the ends -128 and 127 over-represented."""
    v = rng.integers(-128, 128, shape)
    return np.where(rng.random(shape) < 0.3, rng.choice([-128, 127], shape), v)


# (rows, lanes, bus_bytes, latency, [(n, k), ...] run back to back)
CASES = [
    (1, 8, 8, 10, [(5, 21), (3, 8)]),
    (4, 8, 8, 10, [(9, 37), (4, 16), (1, 3)]),
    (2, 4, 16, 6, [(7, 50), (2, 16)]),
    (1, 4, 16, 12, [(3, 40), (2, 5)]),  # compute bound: 4 passes per beat
    (3, 2, 4, 3, [(10, 9), (8, 4)]),  # rows not a power of two, k < latency and k > latency
    (4, 16, 16, 20, [(6, 33), (5, 1)]),  # lanes 16: two adder-tree levels; a one-column product
]


@pytest.mark.parametrize("rows,lanes,bus,latency,shapes", CASES,
                         ids=[f"r{c[0]}_l{c[1]}_b{c[2]}" for c in CASES])
def test_gemv_unit_exact_and_cycles(rows, lanes, bus, latency, shapes):
    rng = np.random.default_rng(rows * 100 + lanes * 10 + bus)
    mats = [extremes(rng, s) for s in shapes]
    xs = [extremes(rng, s[1]) for s in shapes]
    mats[0][0, :], xs[0][:] = -128, -128  # the largest sum: 16384 * k
    image, bases = weights_image(rng, mats, bus, 8192)
    dut = GemvUnit(rows, lanes, bus, max_k=64, max_n=16)
    assert dut.latency == units.gemv_pipeline_latency(lanes)
    res, dram = run_gemv(dut, image, latency, list(zip(bases, mats, xs)))
    for (y, t0, t1), w, x, base in zip(res, mats, xs, bases):
        ref = w.astype(np.int64) @ x.astype(np.int64)
        bad = np.flatnonzero(y != ref)
        assert not len(bad), f"{w.shape} at {base:#x}: y[{bad[0]}] = {y[bad[0]]} != {ref[bad[0]]}"
        assert t1 - t0 + 1 == units.gemv_unit_cycles(rows, lanes, bus, latency, *w.shape), w.shape
    assert res[0][0][0] == 16384 * shapes[0][1]
    # every weight byte came from memory, within the commands' matrices
    beats = sum(n * -(-k // bus) for n, k in shapes)
    assert len(dram.served) == beats
    assert {a for _, a in dram.served} <= {b + i for b, (n, k) in zip(bases, shapes)
                                            for i in range(0, n * -(-k // bus) * bus, bus)}


def test_gemv_unit_memory_bound():
    """rows * lanes >= bus_bytes: once the first beat is in, one beat per cycle until the last."""
    rows, lanes, bus, latency, n, k = 2, 4, 8, 5, 8, 40
    rng = np.random.default_rng(3)
    w, x = extremes(rng, (n, k)), extremes(rng, k)
    image, (base,) = weights_image(rng, [w], bus, 4096)
    res, dram = run_gemv(GemvUnit(rows, lanes, bus, max_k=64, max_n=8), image, latency, [(base, w, x)])
    (y, t0, t1), = res
    assert np.array_equal(y, w.astype(np.int64) @ x)
    cycles = [c for c, _ in dram.served]
    assert cycles == list(range(cycles[0], cycles[0] + n * k // bus))
    assert cycles[0] == t0 + 1 + max(latency, k + 1)  # x registered as it arrives: loaded a cycle after its last
    assert t1 - t0 + 1 == units.gemv_unit_cycles(rows, lanes, bus, latency, n, k) < n * k // bus + k + 20


def test_gemv_unit_back_pressure():
    """Random idle cycles on x and o, and a slow start: same results."""
    rng = np.random.default_rng(5)
    shapes = [(7, 19), (6, 33)]
    mats = [extremes(rng, s) for s in shapes]
    xs = [extremes(rng, s[1]) for s in shapes]
    image, bases = weights_image(rng, mats, 8, 4096)
    res, _ = run_gemv(GemvUnit(3, 4, 8, max_k=40, max_n=8), image, 7, list(zip(bases, mats, xs)), gaps=0.5)
    for (y, _, _), w, x in zip(res, mats, xs):
        assert np.array_equal(y, w.astype(np.int64) @ x.astype(np.int64))


class _Requester(wiring.Component):
    """A component that only exposes a read port (and a counter, for a clock domain): drives the DRAM model."""

    def __init__(self, bus_bytes):
        super().__init__({"mem": wiring.Out(read_port(bus_bytes, 16, 4))})

    def elaborate(self, platform):
        m = Module()
        count = Signal(8)
        m.d.sync += count.eq(count + 1)
        return m


@pytest.mark.parametrize("bus,latency", [(8, 4), (16, 1), (4, 9)])
def test_dram_latency_and_bandwidth(bus, latency):
    image = bytes(range(256)) * 4
    dev = _Requester(bus)
    m = Module()
    m.submodules.dev = dev
    sim = Simulator(m)
    sim.add_clock(1e-8)
    dram = Dram(dev.mem, image, bus_bytes=bus, latency=latency)
    dram.add(sim)
    reqs = [(0, 3), (bus * 10, 1), (bus * 4, 5)]
    got = []

    async def requester(ctx):
        for addr, beats in reqs:
            await stream.put(ctx, dev.mem.req, {"addr": addr, "beats": beats})

    async def reader(ctx):
        for i in range(9):
            if i == 5:  # back-pressure: two idle cycles
                await ctx.tick().repeat(2)
            got.append(await stream.get(ctx, dev.mem.data))

    sim.add_testbench(requester)
    sim.add_testbench(reader)
    sim.run()
    addrs = [a + i * bus for a, b in reqs for i in range(b)]
    assert got == [int.from_bytes(image[a:a + bus], "little") for a in addrs]
    assert [c for c, _, _ in dram.accepted] == [0, 1, 2]  # one request per cycle
    cycles = [c for c, _ in dram.served]
    assert [a for _, a in dram.served] == addrs
    assert cycles[0] == latency  # first beat `latency` cycles after the accept
    # one beat (bus bytes) per cycle, except the 2-cycle back-pressure gap before beat 5
    assert cycles == [latency + i + 2 * (i >= 5) for i in range(9)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the aborted testbench
def test_dram_rejects_unaligned():
    dev = _Requester(8)
    m = Module()
    m.submodules.dev = dev
    sim = Simulator(m)
    sim.add_clock(1e-8)
    Dram(dev.mem, bytes(64), bus_bytes=8, latency=2).add(sim)

    async def requester(ctx):
        ctx.set(dev.mem.req.valid, 1)
        ctx.set(dev.mem.req.payload, {"addr": 4, "beats": 1})
        await ctx.tick().repeat(3)

    sim.add_testbench(requester)
    with pytest.raises(AssertionError, match="not aligned"):
        sim.run()
    del sim
    gc.collect()  # the aborted testbench's coroutine is closed here, under this test's warning filter


def test_gemv_unit_verilog():
    from amaranth.back import verilog

    text = verilog.convert(GemvUnit(2, 4, 8, max_k=64, max_n=32), name="gemv", emit_src=False)
    assert "module gemv" in text and "mem__req__valid" in text
