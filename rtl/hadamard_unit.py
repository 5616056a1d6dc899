"""Hadamard unit: qsim.hadamard.fwht on integer rows, then requantization to int8.

n = m * 2**k (qsim.hadamard.factor: m in {1, 12, 20}). The vector lives in an
on-chip buffer of n/lanes rows of `lanes` elements; `lanes` add/subtract units
run one pass over it in n/lanes cycles, and every pass drains `pass_latency`
cycles before the next reads what it wrote (qsim.hw.units.hadamard_unit_cycles).
Passes of one vector, each a factor of H_m (x) H_2**k (they commute exactly on
integers, so the order is chosen for the streams):

  load   radix-2 on index bit 0, applied to the input beats as they arrive
  bit b  radix-2 on bit b, 2 <= b < k: inside a row when 2**b < lanes, else
         between rows r and r + 2**b/lanes (read one, then the other; sums
         written back first, differences the cycle after)
  sweep  s = 1 .. m-1 (m > 1 only): acc_i = y_0 + sgn(i,1) y_1, then
         acc_i += sgn(i,s) y_s, with sgn(i,s) = H[i,0] H[i,s]; so acc_i =
         H[i,0] * (H_m y)_i and H[i,0] is folded into the sign of the output
         multiplier (exact: (-v)*M == v*(-M))
  out    radix-2 on bit 1, requantized (x M >> S, saturated to int8) into the
         output FIFO as rows in order

n and lanes are elaboration parameters; the requantization M, S are loaded
at run time through the `cfg` stream (`config_beats`: addr 0 M in
[1, 2**31), addr 1 S in [0, 62], spec 5.1), two beats, one a cycle
(`load_cycles`), accepted between vectors (the load pass not begun, every
earlier pass drained); a valid cfg beat holds the next vector off. S's
rounding half and saturation mask are decoded as S is written: the half
joins the sum of the product's pieces and the output stages are a barrel
shifter (whole bytes, then the rest) beside a masked sign test (rtl.loadable), exact.
"""

from __future__ import annotations

import math
import operator
from functools import reduce

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from qsim import hadamard, spec
from rtl.ebr import RegisteredMemory
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
from rtl.pipeline import MUL_LATENCY, Pipeline

FIFO_LATENCY = 2  # SyncFIFOBuffered: write to readable
OUT_STAGE = 6 + MUL_LATENCY  # issue, data, registered, operands, sum, product, shifted by bytes, int8 into the FIFO


class HadamardUnit(wiring.Component):
    def __init__(self, *, n: int, lanes: int, in_bits: int = spec.GATED_BITS, fifo_depth: int = 16,
                 primitive: bool = False):
        mb, p = hadamard.factor(n)
        if lanes < 4 or lanes & (lanes - 1) or p % lanes:
            raise ValueError(f"Hadamard unit: lanes {lanes} must be a power of two >= 4 dividing 2**k = {p} (n = {n})")
        self.n, self.lanes, self.in_bits, self.fifo_depth, self.primitive = n, lanes, in_bits, fifo_depth, primitive
        self.base, self.rows, self.rows_per_block = hadamard.base_matrix(mb), n // lanes, p // lanes
        self.width = in_bits + math.ceil(math.log2(n))  # |H x| <= n * 2**(in_bits-1)
        k = p.bit_length() - 1
        self.schedule = ([("load", 0)] + [("bit", b) for b in range(2, k)]
                         + [("sweep", s) for s in range(1, mb)] + [("out", 1)])
        self.cfg_layout = cfg_layout(1, MULT_BITS)  # addr 0: m, 1: s
        super().__init__({
            "cfg": In(stream.Signature(self.cfg_layout)),
            "i": In(stream.Signature(data.ArrayLayout(signed(in_bits), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
        })

    @classmethod
    def from_golden(cls, manifest: dict, lanes: int, **kw):
        """A unit built for a golden Hadamard set's n (its m, s: config_beats(**manifest["constants"]))."""
        return cls(n=manifest["dims"]["n"], lanes=lanes, **kw)

    # ---- run-time constants
    def load_cycles(self) -> int:
        """Cycles a constant load takes at one beat a cycle: m, then s."""
        return 2

    def config_beats(self, *, m: int, s: int) -> list[dict]:
        """The `cfg` beats that load the requantization multiplier and shift (spec 5.1 bounds)."""
        if not 1 <= m < 1 << MULT_BITS or not 0 <= s <= SHIFT_MAX:
            raise ValueError(f"Hadamard unit: m {m} in [1, 2**{MULT_BITS}) and s {s} in [0, {SHIFT_MAX}] needed")
        return [{"addr": 0, "data": int(m)}, {"addr": 1, "data": int(s)}]

    # ---- cycle contract (qsim.hw.units)
    @property
    def passes(self) -> int:
        return len(self.schedule)

    @property
    def pass_latency(self) -> int:
        """Drain per pass: issue to result readable at the output (HADAMARD_PASS_LATENCY)."""
        return OUT_STAGE + FIFO_LATENCY

    @property
    def cycles_per_vector(self) -> int:
        return self.passes * (self.rows + self.pass_latency)

    def cycles(self, vectors: int) -> int:
        return vectors * self.cycles_per_vector

    def elaborate(self, platform):
        m = Module()
        pl = Pipeline(m, primitive=self.primitive)
        L, W, R, RPB, HPL = self.lanes, self.width, self.rows, self.rows_per_block, self.pass_latency
        mb, sched, P = self.base.shape[0], self.schedule, len(self.schedule)
        row_bits = max(R - 1, 1).bit_length()

        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8 * L, depth=self.fifo_depth)
        # the working memories, each read at an address held in a register (set a cycle ahead from the next
        # cycle's state) and its word registered (rtl.ebr: for synthesis, the block RAM's own output register), so
        # the way to a block RAM and the way back each start at a flip-flop; with m > 1, a second copy of `a` for
        # the sweep's second read
        mems = {name: RegisteredMemory(width=W * L, depth=R, name=name, primitive=self.primitive)
                for name in (("a", "a2", "b") if mb > 1 else ("a",))}
        for mem in mems.values():
            mem.build(m)

        # ---- run-time constants m, s: cfg beats accepted between vectors (the load pass not begun, every
        # earlier pass drained), a waiting beat holding the next vector off; the rounding half and the
        # saturation mask are decoded from s the cycle after it is written
        prod_bits = max(W + MULT_BITS + 1, SHIFT_MAX) + 1  # mul_add(res, mult, half): signed(W) x signed(32) + half
        mul_m, shift = Signal(unsigned(MULT_BITS)), Signal(unsigned(SHIFT_BITS))
        half, mask = Signal(unsigned(SHIFT_MAX)), Signal(unsigned(prod_bits))
        cfg_ok = Signal(init=sched[0][0] == "load")  # == is_load & t0 & idle always: a register of its own (below)
        with m.If(self.cfg.valid & cfg_ok):
            with m.If(self.cfg.payload.addr == 0):
                m.d.sync += mul_m.eq(self.cfg.payload.data)
            with m.Else():
                m.d.sync += shift.eq(self.cfg.payload.data[:SHIFT_BITS])
        # decoded from the registered s a cycle after it is written (a vector's requantization is passes away)
        m.d.sync += [half.eq(half_of(shift, SHIFT_MAX)), mask.eq(sat_mask(shift, 8, prod_bits))]

        # ---- sequencer: pass index, issue counter, drain counter
        pi, t = Signal(range(P)), Signal(range(R))
        t1 = Signal(range(R), init=1 % R)  # == (t + 1) mod R, a register: the read-ahead address has no adder
        drain = Signal(range(HPL + 1))  # 0: issuing; d > 0: d-th drain cycle
        idle, t0 = Signal(init=1), Signal(init=1)  # == (drain == 0), (t == 0): kept in registers for the handshakes
        qc, gi = Signal(range(RPB)), Signal(range(mb))  # sweep: column chunk, row group
        advance = drain == HPL
        pi_next = Signal(range(P), init=1 % P)  # == (pi + 1) mod P, a register: the next pass's flags have no adder
        with m.If(advance):
            m.d.sync += [pi.eq(pi_next), pi_next.eq(Mux(pi_next == P - 1, 0, pi_next + 1))]

        following = {}  # a decoded register's next value, by name

        def decoded(values, name, shape=1):
            """A register equal to values[pi] at all times (set with pi), so no pass decode sits on a data path."""
            reg = Signal(shape, name=name, init=values[0])
            following[name] = Mux(advance, Array(Const(v, shape) for v in values)[pi_next], reg)
            m.d.sync += reg.eq(following[name])
            return reg

        kind = lambda k: decoded([int(kk == k) for kk, _ in sched], f"is_{k}")  # noqa: E731
        is_load, is_out, is_sweep = kind("load"), kind("out"), kind("sweep")
        def datapath(k, a):  # which operand pattern a pass uses: a butterfly inside rows, between rows, or sweep
            return ("sweep",) if k == "sweep" else ("cross",) if k == "bit" and (1 << a) >= L else ("in", a)

        keys = sorted({datapath(*pa) for pa in sched} - {("sweep",)})
        # the word an in-row key's operands come from: each key serves passes of one source (load: bit 0, out: bit 1)
        source = {}
        for k, a in sched:
            src = k if k == "load" or (k == "out" and mb > 1) else "a"
            if source.setdefault(datapath(k, a), src) != src:
                raise AssertionError(f"Hadamard unit: passes of {datapath(k, a)} read different words")
        sel = {key: decoded([int(datapath(*pa) == key) for pa in sched], "_".join(map(str, key))) for key in keys}
        cross = sel.get(("cross",), Const(0))

        pending = Signal(range(self.fifo_depth + 1))
        issue = Signal()
        # cfg_ok's next value from the next values of is_load, t0 and idle (their updates below): the loader's
        # handshake reads a flip-flop, not a decode of shared, widely fanned-out pass flags
        load_next = Mux(advance, Array(Const(int(k == "load"), 1) for k, _ in sched)[pi_next], is_load)
        t0_next = Mux(idle & issue, t == R - 1, t0)
        idle_next = Mux(idle, ~(issue & (t == R - 1)), advance)
        m.d.sync += cfg_ok.eq(load_next & t0_next & idle_next)
        m.d.comb += [self.cfg.ready.eq(cfg_ok),
                     issue.eq(idle & Mux(is_load, self.i.valid & ~(cfg_ok & self.cfg.valid),
                                                 ~is_out | (pending < self.fifo_depth))),
                     self.i.ready.eq(idle & is_load & ~(cfg_ok & self.cfg.valid))]  # issue without i.valid
        m.d.sync += pending.eq(pending + (issue & is_out) - (self.o.valid & self.o.ready))
        with m.If(~idle):
            m.d.sync += [drain.eq(Mux(advance, 0, drain + 1)), idle.eq(advance)]
        with m.Elif(issue):
            m.d.sync += [t.eq(t1), t1.eq(Mux(t1 == R - 1, 0, t1 + 1)), t0.eq(t == R - 1)]
            with m.If(t == R - 1):
                m.d.sync += [drain.eq(1), idle.eq(0), qc.eq(0), gi.eq(0)]
            with m.Elif(is_sweep):
                m.d.sync += [gi.eq(Mux(gi == mb - 1, 0, gi + 1)), qc.eq(qc + (gi == mb - 1))]

        # ---- read addresses: rows in order, row pairs (r, r + 2**hb) for cross-row passes, (s, qc) for sweeps
        cross_hb = decoded([(1 << a).bit_length() - L.bit_length() if k == "bit" and (1 << a) >= L else 0
                            for k, a in sched], "cross_hb", range(max(row_bits, 1)))
        sweep_s = decoded([a if k == "sweep" else 0 for k, a in sched], "sweep_s", range(mb)) if mb > 1 else None

        def addresses(t, qc, gi, cross, cross_hb, is_sweep, sweep_s):
            """The rows a, a2 (m > 1) and b (m > 1) are read at for the sequencer's state (t, qc, gi, pass flags)."""
            q = t >> 1
            pair_row = Array((((q >> hb) << (hb + 1)) | (q & ((1 << hb) - 1)) | (t[0] << hb))[:row_bits]
                             for hb in range(max(row_bits, 1)))[cross_hb]
            if mb == 1:
                return {"a": Mux(cross, pair_row, t)}
            return {"a": Mux(cross, pair_row, Mux(is_sweep, (sweep_s * RPB + qc)[:row_bits], t)), "a2": qc,
                    "b": Mux(is_sweep, (gi * RPB + qc)[:row_bits], t)}

        row = Signal(range(R))
        now = addresses(t, qc, gi, cross, cross_hb, is_sweep, sweep_s)
        m.d.comb += row.eq(now["a"])
        # the same of the next cycle's state, as the sequencer above updates it: after an issue, t, qc and gi
        # advanced (the pass flags kept: a pass ends in its drain); otherwise those kept and the pass flags as
        # `decoded` sets them. Both from registers, the issue (which a sender's valid reaches) only choosing
        last = t == R - 1
        stepped = addresses(t1, Mux(last, 0, Mux(is_sweep, qc + (gi == mb - 1), qc))[:len(qc)],
                            Mux(last, 0, Mux(is_sweep, Mux(gi == mb - 1, 0, gi + 1), gi))[:len(gi)],
                            cross, cross_hb, is_sweep, sweep_s)
        kept = addresses(t, qc, gi, following.get("cross", cross), following["cross_hb"],
                         following.get("is_sweep", is_sweep), following.get("sweep_s"))
        # each memory's address register == now[name] at all times (reset: the first pass's row 0 is address 0)
        at = {name: Signal(range(R), name=f"{name}_at") for name in mems}
        m.d.sync += [at[name].eq(Mux(idle & issue, stepped[name], kept[name])) for name in mems]
        data_ = {name: mem.read(m, at[name]) for name, mem in mems.items()}

        # ---- stage 2 (memory data registered): operands and one add/subtract per lane
        D = 2
        pl.put(half, D + 4)  # constant while vectors flow: taken where the product's pieces are summed
        second1 = pl.reg(t[0], 1, "second")
        v, second = pl.at(pl.reg(issue, 1, "v"), D), pl.at(second1, D)
        # cross & second, a register of its own (the operand selects fan out to every bit): `cross` taken a cycle
        # early, which differs only right after a pass ends, in its drain, when no element is at this stage
        cross_second = pl.reg(cross & second1, D, "cross_second")
        row_d = pl.at(pl.reg(Mux(is_sweep, now["b"], row) if mb > 1 else row, 1, "row"), D)  # (b: the group's row)
        lane = lambda word, j: word[j * W:(j + 1) * W].as_signed()  # noqa: E731
        # each read word is its memory's registered word (stage D), the pass's choice of word made among the
        # operand selects. The load pass takes the input, the out pass b (m > 1), every other a
        a_d = pl.put(data_["a"], D)
        words = {"load": [pl.at(pl.reg(self.i.payload[j], 1, f"in{j}"), D) for j in range(L)],
                 "a": [lane(a_d, j) for j in range(L)]}
        if mb > 1:
            a2_d, b_d = pl.put(data_["a2"], D), pl.put(data_["b"], D)
            words["out"] = [lane(b_d, j) for j in range(L)]
        cur = words["a"]  # the cross-row passes' operands
        prev = [pl.reg(c, D + 1, f"prev{j}") for j, c in enumerate(cur)]  # the row before, for row pairs
        pend, pend_row = Signal(), Signal(range(R))
        pend_a = [Signal(signed(W), name=f"pend_a{j}") for j in range(L)]
        pend_b = [Signal(signed(W), name=f"pend_b{j}") for j in range(L)]
        with m.If(v & cross_second):
            m.d.sync += [pend.eq(1), pend_row.eq(row_d)] + [pend_a[j].eq(prev[j]) for j in range(L)] + \
                [pend_b[j].eq(cur[j]) for j in range(L)]
        with m.Elif(pend):
            m.d.sync += pend.eq(0)
        # a held pair goes out the cycle after it is set: then the element at this stage is the first of the next
        # pair (issued elements alternate in t's parity), never a second, so the pair needs no arbitration
        emit_pend = pend

        if mb > 1:
            first_sweep = decoded([int(i == next(n for n, (k, _) in enumerate(sched) if k == "sweep"))
                                   for i in range(P)], "first_sweep")
            sgn = Array(Array(Const(int(self.base[i, 0] * self.base[i, s] < 0), 1) for s in range(mb))
                        for i in range(mb))  # sgn(i, s) < 0, looked up at issue (a table, no multiply)
            sweep_sub = pl.at(pl.reg(sgn[gi][sweep_s], 1, "sweep_sub"), D)
        res = []
        for j in range(L):
            ops = []  # (condition, a, b, subtract): at most one condition holds whenever a result is kept (below)
            for key, flag in sel.items():
                if key[0] == "in":
                    h, src = 1 << key[1], words[source[key]]
                    ops.append((flag, src[j & ~h], src[j | h], Const(bool(j & h))))
            if ("cross",) in sel:
                ops += [(cross_second, prev[j], cur[j], Const(0)), (emit_pend, pend_a[j], pend_b[j], Const(1))]
            if mb > 1:
                ops.append((is_sweep, Mux(first_sweep, lane(a2_d, j), lane(b_d, j)), lane(a_d, j), sweep_sub))
            # an AND-OR, not a priority chain (whose "no earlier match" terms fan out to every bit): a pass's
            # operand flag is one-hot among the in-row keys, cross and sweep; cross_second and emit_pend (a held
            # pair, emitted the cycle after it is set, within its cross pass's drain) exclude each other. Where no
            # condition holds (a cross pass's first row) the result is not kept (res_v)
            if len(ops) == 1:
                a, b, sub = ops[0][1:]
            else:
                a, b, sub = (reduce(operator.or_, (Mux(op[0], op[i], 0) for op in ops)) for i in (1, 2, 3))
            # the operands selected, registered; then one adder with carry-in (no selection in front of the add)
            a, b, sub = pl.reg(a, D + 1, f"a{j}"), pl.reg(b, D + 1, f"b{j}"), pl.reg(sub, D + 1, f"sub{j}")
            res.append(pl.reg(a + Mux(sub, ~b, b) + sub, D + 2, f"res{j}", signed(W)))
        prev_row = pl.reg(row_d, D + 1, "prev_row")  # a pair's sum goes to its first row, the difference to its second
        res_row = pl.at(pl.reg(Mux(emit_pend, pend_row, Mux(cross_second, prev_row, row_d)), D + 1, "res_row"), D + 2)
        res_v = pl.at(pl.reg((v & (~cross | second)) | emit_pend, D + 1, "res_v"), D + 2)

        # ---- stage 4: write back, or requantize into the output FIFO
        word = Cat(*res)
        for name in ("a", "a2") if mb > 1 else ("a",):
            mems[name].write(m, res_row, word, res_v & ~is_out & ~is_sweep)
        mult = pl.put(Signal(signed(MULT_BITS + 1), name="mult"), D + 2)
        if mb > 1:
            mems["b"].write(m, res_row, word, res_v & is_sweep)
            neg = Array(Const(int(self.base[i, 0] < 0), 1) for i in range(mb))[res_row >> (RPB.bit_length() - 1)]
            m.d.comb += mult.eq(Mux(neg, -mul_m, mul_m))
        else:
            m.d.comb += mult.eq(mul_m)
        out_v = pl.reg(res_v & is_out, D + 3, "out_v")
        # x M + 2**(S-1) (the half joins the product's sum), then >> S and saturated beside a masked sign test
        prods = [mul_add(pl, r, mult, half, D + 2, f"prod{j}") for j, r in enumerate(res)]
        ys = [shift_saturate(pl, v, shift, mask, signed(8), OUT_STAGE - 1, f"y{j}") for j, v in enumerate(prods)]
        m.d.comb += [fifo.w_en.eq(pl.at(out_v, OUT_STAGE)), fifo.w_data.eq(Cat(*ys)),
                     self.o.valid.eq(fifo.r_rdy), self.o.payload.eq(fifo.r_data), fifo.r_en.eq(self.o.ready)]
        return m
