"""Selective-scan unit: qsim.fixed.ops.scan in hardware, bit for bit.

Streams, per token, one `bc` beat (B, C and a `start` flag that begins a new
sequence from h = 0) and `d_inner` channel beats (x, dt, SiLU(z)); emits one
int16 y*SiLU(z) per channel. The state h (d_inner x d_state, `state_bits`
wide) stays in on-chip memory across tokens; `lanes` state elements are
updated per cycle, so a channel takes d_state/lanes cycles and a token
`cycles_per_token` (qsim.hw.units.scan_unit_cycles is the contract).

The layer's constants are elaboration parameters, one build per layer, which
keeps the datapath free of configuration muxes: frac, m_h, s_h are constants;
a_q, Dq and the per-channel output multipliers m_y, s_y are ROMs. Channel d's
m_y is stored as m_y[d] << (S - s_y[d]) with S = max s_y, so one constant
shift S serves every channel: rshift_round(v * 2**k, s + k) == rshift_round(v, s)
exactly (the rounding half scales with the value).

Pipeline (stage = cycles after issue; every multiply is `Pipeline.mul`, 3 cycles unless retimed):
   0 issue: read state, a_q, Dq           1 dt*x (no memory data in it)
   2 memory data registered; e = dt*a, Dq*x                      4 (dt*x)*B
   5 exp-table index                      6 2**-frac by table     7-8 decay = table >> int, rounded
   7 dBx*m_h (retimed: 4 cycles)          8 decay*h              12 both rounded
  13 h = sat(decay*h + dBx): written back; C*h
  17-18 sum over lanes                   18 accumulate chunks (+ D*x + rounding half)
  19 (acc >> scan_acc_shift) *SiLU(z)   20 m_y ROM read   22 *m_y[d]   26 rounded (>> S), saturated to
     int16, into the output FIFO
No stall inside: the issue stage holds off when the output FIFO could fill
(credits), so back-pressure never reaches the pipeline registers.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qsim import spec
from rtl.pipeline import (
    MUL_LATENCY,
    Pipeline,
    bits_for,
    requantize,
    rshift_round,
    saturate,
)

# dt and the gate SiLU(z) take their widths from the spec; the products they enter (dt*a, dt*x, (dt*x)*B*m_h,
# acc*sz*m_y) take theirs from their operands (Pipeline.mul), so they stay exact for whatever widths the spec sets
CHANNEL = data.StructLayout({"x": signed(8), "dt": unsigned(spec.DT_BITS), "sz": signed(spec.GATE_BITS)})
MEM = 2  # memory data registered
EXP = MEM + MUL_LATENCY  # exp-table index
DTXB = 1 + MUL_LATENCY  # (dt*x)*B
DECAY = EXP + MUL_LATENCY  # 2**-frac by table (EXP + 1), rounded >> int (EXP + 3); decay*h
ROUND = DECAY + MUL_LATENCY + 1  # both products rounded
WRITE_STAGE = ROUND + 1  # h = sat(sum) written back; C*h
ACC = WRITE_STAGE + MUL_LATENCY + 2  # two adder-tree stages (4 lanes each: up to 16 lanes), then accumulate
FIFO_STAGE = ACC + 1 + 2 * MUL_LATENCY + 1  # gated, multiplied, rounded: into the output FIFO
FIFO_LATENCY = 2  # SyncFIFOBuffered: write to readable
DEC_BITS = spec.DECAY_BITS


def bc_layout(d_state: int) -> data.StructLayout:
    return data.StructLayout({"b": data.ArrayLayout(signed(8), d_state), "c": data.ArrayLayout(signed(8), d_state),
                              "start": 1})


class ScanUnit(wiring.Component):
    def __init__(self, *, lanes: int, a_q, Dq, frac: int, m_h: int, s_h: int, m_y, s_y,
                 state_bits: int, exp_tab, fifo_depth: int = 32):
        a_q, Dq, m_y, s_y, exp_tab = (np.asarray(v, dtype=np.int64) for v in (a_q, Dq, m_y, s_y, exp_tab))
        d_inner, d_state = a_q.shape
        if lanes < 1 or lanes > 16 or d_state % lanes:
            raise ValueError(f"scan unit: lanes {lanes} must divide d_state {d_state} and be at most 16")
        if not 9 <= frac <= 30 or a_q.min() < 0 or a_q.max() >= 1 << 16 or \
                not Dq.shape == m_y.shape == s_y.shape == (d_inner,) or m_y.min() < 1 or s_y.min() < 0:
            raise ValueError("scan unit: constants outside the spec (frac in [9, 30], a_q uint16, Dq, m_y >= 1 "
                             "and s_y >= 0 per channel)")
        self.lanes, self.d_inner, self.d_state, self.state_bits = lanes, d_inner, d_state, state_bits
        self.chunks = d_state // lanes
        self.a_q, self.Dq, self.exp_tab = a_q, Dq, exp_tab
        self.frac, self.m_h, self.s_h, self.m_y, self.s_y = frac, m_h, s_h, m_y, s_y
        self.fifo_depth = fifo_depth
        super().__init__({
            "bc": In(stream.Signature(bc_layout(d_state))),
            "i": In(stream.Signature(CHANNEL)),
            "o": Out(stream.Signature(signed(spec.GATED_BITS))),
        })

    @classmethod
    def from_golden(cls, manifest: dict, arrays: dict, lanes: int, channels: int | None = None, **kw):
        """A unit built with a golden scan set's constants (optionally its first `channels` channels)."""
        sel = slice(0, channels)
        c = manifest["constants"]
        return cls(lanes=lanes, a_q=arrays["a_q"][sel], Dq=arrays["Dq"][sel], m_y=arrays["m_y"][sel],
                   s_y=arrays["s_y"][sel], exp_tab=arrays["exp_tab"], frac=c["frac"], m_h=c["m_h"], s_h=c["s_h"],
                   state_bits=c["state_bits"], **kw)

    # ---- cycle contract (qsim.hw.units)
    @property
    def latency(self) -> int:
        """Issue of a channel's last chunk to its y at the output: SCAN_PIPELINE_LATENCY."""
        return FIFO_STAGE + FIFO_LATENCY

    @property
    def recurrence_latency(self) -> int:
        """Cycles before a state element can be read again after being read: SCAN_RECURRENCE_LATENCY."""
        return WRITE_STAGE + 1

    @property
    def cycles_per_token(self) -> int:
        return max(self.d_inner * self.chunks, self.recurrence_latency)

    def cycles(self, tokens: int) -> int:
        return tokens * self.cycles_per_token + self.latency if tokens else 0

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m)
        L, K, D, W = self.lanes, self.chunks, self.d_inner, self.state_bits
        per_token, work = self.cycles_per_token, D * K
        pad = per_token - work  # idle slots opening a token, so h[d, n] is written before it is read again

        m.submodules.fifo = fifo = SyncFIFOBuffered(width=spec.GATED_BITS, depth=self.fifo_depth)
        # the state: lanes elements per word at channel*chunks + chunk (kept as an attribute for tests to peek at)
        m.submodules.state = state = self.state = Memory(shape=unsigned(W * L), depth=work, init=[])
        m.submodules.aq = aq = Memory(shape=unsigned(16 * L), depth=work, init=[
            sum(int(v) << (16 * j) for j, v in enumerate(self.a_q[d, c * L:(c + 1) * L]))
            for d in range(D) for c in range(K)])
        dq_shape = bits_for(int(self.Dq.min()), int(self.Dq.max()))
        m.submodules.dq = dq = Memory(shape=dq_shape, depth=D, init=[int(v) for v in self.Dq])
        m.submodules.exp = exp = Memory(shape=unsigned(16), depth=256, init=[int(v) for v in self.exp_tab])
        st_r, st_w, aq_r, dq_r = state.read_port(), state.write_port(), aq.read_port(), dq.read_port()

        # ---- stage 0: token slots, channel/chunk counters, credits (decisions read registered flags only)
        slot, k, d, addr = Signal(range(per_token)), Signal(range(K)), Signal(range(D)), Signal(range(work))
        first_slot, in_pad = Signal(init=1), Signal(init=pad > 0)  # == (slot == 0), (slot < pad)
        credit = Signal(init=1)  # == (pending < fifo_depth)
        hold = Signal(bc_layout(self.d_state))
        pending = Signal(range(self.fifo_depth + 1))
        bc = bc_layout(self.d_state)(Mux(first_slot, self.bc.payload.as_value(), hold.as_value()))  # this token's
        step = Mux(in_pad, 1, self.i.valid & credit) & (~first_slot | self.bc.valid)
        issue, done_issue = Signal(), Signal()
        m.d.comb += [issue.eq(step & ~in_pad), done_issue.eq(issue & (k == K - 1)),
                     self.bc.ready.eq(first_slot & step), self.i.ready.eq(done_issue)]
        with m.If(first_slot & self.bc.valid):  # the payload holds until it transfers: capturing early is harmless
            m.d.sync += hold.eq(self.bc.payload)
        slot_next = Mux(step, Mux(slot == per_token - 1, 0, slot + 1), slot)
        pending_next = pending + done_issue - (self.o.valid & self.o.ready)
        m.d.sync += [slot.eq(slot_next), first_slot.eq(slot_next == 0), in_pad.eq(slot_next < pad),
                     pending.eq(pending_next), credit.eq(pending_next < self.fifo_depth)]
        with m.If(issue):
            m.d.sync += [k.eq(Mux(k == K - 1, 0, k + 1)), addr.eq(Mux(addr == work - 1, 0, addr + 1))]
            with m.If(k == K - 1):
                m.d.sync += d.eq(Mux(d == D - 1, 0, d + 1))
        m.d.comb += [st_r.addr.eq(addr), aq_r.addr.eq(addr), dq_r.addr.eq(d)]
        p.put(addr, 0)
        p.put(d, 0)

        ch = self.i.payload
        v = p.reg(issue, 1, "v")
        first, last = p.reg(k == 0, 1, "first"), p.reg(k == K - 1, 1, "last")
        start, x, dt, sz = (p.reg(val, 1, n) for val, n in ((bc.start, "start"), (ch.x, "x"), (ch.dt, "dt"),
                                                                 (ch.sz, "sz")))
        chunk = lambda arr, j: Array(arr[c * L + j] for c in range(K))[k] if K > 1 else arr[j]  # noqa: E731
        B = [p.reg(chunk(bc.b, j), 1, f"b{j}") for j in range(L)]
        C = [p.reg(chunk(bc.c, j), 1, f"c{j}") for j in range(L)]

        # ---- memory data, registered (an ECP5 block RAM's clock-to-out leaves no time for logic after it)
        dqv = p.reg(dq_r.data, MEM, "dq", dq_shape)
        dtx, dqx = p.mul(dt, x, 1, "dtx"), p.mul(dqv, x, MEM, "dqx")  # dt*x from stage 1: not memory data
        hn = []
        for j in range(L):
            h_mem = p.reg(st_r.data[j * W:(j + 1) * W].as_signed(), MEM, f"hm{j}")
            h = p.reg(Mux(p.at(start, MEM), 0, h_mem), MEM + 1, f"h{j}")  # a new sequence starts from 0
            a = p.reg(aq_r.data[16 * j:16 * (j + 1)], MEM, f"a{j}")
            e = p.mul(dt, a, MEM, f"e{j}")
            # exponent in 1/256 units: its fraction indexes the 2**-f table, its integer part shifts
            er = (e + (1 << (self.frac - 9))) >> (self.frac - 8)
            rp = exp.read_port()
            m.d.comb += rp.addr.eq(er[:8])
            tab = p.put(Signal(unsigned(16), name=f"tab{j}"), EXP + 1)
            m.d.comb += tab.eq(rp.data)
            ish = p.reg(Mux(er[8:] > 17, 17, er[8:]), EXP + 1, f"ish{j}", unsigned(5))  # >= 17 zeroes any entry
            half = Array(Const(0 if s == 0 else 1 << (s - 1), 17) for s in range(18))[ish]
            rounded = p.reg(tab + half, EXP + 2, f"rnd{j}", unsigned(17))  # add, then shift: a cycle each
            decay = p.reg(rounded >> p.at(ish, EXP + 2), DECAY, f"decay{j}", unsigned(DEC_BITS + 1))
            # dBx does not depend on h: the cycle that dt*x gains by starting at stage 1 goes to retiming dBx*m_h
            dbx = p.mul(p.mul(dtx, B[j], DTXB, f"dtxb{j}"), self.m_h, DTXB + MUL_LATENCY, f"dbx{j}", retime=True)
            dh = p.mul(decay, h, DECAY, f"dh{j}")
            dh_r = p.reg(rshift_round(dh, DEC_BITS), ROUND, f"dhr{j}", signed(W + 2))
            dbx_r = p.reg(rshift_round(dbx, self.s_h), ROUND, f"dbxr{j}")
            hn.append(p.reg(saturate(dh_r + dbx_r, signed(W)), WRITE_STAGE, f"hn{j}"))
        m.d.comb += [st_w.addr.eq(p.at(addr, WRITE_STAGE)), st_w.data.eq(Cat(hn)),
                     st_w.en.eq(p.at(v, WRITE_STAGE))]

        # ---- C.h over lanes and chunks, plus D*x, narrowed by spec.scan_acc_shift (round half up). The half
        # rides in with D*x, so the shift is a bit slice: no adder after the accumulator, no extra cycle.
        terms = [p.mul(C[j], hn[j], WRITE_STAGE, f"ch{j}") for j in range(L)]
        for s in range(WRITE_STAGE + MUL_LATENCY, ACC):
            terms = [p.reg(sum(terms[i:i + 4]), s + 1, f"sum{s}_{i}") for i in range(0, len(terms), 4)]
        shift = spec.scan_acc_shift(W)
        half = 1 << (shift - 1) if shift else 0
        bound = self.d_state * 128 * (1 << (W - 1)) + int(np.abs(self.Dq).max()) * 128 + half
        dqx_half = p.reg(dqx + half, MEM + MUL_LATENCY + 1, "dqxh")
        acc = p.put(Signal(bits_for(-bound, bound), name="acc"), ACC + 1)
        v_acc, first_acc, dqx_acc = p.at(v, ACC), p.at(first, ACC), p.at(dqx_half, ACC)  # (lines outside the If)
        with m.If(v_acc):
            m.d.sync += acc.eq(Mux(first_acc, dqx_acc, acc) + terms[0])
        done = p.reg(v_acc & p.at(last, ACC), ACC + 1, "done")
        narrow = p.put(Signal(bits_for(-bound >> shift, bound >> shift), name="acc_narrow"), ACC + 1)
        m.d.comb += narrow.eq(acc[shift:].as_signed())  # sized from the bound: what it drops above is sign

        # ---- gate, times the channel's m_y (pre-shifted to the common shift S, read late: the channel index
        # rides down the pipeline instead of the wider multiplier), requantize, saturate
        s_out = int(self.s_y.max())
        my_init = [int(v) << (s_out - int(s)) for v, s in zip(self.m_y, self.s_y)]
        m.submodules.my = my = Memory(shape=unsigned(max(my_init).bit_length()), depth=D, init=my_init)
        my_r, gm = my.read_port(), ACC + 1 + MUL_LATENCY
        m.d.comb += my_r.addr.eq(p.at(d, gm - MEM))
        g = p.mul(p.mul(narrow, sz, ACC + 1, "gate"), p.reg(my_r.data, gm, "my"), gm, "gm")
        y = p.reg(requantize(g, s_out, signed(spec.GATED_BITS)), FIFO_STAGE, "y")
        m.d.comb += [fifo.w_en.eq(p.at(done, FIFO_STAGE)), fifo.w_data.eq(y),
                     self.o.valid.eq(fifo.r_rdy), self.o.payload.eq(fifo.r_data), fifo.r_en.eq(self.o.ready)]
        return m
