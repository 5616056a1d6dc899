"""The Mamba-1 decode engine (rtl/engine.py) in the Amaranth simulator, serving the memory image of the committed
mamba-tiny-w8a8 artifact (rtl.image.build_image) from the DRAM model: decode steps from an empty state compared,
after every layer (the residual stream and the layer's SSM state) and at the end (the logits), element by element
with the NumPy `fixed` executor (embed, block, head; the same logits as step() for the whole model); every op's cycle
count equal to Engine.token_cycles (printed with -s).

The Python simulator runs the engine at roughly 250-700 cycles a second (load-dependent) and a token of the whole
model is about 250 000 cycles, so the default test runs layer 0 (then the final norm and lm_head) for two tokens,
about 110 000 cycles (90 s per token on an idle core, 8 min for both on a loaded 2-core machine).
QSIM_ENGINE_WHOLE=1 adds the whole model (QSIM_ENGINE_TOKENS tokens, default 2; QSIM_ENGINE_LAYERS layers).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("amaranth")

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator
from dp16kd_model import DP16KDModel
from mult18x18d_model import MULT18X18DModel
from rtl_vectors import engine_reference, unpack_state

import rtl.dsp
import rtl.ebr
from qsim import artifact, spec
from qsim.fixed.executor import FixedExecutor
from rtl import stream
from rtl.dram import Dram
from rtl.engine import LABELS, Engine
from rtl.image import build_image
from rtl.requant_unit import RequantUnit

ARTIFACT = Path(__file__).resolve().parents[2] / "qsim" / "artifacts" / "mamba-tiny-w8a8"
BUS = 16
LATENCY = 8
TOKENS = [72, 101, 108, 108, 111, 32]


@pytest.fixture(scope="module")
def model():
    qm = artifact.load(ARTIFACT)
    data, _ = build_image(qm, BUS)
    return FixedExecutor(qm, "numpy"), data


def _signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def run_engine(data: bytes, tokens, n_layer: int, **kw):
    """Decode `tokens` from an empty state. Per token: residuals after each layer (n_layer, d_model), logits (vocab,),
    cycles per label, total cycles, SSM states; and the engine's predicted cycles per label (token_cycles)."""
    dut = Engine.for_image(data, n_layer=n_layer, **kw)
    m = Module()
    m.submodules.dut = dut
    sim = Simulator(m)
    sim.add_clock(1e-8)
    dram = Dram(dut.mem, data, bus_bytes=BUS, latency=LATENCY)
    dram.add(sim)
    out = []

    async def tb(ctx):
        cycle = 0
        for t, tok in enumerate(tokens):
            before = {lab: ctx.get(getattr(dut, f"cyc_{lab}")) for lab in LABELS}
            c0 = cycle
            await stream.put(ctx, dut.tok, {"token": int(tok), "start": int(t == 0)})
            cycle += 1
            res = []
            while True:
                await ctx.tick()
                if not (ctx.get(dut.layer_done) or ctx.get(dut.done)):
                    continue
                if ctx.get(dut.done):
                    break
                res.append([_signed(ctx.get(dut.rbuf.data[k]), spec.RESIDUAL_BITS) for k in range(dut.dm)])
            logits = [_signed(ctx.get(dut.lbuf.data[k]), 32) for k in range(dut.V)]
            cyc = {lab: ctx.get(getattr(dut, f"cyc_{lab}")) - before[lab] for lab in LABELS}
            cycle += sum(cyc.values())
            s = dut.scan
            h = [unpack_state([ctx.get(s.state_cell(w)) for w in s.state_words(i)], s.lanes, s.state_bits)
                 for i in range(n_layer)]
            out.append((np.array(res, np.int64), np.array(logits, np.int64), cyc, cycle - c0, h))
            await ctx.tick()

    sim.add_testbench(tb)
    sim.run()
    return out, dut.token_cycles(LATENCY)


@pytest.mark.parametrize("primitive", [False, True], ids=["fabric", "primitives"])
def test_requant_unit(primitive, monkeypatch):
    """Per-row and uniform m, s, the optional bias, int8 and residual-width saturation, extremes of every operand;
    compared with rshift_round / saturate (SPEC 2.3) on Python integers: the unit's product is exact at any
    (int32 + int32) x uint31, beyond the spec's 2**62 bound. Also as synthesis builds it (primitive): its m, s, b
    in DP16KDs and its partial products in MULT18X18Ds, through their pin-level models."""
    monkeypatch.setattr(rtl.ebr, "Instance", DP16KDModel)
    monkeypatch.setattr(rtl.dsp, "Instance", MULT18X18DModel)
    rng = np.random.default_rng(0)
    n = 64
    dut = RequantUnit(max_rows=n, primitive=primitive)
    mm = rng.choice([1, (1 << 31) - 1, *rng.integers(1, 1 << 31, 6)], n)
    ss = rng.choice([0, 1, 62, *rng.integers(0, 63, 6)], n)
    bb = rng.choice([-(1 << 31), (1 << 31) - 1, 0, *rng.integers(-(1 << 31), 1 << 31, 5)], n)
    vals = rng.choice([-(1 << 31), (1 << 31) - 1, 0, -1, 1, *rng.integers(-(1 << 31), 1 << 31, 5)], 3 * n)
    beats = [{"v": int(v), "idx": k % n, "uniform": int(k % 3 == 0), "bias": int(k % 2), "wide": int(k % 5 < 2)}
             for k, v in enumerate(vals)]

    def ref(b):
        row = 0 if b["uniform"] else b["idx"]
        acc = b["v"] + (int(bb[b["idx"]]) if b["bias"] else 0)
        bits = spec.RESIDUAL_BITS if b["wide"] else 8
        r = (acc * int(mm[row]) + ((1 << int(ss[row])) >> 1)) >> int(ss[row])  # spec.rshift_round, unbounded
        return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, r))

    m = Module()
    m.submodules.dut = dut
    got = []

    async def producer(ctx):
        for b in dut.load_beats(mm.tolist(), ss.tolist(), bb.tolist()):
            await stream.put(ctx, dut.cfg, b)
        for b in beats:
            await stream.put(ctx, dut.i, b)

    async def consumer(ctx):
        for _ in beats:
            got.append(int(await stream.get(ctx, dut.o)))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    check("requant", got, [ref(b) for b in beats])


def check(name, got, ref):
    got, ref = np.asarray(got, np.int64), np.asarray(ref, np.int64)
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    bad = np.flatnonzero(got.ravel() != ref.ravel())
    if len(bad):
        k = bad[0]
        pytest.fail(f"{name}: element {k}: {got.ravel()[k]} != {ref.ravel()[k]} ({len(bad)} of {got.size} differ)")


def decode_and_compare(model, tokens, n_layer, exact_cycles=True):
    ex, data = model
    t0 = time.time()
    got, expected = run_engine(data, tokens, n_layer)
    wall = time.time() - t0
    ref = engine_reference(ex, tokens, len(tokens), n_layer)
    for t, (res, logits, cyc, total, h) in enumerate(got):
        for i in range(n_layer):
            check(f"token {t} layer {i} residual", res[i], ref["residual"][t, i])
            check(f"token {t} layer {i} SSM state", h[i], ref["h"][t, i])
        check(f"token {t} logits", logits, ref["logits"][t])
        if exact_cycles:
            assert cyc == expected, (t, cyc, expected)  # every op's cycles as Engine.token_cycles predicts
        print(f"\ntoken {t}: {total} cycles; " + ", ".join(f"{lab} {c}" for lab, c in cyc.items()))
    print(f"{len(tokens)} tokens x {n_layer} layers: {wall:.0f} s of simulation")
    return got, expected


def test_engine_one_layer(model):
    """Layer 0 then the final norm and lm_head, two tokens (the second one reads the conv window and SSM state)."""
    decode_and_compare(model, TOKENS[:2], 1)


class StallingRequant(wiring.Component):
    """A RequantUnit whose input is refused on a fixed pseudo-random quarter of the cycles (a 16-bit LFSR): the
    engine's own requantizer is always ready in a load step, so only this exercises the loader's skid register
    (the embedding row's elements held while the unit refuses them) and the GEMV waiting on the requantizer."""

    def __init__(self, **kw):
        self.inner = RequantUnit(**kw)
        super().__init__(self.inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        lfsr = Signal(16, init=0xACE1)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0] ^ lfsr[2] ^ lfsr[3] ^ lfsr[5]))
        go = lfsr[0] | lfsr[1]
        wiring.connect(m, wiring.flipped(self.cfg), inner.cfg)
        wiring.connect(m, inner.o, wiring.flipped(self.o))
        m.d.comb += [inner.i.valid.eq(self.i.valid & go), inner.i.payload.eq(self.i.payload),
                     self.i.ready.eq(inner.i.ready & go)]
        return m


def test_engine_requantizer_stalls(model, monkeypatch):
    """One token of layer 0 through a requantizer that refuses beats: every tensor still equal; the embedding row
    and dt_proj (whose outputs outpace its weights) take longer than token_cycles says (the stalls happened), no op
    shorter."""
    monkeypatch.setattr("rtl.engine.RequantUnit", StallingRequant)
    ((_res, _logits, cyc, _total, _h),), expected = decode_and_compare(model, TOKENS[:1], 1, exact_cycles=False)
    assert all(cyc[lab] >= expected[lab] for lab in LABELS), (cyc, expected)
    assert all(cyc[lab] > expected[lab] for lab in ("embed", "dt_proj")), (cyc, expected)


@pytest.mark.skipif(not os.environ.get("QSIM_ENGINE_WHOLE"), reason="the whole model takes 10-30 min a token in the "
                    "Python simulator; QSIM_ENGINE_WHOLE=1 runs it")
def test_engine_whole_model(model):
    """Every layer, QSIM_ENGINE_TOKENS tokens (default 2)."""
    tokens = TOKENS[: int(os.environ.get("QSIM_ENGINE_TOKENS", "2"))]
    n_layer = int(os.environ.get("QSIM_ENGINE_LAYERS", str(model[0].cfg.n_layer)))
    decode_and_compare(model, tokens, n_layer)
