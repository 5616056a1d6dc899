"""Decode-engine table look-up and residual-add units, and the run-time constant interface of the engine's units.

Constant loading (the convention of every engine unit: TableUnit, ResidualUnit, rtl.conv_unit.ConvUnit,
rtl.rmsnorm_unit.RMSNormUnit). A unit is built once per model configuration; every per-layer constant reaches
it at run time through its `cfg` stream, one constant element per beat, payload CFG:

  kind   what the beat writes (Kind below)
  addr   which element: a vector's index k (g, b, a table's entry q + 128); a 2-D constant's element
         (row d, column j) at addr = (j << index_bits) | d, index_bits = (rows - 1).bit_length();
         0 for a scalar
  value  the element, signed 64-bit (every per-layer constant of the image fits: eps_int < 2**62)

`cfg.ready` is always high: a load takes one cycle per beat (qsim.hw.units.*_cfg_beats). Beats may come in
any order; a constant keeps its value until written again, so a new layer overwrites the old one. Loading while
a vector is in flight is not allowed (the engine loads between tokens). `load_beats` of each unit lists the beats
of one layer's constants.

TableUnit: `lanes` int8 codes per beat in, table[q + 128] out (softplus_dt, SiLU(z), SiLU(conv) with the per-layer
table loaded at run time). ResidualUnit: r + out saturated to RESIDUAL_BITS (SPEC 7.5) with a running saturation
count (`sat`, cleared by `sat_clear`).

Both issue one beat per cycle into an output FIFO with credits (rtl.hadamard_unit's scheme): the issue stage
holds off when the FIFO could fill, so back-pressure never reaches the pipeline registers.
"""

from __future__ import annotations

from enum import IntEnum
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from qsim import spec
from qsim.hw.units import FIFO_LATENCY, RESIDUAL_STAGE, TABLE_ENTRIES, TABLE_STAGE
from rtl.ebr import RegisteredMemory
from rtl.pipeline import Pipeline, saturate, shape_range


class Kind(IntEnum):
    """What a cfg beat writes."""

    VEC = 0  # a per-channel vector: RMSNorm g, the conv bias b
    W = 1  # a 2-D constant: the conv weight w (d_inner x d_conv)
    M = 2  # the requantization multiplier
    S = 3  # the requantization shift
    EPS = 4  # RMSNorm eps_int
    TABLE = 5  # a 256-entry table: entry q + 128


CFG_VALUE_BITS = 64
CFG = data.StructLayout({"kind": unsigned(3), "addr": unsigned(16), "value": signed(CFG_VALUE_BITS)})


def cfg_signature():
    return stream.Signature(CFG)


def beat(kind: Kind, addr: int, value: int) -> dict:
    return {"kind": int(kind), "addr": int(addr), "value": int(value)}


def table_beats(table) -> list[dict]:
    if len(table) != TABLE_ENTRIES:
        raise ValueError(f"a table has {TABLE_ENTRIES} entries, got {len(table)}")
    return [beat(Kind.TABLE, q, v) for q, v in enumerate(table)]


def vector_write(m: Module, cfg, kind: Kind, mem: RegisteredMemory, lanes: int, shape, n: int):
    """`mem`'s write port (rows of `lanes` elements of `shape`, one granule each) taking cfg beats of `kind`,
    addr = index < n."""
    if mem.granularity != shape.width:
        raise ValueError(f"memory {mem.name}: granularity {mem.granularity}, elements of {shape.width} bits")
    w = mem.w
    lane_bits = (lanes - 1).bit_length()
    addr = cfg.payload.addr[:max((n - 1).bit_length(), 1)]
    hit = cfg.valid & (cfg.payload.kind == kind)
    m.d.comb += [w.addr.eq(addr >> lane_bits), w.data.eq(Cat(*[cfg.payload.value[:shape.width]] * lanes))]
    for j in range(lanes):
        m.d.comb += w.en[j].eq(hit & ((addr & (lanes - 1)) == j if lanes > 1 else 1))
    return w


def registered_cfg(m: Module, cfg) -> SimpleNamespace:
    """A cfg stream whose ready is always 1, registered on arrival: each beat acted on (written) a cycle after it
    transfers, so the sender's valid reaches one flip-flop here instead of the unit's write enables. (valid,
    payload) of the registered beat, for vector_write and scalar_reg; a unit keeps its tokens off while `valid`."""
    reg = SimpleNamespace(valid=Signal(name="cfg_v"), payload=Signal(cfg.payload.shape(), name="cfg_p"))
    m.d.sync += [reg.valid.eq(cfg.valid), reg.payload.eq(cfg.payload)]
    return reg


def scalar_reg(m: Module, cfg, kind: Kind, shape, name: str) -> Signal:
    reg = Signal(shape, name=name)
    with m.If(cfg.valid & (cfg.payload.kind == kind)):
        m.d.sync += reg.eq(cfg.payload.value)
    return reg


class OutFifo:
    """The output FIFO and its credits: `room` allows an issue whose result is written `stage` cycles later."""

    def __init__(self, m: Module, o, width: int, depth: int):
        m.submodules.fifo = self.fifo = SyncFIFOBuffered(width=width, depth=depth)
        self.pending = Signal(range(depth + 1))
        # room is registered from the next count (the same cycles as `pending < depth`): a unit's i.ready is then a
        # flip-flop, so the sender's output logic does not wait on this unit's compare
        self.room, self.depth = Signal(init=1), depth
        self.m, self.o = m, o
        m.d.comb += [o.valid.eq(self.fifo.r_rdy), o.payload.eq(self.fifo.r_data), self.fifo.r_en.eq(o.ready)]

    def connect(self, issue, w_en, w_data) -> None:
        nxt = Signal.like(self.pending, name="pending_next")
        self.m.d.comb += [nxt.eq(self.pending + issue - (self.o.valid & self.o.ready)),
                          self.fifo.w_en.eq(w_en), self.fifo.w_data.eq(w_data)]
        self.m.d.sync += [self.pending.eq(nxt), self.room.eq(nxt < self.depth)]


def fifo_depth(stage: int) -> int:
    """Enough credits to issue every cycle while the results drain at one per cycle."""
    return max(4, stage + FIFO_LATENCY + 2)


def halves(v, s):
    """v / 2**(s-1) rounded down, for a run-time shift s >= 0: (2v) >> s, arithmetic. A barrel shift alone, so a
    requantization registers it and rounds and saturates in the next stage (round_saturate_halves) instead of
    chaining a wide rounding add into the shifter in one cycle."""
    return Cat(Const(0, 1), v).as_signed() >> s if v.shape().signed else Cat(Const(0, 1), v) >> s


def round_saturate_halves(t, shape):
    """saturate(rshift_round(v, s), shape) from t = halves(v, s): rshift_round(v, s) = (t + 1) >> 1 exactly (s = 0
    included: t = 2v). The range checks compare t itself ((t + 1) >> 1 > hi iff t >= 2 hi + 1, < lo iff
    t < 2 lo - 1), beside the rounding add, which spans only the width + 1 low bits it needs."""
    return _saturated(shape, *_round_parts(t, shape))


def round_saturate_split(pl, t, shape, stage: int, name: str):
    """round_saturate_halves(t, shape) over two cycles: its range checks and rounding add registered at `stage`
    (t taken at stage - 1), and their selection, an expression of those registers to register at stage + 1."""
    t = pl.at(t, stage - 1)
    over, under, low = (pl.reg(v, stage, f"{name}_{n}") for v, n in zip(_round_parts(t, shape), ("over", "under", "low")))
    return _saturated(shape, over, under, low)


def _round_parts(t, shape):
    """(t >= 2 hi + 1, t < 2 lo - 1, the low width bits of (t + 1) >> 1) for shape's range [lo, hi]."""
    w = shape.width
    lo, hi = shape_range(shape)
    return compare_const(t, 2 * hi + 1, w + 1, ge=True), compare_const(t, 2 * lo - 1, w + 1, ge=False), \
        (t[:w + 1] + 1)[1:w + 1]


def compare_const(t, c: int, k: int, *, ge: bool):
    """t >= c (ge) or t < c for a wide t and a constant c = hc * 2**k + lc with hc in {0, -1}, 0 <= lc < 2**k: t's
    bits above k compared with hc by AND/OR trees, only the k low bits by a carry chain (a 60-bit compare is a
    30-cell carry chain: the RMSNorm's routed critical path ran through one)."""
    hc, lc = c >> k, c & ((1 << k) - 1)
    if len(t) <= k + 1 or hc not in (0, -1):
        return t >= c if ge else t < c
    high, low = t[k:], t[:k]
    sign = t[-1] if t.shape().signed else Const(0, 1)
    if hc == 0:  # high > 0: non-negative and not zero; high == 0
        above, equal = ~sign & high.any(), ~high.any()
    else:  # high > -1: non-negative; high == -1
        above, equal = ~sign, high.all() if t.shape().signed else Const(0, 1)
    below = ~above & ~equal
    return above | (equal & (low >= lc)) if ge else below | (equal & (low < lc))


def _saturated(shape, over, under, low):
    lo, hi = shape_range(shape)
    return Mux(over, Const(hi, shape), Mux(under, Const(lo, shape), low.as_signed() if shape.signed else low))


class TableUnit(wiring.Component):
    """int8 codes in, a run-time loaded 256-entry table's values out, `lanes` per beat (SPEC 7.4)."""

    def __init__(self, *, lanes: int, out_shape, primitive: bool = False):
        self.lanes, self.out_shape, self.primitive = lanes, out_shape, primitive
        super().__init__({
            "cfg": In(cfg_signature()),
            "i": In(stream.Signature(data.ArrayLayout(signed(8), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(out_shape, lanes))),
        })

    @staticmethod
    def load_beats(table) -> list[dict]:
        return table_beats(table)

    def elaborate(self, platform):
        m = Module()
        L, W = self.lanes, self.out_shape.width
        # a table per lane, each read word registered (rtl.ebr: for synthesis, the block RAM's own output register),
        # so the word's way to the output FIFO starts at a flip-flop (TABLE_STAGE 2)
        tabs = [RegisteredMemory(width=W, depth=TABLE_ENTRIES, name=f"tab{j}", primitive=self.primitive)
                for j in range(L)]
        write = self.cfg.valid & (self.cfg.payload.kind == Kind.TABLE)
        for tab in tabs:
            tab.build(m)
            tab.write(m, self.cfg.payload.addr[:8], self.cfg.payload.value[:W], write)
        m.d.comb += self.cfg.ready.eq(1)
        out = OutFifo(m, self.o, W * L, fifo_depth(TABLE_STAGE))
        issue = Signal()
        m.d.comb += [self.i.ready.eq(out.room), issue.eq(self.i.valid & out.room)]  # ready without valid
        # code q reads entry q + 128: flip the sign bit
        words = [tab.read(m, Cat(self.i.payload[j][:7], ~self.i.payload[j][7])) for j, tab in enumerate(tabs)]
        v = [Signal(name=f"v{i}") for i in range(1, TABLE_STAGE + 1)]
        m.d.sync += [v[0].eq(issue)] + [b.eq(a) for a, b in zip(v, v[1:])]
        out.connect(issue, v[-1], Cat(*words))
        return m


RESIDUAL = signed(spec.RESIDUAL_BITS)


class ResidualUnit(wiring.Component):
    """r + out saturated to the residual width, `lanes` per beat (SPEC 7.5); `sat` counts clamped values."""

    def __init__(self, *, lanes: int):
        self.lanes = lanes
        arr = data.ArrayLayout(RESIDUAL, lanes)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"r": arr, "d": arr}))),
            "o": Out(stream.Signature(arr)),
            "sat": Out(unsigned(32)),
            "sat_clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        L, B = self.lanes, spec.RESIDUAL_BITS
        pl = Pipeline(m)
        out = OutFifo(m, self.o, B * L, fifo_depth(RESIDUAL_STAGE))
        issue = Signal()
        m.d.comb += [self.i.ready.eq(out.room), issue.eq(self.i.valid & out.room)]  # ready without valid
        # stage 1: the operands registered (they come from block RAM, whose clock-to-out leaves no room for an add)
        v1 = pl.reg(issue, 1, "v1")
        sums = [pl.reg(self.i.payload.r[j], 1, f"r{j}") + pl.reg(self.i.payload.d[j], 1, f"d{j}") for j in range(L)]
        ys = [pl.reg(saturate(s, RESIDUAL), RESIDUAL_STAGE, f"y{j}") for j, s in enumerate(sums)]
        clamped = [pl.reg(v1 & ((s > (1 << (B - 1)) - 1) | (s < -(1 << (B - 1)))), RESIDUAL_STAGE, f"c{j}")
                   for j, s in enumerate(sums)]
        v = pl.reg(v1, RESIDUAL_STAGE, "v")
        count = Signal(unsigned(32))
        m.d.sync += count.eq(count + sum(clamped))
        with m.If(self.sat_clear):
            m.d.sync += count.eq(0)
        m.d.comb += self.sat.eq(count)
        out.connect(issue, v, Cat(*ys))
        return m
