"""Decode-engine units (issue 14) in the Amaranth simulator: RMSNorm, conv, table look-up, residual add.

Real constants and inputs from the committed mamba-tiny-w8a8 artifact (the NumPy executor's prepared layers and a
traced prefill), plus int8 / saturation extremes; two layers' constants loaded into one build back to back;
outputs compared element by element with qsim.fixed.ops; cycles equal to qsim.hw.units' formulas.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from qsim import artifact, spec
from qsim.fixed import ops
from qsim.fixed.executor import FixedExecutor, Trace
from qsim.hw import units as ec
from rtl import stream
from rtl.conv_unit import ConvUnit
from rtl.rmsnorm_unit import RMSNormUnit
from rtl.table_unit import ResidualUnit, TableUnit

ARTIFACT = Path(__file__).resolve().parents[2] / "qsim" / "artifacts" / "mamba-tiny-w8a8"
TOKENS = [72, 101, 108, 108, 111, 32]


@pytest.fixture(scope="module")
def model():
    ex = FixedExecutor(artifact.load(ARTIFACT), "numpy")
    tr = Trace(names={"residual", "u", "xz", "conv_pre", "xs", "dt_pre", "dt", "sz", "out", "u_f"})
    ex.prefill(np.array(TOKENS), trace=tr)
    return ex, tr


def run(dut, jobs, gaps: float = 0.0, seed: int = 0, after=None):
    """Run jobs in order: ("cfg", beats) loads constants (after every earlier vector is out); ("vec", beats, n_out)
    streams one vector in and collects n_out output beats; ("vec", beats, n_out, layer) also sends `layer` on
    dut.layer with each beat (a multi-layer unit), moving it on to another layer once the beat has transferred.
    Returns (outputs per vec job, cycles per vec job from its first input transfer to its last output transfer,
    inclusive; cycles per cfg job)."""
    m = Module()
    m.submodules.dut = dut
    cyc = Signal(32)
    m.d.sync += cyc.eq(cyc + 1)
    rng = random.Random(seed)
    vecs = [j for j in jobs if j[0] == "vec"]
    outs, t_in, t_out, t_cfg, done = [[] for _ in vecs], [], [], [], [0]

    async def idle(ctx):
        while rng.random() < gaps:
            await ctx.tick()

    async def producer(ctx):
        k = 0
        for job in jobs:
            if job[0] == "cfg":
                while done[0] < k:
                    await ctx.tick()
                first = None
                for b in job[1]:
                    await stream.put(ctx, dut.cfg, b)
                    first = ctx.get(cyc) if first is None else first
                t_cfg.append(ctx.get(cyc) - first + 1)
                continue
            for n, b in enumerate(job[1]):
                await idle(ctx)
                if len(job) > 3:
                    ctx.set(dut.layer, job[3])
                await stream.put(ctx, dut.i, b)
                if len(job) > 3:
                    ctx.set(dut.layer, (job[3] + 1) % dut.n_layer)
                if n == 0:
                    t_in.append(ctx.get(cyc))
            k += 1

    async def consumer(ctx):
        for k, job in enumerate(vecs):
            for _ in range(job[2]):
                await idle(ctx)
                outs[k].append(await stream.get(ctx, dut.o))
            t_out.append(ctx.get(cyc))
            done[0] = k + 1
        if after:
            await after(ctx)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return outs, [b - a + 1 for a, b in zip(t_in, t_out)], t_cfg


def rows(v, lanes):
    return np.asarray(v, dtype=np.int64).reshape(-1, lanes).tolist()


def flat(beats, field=None):
    return np.array([[int(x) for x in (getattr(b, field) if field else b)] for b in beats], dtype=np.int64).ravel()


def check(name, got, ref):
    bad = np.flatnonzero(got != ref)
    if len(bad):
        k = bad[0]
        pytest.fail(f"{name}: element {k}: {got[k]} != {ref[k]} ({len(bad)} differ)")


# ---------------------------------------------------------------- RMSNorm

def test_rmsnorm_unit(model):
    """Layer 1's and layer 4's norm and the final norm into one build, then extremes: ss = 1 (mantissa shifted
    up), full-scale rows (ss near d_model * 2^46), the largest g and saturating multipliers."""
    ex, tr = model
    dm, lanes = ex.cfg.d_model, 16
    dut = RMSNormUnit(d_model=dm, lanes=lanes)
    rng = np.random.default_rng(3)
    cases = []  # (cfg beats, rows, expected u)
    for i in (1, 4, ex.cfg.n_layer):
        p = ex.layers[i]["norm"] if i < ex.cfg.n_layer else ex.final
        r = tr.get(i, "residual")[[0, 5, 2]]
        u = tr.get(i, "u")[[0, 5, 2]] if i < ex.cfg.n_layer else tr.get(i, "u_f")[[0, 5, 2]]
        assert np.array_equal(u, ops.rmsnorm(r, p["g"], p["eps_int"], p["m"], p["s"], ex.rsqrt_tab)[0])
        cases.append((dut.load_beats(p["g"].tolist(), p["eps_int"], p["m"], p["s"]), r, u))
    top = (1 << (spec.RESIDUAL_BITS - 1))
    g = rng.choice([-32767, 32767, 1, -1, *rng.integers(-32767, 32768, 4)], dm)
    r = np.stack([np.zeros(dm, np.int64), np.full(dm, -top), rng.choice([-top, top - 1], dm),
                  rng.integers(-3, 4, dm), rng.integers(-top, top, dm)])
    for eps, m_, s_ in ((1, (1 << 31) - 1, 40), ((1 << 62) - dm * (1 << 46) - 1, 23456, 33)):
        u, n = ops.rmsnorm(r, g, eps, m_, s_, ex.rsqrt_tab)
        cases.append((dut.load_beats(g.tolist(), eps, m_, s_), r, u))
        assert n > 0 or eps > 1
    jobs, expected = [], []
    for beats, r, u in cases:
        jobs.append(("cfg", beats))
        for row, ref in zip(r, u):
            jobs.append(("vec", rows(row, lanes), dm // lanes))
            expected.append(ref)
    outs, cycles, cfg = run(dut, jobs)
    for k, (got, ref) in enumerate(zip(outs, expected)):
        check(f"rmsnorm vector {k}", flat(got), ref)
    assert set(cycles) == {ec.rmsnorm_unit_cycles(dm, lanes)}
    assert set(cfg) == {ec.rmsnorm_cfg_beats(dm)}


def test_rmsnorm_unit_gaps(model):
    """Idle input and output cycles (valid and ready low at random) change no value; a small build."""
    ex, _ = model
    dm, lanes = 64, 8
    rng = np.random.default_rng(5)
    dut = RMSNormUnit(d_model=dm, lanes=lanes)
    g = rng.integers(-32767, 32768, dm)
    r = rng.integers(-(1 << 20), 1 << 20, (4, dm))
    u, _ = ops.rmsnorm(r, g, 12345, 20000, 36, ex.rsqrt_tab)
    jobs = [("cfg", dut.load_beats(g.tolist(), 12345, 20000, 36))] + [("vec", rows(v, lanes), dm // lanes) for v in r]
    outs, _, _ = run(dut, jobs, gaps=0.4)
    for k, got in enumerate(outs):
        check(f"rmsnorm vector {k}", flat(got), u[k])


# ---------------------------------------------------------------- conv

def conv_ref(x, w, b, m, s, silu, first):
    """qsim.fixed.ops.conv one token at a time (a sequence restarts where `first`), requantized, SiLU; conv_pre, xs
    and the final window (d_conv - 1, d_inner)."""
    state = np.zeros((w.shape[1] - 1, w.shape[0]), np.int64)
    pre, xs = [], []
    for t in range(x.shape[0]):
        if first[t]:
            state[:] = 0
        acc, state = ops.conv(x[t:t + 1], state, w, b)
        q, _ = ops.requantize(acc, m, s, 8)
        pre.append(q[0])
        xs.append(ops.lut(q[0], silu))
    return np.array(pre), np.array(xs), state


def conv_windows(ctx, dut) -> list[np.ndarray]:
    """Every layer's window (d_conv - 1, d_inner), oldest first, from its words of the unit's window memory."""
    K, L = dut.d_conv - 1, dut.lanes
    out = []
    for lay in range(dut.n_layer):
        raw = np.array([[(ctx.get(dut.window_cell(w)) >> 8 * n) & 255 for n in range(L * K)]
                        for w in dut.window_words(lay)], np.int64)
        out.append(np.where(raw > 127, raw - 256, raw).reshape(-1, K).T)
    return out


def check_conv_layers(dut, firsts, refs, lanes, jobs, gaps=0.0):
    """Run jobs whose vec jobs are tokens interleaved round robin over layers (firsts: each layer's `first` flags;
    refs: each layer's conv_ref): every token's conv_pre and xs, each layer's final window, the cycles."""
    order = [(lay, t) for t in range(max(map(len, firsts))) for lay, f in enumerate(firsts) if t < len(f)]
    windows = []

    async def after(ctx):
        windows.extend(conv_windows(ctx, dut))

    outs, cycles, cfg = run(dut, jobs(order), gaps, after=after)
    for (lay, t), got in zip(order, outs, strict=True):
        check(f"conv layer {lay} token {t} conv_pre", flat(got, "pre"), refs[lay][0][t])
        check(f"conv layer {lay} token {t} xs", flat(got, "xs"), refs[lay][1][t])
    for lay, (win, ref) in enumerate(zip(windows, refs, strict=True)):
        check(f"conv layer {lay} final window", win.ravel(), ref[2].ravel())
    if not gaps:
        assert set(cycles) == {ec.conv_unit_cycles(dut.d_inner, lanes)}
        assert set(cfg) <= {ec.conv_cfg_beats(dut.d_inner, dut.d_conv)}


def conv_jobs(dut, beats, x, first, lanes):
    jobs = [("cfg", beats)]
    for t in range(x.shape[0]):
        jobs.append(("vec", [{"x": row, "first": int(first[t])} for row in rows(x[t], lanes)], x.shape[1] // lanes))
    return jobs


def check_conv(dut, jobs, refs, lanes, gaps=0.0):
    outs, cycles, cfg = run(dut, jobs, gaps)
    pre = np.concatenate([r[0] for r in refs])
    xs = np.concatenate([r[1] for r in refs])
    for t, got in enumerate(outs):
        check(f"conv token {t} conv_pre", flat(got, "pre"), pre[t])
        check(f"conv token {t} xs", flat(got, "xs"), xs[t])
    if not gaps:
        assert set(cycles) == {ec.conv_unit_cycles(dut.d_inner, lanes)}
        assert set(cfg) == {ec.conv_cfg_beats(dut.d_inner, dut.d_conv)}


def test_conv_unit_real(model):
    """Layer 0's conv over the traced tokens, then layer 3's constants loaded into the same build and its tokens
    run as a new sequence (the window restarts from zeros: first set), then again from token 2 on."""
    ex, tr = model
    di, lanes = ex.cfg.d_inner, 32
    dut = ConvUnit(d_inner=di, d_conv=ex.cfg.d_conv, lanes=lanes)
    jobs, refs = [], []
    for i, first in ((0, [1, 0, 0, 0, 0, 0]), (3, [1, 0, 0, 1, 0, 0])):
        P = ex.layers[i]
        x = tr.get(i, "xz")[:, :di]
        beats = dut.load_beats(P["conv_w"].tolist(), P["conv_b"].tolist(), *P["conv_rq"], P["silu_conv"].tolist())
        jobs += conv_jobs(dut, beats, x, first, lanes)
        ref = conv_ref(x, P["conv_w"], P["conv_b"], *P["conv_rq"], P["silu_conv"], first)
        if i == 0:
            assert np.array_equal(ref[0], tr.get(i, "conv_pre")) and np.array_equal(ref[1], tr.get(i, "xs"))
        refs.append(ref)
    check_conv(dut, jobs, refs, lanes)


def test_conv_unit_layers_interleaved(model):
    """Layers 0, 2 and 4 on one n_layer=3 build, tokens interleaved as an engine runs them (layer 0 token 0, layer 1
    token 0, layer 2 token 0, layer 0 token 1, ...), each after a load of its layer's constants: every token's
    conv_pre and xs and each layer's final window equal a separate run's (the traced executor's for layers without
    a restart); the third layer restarts its sequence at token 2, zeroing its window only. The first 128 channels
    (channels are independent: a smaller but exact problem, with shorter loads). Window banks of 8 words (4 rows a
    layer): the second layer's window straddles two banks."""
    ex, tr = model
    di, lanes = 128, 32
    dut = ConvUnit(d_inner=di, d_conv=ex.cfg.d_conv, lanes=lanes, n_layer=3, bank_bits=3)
    layers, firsts = (0, 2, 4), ([1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0])
    xs, beats, refs = [], [], []
    for i, first in zip(layers, firsts):
        P = ex.layers[i]
        w, b = P["conv_w"][:di], P["conv_b"][:di]
        xs.append(tr.get(i, "xz")[:len(first), :di])
        beats.append(dut.load_beats(w.tolist(), b.tolist(), *P["conv_rq"], P["silu_conv"].tolist()))
        refs.append(conv_ref(xs[-1], w, b, *P["conv_rq"], P["silu_conv"], first))
        if not any(first[1:]):
            assert np.array_equal(refs[-1][0], tr.get(i, "conv_pre")[:len(first), :di])
            assert np.array_equal(refs[-1][1], tr.get(i, "xs")[:len(first), :di])

    def jobs(order):
        return [job for lay, t in order for job in
                (("cfg", beats[lay]), ("vec", [{"x": r, "first": firsts[lay][t]} for r in rows(xs[lay][t], lanes)],
                                       di // lanes, lay))]

    check_conv_layers(dut, firsts, refs, lanes, jobs)


@pytest.mark.parametrize("gaps", [0.0, 0.4], ids=["burst", "gaps"])
def test_conv_unit_layers_back_to_back(gaps):
    """Three layers with shared constants but their own inputs, one row per token, the layer changing with every
    token and no gap between tokens (a layer's window write and the next layer's read in adjacent cycles): every
    output and each layer's final window equal a separate run's; restarts zero only their layer's window. Window
    banks of two words: consecutive tokens read and write different banks, and the same bank."""
    rng = np.random.default_rng(11)
    d_inner, d_conv, lanes = 8, 4, 8
    dut = ConvUnit(d_inner=d_inner, d_conv=d_conv, lanes=lanes, n_layer=3, bank_bits=1)
    w, b = rng.integers(-128, 128, (d_inner, d_conv)), rng.integers(-(1 << 20), 1 << 20, d_inner)
    silu = rng.integers(-128, 128, 256)
    firsts = ([1, 0, 0, 0, 0], [1, 0, 1, 0, 0], [1, 0, 0, 0, 1])
    xs = [rng.integers(-128, 128, (len(f), d_inner)) for f in firsts]
    refs = [conv_ref(x, w, b, 1 << 14, 20, silu, f) for x, f in zip(xs, firsts)]

    def jobs(order):
        return [("cfg", dut.load_beats(w.tolist(), b.tolist(), 1 << 14, 20, silu.tolist()))] + \
            [("vec", [{"x": xs[lay][t].tolist(), "first": firsts[lay][t]}], 1, lay) for lay, t in order]

    check_conv_layers(dut, firsts, refs, lanes, jobs, gaps)


@pytest.mark.parametrize("d_inner,d_conv,lanes,gaps", [(8, 4, 8, 0.0), (16, 4, 8, 0.0), (24, 4, 8, 0.0),
                                                      (32, 3, 8, 0.4)],
                         ids=["one-row", "two-rows", "three-rows", "gaps"])
def test_conv_unit_extremes(d_inner, d_conv, lanes, gaps):
    """int8 extremes in x and w, int32 extremes in b, the widest multiplier the 2^62 bound allows, saturation
    at both ends; one, two and three rows per token (a row read again one, two or three cycles after its previous
    read: before, or in the cycle, its window is written; forwarded from the pipeline)."""
    rng = np.random.default_rng(d_conv)
    dut = ConvUnit(d_inner=d_inner, d_conv=d_conv, lanes=lanes)
    jobs, refs = [], []
    for b_top, m_, s_ in (((1 << 31) - 1, (1 << 30) - 1, 38), (1 << 20, 1 << 14, 17), (100, 1, 0)):
        w = rng.choice([-128, 127, 0, 1, -1], (d_inner, d_conv))
        b = rng.choice([-b_top - 1, b_top, 0], d_inner) if b_top > 100 else rng.integers(-100, 100, d_inner)
        x = rng.choice([-128, 127, -1, 0, *rng.integers(-128, 128, 3)], (5, d_inner))
        silu = rng.integers(-128, 128, 256)
        first = [1, 0, 0, 1, 0]
        jobs += conv_jobs(dut, dut.load_beats(w.tolist(), b.tolist(), m_, s_, silu.tolist()), x, first, lanes)
        refs.append(conv_ref(x, w, b, m_, s_, silu, first))
    assert {-128, 127} <= set(np.concatenate([r[0] for r in refs]).ravel().tolist())
    check_conv(dut, jobs, refs, lanes, gaps)


# ---------------------------------------------------------------- table look-up and residual add

@pytest.mark.parametrize("gaps", [0.0, 0.4], ids=["burst", "gaps"])
def test_table_unit(model, gaps):
    """softplus_dt (uint15) of layers 0 and 2 on the traced dt_pre, then every code; SiLU(z) (int16) likewise."""
    ex, tr = model
    di, lanes = ex.cfg.d_inner, 32
    codes = np.arange(-128, 128)
    for name, src, dst, shape in (("softplus_dt", "dt_pre", "dt", unsigned(spec.DT_BITS)),
                                  ("silu_z", "xz", "sz", signed(spec.GATE_BITS))):
        dut = TableUnit(lanes=lanes, out_shape=shape)
        jobs, refs = [], []
        for i in (0, 2):
            tab = ex.layers[i][name]
            q = tr.get(i, src)[[0, 4]]
            q = q[:, di:] if src == "xz" else q
            jobs.append(("cfg", dut.load_beats(tab.tolist())))
            for v, ref in ((q[0], tr.get(i, dst)[0]), (q[1], tr.get(i, dst)[4]), (codes, ops.lut(codes, tab))):
                jobs.append(("vec", rows(v, lanes), len(v) // lanes))
                refs.append(ref)
        outs, cycles, cfg = run(dut, jobs, gaps)
        for k, (got, ref) in enumerate(zip(outs, refs)):
            check(f"{name} vector {k}", flat(got), ref)
        if not gaps:
            assert cycles == [ec.table_unit_cycles(len(r), lanes) for r in refs]
            assert set(cfg) == {ec.table_cfg_beats()}


@pytest.mark.parametrize("gaps", [0.0, 0.4], ids=["burst", "gaps"])
def test_residual_unit(model, gaps):
    """r + out of every traced layer and token equals the next layer's residual; then sums past +-2^23."""
    ex, tr = model
    dm, lanes = ex.cfg.d_model, 16
    top = 1 << (spec.RESIDUAL_BITS - 1)
    pairs = [(tr.get(i, "residual")[t], tr.get(i, "out")[t]) for i in range(ex.cfg.n_layer) for t in (0, 3)]
    refs = [tr.get(i + 1, "residual")[t] for i in range(ex.cfg.n_layer) for t in (0, 3)]
    rng = np.random.default_rng(1)
    r = rng.choice([-top, top - 1, 0, -1], dm)
    d = rng.choice([-top, top - 1, 1, -1, 0], dm)
    pairs.append((r, d))
    ref, n_sat = spec.saturate(r + d, spec.RESIDUAL_BITS)
    refs.append(ref)
    assert n_sat > 0
    dut = ResidualUnit(lanes=lanes)
    jobs = [("vec", [{"r": a, "d": b} for a, b in zip(rows(r_, lanes), rows(d_, lanes))], dm // lanes)
            for r_, d_ in pairs]
    sat = []

    async def after(ctx):
        await ctx.tick()
        sat.append(ctx.get(dut.sat))
        ctx.set(dut.sat_clear, 1)
        await ctx.tick()
        ctx.set(dut.sat_clear, 0)
        sat.append(ctx.get(dut.sat))

    outs, cycles, _ = run(dut, jobs, gaps, after=after)
    for k, (got, ref) in enumerate(zip(outs, refs)):
        check(f"residual vector {k}", flat(got), ref)
    assert sat == [n_sat, 0]
    if not gaps:
        assert set(cycles) == {ec.residual_unit_cycles(dm, lanes)}
