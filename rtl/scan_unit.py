"""Selective-scan unit: qsim.fixed.ops.scan in hardware, bit for bit.

Streams, per token, one `bc` beat (B, C and a `start` flag that begins a new
sequence from h = 0) and `d_inner` channel beats (x, dt, SiLU(z)); emits one
int16 y*SiLU(z) per channel. The state h (d_inner x d_state, `state_bits`
wide) stays in on-chip memory across tokens; `lanes` state elements are
updated per cycle, so a channel takes d_state/lanes cycles and a token
`cycles_per_token` (qsim.hw.units.scan_unit_cycles is the contract).

One build serves every layer of a configuration (lanes, d_inner, d_state,
state_bits): a layer's constants are loaded at run time through the `cfg`
stream, one (addr, data) beat a cycle (`config_beats` makes them, checked
against the spec's bounds; `golden_config` from a golden scan set). The top
two address bits select what a beat writes (the low bits are its index):

  0  a_q[d, n] (uint16) into the a_q RAM: index (d*d_state/lanes + n//lanes) << lane_bits | n % lanes
     (= d*d_state + n when lanes is a power of two); one lane of a word, by byte-enable
  1  Dq[d] (two's complement, |Dq| <= spec.scan_dq_limit(d_state, state_bits)) into the Dq RAM
  2  m_y[d] | s_y[d] << 23 (1 <= m_y < 2**23, 0 <= s_y <= 62: spec 5.1 with |acc * sz| <= 2**39) into a RAM
  3  scalars: index 0 frac (in [9, 30]), 1 m_h (in [1, 2**31)), 2 s_h (in [0, 62]), into registers

A whole layer is d_inner*d_state + 2*d_inner + 3 beats, so `load_cycles()`
cycles at one beat a cycle (9219 for d_inner 512, d_state 16). `cfg` is ready
only between tokens once the pipeline has drained (FIFO_STAGE cycles after the
last issue; y already in the output FIFO may still be read); a valid cfg beat
holds the next token off, so a load never meets a token in flight. Loading
changes neither any layer's state h (a layer's first token starts its sequence)
nor the token stream's timing: scan_unit_cycles holds from the first bc/channel
beat after a load. The 2**-i/256 table exp_tab stays a ROM: spec 6.1 defines
it, one table for every layer and model (a set whose table differs is refused).

One unit keeps the state of `n_layer` layers (a decode engine runs every layer's
token through it), so one state memory, layer-major, serves them all: layer l's
d_inner*d_state/lanes words start at l * d_inner*d_state/lanes (`state_words`),
and the state address is that base plus the token's word counter (one add).
The memory is an rtl.banked.BankedMemory of 2**bank_bits words a bank (`state`;
`state_cell`, `state_segments`), each bank's read data registered before the
token's bank is selected, so no multiplexer sits between a block RAM and the
first register after it. With n_layer > 1 the input `layer` says whose state a token reads
and writes: it is part of the token's bc beat (valid whenever bc.valid, read in
the cycle that beat transfers, free to change after), so tokens of different
layers may follow each other back to back at the same cycles; `start` zeroes
only that layer's state (the token reads h as 0). A one-layer build has no
`layer` port (Verilog has no zero-width port; `layer` is then the constant 0).
The constants are not per layer: load layer l's through `cfg` before its tokens.

Run-time shifts stay exact without adders after the products (rtl.loadable):
the rounding half of each loaded shift joins the sum of the product's partial
products (decoded as the constant is written, or from the channel's s_y two
stages early), and the shift itself is a barrel shifter. frac: t = (dt*a) >> (frac-9), registered,
then er = (t + 1) >> 1 == rshift_round(dt*a, frac-8) (nested floors); the
exp table is indexed by t's low 9 bits (entry i: table[((i + 1) >> 1) mod 256]), so no adder precedes its
address, and read at the value t is registered from, its word registered (rtl.ebr.RegisteredRom): the block
RAM's clock-to-out is not followed by the rounding add; s_h: (dt*x*B*m_h + 2**(s_h-1)) >> s_h; s_y:
per channel, (acc*sz*m_y[d] + 2**(s_y[d]-1)) >> s_y[d], saturated to int16 by
a masked sign test beside the shifter. (A build with baked constants stored
m_y[d] << (S - s_y[d]) with S = max s_y so one constant shift served every
channel; with run-time constants that product's width would depend on the
layer's spread of s_y, which the spec does not bound, so each channel keeps
its own shift; m_y is at most 23 bits, which 5.1 guarantees.)

Pipeline (stage = cycles after issue; every multiply is `Pipeline.mul` or `mul_add`, 3 cycles unless retimed):
   0 issue: read state, a_q, Dq           1 dt*x (no memory data in it)
   2 memory data registered (the state: each bank's word); e = dt*a, Dq*x    3 the state's bank selected
   4 (dt*x)*B; h (0 for a new sequence)
   5 t = e >> (frac-9): the exp table's index                  6 2**-frac by table     7-8 decay = table >> int, rounded
   7 dBx*m_h + half (retimed: 4 cycles)   8 decay*h              12 both rounded (dBx: >> whole bytes of s_h)
  13 dBx >> the rest of s_h               14 decay*h + dBx        15 h = sat(sum): written back; C*h
  19-20 sum over lanes                   20 accumulate chunks (+ D*x + rounding half)
  21 (acc >> scan_acc_shift) *SiLU(z)   22 m_y, s_y RAM read   24 *m_y[d] + 2**(s_y[d]-1) (summed in two halves)
  29 >> whole bytes of s_y[d]           30 >> the rest, saturated to int16, into the output FIFO
No stall inside: the issue stage holds off when the output FIFO could fill
(credits), so back-pressure never reaches the pipeline registers.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from qsim import spec, tables
from rtl.banked import READ_STAGES, BankedMemory
from rtl.ebr import RegisteredMemory, RegisteredRom
from rtl.loadable import (
    MULT_BITS,
    SHIFT_BITS,
    SHIFT_MAX,
    cfg_layout,
    half_of,
    mul_add,
    sat_mask,
    shift_saturate,
)
from rtl.pipeline import MUL_LATENCY, PIECE, Pipeline, bits_for, rshift_round, saturate

# dt and the gate SiLU(z) take their widths from the spec; the products they enter (dt*a, dt*x, (dt*x)*B*m_h,
# acc*sz*m_y) take theirs from their operands (Pipeline.mul), so they stay exact for whatever widths the spec sets
CHANNEL = data.StructLayout({"x": signed(8), "dt": unsigned(spec.DT_BITS), "sz": signed(spec.GATE_BITS)})
MEM = 2  # memory data registered
EXP = MEM + MUL_LATENCY  # exp-table index
DTXB = 1 + MUL_LATENCY  # (dt*x)*B
DECAY = EXP + MUL_LATENCY  # 2**-frac by table (EXP + 1), rounded >> int (EXP + 3); decay*h
ROUND = DECAY + MUL_LATENCY + 1  # both products rounded (dBx: shifted by whole bytes of s_h)
FINE = ROUND + 1  # dBx: the rest of its shift
SUM = FINE + 1  # decay*h + dBx (a wide add: its saturation compare gets a cycle of its own)
WRITE_STAGE = SUM + 1  # h = sat(sum) written back; C*h
ACC = WRITE_STAGE + MUL_LATENCY + 2  # two adder-tree stages (4 lanes each: up to 16 lanes), then accumulate
FIFO_STAGE = ACC + 1 + 2 * MUL_LATENCY + 3  # gated, multiplied (its sum split), shifted (two stages): output FIFO
FIFO_LATENCY = 2  # SyncFIFOBuffered: write to readable
DEC_BITS = spec.DECAY_BITS
# m_y: spec 5.1 with |acc * sz| <= 2**24 * 2**15 leaves 1 <= m_y < 2**23
MY_BITS = 62 - (spec.SCAN_ACC_BITS - 1) - (spec.GATE_BITS - 1)
assert spec.DT_BITS <= PIECE and 16 <= PIECE  # dt*a_q is one DSP product: its own partial product
A_FRAC_SPAN = spec.A_FRAC_MAX - spec.A_FRAC_MIN + 1  # frac - 9 in [0, 21]
A_Q, DQ, MY, SCALAR = range(4)  # cfg address kinds (top two address bits)
BANK_BITS = 10  # the state memory's banks: 1024 words each by default, an ECP5 block RAM's depth at 18 bits a word


def bc_layout(d_state: int) -> data.StructLayout:
    return data.StructLayout({"b": data.ArrayLayout(signed(8), d_state), "c": data.ArrayLayout(signed(8), d_state),
                              "start": 1})


class ScanUnit(wiring.Component):
    """The selective scan for one configuration (lanes, d_inner, d_state, state_bits), holding the state of
    n_layer layers (`layer`, `state_words`); a layer's constants are written through `cfg` at run time
    (`config_beats`, `golden_config`)."""

    def __init__(self, *, lanes: int, d_inner: int, d_state: int, state_bits: int, n_layer: int = 1,
                 fifo_depth: int = 32, bank_bits: int = BANK_BITS, primitive: bool = False):
        if n_layer < 1:
            raise ValueError(f"scan unit: n_layer {n_layer} must be at least 1")
        if lanes < 1 or lanes > 16 or d_state % lanes:
            raise ValueError(f"scan unit: lanes {lanes} must divide d_state {d_state} and be at most 16")
        if d_inner < 1 or not spec.STATE_BITS_MIN <= state_bits <= spec.STATE_BITS_MAX:
            raise ValueError(f"scan unit: d_inner {d_inner} >= 1 and state_bits {state_bits} in "
                             f"[{spec.STATE_BITS_MIN}, {spec.STATE_BITS_MAX}] needed")
        self.dq_limit = spec.scan_dq_limit(d_state, state_bits)
        if self.dq_limit < 0:
            raise ValueError(f"scan unit: no Dq is valid with d_state {d_state} and state_bits {state_bits} (spec 5.2)")
        self.lanes, self.d_inner, self.d_state, self.state_bits = lanes, d_inner, d_state, state_bits
        self.n_layer, self.chunks = n_layer, d_state // lanes
        self.words = d_inner * self.chunks  # state words of one layer
        self.exp_tab = tables.exp2_frac_table()  # spec 6.1: one table for every layer and model
        self.dq_shape = bits_for(-self.dq_limit, self.dq_limit)
        self.fifo_depth = fifo_depth
        self.state = BankedMemory(width=state_bits * lanes, depth=self.words * n_layer, bank_bits=bank_bits,
                                  name="state", primitive=primitive)
        self.primitive = primitive  # DP16KD block RAMs, MULT18X18D products (synthesis; rtl.ebr, rtl.dsp)
        self.lane_bits = (lanes - 1).bit_length()
        self.index_bits = max(((self.words - 1) << self.lane_bits | (lanes - 1)).bit_length(), (d_inner - 1).bit_length(),
                              2)
        self.cfg_data_bits = max(16, self.dq_shape.width, MY_BITS + SHIFT_BITS, MULT_BITS)
        self.cfg_layout = cfg_layout(2 + self.index_bits, self.cfg_data_bits)
        super().__init__({
            "cfg": In(stream.Signature(self.cfg_layout)),
            "bc": In(stream.Signature(bc_layout(d_state))),
            "i": In(stream.Signature(CHANNEL)),
            "o": Out(stream.Signature(signed(spec.GATED_BITS))),
        } | ({"layer": In(range(n_layer))} if n_layer > 1 else {}))
        if n_layer == 1:
            self.layer = Const(0)

    @classmethod
    def from_golden(cls, manifest: dict, lanes: int, channels: int | None = None, **kw):
        """A unit built for a golden scan set's configuration (optionally its first `channels` channels)."""
        d = manifest["dims"]
        return cls(lanes=lanes, d_inner=min(channels or d["d_inner"], d["d_inner"]), d_state=d["d_state"],
                   state_bits=manifest["constants"]["state_bits"], **kw)

    def state_words(self, layer: int) -> range:
        """Layer `layer`'s words of the state memory `state` (word channel*chunks + chunk holds lanes elements)."""
        if not 0 <= layer < self.n_layer:
            raise ValueError(f"scan unit: layer {layer} outside [0, {self.n_layer})")
        return range(layer * self.words, (layer + 1) * self.words)

    def state_cell(self, word: int):
        """The memory cell holding state word `word` (state_words), for a simulation to read."""
        return self.state.cell(word)

    def state_segments(self, layer: int) -> list[tuple[int, range]]:
        """Layer `layer`'s state words as (bank, words of that bank), in word order (memory `state{bank}`)."""
        return self.state.segments(self.state_words(layer))

    # ---- run-time constants
    def load_cycles(self) -> int:
        """Cycles a whole constant load takes at one beat a cycle (len(config_beats(...)))."""
        return 3 + self.d_inner * self.d_state + 2 * self.d_inner

    def config_beats(self, *, a_q, Dq, m_y, s_y, frac: int, m_h: int, s_h: int) -> list[dict]:
        """The `cfg` beats that load one layer's constants (checked against the spec's bounds): frac, m_h, s_h,
        then a_q element by element, Dq, and (m_y, s_y) per channel."""
        a_q, Dq, m_y, s_y = (np.asarray(v, dtype=np.int64) for v in (a_q, Dq, m_y, s_y))
        D, N, L = self.d_inner, self.d_state, self.lanes
        if a_q.shape != (D, N) or not Dq.shape == m_y.shape == s_y.shape == (D,):
            raise ValueError(f"scan unit: constants for d_inner {D}, d_state {N} needed")
        if not spec.A_FRAC_MIN <= frac <= spec.A_FRAC_MAX or not 1 <= m_h < 1 << MULT_BITS or \
                not 0 <= s_h <= SHIFT_MAX:
            raise ValueError(f"scan unit: frac {frac}, m_h {m_h}, s_h {s_h} outside the spec")
        if a_q.min() < 0 or a_q.max() >= 1 << 16 or np.abs(Dq).max() > self.dq_limit or m_y.min() < 1 or \
                m_y.max() >= 1 << MY_BITS or s_y.min() < 0 or s_y.max() > SHIFT_MAX:
            raise ValueError(f"scan unit: constants outside the spec (a_q uint16, |Dq| <= {self.dq_limit}, "
                             f"1 <= m_y < 2**{MY_BITS}, 0 <= s_y <= {SHIFT_MAX})")
        def at(kind: int, index: int) -> int:
            return kind << self.index_bits | index

        beats = [{"addr": at(SCALAR, i), "data": int(v)} for i, v in enumerate((frac, m_h, s_h))]
        beats += [{"addr": at(A_Q, (d * self.chunks + n // L) << self.lane_bits | n % L), "data": int(a_q[d, n])}
                  for d in range(D) for n in range(N)]
        beats += [{"addr": at(DQ, d), "data": int(v) & ((1 << self.cfg_data_bits) - 1)} for d, v in enumerate(Dq)]
        beats += [{"addr": at(MY, d), "data": int(m) | int(s) << MY_BITS} for d, (m, s) in enumerate(zip(m_y, s_y))]
        return beats

    def golden_config(self, manifest: dict, arrays: dict) -> list[dict]:
        """config_beats for a golden scan set's layer (its first d_inner channels)."""
        if not np.array_equal(arrays["exp_tab"], self.exp_tab):
            raise ValueError("scan unit: the set's exp table is not the spec's (6.1)")
        if manifest["dims"]["d_state"] != self.d_state or manifest["constants"]["state_bits"] != self.state_bits:
            raise ValueError("scan unit: the set's d_state or state_bits differ from the build's")
        sel, c = slice(0, self.d_inner), manifest["constants"]
        return self.config_beats(a_q=arrays["a_q"][sel], Dq=arrays["Dq"][sel], m_y=arrays["m_y"][sel],
                                 s_y=arrays["s_y"][sel], frac=c["frac"], m_h=c["m_h"], s_h=c["s_h"])

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
        p = Pipeline(m, primitive=self.primitive)
        L, K, D, W, NL = self.lanes, self.chunks, self.d_inner, self.state_bits, self.n_layer
        per_token, work = self.cycles_per_token, self.words
        pad = per_token - work  # idle slots opening a token, so h[d, n] is written before it is read again

        m.submodules.fifo = fifo = SyncFIFOBuffered(width=spec.GATED_BITS, depth=self.fifo_depth)
        # the state: lanes elements per word at layer*work + channel*chunks + chunk (an attribute for tests to peek at)
        self.state.build(m)
        # the per-channel constants, each read word registered (rtl.ebr: for synthesis, the block RAM's own
        # output register; the read a_q word had gone 5.8 ns from its block RAM straight to a register across
        # the chip); written only between tokens
        aq = RegisteredMemory(width=16 * L, depth=work, name="aq", primitive=self.primitive, granularity=16)
        dq_shape = self.dq_shape
        dq = RegisteredMemory(width=dq_shape.width, depth=D, name="dq", primitive=self.primitive)
        my = RegisteredMemory(width=MY_BITS + SHIFT_BITS, depth=D, name="my", primitive=self.primitive)
        for mem in (aq, dq, my):
            mem.build(m)
        # the 2**-f table indexed by t's low 9 bits, not by er = (t + 1) >> 1: entry i holds table[((i + 1) >> 1)
        # mod 256] (er's low 8 bits depend on t's low 9 only), so no adder sits before the address. In block RAM,
        # a pair of lanes to a memory (its two ports): a 4-port ROM would be a LUT tree behind the address
        exp_words = [int(self.exp_tab[((i + 1) >> 1) & 255]) for i in range(512)]
        # read at the address t is registered from, so that its word comes registered (for synthesis, by the
        # DP16KD's own output register) in the cycle a read of t would give it
        exps = [RegisteredRom(width=16, init=exp_words, name=f"exp{i}", ports=min(2, L - 2 * i),
                              primitive=self.primitive) for i in range(-(-L // 2))]
        for rom in exps:
            rom.build(m)

        # ---- run-time constants: cfg beats, one a cycle, accepted between tokens once the pipeline is empty
        # (no token reads a constant while it changes); a waiting beat holds the next token off
        cfg, quiet = self.cfg.payload, Signal(range(FIFO_STAGE + 1))
        cfg_ready = Signal(init=1)  # == first_slot & (quiet == 0), registered: the loader's handshake reads a flip-flop
        kind, index = cfg.addr[self.index_bits:], cfg.addr[:self.index_bits]
        write = Signal()
        aq_w, dq_w, my_w = aq.w, dq.w, my.w
        lane = index[:self.lane_bits] if self.lane_bits else Const(0, 1)
        m.d.comb += [write.eq(self.cfg.valid & self.cfg.ready),
                     aq_w.addr.eq(index[self.lane_bits:]), aq_w.data.eq(Cat(*[cfg.data[:16]] * L)),
                     aq_w.en.eq(Mux(write & (kind == A_Q), (Const(1, L) << lane)[:L], 0)),
                     dq_w.addr.eq(index), dq_w.data.eq(cfg.data[:dq_shape.width]), dq_w.en.eq(write & (kind == DQ)),
                     my_w.addr.eq(index), my_w.data.eq(cfg.data), my_w.en.eq(write & (kind == MY))]
        # scalars, with what the datapath needs of them decoded as they are written: the exponent's shift
        # frac-9; m_h; s_h and its rounding half
        e_sh = Signal(range(A_FRAC_SPAN))
        m_h, s_h, half_h = Signal(unsigned(MULT_BITS)), Signal(unsigned(SHIFT_BITS)), Signal(unsigned(SHIFT_MAX))
        f = cfg.data[:5]
        with m.If(write & (kind == SCALAR)), m.Switch(index):
            with m.Case(0):
                m.d.sync += e_sh.eq(f - spec.A_FRAC_MIN)
            with m.Case(1):
                m.d.sync += m_h.eq(cfg.data)
            with m.Case(2):
                m.d.sync += s_h.eq(cfg.data)
        m.d.sync += half_h.eq(half_of(s_h, SHIFT_MAX))  # from the registered s_h: a cycle later, long before use
        # constant while tokens flow: each is placed at the stage that takes it, no delay line
        p.put(m_h, DTXB + MUL_LATENCY)
        p.put(half_h, DTXB + MUL_LATENCY + 3)

        # ---- stage 0: token slots, channel/chunk counters, credits (decisions read registered flags only)
        slot, k, d, addr = Signal(range(per_token)), Signal(range(K)), Signal(range(D)), Signal(range(work))
        first_slot, in_pad = Signal(init=1), Signal(init=pad > 0)  # == (slot == 0), (slot < pad)
        # credits: tokens issued and drained, counted apart (a counter each, no adder behind the issue); `credit`,
        # registered from them, leaves room for the one token the cycle may still issue
        credit = Signal(init=1)
        cw = self.fifo_depth.bit_length() + 1
        issued, drained = Signal(cw), Signal(cw)
        hold = Signal(bc_layout(self.d_state))
        bc = bc_layout(self.d_state)(Mux(first_slot, self.bc.payload.as_value(), hold.as_value()))  # this token's
        step = Mux(in_pad, 1, self.i.valid & credit) & (~first_slot | (self.bc.valid & ~self.cfg.valid))
        issue, done_issue = Signal(), Signal()
        m.d.comb += [issue.eq(step & ~in_pad), done_issue.eq(issue & (k == K - 1)),
                     self.cfg.ready.eq(cfg_ready),
                     self.bc.ready.eq(first_slot & step),
                     # done_issue without i.valid: ready must not wait for valid (a shorter path from the sender)
                     self.i.ready.eq(~in_pad & credit & (k == K - 1)
                                     & (~first_slot | (self.bc.valid & ~self.cfg.valid)))]
        token_layer = Signal(range(NL))  # the layer sent with this token's bc beat, like `hold`
        with m.If(first_slot & self.bc.valid):  # the payload holds until it transfers: capturing early is harmless
            m.d.sync += [hold.eq(self.bc.payload), token_layer.eq(self.layer)]
        # the slot flags' next values from registers (the slot after this one, `after`), `step` (which the cfg and
        # bc handshakes reach) only selecting between kept and advanced: no adder or compare behind it
        slot_last = Signal(init=per_token == 1)  # == (slot == per_token - 1)
        after = Mux(slot_last, 0, slot + 1)
        m.d.sync += [quiet.eq(Mux(issue, FIFO_STAGE, Mux(quiet == 0, 0, quiet - 1))),
                     # the next slot is 0 and nothing issues (with a step, issue == ~in_pad)
                     cfg_ready.eq(Mux(step, slot_last & in_pad, first_slot) & (quiet <= 1))]
        with m.If(step):
            m.d.sync += [slot.eq(after), first_slot.eq(slot_last), slot_last.eq(after == per_token - 1),
                         in_pad.eq(after < pad)]
        m.d.sync += credit.eq((issued - drained)[:cw] + 1 < self.fifo_depth)
        with m.If(done_issue):
            m.d.sync += issued.eq(issued + 1)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += drained.eq(drained + 1)
        with m.If(issue):
            m.d.sync += [k.eq(Mux(k == K - 1, 0, k + 1)), addr.eq(Mux(addr == work - 1, 0, addr + 1))]
            with m.If(k == K - 1):
                m.d.sync += d.eq(Mux(d == D - 1, 0, d + 1))
        # the state address: the token's layer base (a table of constants, no multiplier) plus the word counter
        saddr = Signal(range(work * NL))
        base = Array(Const(i * work, len(saddr)) for i in range(NL))[Mux(first_slot, self.layer, token_layer)]
        m.d.comb += saddr.eq(base + addr)
        aq_word, dq_word = p.put(aq.read(m, addr), MEM), dq.read(m, d)
        p.put(saddr, 0)
        p.put(d, 0)

        ch = self.i.payload
        v = p.reg(issue, 1, "v")
        first, last = p.reg(k == 0, 1, "first"), p.reg(k == K - 1, 1, "last")
        start, x, dt, sz = (p.reg(val, 1, n) for val, n in ((bc.start, "start"), (ch.x, "x"), (ch.dt, "dt"),
                                                                 (ch.sz, "sz")))
        chunk = lambda arr, j: Array(arr[c * L + j] for c in range(K))[k] if K > 1 else arr[j]
        B = [p.reg(chunk(bc.b, j), 1, f"b{j}") for j in range(L)]
        C = [p.reg(chunk(bc.c, j), 1, f"c{j}") for j in range(L)]

        # ---- memory data, registered (an ECP5 block RAM's clock-to-out leaves no time for logic after it)
        dqv = p.put(Signal(dq_shape, name="dqv"), MEM)
        m.d.comb += dqv.eq(dq_word.as_signed())
        dtx, dqx = p.mul(dt, x, 1, "dtx"), p.mul(dqv, x, MEM, "dqx")  # dt*x from stage 1: not memory data
        # each bank's word registered (MEM), then the token's bank selected (READ_STAGES): h is needed at DECAY only
        h_word = self.state.read(p, saddr, 0, "hm")
        hn = []
        for j in range(L):
            h_mem = h_word[j * W:(j + 1) * W].as_signed()
            h = p.reg(Mux(p.at(start, READ_STAGES), 0, h_mem), READ_STAGES + 1, f"h{j}")  # a new sequence: h = 0
            a = p.put(Signal(16, name=f"a{j}"), MEM)
            m.d.comb += a.eq(aq_word[16 * j:16 * (j + 1)])
            # e = dt*a (one DSP: both operands are single pieces), shifted by frac-9 as the product's sum
            # stage would register it; then rshift_round(e, frac-8) = (t + 1) >> 1: the table is read at t's low
            # 9 bits (exps), the add stays on the integer part's path
            e = p.reg(p.reg(p.at(dt, MEM), MEM + 1, f"e{j}_in0") * p.reg(a, MEM + 1, f"e{j}_in1"), MEM + 2, f"e{j}")
            t_in = e >> e_sh
            t = p.reg(t_in, EXP, f"et{j}")
            # exponent in 1/256 units: its fraction indexes the 2**-f table, its integer part shifts
            er = (t + 1) >> 1
            tab = p.put(exps[j // 2].read(m, j % 2, t_in[:9]), EXP + 1)
            ish = p.reg(Mux(er[8:] > 17, 17, er[8:]), EXP + 1, f"ish{j}", unsigned(5))  # >= 17 zeroes any entry
            half = Array(Const(0 if s == 0 else 1 << (s - 1), 17) for s in range(18))[ish]
            rounded = p.reg(tab + half, EXP + 2, f"rnd{j}", unsigned(17))  # add, then shift: a cycle each
            decay = p.reg(rounded >> p.at(ish, EXP + 2), DECAY, f"decay{j}", unsigned(DEC_BITS + 1))
            # dBx does not depend on h: the cycle that dt*x gains by starting at stage 1 goes to retiming dBx*m_h
            dbx = mul_add(p, p.mul(dtx, B[j], DTXB, f"dtxb{j}"), m_h, half_h, DTXB + MUL_LATENCY, f"dbx{j}",
                          retime=True)  # + 2**(s_h-1)
            dh = p.mul(decay, h, DECAY, f"dh{j}")
            dh_r = p.reg(rshift_round(dh, DEC_BITS), ROUND, f"dhr{j}", signed(W + 2))
            dbx_b = p.reg(dbx >> Cat(Const(0, 3), s_h[3:]), ROUND, f"dbxb{j}")  # a wide barrel shift: two stages
            dbx_r = p.reg(dbx_b >> s_h[:3], FINE, f"dbxr{j}")
            hs = p.reg(p.at(dh_r, FINE) + dbx_r, SUM, f"hs{j}")
            hn.append(p.reg(saturate(hs, signed(W)), WRITE_STAGE, f"hn{j}"))
        waddr = p.at(saddr, WRITE_STAGE)
        self.state.write(m, waddr, Cat(hn), p.at(v, WRITE_STAGE))

        # ---- C.h over lanes and chunks, plus D*x, narrowed by spec.scan_acc_shift (round half up). The half
        # rides in with D*x, so the shift is a bit slice: no adder after the accumulator, no extra cycle.
        terms = [p.mul(C[j], hn[j], WRITE_STAGE, f"ch{j}") for j in range(L)]
        for s in range(WRITE_STAGE + MUL_LATENCY, ACC):
            terms = [p.reg(sum(terms[i:i + 4]), s + 1, f"sum{s}_{i}") for i in range(0, len(terms), 4)]
        shift = spec.scan_acc_shift(W)
        half = 1 << (shift - 1) if shift else 0
        bound = self.d_state * 128 * (1 << (W - 1)) + self.dq_limit * 128 + half
        dqx_half = p.reg(dqx + half, MEM + MUL_LATENCY + 1, "dqxh")
        acc = p.put(Signal(bits_for(-bound, bound), name="acc"), ACC + 1)
        v_acc, first_acc, dqx_acc = p.at(v, ACC), p.at(first, ACC), p.at(dqx_half, ACC)  # (lines outside the If)
        with m.If(v_acc):
            m.d.sync += acc.eq(Mux(first_acc, dqx_acc, acc) + terms[0])
        done = p.reg(v_acc & p.at(last, ACC), ACC + 1, "done")
        narrow = p.put(Signal(bits_for(-bound >> shift, bound >> shift), name="acc_narrow"), ACC + 1)
        m.d.comb += narrow.eq(acc[shift:].as_signed())  # sized from the bound: what it drops above is sign

        # ---- gate, times the channel's m_y (read late: the channel index rides down the pipeline instead of
        # the multiplier), plus the rounding half of its shift s_y; shifted by s_y and saturated
        gm = ACC + 1 + MUL_LATENCY
        my_word = my.read(m, p.at(d, gm - MEM))
        my_v, sy = p.put(Signal(MY_BITS, name="my"), gm), p.put(Signal(SHIFT_BITS, name="sy"), gm)
        m.d.comb += [my_v.eq(my_word[:MY_BITS]), sy.eq(my_word[MY_BITS:])]
        half_y = p.reg(half_of(sy, SHIFT_MAX), gm + 1, "half_y")
        # (the gate times m_y is six partial products and the half: their sum in two registered halves)
        g = mul_add(p, p.mul(narrow, sz, ACC + 1, "gate"), my_v, half_y, gm, "gm", split=True)
        mask_y = p.reg(sat_mask(p.at(sy, gm + 3), spec.GATED_BITS, len(g)), gm + 4, "mask_y")
        y = shift_saturate(p, g, p.at(sy, gm + 4), mask_y, signed(spec.GATED_BITS), FIFO_STAGE - 1, "y")
        m.d.comb += [fifo.w_en.eq(p.at(done, FIFO_STAGE)), fifo.w_data.eq(y),
                     self.o.valid.eq(fifo.r_rdy), self.o.payload.eq(fifo.r_data), fifo.r_en.eq(self.o.ready)]
        return m
