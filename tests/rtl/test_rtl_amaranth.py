"""Amaranth-simulator tests of the units against golden sets: bit-exact outputs and state, cycle counts."""

from __future__ import annotations

import random

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402
from rtl_vectors import hadamard_beats, scan_beats, unpack_state  # noqa: E402

from golden.generate import SETS, hadamard_set, load, scan_set  # noqa: E402
from qsim import spec, tables  # noqa: E402
from qsim.hw import units  # noqa: E402
from rtl import stream  # noqa: E402
from rtl.build import make_unit  # noqa: E402
from rtl.scan_unit import ScanUnit  # noqa: E402


def simulate(dut, phases, sink, gaps: float, seed: int = 0):
    """Run `phases` one after another on dut; a phase is (config, sources, n_out, after).

    A phase first writes its `config` beats on dut.cfg (the layer's constants), then
    runs its `sources` [(stream, beats)] while n_out beats are collected from `sink`,
    then `after(ctx)` if given. Returns, per phase, (outputs, cycle of the first input
    transfer, cycle of the last output transfer). With gaps > 0 every beat may wait
    idle cycles first (valid low on inputs and config, ready low on the output).
    """
    m = Module()
    m.submodules.dut = dut
    cyc = Signal(32)
    m.d.sync += cyc.eq(cyc + 1)
    rng = random.Random(seed)
    active, results, first = [-1], [], [[] for _ in phases]

    async def idle(ctx):
        while rng.random() < gaps:
            await ctx.tick()

    def source(k, s, beats):
        async def run(ctx):
            while active[0] != k:
                await ctx.tick()
            for b in beats:
                await idle(ctx)
                await stream.put(ctx, s, b)
                first[k].append(ctx.get(cyc))
        return run

    async def control(ctx):
        for k, (config, _, n_out, after) in enumerate(phases):
            for b in config:
                await idle(ctx)
                await stream.put(ctx, dut.cfg, b)
            active[0] = k
            out = []
            for _ in range(n_out):
                await idle(ctx)
                out.append(await stream.get(ctx, sink))
            results.append((out, min(first[k]), ctx.get(cyc)))
            if after:
                await after(ctx)
        active[0] = len(phases)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    for k, (_, sources, _, _) in enumerate(phases):
        for s, beats in sources:
            sim.add_testbench(source(k, s, beats))
    sim.add_testbench(control)
    sim.run()
    return results


LAST = max(p.name for p in SETS.glob("scan_real_l*"))[len("scan_real_"):]  # last layer of the model
SCAN_CASES = [("scan_random_s16", 4, None), ("scan_random_s16", 16, None), ("scan_random_s16", 1, None),
              ("scan_random_wide", 2, None), ("scan_edge_l0", 8, 8), ("scan_real_l0", 4, 16)]


def scan_phase(dut, manifest, arrays, name, peeked):
    """One golden scan set as a simulate() phase: its constants, its beats, and a peek at the state memory
    once its last y is out (h is written well before)."""
    tokens, y_ref = scan_beats(arrays, dut.d_inner)

    async def peek(ctx):
        peeked[name] = [ctx.get(dut.state.data[w]) for w in range(dut.state.depth)]

    sources = [(dut.bc, [bc for bc, _ in tokens]), (dut.i, [c for _, chans in tokens for c in chans])]
    return (dut.golden_config(manifest, arrays), sources, y_ref.size, peek), y_ref


def check_scan_sets(dut, sets, gaps):
    """Stream golden scan sets [(name, manifest, arrays)] through one build of `dut`, reloading the constants
    before each: y and the final state bit-exact, burst cycles equal to the model."""
    peeked = {}
    phases, refs = zip(*(scan_phase(dut, manifest, arrays, name, peeked) for name, manifest, arrays in sets))
    for (name, _, arrays), y_ref, (out, t0, t1) in zip(sets, refs, simulate(dut, phases, dut.o, gaps)):
        y = np.array(out).reshape(y_ref.shape)
        bad = np.argwhere(y != y_ref)
        if len(bad):
            (t, d), = bad[:1]
            pytest.fail(f"{name}: token {t} channel {d} field y: {y[t, d]} != {y_ref[t, d]}")
        h = unpack_state(peeked[name], dut.lanes, dut.state_bits).reshape(dut.d_inner, dut.d_state)
        assert np.array_equal(h, arrays["h_final"][:dut.d_inner]), f"{name}: final state differs"
        if not gaps:
            T = y_ref.shape[0]
            assert t1 - t0 + 1 == dut.cycles(T) == units.scan_unit_cycles(dut.lanes, dut.d_inner, dut.d_state, T)


def check_scan(dut, manifest, arrays, gaps, name):
    check_scan_sets(dut, [(name, manifest, arrays)], gaps)


@pytest.mark.parametrize("gaps", [0.0, 0.4], ids=["burst", "gaps"])
@pytest.mark.parametrize("name,lanes,channels", SCAN_CASES)
def test_scan_unit_bit_exact(name, lanes, channels, gaps):
    dut, manifest, arrays = make_unit("scan", lanes, name, channels)
    check_scan(dut, manifest, arrays, gaps, name)


def test_scan_unit_two_layers_one_build():
    """One build, two layers back to back: layer 0's constants loaded, its tokens through, then the last
    layer's constants loaded into the same unit (idle, no rebuild) and its tokens through; both bit-exact,
    then layer 0 again (its state restarts from 0: every set's first token starts a sequence)."""
    dut, m0, a0 = make_unit("scan", 4, "scan_real_l0", 16)
    m1, a1 = load(f"scan_real_{LAST}")
    assert m1["constants"] != m0["constants"] and not np.array_equal(a1["a_q"], a0["a_q"])
    check_scan_sets(dut, [("scan_real_l0", m0, a0), (f"scan_real_{LAST}", m1, a1), ("scan_real_l0", m0, a0)],
                    0.0)


def test_scan_unit_reloads_constants_with_gaps():
    dut, m0, a0 = make_unit("scan", 2, "scan_real_l0", 4)
    m1, a1 = load(f"scan_real_{LAST}")
    check_scan_sets(dut, [(f"scan_real_{LAST}", m1, a1), ("scan_real_l0", m0, a0)], 0.4)


def test_scan_unit_config_beats():
    """A load is one beat a cycle: scalars, a_q element by element, Dq, (m_y, s_y) per channel; out-of-spec
    constants are refused."""
    dut, manifest, arrays = make_unit("scan", 4, "scan_random_s16")
    dut._MustUse__silence = True  # only its loader is used here
    beats = dut.golden_config(manifest, arrays)
    assert len(beats) == dut.load_cycles() == 3 + dut.d_inner * (dut.d_state + 2)
    c = manifest["constants"]
    ok = {k: arrays[k] for k in ("a_q", "Dq", "m_y", "s_y")} | {k: c[k] for k in ("frac", "m_h", "s_h")}
    for bad in ({"frac": 31}, {"m_h": 0}, {"s_h": 63}, {"m_y": arrays["m_y"] * 0},
                {"Dq": arrays["Dq"] * 0 + dut.dq_limit + 1}, {"a_q": arrays["a_q"][:1]}):
        with pytest.raises(ValueError):
            dut.config_beats(**{**ok, **bad})


@pytest.mark.parametrize("frac", [9, 30])
def test_scan_unit_widest_products(frac):
    """The spec's extremes together, which no golden set combines: dt*x*B = DT_MAX*128*128 times a 31-bit m_h
    (near 2**60), dt*a_q near 2**31, a 28-bit state (saturating at frac 30); frac 9 and 30 span the exponent's
    integer part from decay 0 to none. y's accumulator C.h + D*x (C follows B's signs, |Dq| at the spec's
    limit, so |D*x| near C.h's bound 2**38) passes 2**38: narrowed by 15 bits it needs 25 signed bits, before
    gates of -32768 and 32767 (the table saturates at both ends) and per-channel output multipliers (15-bit m_y,
    shifts 39 to 41). All of them loaded at run time."""
    rng = np.random.default_rng(7)
    D, N, T = 4, 16, 8
    lim = spec.scan_dq_limit(N, 28)  # the largest |Dq| valid with a 28-bit state (2**31 - 129)
    p = {"a_q": rng.choice([0, 1, 65535, *rng.integers(0, 65536, 8)], (D, N)), "frac": frac,
         "m_h": (1 << 31) - 1, "s_h": 34, "Dq": rng.choice([-lim, lim], D),
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
    check_scan(ScanUnit.from_golden(meta, 4), meta, arrays, 0.0, f"widest products, frac {frac}")


def test_scan_unit_recurrence_padding():
    """One channel, one chunk: tokens are padded to the recurrence latency, and h still comes out right."""
    dut, manifest, arrays = make_unit("scan", 16, "scan_random_s16", 1)
    assert dut.cycles_per_token == dut.recurrence_latency == units.SCAN_RECURRENCE_LATENCY > dut.d_inner * dut.chunks
    assert dut.latency == units.SCAN_PIPELINE_LATENCY
    tokens, y_ref = scan_beats(arrays, 1)
    sources = [(dut.bc, [b for b, _ in tokens]), (dut.i, [c[0] for _, c in tokens])]
    (out, t0, t1), = simulate(dut, [(dut.golden_config(manifest, arrays), sources, y_ref.size, None)], dut.o, 0.0)
    assert np.array_equal(np.array(out).reshape(y_ref.shape), y_ref)
    assert t1 - t0 + 1 == dut.cycles(len(tokens)) == units.scan_unit_cycles(16, 1, 16, len(tokens))


HADAMARD_CASES = [("hadamard_random_n64", 4), ("hadamard_random_n64", 8), ("hadamard_random_n192", 4),
                  ("hadamard_random_n192", 16), ("hadamard_real_l0", 8)]


@pytest.mark.parametrize("gaps", [0.0, 0.4], ids=["burst", "gaps"])
@pytest.mark.parametrize("name,lanes", HADAMARD_CASES)
def test_hadamard_unit_bit_exact(name, lanes, gaps):
    dut, manifest, arrays = make_unit("hadamard", lanes, name)
    rows, ref = hadamard_beats(arrays, lanes)
    config = dut.config_beats(**manifest["constants"])
    (out, t0, t1), = simulate(dut, [(config, [(dut.i, rows)], len(rows), None)], dut.o, gaps)
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


def test_hadamard_unit_reloads_constants():
    """One build, two requantizations back to back (the set's m, s, then another pair, loaded while idle, with
    its reference from the golden generator): both bit-exact, vectors streamed with gaps."""
    dut, manifest, arrays = make_unit("hadamard", 4, "hadamard_random_n64")
    c = manifest["constants"]
    other, other_meta = hadamard_set(arrays["y"], (1 << 30) + 12345, c["s"] + 13)
    other = {k: np.asarray(v, dtype=t) for k, (v, t) in other.items()}
    assert not np.array_equal(other["yo"], arrays["yo"])
    phases, refs = [], []
    for meta, arr in ((manifest, arrays), (other_meta, other), (manifest, arrays)):
        rows, ref = hadamard_beats(arr, 4)
        phases.append((dut.config_beats(**meta["constants"]), [(dut.i, rows)], len(rows), None))
        refs.append(ref)
    for ref, (out, _, _) in zip(refs, simulate(dut, phases, dut.o, 0.3)):
        assert np.array_equal(np.array(out), ref)
    with pytest.raises(ValueError):
        dut.config_beats(m=0, s=10)
    with pytest.raises(ValueError):
        dut.config_beats(m=1 << 31, s=10)
    with pytest.raises(ValueError):
        dut.config_beats(m=1, s=63)
