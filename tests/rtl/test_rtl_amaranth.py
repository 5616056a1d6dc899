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
from qsim.fixed import ops  # noqa: E402
from qsim.hw import units  # noqa: E402
from rtl import stream  # noqa: E402
from rtl.build import make_unit  # noqa: E402
from rtl.scan_unit import ScanUnit  # noqa: E402


def simulate(dut, phases, sink, gaps: float, seed: int = 0, layers=None):
    """Run `phases` one after another on dut; a phase is (config, sources, n_out, after).

    A phase first writes its `config` beats on dut.cfg (the layer's constants), then
    runs its `sources` [(stream, beats)] while n_out beats are collected from `sink`,
    then `after(ctx)` if given. Returns, per phase, (outputs, cycle of the first input
    transfer, cycle of the last output transfer). With gaps > 0 every beat may wait
    idle cycles first (valid low on inputs and config, ready low on the output).
    `layers` (a multi-layer scan unit): per phase, the layer sent on dut.layer with
    each bc beat; once the beat has transferred dut.layer moves on to another layer,
    which the unit must ignore until the next bc beat.
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
            for n, b in enumerate(beats):
                await idle(ctx)
                sideband = layers is not None and s is dut.bc
                if sideband:
                    ctx.set(dut.layer, layers[k][n])
                await stream.put(ctx, s, b)
                if sideband:
                    ctx.set(dut.layer, (layers[k][n] + 1) % dut.n_layer)
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
        peeked[name] = [ctx.get(dut.state_cell(w)) for w in range(dut.words * dut.n_layer)]

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


def layer_states(ctx, dut) -> list[np.ndarray]:
    """Every layer's state (d_inner, d_state), read from its words of the unit's state memory."""
    return [unpack_state([ctx.get(dut.state_cell(w)) for w in dut.state_words(lay)], dut.lanes, dut.state_bits)
            .reshape(dut.d_inner, dut.d_state) for lay in range(dut.n_layer)]


def check_layers(name, dut, tokens, out, y_ref, states, h_ref):
    """y of every token (in stream order: tokens [(layer, step)]) and each layer's final state, element by element."""
    for (lay, t), got, ref in zip(tokens, out, y_ref):
        bad = np.flatnonzero(np.asarray(got) != ref)
        if len(bad):
            pytest.fail(f"{name}: layer {lay} token {t} channel {bad[0]} field y: {got[bad[0]]} != {ref[bad[0]]}")
    for lay, (h, ref) in enumerate(zip(states, h_ref)):
        bad = np.argwhere(h != ref)
        if len(bad):
            (d, n), = bad[:1]
            pytest.fail(f"{name}: layer {lay} final state h[{d}, {n}]: {h[d, n]} != {ref[d, n]}")


def round_robin(lengths) -> list[tuple[int, int]]:
    """(layer, step) in the order an engine interleaves layers: each layer's step 0, then each one's step 1, ..."""
    return [(lay, t) for t in range(max(lengths)) for lay, n in enumerate(lengths) if t < n]


@pytest.mark.parametrize("gaps", [0.0, 0.4], ids=["burst", "gaps"])
def test_scan_unit_layers_interleaved(gaps):
    """Three layers' golden sets on one n_layer=3 build, tokens interleaved as an engine runs them (layer 0 token 0,
    layer 1 token 0, layer 2 token 0, layer 0 token 1, ...), each token after a reload of its layer's constants: every
    y and each layer's final state equal the set's (a separate single-layer run's), and so do the cycles of every
    token. scan_edge_l0 restarts its sequence mid-way: `start` zeroes that layer's state only."""
    sets = ["scan_real_l0", f"scan_real_{LAST}", "scan_edge_l0"]
    loaded = [load(name) for name in sets]
    dut = ScanUnit.from_golden(loaded[0][0], 4, 8, n_layer=len(sets), bank_bits=4)  # two state banks a layer
    beats = [(dut.golden_config(mf, a), scan_beats(a, dut.d_inner)) for mf, a in loaded]
    assert all(any(a["start"][1:]) for _, a in loaded[2:])
    order = round_robin([len(tok) for _, (tok, _) in beats])
    states = []

    async def peek(ctx):
        states.extend(layer_states(ctx, dut))

    phases = []
    for k, (lay, t) in enumerate(order):
        config, (tokens, _) = beats[lay]
        bc, chans = tokens[t]
        phases.append((config, [(dut.bc, [bc]), (dut.i, chans)], dut.d_inner, peek if k == len(order) - 1 else None))
    res = simulate(dut, phases, dut.o, gaps, layers=[[lay] for lay, _ in order])
    check_layers("interleaved", dut, order, [out for out, _, _ in res], [beats[lay][1][1][t] for lay, t in order],
                 states, [a["h_final"][:dut.d_inner] for _, a in loaded])
    if not gaps:
        assert {t1 - t0 + 1 for _, t0, t1 in res} == {dut.cycles(1)}


def test_scan_unit_layers_back_to_back():
    """Three layers with the same constants but different token sequences (stretches of a golden set, restarted at
    their first token, layer 2 also mid-way) streamed as one burst, the layer changing with every bc beat: y and
    final states equal qsim.fixed.ops.scan run per layer, and the burst takes scan_unit_cycles like one layer's."""
    manifest, arrays = load("scan_real_l0")
    dut = ScanUnit.from_golden(manifest, 4, 8, n_layer=3, bank_bits=6)  # layers 0, 1 in bank 0, layer 2 in bank 1
    C, c = dut.d_inner, manifest["constants"]
    p = {k: arrays[k][:C] for k in ("a_q", "Dq", "m_y", "s_y")} | {k: c[k] for k in ("frac", "m_h", "s_h")} | \
        {"exp_tab": arrays["exp_tab"], "state_bits": dut.state_bits}
    seqs = [(range(6), [1, 0, 0, 0, 0, 0]), (range(6, 12), [1, 0, 0, 0, 0, 0]), (range(12, 16), [1, 0, 1, 0])]
    order = round_robin([len(steps) for steps, _ in seqs])
    h = [np.zeros((C, dut.d_state), np.int64) for _ in seqs]
    bcs, chans, y_ref = [], [], []
    for lay, t in order:
        src, start = seqs[lay][0][t], seqs[lay][1][t]
        if start:
            h[lay] = np.zeros_like(h[lay])
        xs, dt, sz = (arrays[f][src:src + 1, :C].astype(np.int64) for f in ("xs", "dt", "sz"))
        B, Cs = (arrays[f][src:src + 1].astype(np.int64) for f in ("B", "C"))
        y, h[lay], _, _ = ops.scan(xs, dt, B, Cs, sz, h[lay], p)
        y_ref.append(y[0])
        bcs.append({"b": arrays["B"][src].tolist(), "c": arrays["C"][src].tolist(), "start": start})
        chans += [{"x": int(x), "dt": int(d), "sz": int(s)} for x, d, s in
                  zip(arrays["xs"][src, :C], arrays["dt"][src, :C], arrays["sz"][src, :C])]
    assert np.array_equal(y_ref[0], arrays["y"][0, :C])  # the reference is the golden set's
    states = []

    async def peek(ctx):
        states.extend(layer_states(ctx, dut))

    (out, t0, t1), = simulate(dut, [(dut.golden_config(manifest, arrays), [(dut.bc, bcs), (dut.i, chans)],
                                     len(order) * C, peek)], dut.o, 0.0, layers=[[lay for lay, _ in order]])
    check_layers("back to back", dut, order, np.reshape(out, (len(order), C)), y_ref, states, h)
    assert t1 - t0 + 1 == dut.cycles(len(order)) == units.scan_unit_cycles(4, C, dut.d_state, len(order))


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
