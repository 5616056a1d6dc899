"""RMSNorm unit: qsim.fixed.ops.rmsnorm (SPEC 7.1) of one residual row to int8, bit for bit.

Streams d_model / lanes beats of `lanes` residual values (RESIDUAL_BITS, SPEC 4.1) in and as many beats of
`lanes` int8 out. Two passes over an on-chip row buffer:

  pass 1  each beat is written to the buffer and its squares summed: ss = sum r^2 (pipelined, r*r 3 cycles, lane
          sum, accumulated)
  gap     ss + eps_int, its bit length, the even shift sh and the mantissa in [256, 1024), the rsqrt table entry
          t and shift = 4 + sh / 2, latched (qsim.hw.units.RMSNORM_GAP cycles after the last input beat)
  pass 2  the buffer is read back: normed = rshift_round(r * t, shift) (Q15, |normed| <= 2^15 + 2^7, SPEC 4.1),
          u = sat8(rshift_round(normed * g * m, s)) into the output FIFO

The rsqrt table is global and fixed by the spec (SPEC 6.1: "MUST equal these integers", qsim.tables.rsqrt_table):
it is a ROM. Run-time constants (rtl.table_unit's cfg convention): Kind.VEC g[k] (int16), Kind.EPS eps_int,
Kind.M m, Kind.S s: a layer's norm and the final norm load into the same build. Elaboration: d_model, lanes.
Input is accepted only in pass 1; the next row's pass 1 starts after the last pass-2 issue.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qsim import spec, tables
from qsim.hw.units import RMSNORM_GAP, RMSNORM_STAGE
from rtl.ebr import RegisteredMemory, RegisteredRom
from rtl.pipeline import MUL_LATENCY, Pipeline
from rtl.table_unit import (
    Kind,
    OutFifo,
    beat,
    cfg_signature,
    fifo_depth,
    halves,
    round_saturate_halves,
    scalar_reg,
    vector_write,
)

RESIDUAL = signed(spec.RESIDUAL_BITS)
G_SHAPE = signed(16)
NORMED = signed(spec.NORM_FRAC_BITS + 4)  # |normed| <= 2^15 + 2^7 (SPEC 4.1)
SS_BITS = 63  # 1 <= ss < 2^62 (SPEC 7.1)
SQ_STAGE = MUL_LATENCY  # r*r of an issue at stage 0
SUM_STAGE = SQ_STAGE + 1  # the lanes' squares summed; accumulated into ss the cycle after


class RMSNormUnit(wiring.Component):
    def __init__(self, *, d_model: int, lanes: int, primitive: bool = False):
        if lanes < 1 or lanes & (lanes - 1) or d_model % lanes:
            raise ValueError(f"rmsnorm unit: lanes {lanes} must be a power of two dividing d_model {d_model}")
        self.d_model, self.lanes, self.rows, self.primitive = d_model, lanes, d_model // lanes, primitive
        super().__init__({
            "cfg": In(cfg_signature()),
            "i": In(stream.Signature(data.ArrayLayout(RESIDUAL, lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
        })

    def load_beats(self, g, eps_int: int, m: int, s: int) -> list[dict]:
        if len(g) != self.d_model:
            raise ValueError(f"rmsnorm unit: g has {len(g)} entries, d_model is {self.d_model}")
        return [beat(Kind.VEC, k, v) for k, v in enumerate(g)] + [
            beat(Kind.EPS, 0, eps_int), beat(Kind.M, 0, m), beat(Kind.S, 0, s)]

    def elaborate(self, platform):
        m = Module()
        pl = Pipeline(m, primitive=self.primitive)
        L, R, cfg = self.lanes, self.rows, self.cfg
        m.d.comb += cfg.ready.eq(1)

        # ---- constants
        # g: read at the pass-2 row, its word registered in its block (rtl.ebr: for synthesis, the DP16KD's output
        # register), taken at stage 2. Written by cfg beats only, between vectors
        gmem = RegisteredMemory(width=16 * L, depth=R, name="g", primitive=self.primitive, granularity=16)
        gmem.build(m)
        vector_write(m, cfg, Kind.VEC, gmem, L, G_SHAPE, self.d_model)
        eps = scalar_reg(m, cfg, Kind.EPS, unsigned(SS_BITS), "eps")
        mult = scalar_reg(m, cfg, Kind.M, signed(32), "m")
        shift_s = scalar_reg(m, cfg, Kind.S, unsigned(6), "s")
        # the rsqrt table (rtl.ebr: for synthesis its word leaves the block's output register, not a 5.6 ns read)
        rom = RegisteredRom(width=16, init=[int(v) for v in tables.rsqrt_table()], name="rsqrt", ports=1,
                            primitive=self.primitive)
        rom.build(m)

        # ---- sequencer: pass 1 (input), gap, pass 2 (output)
        phase_in, phase_gap, phase_out = Signal(init=1), Signal(), Signal()
        t, gap = Signal(range(R)), Signal(range(RMSNORM_GAP))
        out = OutFifo(m, self.o, 8 * L, fifo_depth(RMSNORM_STAGE))
        issue_in, issue_out = Signal(), Signal()
        m.d.comb += [issue_in.eq(phase_in & self.i.valid), self.i.ready.eq(phase_in),
                     issue_out.eq(phase_out & out.room)]
        last = t == R - 1
        gap_last = phase_gap & (gap == RMSNORM_GAP - 2)
        with m.If(issue_in | issue_out):
            m.d.sync += t.eq(Mux(last, 0, t + 1))
        with m.If(issue_in & last):
            m.d.sync += [phase_in.eq(0), phase_gap.eq(1), gap.eq(0)]
        with m.If(phase_gap):
            m.d.sync += gap.eq(gap + 1)
        with m.If(gap_last):
            m.d.sync += [phase_gap.eq(0), phase_out.eq(1)]
        with m.If(issue_out & last):
            m.d.sync += [phase_out.eq(0), phase_in.eq(1)]

        m.submodules.buf = buf = Memory(shape=unsigned(spec.RESIDUAL_BITS * L), depth=R, init=[])
        bw, br = buf.write_port(), buf.read_port()
        m.d.comb += [bw.addr.eq(t), bw.data.eq(self.i.payload.as_value()), bw.en.eq(issue_in), br.addr.eq(t)]
        g_q = pl.put(gmem.read(m, t), 2)

        # ---- pass 1: ss = eps + sum r^2
        r0 = [pl.put(Signal(RESIDUAL, name=f"r0_{j}"), 0) for j in range(L)]
        m.d.comb += [r0[j].eq(self.i.payload[j]) for j in range(L)]
        squares = [pl.mul(r, r, 0, f"sq{j}") for j, r in enumerate(r0)]
        lane_sum = pl.reg(sum(squares), SUM_STAGE, "lane_sum", unsigned(SS_BITS))
        acc = Signal(unsigned(SS_BITS))
        with m.If(pl.at(pl.reg(issue_in, 1, "v_in"), SUM_STAGE)):
            m.d.sync += acc.eq(acc + lane_sum)

        # ---- gap: ss's bit length, even shift, mantissa, table entry (recomputed every cycle, latched at its end).
        # ss is final SUM_STAGE + 2 cycles after the last input beat; the ROM's word of the finished ss is in its
        # output register RMSNORM_GAP cycles after it (the first pass-2 issue's stage 1 takes it a cycle later),
        # held there through pass 2 (the ROM reads only in the gap). Between them: the highest set bit of each
        # byte of ss and the shift (ss's bit length from them, a log-depth priority encoder in two registered
        # halves), the mantissa (ss shifted by it, registered), the ROM's two read steps: a short path each.
        assert SUM_STAGE + 2 + 5 <= RMSNORM_GAP  # ss, byte tops, shift, mantissa, the ROM's two steps: a register each
        ss = Signal(unsigned(SS_BITS))
        m.d.sync += ss.eq(acc + eps)
        byte_tops = []
        for g in range(0, SS_BITS, 8):
            nz_g, top_g = highest_bit(ss[g:g + 8])
            regs = Signal(name=f"ss_nz{g // 8}"), Signal(len(top_g), name=f"ss_top{g // 8}")
            m.d.sync += [regs[0].eq(nz_g), regs[1].eq(top_g)]
            byte_tops.append(regs)
        nz, top = highest_bit(None, groups=byte_tops)
        # bit_length bl = top + 1; the even shift sh = bl - 10 rounded up to even = (top & ~1) - 8, and ss's right
        # shift after << 8 is sh + 8 = top & ~1: no adder behind the priority encoder (ss == 0: sh = -10)
        even = Cat(Const(0, 1), top[1:])
        sh_a, amt = Signal(signed(8)), Signal(unsigned(7))  # the even shift, and ss's right shift after << 8
        m.d.sync += [sh_a.eq(Mux(nz, even - 8, -10)), amt.eq(Mux(nz, even, (-2) & 0x7F))]
        sh = Signal(signed(8))  # bit_length - 10, rounded up to even: [-8, 52]
        mant = Signal(unsigned(10))
        m.d.sync += [sh.eq(sh_a), mant.eq(((ss << 8) >> amt)[:10])]
        t_r, norm_shift = rom.read(m, 0, mant - 256, phase_gap), Signal(unsigned(5))
        with m.If(gap_last):  # the finished ss's shift; acc cleared for the next row
            m.d.sync += [norm_shift.eq(4 + (sh >> 1)), acc.eq(0)]

        # ---- pass 2: normed = rshift_round(r * t, shift); u = sat8(rshift_round(normed * g * m, s))
        v1 = pl.reg(issue_out, 1, "v_out")
        pl.put(t_r, 1)
        ys = []
        for j in range(L):
            r1 = pl.put(Signal(RESIDUAL, name=f"r1_{j}"), 1)
            g2 = pl.put(Signal(G_SHAPE, name=f"g2_{j}"), 2)
            m.d.comb += [r1.eq(br.data[spec.RESIDUAL_BITS * j:spec.RESIDUAL_BITS * (j + 1)].as_signed()),
                         g2.eq(g_q[16 * j:16 * (j + 1)].as_signed())]
            rt = pl.mul(r1, t_r, 1, f"rt{j}")
            # rshift_round(rt, shift) = (halves(rt, shift) + 1) >> 1: the barrel shift, then the rounding add
            rth = pl.reg(halves(rt, norm_shift), 2 + MUL_LATENCY, f"rth{j}")
            normed = pl.reg((rth + 1) >> 1, 3 + MUL_LATENCY, f"normed{j}", NORMED)
            ng = pl.mul(normed, g2, 3 + MUL_LATENCY, f"ng{j}")
            if j == 0:
                pl.put(mult, 3 + 2 * MUL_LATENCY)
            ngm = pl.mul(ng, mult, 3 + 2 * MUL_LATENCY, f"ngm{j}")
            q = pl.reg(halves(ngm, shift_s), 4 + 3 * MUL_LATENCY, f"q{j}")
            ys.append(pl.reg(round_saturate_halves(q, signed(8)), RMSNORM_STAGE, f"u{j}"))
        assert 5 + 3 * MUL_LATENCY == RMSNORM_STAGE
        out.connect(issue_out, pl.at(v1, RMSNORM_STAGE), Cat(*ys))
        return m


def highest_bit(v, groups=None):
    """(v != 0, index of v's highest set bit): a balanced tree of 2:1 muxes over halves of v zero-extended to a
    power-of-two width, log2(width) deep (a chain of Ifs over the bits makes a mux chain as long as v is wide).
    groups: the tree's level of that many groups of bits instead, as (any set, index within the group) pairs in
    order (for a caller that registers that level: highest_bit of each group of v)."""
    level = groups
    if level is None:
        width = 1 << (len(v) - 1).bit_length()
        bits = Cat(v, Const(0, width - len(v)))
        level = [(bits[b], Cat()) for b in range(width)]  # (any set, index within the group), groups of 1
    while len(level) > 1:
        level = [(lo[0] | hi[0], Mux(hi[0], Cat(hi[1], 1), Cat(lo[1], 0))) for lo, hi in zip(level[::2], level[1::2])]
    return level[0]
