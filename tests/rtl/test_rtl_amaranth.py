"""Amaranth-simulator tests of the units against golden sets: bit-exact outputs and state, cycle counts."""

from __future__ import annotations

import random

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402
from rtl_vectors import hadamard_beats, scan_beats, unpack_state  # noqa: E402

from golden.generate import scan_set  # noqa: E402
from qsim import spec, tables  # noqa: E402
from qsim.hw import units  # noqa: E402
from rtl import stream  # noqa: E402
from rtl.build import make_unit  # noqa: E402
from rtl.scan_unit import ScanUnit  # noqa: E402


def simulate(dut, sources, sink, n_out, gaps: float, after=None, seed: int = 0):
    """Run `sources` [(stream, beats)] into dut and collect n_out beats from `sink`, then run `after(ctx)`.

    Returns (outputs, cycle of the first input transfer, cycle of the last output
    transfer). With gaps > 0 every beat may wait idle cycles first (valid low on
    inputs, ready low on the output).
    """
    m = Module()
    m.submodules.dut = dut
    cyc = Signal(32)
    m.d.sync += cyc.eq(cyc + 1)
    rng = random.Random(seed)
    out, first = [], []

    async def idle(ctx):
        while rng.random() < gaps:
            await ctx.tick()

    def source(s, beats):
        async def run(ctx):
            for b in beats:
                await idle(ctx)
                await stream.put(ctx, s, b)
                first.append(ctx.get(cyc))
        return run

    async def drain(ctx):
        for _ in range(n_out):
            await idle(ctx)
            out.append(await stream.get(ctx, sink))
        out.append(ctx.get(cyc))
        if after:
            await after(ctx)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    for s, beats in sources:
        sim.add_testbench(source(s, beats))
    sim.add_testbench(drain)
    sim.run()
    return out[:-1], min(first), out[-1]


SCAN_CASES = [("scan_random_s16", 4, None), ("scan_random_s16", 16, None), ("scan_random_s16", 1, None),
              ("scan_random_wide", 2, None), ("scan_edge_l0", 8, 8), ("scan_real_l0", 4, 16)]


def check_scan(dut, arrays, channels, gaps, name):
    """Stream a scan set through `dut`: y and the final state bit-exact, burst cycles equal to the model."""
    tokens, y_ref = scan_beats(arrays, channels)
    words = []

    async def peek(ctx):  # the state memory once the last y is out (h is written well before)
        words.extend(ctx.get(dut.state.data[w]) for w in range(dut.state.depth))

    sources = [(dut.bc, [bc for bc, _ in tokens]), (dut.i, [c for _, chans in tokens for c in chans])]
    out, t0, t1 = simulate(dut, sources, dut.o, y_ref.size, gaps, peek)
    y = np.array(out).reshape(y_ref.shape)
    bad = np.argwhere(y != y_ref)
    if len(bad):
        (t, d), = bad[:1]
        pytest.fail(f"{name}: token {t} channel {d} field y: {y[t, d]} != {y_ref[t, d]}")
    h = unpack_state(words, dut.lanes, dut.state_bits).reshape(dut.d_inner, dut.d_state)
    assert np.array_equal(h, arrays["h_final"][:channels]), f"{name}: final state differs"
    if not gaps:
        T = y_ref.shape[0]
        assert t1 - t0 + 1 == dut.cycles(T) == units.scan_unit_cycles(dut.lanes, dut.d_inner, dut.d_state, T)


@pytest.mark.parametrize("gaps", [0.0, 0.4], ids=["burst", "gaps"])
@pytest.mark.parametrize("name,lanes,channels", SCAN_CASES)
def test_scan_unit_bit_exact(name, lanes, channels, gaps):
    dut, _, arrays = make_unit("scan", lanes, name, channels)
    check_scan(dut, arrays, channels, gaps, name)


@pytest.mark.parametrize("frac", [9, 30])
def test_scan_unit_widest_products(frac):
    """The spec's extremes together, which no golden set combines: dt*x*B = DT_MAX*128*128 times a 31-bit m_h
    (near 2**60), dt*a_q near 2**31, a 28-bit state (saturating at frac 30); frac 9 and 30 span the exponent's
    integer part from decay 0 to none. y's accumulator C.h + D*x (C follows B's signs, |D*x| up to C.h's
    bound 2**38) passes 2**38: narrowed by 15 bits it needs 25 signed bits, before gates of -32768 and 32767
    (the table saturates at both ends) and per-channel output multipliers (15-bit m_y, shifts 39 to 41)."""
    rng = np.random.default_rng(7)
    D, N, T = 4, 16, 8
    p = {"a_q": rng.choice([0, 1, 65535, *rng.integers(0, 65536, 8)], (D, N)), "frac": frac,
         "m_h": (1 << 31) - 1, "s_h": 34, "Dq": rng.choice([-(1 << 31), (1 << 31) - 1], D),
         "m_y": np.array([(1 << 15) - 1, 1 << 14, (1 << 15) - 1, 23456]), "s_y": np.array([40, 39, 41, 40]),
         "exp_tab": tables.exp2_frac_table(), "state_bits": 28}
    full = lambda shape: rng.choice([-128, 127], shape)  # noqa: E731
    dt = rng.choice([0, 1, spec.DT_MAX, spec.DT_MAX - 1, *rng.integers(0, spec.DT_MAX + 1, 4)], (T, D))
    xs, B = full((T, D)), full((T, N))
    assert ((dt * xs)[:, :, None] * B[:, None, :]).max() == spec.DT_MAX * 128 * 128
    silu_z = tables.gate_table(0.05, 0.278 / (1 << 15))  # SiLU's minimum, -0.2785, just past -32768 LSBs
    ends = [int(np.argmin(silu_z)) - 128, int(np.argmax(silu_z)) - 128]
    z = rng.choice([*ends, *rng.integers(-128, 128, 4)], (T, D))
    C = np.where((B > 0) == rng.choice([False, True], (T, 1)), -128, 127)  # B's signs, flipped on some tokens
    arrays, meta = scan_set(p, xs, dt, B, C, z, silu_z, np.eye(1, T, dtype=np.int64)[0])
    arrays = {k: np.asarray(v, dtype=t) for k, (v, t) in arrays.items()}
    acc = np.einsum("tdn,tn->td", arrays["h"].astype(np.int64), C) + p["Dq"] * xs
    assert spec.scan_acc_shift(p["state_bits"]) == 15 and np.abs(spec.rshift_round(acc, 15)).max() > 1 << 23
    assert {-(1 << 15), spec.GATE_MAX} <= set(arrays["sz"].ravel().tolist())
    check_scan(ScanUnit.from_golden(meta, arrays, 4), arrays, None, 0.0, f"widest products, frac {frac}")


def test_scan_unit_recurrence_padding():
    """One channel, one chunk: tokens are padded to the recurrence latency, and h still comes out right."""
    dut, _, arrays = make_unit("scan", 16, "scan_random_s16", 1)
    assert dut.cycles_per_token == dut.recurrence_latency == units.SCAN_RECURRENCE_LATENCY > dut.d_inner * dut.chunks
    assert dut.latency == units.SCAN_PIPELINE_LATENCY
    tokens, y_ref = scan_beats(arrays, 1)
    out, t0, t1 = simulate(dut, [(dut.bc, [b for b, _ in tokens]), (dut.i, [c[0] for _, c in tokens])],
                              dut.o, y_ref.size, 0.0)
    assert np.array_equal(np.array(out).reshape(y_ref.shape), y_ref)
    assert t1 - t0 + 1 == dut.cycles(len(tokens)) == units.scan_unit_cycles(16, 1, 16, len(tokens))


HADAMARD_CASES = [("hadamard_random_n64", 4), ("hadamard_random_n64", 8), ("hadamard_random_n192", 4),
                  ("hadamard_random_n192", 16), ("hadamard_real_l0", 8)]


@pytest.mark.parametrize("gaps", [0.0, 0.4], ids=["burst", "gaps"])
@pytest.mark.parametrize("name,lanes", HADAMARD_CASES)
def test_hadamard_unit_bit_exact(name, lanes, gaps):
    dut, manifest, arrays = make_unit("hadamard", lanes, name)
    rows, ref = hadamard_beats(arrays, lanes)
    out, t0, t1 = simulate(dut, [(dut.i, rows)], dut.o, len(rows), gaps)
    got = np.array(out)
    bad = np.argwhere(got != ref)
    if len(bad):
        r, j = bad[0]
        v, row = divmod(r, dut.rows)
        pytest.fail(f"{name}: vector {v} row {row} lane {j}: yo {got[r, j]} != {ref[r, j]}")
    assert dut.pass_latency == units.HADAMARD_PASS_LATENCY and dut.passes == units.hadamard_passes(dut.n)
    if not gaps:
        vectors = arrays["y"].shape[0]
        assert t1 - t0 + 1 == dut.cycles(vectors) == units.hadamard_unit_cycles(lanes, dut.n, vectors)
