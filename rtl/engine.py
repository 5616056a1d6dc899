"""Mamba-1 decode engine (issue 14, first integration): one token through every layer to the logits, bit for bit
with qsim.fixed.executor (`embed`, `block`, `head`), every constant and weight read at run time from the memory
image of rtl/image.py (rtl/IMAGE.md) through one read port (rtl.dram.read_port).

Built once per configuration (the image header's configuration words: dimensions, linear formats, bus width);
the layout of the image, and so every field's offset inside a layer record, follows from the configuration
(rtl.image.layout_of), so the controller takes them as elaboration-time constants and walks the layers at run
time (layer i's record at `layers + i * layer_stride`, a register stepped by the stride).

Controller: a sequencer (one FSM) of steps run strictly one after another:

  load   one image field: a burst of ceil(count * size / bus_bytes) beats, unpacked into one element per cycle
         (little-endian, sign- or zero-extended by the field's dtype) and written as cfg beats into a unit
         (rtl.table_unit's cfg convention, or the scan / Hadamard units' own (addr, data) beats); the scan's
         per-channel (m_y, s_y) word is formed from two fields through a scratch memory
  op     one vector through one unit (or a GEMV chained with its requantization): a reader streams an on-chip
         buffer into the unit, a writer stores its outputs; the op ends with its last output written

For the clock (reports/rtl/synth.md), the FSM state drives nothing but its successor: each step's constants (a
load's address, count, element size, target unit and cfg kind; an op's unit, its reader and writer counts; a
GEMV's matrix and requantization mode) are a descriptor (DESCRIPTOR, Engine.descriptor) held in registers, loaded
as the step ends (step_done) from registers its predecessor filled; the loader, the reader, the writers, the GEMV
command, the GEMV -> requantizer path and the scan's B/C beat read those registers. The reader's buffers are read
two clocks ahead into a skid buffer whose slots offer the units every word (rtl.ebr: for synthesis the second
clock is the block RAM's own output register, as block RAM's clock-to-out leaves no room for logic behind it); the
reads and the block RAMs' enables depend on registers only, a unit's ready reaches only the skid's read pointer and
count (it used to enable every buffer's read across the chip: the critical path), and each unit's valid is a
register. A load step ends on a register (the last element handed on), not on the unit's handshake; the loader's
elements wait for their unit in a register and a skid register behind it.

Per token: embedding (row `token` of embedding.q requantized to the residual width), then per layer: norm ->
in_proj (GEMV, per-row requant) -> xz | conv (+ SiLU table) on x -> xs | x_proj -> requant -> dt_r, B, C |
dt_proj (+ bias, requant, softplus table) -> dt | SiLU(z) table -> sz | scan -> y | Hadamard (+ requant) ->
yo | out_proj -> requant (residual width) | residual add; then the final norm and lm_head: int32 logits.

Recurrent state: the conv window and the SSM state of every layer live inside the engine's one conv unit and one
scan unit (built with n_layer = the engine's n_layer), each in one layer-major memory; the controller's `layer`
register drives both units' layer select (held through each op), so a layer's op reads and writes that layer's
state. A token with `start` set begins a new sequence: every layer's conv reads a zero window and every layer's
scan starts from h = 0. For testbenches (attributes exist once elaborated; in Verilog, instances `conv` and `scan`
of the engine's module):

  SSM state     `self.scan.state` (Verilog `scan.state0`, `scan.state1`, ...): layer i at words
                self.scan.state_words(i) = [i*W, (i+1)*W) (self.scan.state_cell(w) or .state_segments(i) say which
                bank holds a word), W = d_inner * d_state / scan_lanes; word d * d_state/scan_lanes + c holds
                h[d, c*scan_lanes + j] in lane j (state_bits each, lane 0 lowest; rtl_vectors.unpack_state)
  conv window   `self.conv.win` (Verilog `conv.win0`, `conv.win1`, ...): layer i at words
                self.conv.window_words(i) = [i*d_inner, (i+1)*d_inner) (self.conv.window_cell(w) or
                .window_segments(i) say which bank holds a word), word d holds channel d's previous d_conv - 1
                inputs, oldest lowest (int8 each)

Cycles: Engine.token_cycles(latency) gives every label's cycles per decode step: the cost model's
qsim.hw.engine.decode_step_cycles (the units' contracts in qsim.hw.units, plus the controller's fixed overheads);
the simulations meet it exactly. For
mamba-tiny-w8a8 at bus_bytes 16, GEMV lanes 16 (one weight beat a cycle), scan lanes 4, Hadamard lanes 4, the
other units one element a cycle and a DRAM latency of 8: 255 575 cycles a token, per layer in_proj 16 668,
out_proj 8 732, x_proj 2 076, dt_proj 560, scan 2 084, hadamard 1 255, norm 542, conv 530, tables 520, residual
264 and constant loads 16 782 (A.q alone 8 202: one cfg beat a cycle); then final norm 542, lm_head 4 369.

Observation ports for testbenches: `layer_done` (a register, high for the cycle after a layer's residual op
ends: the residual buffer `rbuf` holds that layer's output), `done` (the logits buffer `lbuf` is complete), and a
cycle counter per step label (`cyc_<label>`, running totals; loads count under `load`).
"""

from __future__ import annotations

import operator
from functools import reduce

import numpy as np
from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qsim import spec
from qsim.hw.engine import LABELS
from rtl import image
from rtl import scan_unit as su
from rtl.conv_unit import ConvUnit
from rtl.dram import read_port
from rtl.ebr import NO_RW_CHECK, RegisteredMemory
from rtl.gemv_unit import GemvUnit
from rtl.hadamard_unit import HadamardUnit
from rtl.requant_unit import RequantUnit
from rtl.rmsnorm_unit import RMSNormUnit
from rtl.scan_unit import ScanUnit
from rtl.table_unit import Kind, ResidualUnit, TableUnit

ADDR_BITS = 32
LEN_BITS = 16
SKID = 4  # the reader's skid buffer: slots (a power of two, so its pointers wrap); also the words in flight at most
TOKEN = data.StructLayout({"token": unsigned(16), "start": 1})
TARGETS = ("norm", "rq", "table", "conv", "scan", "had", "pair", "embed")  # where a load's elements go
OPS = ("norm", "in_proj", "conv", "x_proj", "dt_proj", "silu_z", "scan", "hadamard", "out_proj", "residual", "lm_head")
# the controller's step descriptor (Engine.descriptor): flags are one bit, the rest sized in elaborate; an op's
# reader count rn and writer count wn (the op is done when wn outputs are written)
DESCRIPTOR = ("step", "load", "gemv", "rq_op", "uniform", "bias", "wide", "bc", "off", "rel", "beats", "last0",
              "last_m1", "perm1", "signed", "sz1", "sz2", "sz4", "sz8", "kind", "addr0", "convw", "my", "fixed",
              "index", "n", "k", "rn", "wn", *(f"t_{t}" for t in TARGETS), *(f"o_{o}" for o in OPS))


class Engine(wiring.Component):
    def __init__(self, header: dict, *, scan_lanes: int = 4, had_lanes: int = 4, gemv_lanes: int | None = None,
                 n_layer: int | None = None, primitives: bool = False):
        h = dict(header)
        B = h["bus_bytes"]
        if B < 8 or h["d_model"] % B or h["d_inner"] % B or h["dt_rank"] % B:
            raise ValueError(f"engine: bus_bytes {B} must be at least 8 and divide d_model, d_inner and dt_rank "
                             "(the GEMV unit reads rows bus-aligned; the image packs them)")
        if any(h[f"{k}.format"] != image.INT8 for k in image.LINEARS):
            raise ValueError("engine: int8 linears only (grouped int4 is not supported yet)")
        if not h["hadamard"]:
            raise ValueError("engine: artifacts with the Hadamard transform only")
        if h["d_conv"] & (h["d_conv"] - 1):
            raise ValueError("engine: d_conv must be a power of two")
        self.h, self.B = h, B
        self.dm, self.D, self.N, self.R, self.K = h["d_model"], h["d_inner"], h["d_state"], h["dt_rank"], h["d_conv"]
        self.V = h["vocab"]
        self.n_layer = h["n_layer"] if n_layer is None else n_layer  # a shorter run: the first n_layer layers
        if not 1 <= self.n_layer <= h["n_layer"]:
            raise ValueError(f"engine: n_layer {n_layer} outside [1, {h['n_layer']}]")
        self.layout, self.offsets = image.layout_of(h)
        self.scan_lanes, self.had_lanes = scan_lanes, had_lanes
        self.primitives = primitives  # DP16KDs and MULT18X18Ds with output registers (synthesis; rtl.ebr, rtl.dsp)
        self.gemv_lanes = gemv_lanes or B
        self.max_n = max(2 * self.D, self.R + 2 * self.N, self.dm, self.V)
        self.max_k = max(self.dm, self.D, self.R)
        sig = {"tok": In(stream.Signature(TOKEN)), "mem": Out(read_port(B, ADDR_BITS, LEN_BITS)),
               "layer_done": Out(1), "done": Out(1), "busy": Out(1), "layer": Out(8)}
        sig |= {f"cyc_{lab}": Out(unsigned(32)) for lab in LABELS}
        super().__init__(sig)

    @classmethod
    def for_image(cls, data_: bytes, **kw):
        return cls(image.read_header(data_), **kw)

    # ---- image fields
    def field(self, name: str):
        """(offset, dtype, shape) of a field; layer fields (`P.` prefix) relative to the layer record."""
        if name.startswith("P."):
            off, dt, shape = self.layout[f"layers.0.{name[2:]}"]
            return off - self.offsets["layers"], dt, shape, True
        off, dt, shape = self.layout[name]
        return off, dt, shape, False

    def program(self) -> tuple[list, int]:
        """The controller's steps, in order: (state name, label, ("load", field, target, kind, index, None) or
        ("op", name)); and the index of the first per-layer step (the layer loop runs from it to the residual)."""
        steps = []  # (state name, label, builder)

        def load(label, name, target, kind=None, index=None, sel=None):
            steps.append((f"ld{len(steps)}_{name}", "load" if label is None else label,
                          ("load", name, target, kind, index, sel)))

        def op(label, name):
            steps.append((f"op{len(steps)}_{name}", label, ("op", name)))

        # start of a token: the embedding row, requantized to the residual width
        load("load", "embedding.m", "rq", Kind.M)
        load("load", "embedding.s", "rq", Kind.S)
        load("embed", "embedding.q", "embed")
        first_layer = len(steps)
        for name, kind in (("P.norm.g", Kind.VEC), ("P.norm.eps_int", Kind.EPS), ("P.norm.m", Kind.M),
                           ("P.norm.s", Kind.S)):
            load(None, name, "norm", kind)
        op("norm", "norm")
        load(None, "P.in_proj.rq_m", "rq", Kind.M)
        load(None, "P.in_proj.rq_s", "rq", Kind.S)
        op("in_proj", "in_proj")
        for name, kind in (("P.conv.w", Kind.W), ("P.conv.b", Kind.VEC), ("P.conv.m", Kind.M), ("P.conv.s", Kind.S),
                           ("P.tables.silu_conv", Kind.TABLE)):
            load(None, name, "conv", kind)
        op("conv", "conv")
        load(None, "P.x_proj.rq_m", "rq", Kind.M)
        load(None, "P.x_proj.rq_s", "rq", Kind.S)
        op("x_proj", "x_proj")
        load(None, "P.dt_proj.b", "rq", Kind.VEC)
        load(None, "P.dt_proj.m", "rq", Kind.M)
        load(None, "P.dt_proj.s", "rq", Kind.S)
        load(None, "P.tables.softplus_dt", "table", Kind.TABLE)
        op("dt_proj", "dt_proj")
        load(None, "P.tables.silu_z", "table", Kind.TABLE)
        op("tables", "silu_z")
        load(None, "P.scan.a_frac_bits", "scan", su.SCALAR, 0)
        load(None, "P.scan.m_h", "scan", su.SCALAR, 1)
        load(None, "P.scan.s_h", "scan", su.SCALAR, 2)
        load(None, "P.A.q", "scan", su.A_Q)
        load(None, "P.D.q", "scan", su.DQ)
        load(None, "P.scan.m_y", "pair")
        load(None, "P.scan.s_y", "scan", su.MY)
        op("scan", "scan")
        load(None, "P.out_in.m", "had", None, 0)
        load(None, "P.out_in.s", "had", None, 1)
        op("hadamard", "hadamard")
        load(None, "P.out_proj.rq_m", "rq", Kind.M)
        load(None, "P.out_proj.rq_s", "rq", Kind.S)
        op("out_proj", "out_proj")
        op("residual", "residual")
        for name, kind in (("norm_f.g", Kind.VEC), ("final_norm.eps_int", Kind.EPS), ("final_norm.m", Kind.M),
                           ("final_norm.s", Kind.S)):
            load("load", name, "norm", kind)
        op("final_norm", "norm")
        op("lm_head", "lm_head")
        return steps, first_layer

    def cost_model(self, latency: int) -> tuple:
        """This build on a DRAM of `latency` cycles as the cost model describes it: (qsim.hw.engine.EngineModel,
        EngineConfig without a clock)."""
        from qsim.hw.engine import EngineConfig, EngineModel

        return (EngineModel(self.dm, self.D, self.N, self.R, self.K, self.n_layer, self.V),
                EngineConfig(self.B, self.gemv_lanes, self.scan_lanes, self.had_lanes, latency))

    def token_cycles(self, latency: int) -> dict:
        """Cycles of one decode step per label (the `cyc_<label>` counters) with the DRAM model of rtl.dram at
        `latency`: the cost model's qsim.hw.engine.decode_step_cycles, which the simulations meet exactly
        (tests/rtl/test_rtl_engine.py, tests/rtl/test_rtl_engine_cocotb.py)."""
        from qsim.hw.engine import decode_step_cycles

        return decode_step_cycles(*self.cost_model(latency))

    def elaborate(self, platform):
        m = Module()
        B, dm, D, N, R, K, V, NL = self.B, self.dm, self.D, self.N, self.R, self.K, self.V, self.n_layer
        HL = self.had_lanes
        hl_bits = (HL - 1).bit_length()

        # ---- units
        m.submodules.norm = norm = RMSNormUnit(d_model=dm, lanes=1, primitive=self.primitives)
        m.submodules.gemv = gemv = GemvUnit(rows=1, lanes=self.gemv_lanes, bus_bytes=B, max_k=self.max_k,
                                            max_n=self.max_n, addr_width=ADDR_BITS)
        m.submodules.rq = rq = RequantUnit(max_rows=self.max_n, primitive=self.primitives)
        m.submodules.table = table = TableUnit(lanes=1, out_shape=signed(16), primitive=self.primitives)
        m.submodules.had = had = HadamardUnit(n=D, lanes=HL, primitive=self.primitives)
        m.submodules.res = res = ResidualUnit(lanes=1)
        m.submodules.conv = conv = self.conv = ConvUnit(d_inner=D, d_conv=K, lanes=1, n_layer=NL,
                                                        primitive=self.primitives)
        m.submodules.scan = scan = self.scan = ScanUnit(lanes=self.scan_lanes, d_inner=D, d_state=N,
                                                        state_bits=self.h["state_bits"], n_layer=NL,
                                                        primitive=self.primitives)

        # ---- on-chip vectors. The reader's buffers are rtl.ebr memories: a word registered two clocks after its
        # address, into the reader's skid buffer (for synthesis, the DP16KD's own output register). A buffer one op both
        # reads and writes (the residual) writes only elements its reader has passed; the others are written and
        # read by different steps, so no buffer reads a word in the cycle it is written
        def buf(name, width, depth, granularity=None):
            b = RegisteredMemory(width=width, depth=depth, name=name, primitive=self.primitives,
                                 granularity=granularity)
            b.build(m)
            return b

        def mem(name, width, depth):  # NO_RW_CHECK: as above
            m.submodules[name] = mm = Memory(shape=unsigned(width), depth=depth, init=[], attrs=NO_RW_CHECK)
            return mm

        RB = spec.RESIDUAL_BITS
        bufs = {"r": buf("rbuf", RB, dm),  # the residual stream
                "o": buf("obuf", RB, dm),  # out_proj, requantized
                "u": buf("ubuf", 8, dm),  # normed
                "xz": buf("xzbuf", 8, 2 * D), "xs": buf("xsbuf", 8, D), "xp": buf("xpbuf", 8, R + 2 * N),
                "dt": buf("dtbuf", 16, D), "sz": buf("szbuf", 16, D),
                "y": buf("ybuf", 16 * HL, D // HL, granularity=16), "yo": buf("yobuf", 8 * HL, D // HL)}
        self.rbuf = bufs["r"].memory
        self.lbuf = lbuf = mem("lbuf", 32, V)  # logits
        # scratch: the scan's m_y until s_y arrives, in two copies (the loader reads two elements ahead)
        pms = (buf("pmem", 32, D), buf("pmem2", 32, D))
        wr_ = {n: b.w for n, b in bufs.items()} | {"l": lbuf.write_port()}

        # ---- controller registers
        layer = Signal(range(max(NL, 2)))
        lbase = Signal(ADDR_BITS)
        token = Signal(16)
        fresh = Signal()  # this token starts a sequence
        vmax = max(self.max_n, D * N, D * K) + 1
        rd, mid, wr = Signal(range(vmax), name="rd"), Signal(range(vmax), name="mid"), Signal(range(vmax), name="wr")
        # an op's end, wr == d.wn, as a register (set by the write that reaches the count): step_done, which loads
        # every descriptor register, starts from flip-flops
        done = Signal(name="wdone")
        # the reader: the buffers read at rd two clocks ahead (v1, v2: the words on their way; l1, l2 their yo lane),
        # every word into a skid buffer of SKID slots (written at wp, taken at rp), the unit offered the oldest one
        # (always from a slot: a block RAM's word goes to a register, never through the payload selects to a unit).
        # Reads issue while the words not taken would still fit if the unit took none: the issue and the block
        # RAMs' enables never wait on a unit's ready
        v1, v2 = Signal(name="rd_v1"), Signal(name="rd_v2")
        l1, l2 = Signal(max(hl_bits, 1), name="rd_l1"), Signal(max(hl_bits, 1), name="rd_l2")
        wp, rp = Signal(range(SKID), name="skid_wp"), Signal(range(SKID), name="skid_rp")
        waiting, q_v = Signal(range(SKID + 1), name="skid_n"), Signal(name="q_v")
        # q_v & each reader-fed unit's op flag, registers of their own: a unit's valid is a flip-flop
        unit_v = {u: Signal(name=f"q_v_{u}")
                  for u in ("norm", "gemv", "conv", "silu_z", "scan", "hadamard", "residual")}
        lst, e, cur = Signal(name="lst"), Signal(range(vmax), name="e"), Signal(8 * B, name="cur")
        # e + 1 and e + 2, registers counting with e: the m_y scratch's read-ahead addresses have no adder
        e1, e2 = Signal(range(vmax + 2), name="e_1", init=1), Signal(range(vmax + 2), name="e_2", init=2)
        cur_v, jb = Signal(name="cur_v"), Signal(range(B), name="jb")
        # the step's last element index: e_last == (e == last), a register set as e counts and as d changes, from
        # last_m1 = last - 1 (modulo its width; both from the descriptor, no compare or adder behind step_done)
        e_last = Signal(name="e_last", init=1)
        last_m1 = Signal(range(vmax), name="last_m1")
        emit = Signal()
        tok_off = Signal(ADDR_BITS)  # token * d_model: the embedding row's offset
        bcr = [Signal(signed(8), name=f"bc{j}") for j in range(2 * N)]
        cnt = {lab: Signal(32, name=f"cnt_{lab}") for lab in LABELS}
        m.d.comb += [getattr(self, f"cyc_{lab}").eq(cnt[lab]) for lab in LABELS]
        m.d.comb += self.layer.eq(layer)
        if NL > 1:  # (a one-layer unit has no layer select)
            m.d.comb += [conv.layer.eq(layer), scan.layer.eq(layer)]

        steps, first_layer = self.program()
        names = [s[0] for s in steps]

        # ---- step descriptors. Every step's constants (a load's field, size, count, target; an op's unit and
        # counts; a GEMV's matrix) sit in registers `d` loaded as the step begins (step_done) from `nd`, which each
        # state fills with its successor's: the datapath reads flip-flops, not a decode of the state.
        widths = {**dict.fromkeys(DESCRIPTOR, 1), "off": ADDR_BITS, "beats": LEN_BITS, "last_m1": range(vmax),
                  "perm1": range(B), "kind": 3, "index": 2, "n": range(self.max_n + 1), "k": range(self.max_k + 1),
                  "rn": range(vmax + 1), "wn": range(vmax + 1)}
        descs = [self.descriptor(s) for s in steps] + [dict.fromkeys(widths, 0)]
        d = {f: Signal(w, name=f"d_{f}") for f, w in widths.items()}
        nd = {f: Signal(w, name=f"nd_{f}", init=descs[0][f]) for f, w in widths.items()}
        g_go, bc_go = Signal(), Signal()  # the GEMV command and the scan's B/C beat, offered once per step

        def successor(k, layer_loop=False):
            if layer_loop:
                m.d.sync += [nd[f].eq(Mux(layer == NL - 1, descs[k][f], descs[first_layer][f])) for f in widths]
            else:
                m.d.sync += [nd[f].eq(descs[k][f]) for f in widths]

        def advance():
            m.d.sync += [d[f].eq(nd[f]) for f in widths] + [g_go.eq(nd["gemv"]), bc_go.eq(nd["bc"]),
                                                            e_last.eq(nd["last0"]),  # (e is 0 then)
                                                            last_m1.eq(nd["last_m1"])]

        abase = Signal(ADDR_BITS)  # the step's field: a layer field from the layer's record, the embedding row's
        m.d.comb += abase.eq(Mux(d["rel"], lbase, Mux(d["t_embed"], tok_off, 0)) + d["off"])

        # ---- shared step plumbing
        mem_port = self.mem

        def reset_step():
            m.d.sync += [rd.eq(0), v1.eq(0), v2.eq(0), wp.eq(0), rp.eq(0), waiting.eq(0), q_v.eq(0),
                         *(uv.eq(0) for uv in unit_v.values()),
                         mid.eq(0), wr.eq(0), done.eq(0), lst.eq(0), e.eq(0), e1.eq(1), e2.eq(2),
                         cur_v.eq(0), ld_em.eq(0), ld_last.eq(0)]

        def written_one():  # done (wr == d.wn) set with the write that reaches the count
            m.d.sync += [wr.eq(wr + 1), done.eq(wr + 1 == d["wn"])]

        def writer(src, port, data_):
            if src is not rq.o:  # (the requantizer's ready is one expression for every op, below)
                m.d.comb += src.ready.eq(1)
            m.d.comb += [port.addr.eq(wr), port.data.eq(data_), port.en.eq(src.valid)]
            with m.If(src.valid):
                written_one()

        # ---- the ops, wired by the descriptor's op flags (o_<op>), not by the state: a unit's valid, a buffer's
        # write enable and the reader's ready are a flip-flop ANDed in
        op = {o: d[f"o_{o}"] for o in OPS}
        ready = Signal()
        m.d.comb += ready.eq(op["norm"] & norm.i.ready | d["gemv"] & gemv.x.ready | op["conv"] & conv.i.ready
                             | op["silu_z"] & table.i.ready | op["scan"] & scan.i.ready
                             | op["hadamard"] & had.i.ready | op["residual"] & res.i.ready)
        # the reader (above): up to SKID words not taken, so SKID slots never overrun; SKID = 4 keeps a word a cycle
        # flowing (two on their way, one in a slot, one being taken) and a stalled unit resumes with words waiting
        raddr = {"xz": Mux(op["silu_z"], rd + D, rd), "yo": rd >> hl_bits}
        words = {n: b.read(m, raddr.get(n, rd)) for n, b in bufs.items()}
        # (waiting, its count; q_v, waiting != 0, the units' valid: each a register)
        issue, take = Signal(name="rd_issue"), Signal(name="rd_take")
        m.d.comb += [issue.eq((rd < d["rn"]) & (waiting + v1 + v2 < SKID)), take.eq(q_v & ready)]
        # the count's two next values from registers, `take` (a unit's ready) only choosing between them
        kept, less = Signal.like(waiting, name="skid_kept"), Signal.like(waiting, name="skid_less")
        m.d.comb += [kept.eq(waiting + v2), less.eq(waiting + v2 - 1)]
        m.d.sync += [v1.eq(issue), v2.eq(v1), l1.eq(rd), l2.eq(l1), rp.eq(Mux(take, rp + 1, rp)),
                     waiting.eq(Mux(take, less, kept)), q_v.eq(Mux(take, less != 0, kept != 0))]
        # (the op flags are the step's; a step's end clears them all, with q_v, in reset_step)
        m.d.sync += [uv.eq(Mux(take, less != 0, kept != 0) & (d["gemv"] if u == "gemv" else op[u]))
                     for u, uv in unit_v.items()]
        with m.If(issue):
            m.d.sync += rd.eq(rd + 1)
        slots = {n: [Signal(len(w), name=f"skid_{n}{i}") for i in range(SKID)] for n, w in {**words, "l": l2}.items()}
        with m.If(v2):
            m.d.sync += wp.eq(wp + 1)
            for n, w in {**words, "l": l2}.items():
                m.d.sync += Array(slots[n])[wp].eq(w)
        q_ = {n: Array(slots[n])[rp] for n in {**words, "l": l2}}
        q_l = q_.pop("l")
        x_of = {"in_proj": q_["u"], "x_proj": q_["xs"], "dt_proj": q_["xp"], "lm_head": q_["u"],
                "out_proj": Array(q_["yo"][8 * j:8 * j + 8] for j in range(HL))[q_l] if HL > 1 else q_["yo"]}
        m.d.comb += [norm.i.valid.eq(unit_v["norm"]), gemv.x.valid.eq(unit_v["gemv"]),
                     gemv.x.payload.eq(reduce(operator.or_, (Mux(op[o], x[:8], 0) for o, x in x_of.items()))),
                     conv.i.valid.eq(unit_v["conv"]), scan.i.valid.eq(unit_v["scan"]),
                     had.i.valid.eq(unit_v["hadamard"]), res.i.valid.eq(unit_v["residual"]),
                     table.i.valid.eq(Mux(op["dt_proj"], rq.o.valid, unit_v["silu_z"])),
                     table.i.payload[0].eq(Mux(op["dt_proj"], rq.o.payload[:8], q_["xz"]).as_signed())]
        m.d.comb += [norm.i.payload[0].eq(q_["r"].as_signed()),
                     conv.i.payload.x[0].eq(q_["xz"].as_signed()), conv.i.payload.first.eq(fresh),
                     scan.i.payload.x.eq(q_["xs"].as_signed()), scan.i.payload.dt.eq(q_["dt"][:spec.DT_BITS]),
                     scan.i.payload.sz.eq(q_["sz"].as_signed()), scan.o.ready.eq(1),
                     had.i.payload.eq(q_["y"]),
                     res.i.payload.r[0].eq(q_["r"].as_signed()), res.i.payload.d[0].eq(q_["o"].as_signed())]
        # ---- GEMV outputs through the requantizer (every GEMV op but lm_head; the descriptor says how)
        m.d.comb += [rq.i.valid.eq(gemv.o.valid & d["rq_op"]), gemv.o.ready.eq(rq.i.ready & d["rq_op"]),
                     rq.i.payload.v.eq(gemv.o.payload), rq.i.payload.idx.eq(mid),
                     rq.i.payload.uniform.eq(d["uniform"]), rq.i.payload.bias.eq(d["bias"]),
                     rq.i.payload.wide.eq(d["wide"])]
        with m.If(gemv.o.valid & rq.i.ready & d["rq_op"]):
            m.d.sync += mid.eq(mid + 1)
        # the requantizer's outputs are taken by a writer in every op that makes them, but dt_proj's, which go to
        # the table unit; no other op has any (each ends once its last output is written), so one flag decides
        m.d.comb += rq.o.ready.eq(~op["dt_proj"] | table.i.ready)
        # the writers: an op's outputs into its buffer at wr; the op is done when wr reaches its count (d.wn)
        with m.If(op["norm"]):
            writer(norm.o, wr_["u"], norm.o.payload.as_value())
        with m.If(op["in_proj"]):
            writer(rq.o, wr_["xz"], rq.o.payload[:8])
        with m.If(op["conv"]):
            writer(conv.o, wr_["xs"], conv.o.payload.xs.as_value())
        with m.If(op["x_proj"]):
            writer(rq.o, wr_["xp"], rq.o.payload[:8])
            for j in range(2 * N):
                with m.If(rq.o.valid & (wr == R + j)):
                    m.d.sync += bcr[j].eq(rq.o.payload[:8])
        with m.If(op["dt_proj"]):
            writer(table.o, wr_["dt"], table.o.payload.as_value())
        with m.If(op["silu_z"]):
            writer(table.o, wr_["sz"], table.o.payload.as_value())
        with m.If(op["scan"]):
            with m.If(scan.o.valid):
                written_one()
            m.d.comb += [wr_["y"].addr.eq(wr >> hl_bits), wr_["y"].data.eq(Cat(*[scan.o.payload] * HL))]
            m.d.comb += [wr_["y"].en[j].eq(scan.o.valid & ((wr & (HL - 1)) == j)) for j in range(HL)]
        with m.If(op["hadamard"]):
            writer(had.o, wr_["yo"], had.o.payload.as_value())
        with m.If(op["out_proj"]):
            writer(rq.o, wr_["o"], rq.o.payload)
        with m.If(op["residual"]):
            writer(res.o, wr_["r"], res.o.payload.as_value())
        with m.If(op["lm_head"]):
            writer(gemv.o, wr_["l"], gemv.o.payload)

        def op_step(name, nxt):
            with m.If(step_done):
                if name == "residual":
                    m.d.sync += layer_end.eq(1)
                    with m.If(layer == NL - 1):
                        m.next = nxt
                    with m.Else():
                        m.d.sync += [layer.eq(layer + 1), lbase.eq(lbase + self.offsets["layer_stride"])]
                        m.next = names[first_layer]
                else:
                    m.next = nxt

        # ---- the GEMV command and the scan's B/C beat: offered from the step's first cycle until taken
        m.d.comb += [gemv.cmd.valid.eq(g_go), gemv.cmd.payload.base.eq(abase), gemv.cmd.payload.n.eq(d["n"]),
                     gemv.cmd.payload.k.eq(d["k"]), scan.bc.valid.eq(bc_go), scan.bc.payload.start.eq(fresh)]
        m.d.comb += [scan.bc.payload.b[j].eq(bcr[j]) for j in range(N)]
        m.d.comb += [scan.bc.payload.c[j].eq(bcr[N + j]) for j in range(N)]
        with m.If(gemv.cmd.ready):  # (before the FSM: a step's advance() sets them again)
            m.d.sync += g_go.eq(0)
        with m.If(scan.bc.ready):
            m.d.sync += bc_go.eq(0)

        ld_done, ld_em, ld_last, step_done = Signal(), Signal(name="ld_em"), Signal(name="ld_last"), Signal()
        m.d.comb += step_done.eq(d["step"] & Mux(d["load"], ld_done, done))
        # ---- the GEMV's memory traffic, unless a load owns the port. Before the FSM: a step's end (reset_step)
        # overrides the loader's counters in its last cycle
        m.d.comb += [mem_port.req.valid.eq(gemv.mem.req.valid), mem_port.req.payload.addr.eq(gemv.mem.req.payload.addr),
                     mem_port.req.payload.beats.eq(gemv.mem.req.payload.beats),
                     gemv.mem.req.ready.eq(mem_port.req.ready), gemv.mem.data.valid.eq(mem_port.data.valid),
                     gemv.mem.data.payload.eq(mem_port.data.payload), mem_port.data.ready.eq(gemv.mem.data.ready)]
        self.loader(m, d, abase, ld_done, units={"norm": norm, "rq": rq, "table": table, "conv": conv,
                                                "scan": scan, "had": had},
                    regs=(lst, e, e1, e2, e_last, last_m1, cur, cur_v, jb, emit, ld_em, ld_last), pms=pms, writer=writer, rbuf_w=wr_["r"], written=done)
        # a step's end: its successor's descriptor, the shared counters cleared (after the loader's, the reader's
        # and the writers' updates, which it overrides); the FSM only follows
        with m.If(step_done):
            reset_step()
            advance()
        # layer_done from a register: a testbench triggers on its edge, which a decode of several registers (state,
        # descriptor, counters) may glitch on in an event-driven simulator while they update
        layer_end = Signal()
        m.d.sync += layer_end.eq(0)
        m.d.comb += self.layer_done.eq(layer_end)
        # a token is taken while `ctl_idle`, a flip-flop of its own (set as the FSM leaves its last state), so the
        # first step's descriptor load sees no decode of the FSM's state
        ctl_idle, go = Signal(name="ctl_idle", init=1), Signal()
        m.d.comb += [self.tok.ready.eq(ctl_idle), go.eq(ctl_idle & self.tok.valid)]
        with m.If(go):
            m.d.sync += [token.eq(self.tok.payload.token), fresh.eq(self.tok.payload.start), layer.eq(0),
                         lbase.eq(self.offsets["layers"]), tok_off.eq(self.tok.payload.token * dm), ctl_idle.eq(0)]
            advance()
        with m.FSM(name="ctl"):
            with m.State("idle"):
                successor(0)
                with m.If(go):
                    m.next = names[0]
            for k, (state, label, spec_) in enumerate(steps):
                nxt = names[k + 1] if k + 1 < len(steps) else "done"
                with m.State(state):
                    m.d.sync += cnt[label].eq(cnt[label] + 1)
                    m.d.comb += self.busy.eq(1)
                    successor(k + 1, layer_loop=spec_ == ("op", "residual"))
                    if spec_[0] == "load":
                        with m.If(step_done):
                            m.next = nxt
                    else:
                        op_step(spec_[1], nxt)
            with m.State("done"):
                m.d.comb += self.done.eq(1)
                m.d.sync += [fresh.eq(0), ctl_idle.eq(1)]
                successor(0)
                m.next = "idle"

        return m

    def loader(self, m, d, abase, ld_done, units, regs, pms, writer, rbuf_w, written):
        """A load step from its descriptor `d`: one burst of d.beats beats from `abase`, unpacked into one element
        a cycle (d.sz* bytes, sign-extended if d.signed) and handed to a one-beat register `cq` (a skid register
        behind it), which presents it as a cfg beat to the target unit (its own copy of the target: the last beat may
        reach the unit in the next step's first cycle); ld_done when the last element is in cq, the skid empty (for
        the embedding row: its last requantized value in the residual). A unit thus sees a layer's last constant one
        cycle after the step ends, before the next op's first element (a reader's pipeline is three deep) and behind
        the scan's and Hadamard unit's own checks."""
        lst, e, e1, e2, last, last_m1, cur, cur_v, jb, emit, ld_em, ld_last = regs
        mem_port, scan, had, rq, conv = self.mem, units["scan"], units["had"], units["rq"], units["conv"]
        K = self.K
        # element jb of the beat: the lowest of `cur`, which shifts by one element as it goes (a fixed shift per
        # size, no selection by jb behind cq's value)
        val, step_out = Signal(signed(64)), Signal(len(cur))
        for size in (1, 2, 4, 8):
            with m.If(d[f"sz{size}"]):
                m.d.comb += [val.eq(Mux(d["signed"], cur[:8 * size].as_signed(), cur[:8 * size])),
                             step_out.eq(cur >> (8 * size))]
        kb = (K - 1).bit_length()
        uaddr = Mux(d["addr0"], 0, Mux(d["convw"], ((e & (K - 1)) << conv.index_bits) | (e >> kb), e))

        # ---- cq: the element on its way to its unit, a valid flag per target (each unit's cfg valid a flip-flop),
        # with a skid register `sk` behind it: an element goes (emit) while the skid is empty, so the units' ready
        # reaches only cq's and the skid's enables, never the burst's counters and beat registers behind emit
        cq_targets = ("norm", "rq", "table", "conv", "scan", "had", "embed")
        # the scan's m_y of the element that enters cq, from the scratch copies, each read two clocks ahead (rtl.ebr:
        # for synthesis the word leaves the block's output register, not its 5.8 ns read): a at the element one
        # clock on (e, or e + 1 as one goes), b at the one after it; the element going in between chooses (a
        # step's first element goes at least the DRAM's latency after e is reset). The m_y elements of a pair
        # step are written to both copies at e (that step's reads, which may meet its writes, are not used)
        went = Signal(name="pm_went")
        m.d.sync += went.eq(emit)
        pm_word = Mux(went, pms[1].read(m, Mux(emit, e2, e1)), pms[0].read(m, Mux(emit, e1, e)))
        for pm in pms:
            pm.write(m, e, val, emit & d["t_pair"])
        fields = {"val": signed(64), "my": 1, "pm": pms[0].width, "uaddr": len(units["norm"].cfg.payload.addr),
                  "kind": 3, "saddr": len(scan.cfg.payload.addr), "index": 2}
        cq = {f: Signal(w, name=f"cq_{f}") for f, w in fields.items()}
        sk = {f: Signal(w, name=f"sk_{f}") for f, w in fields.items()}
        cq_v = {t: Signal(name=f"cq_v_{t}") for t in cq_targets}
        sk_v = {t: Signal(name=f"sk_v_{t}") for t in cq_targets}
        sk_full = Signal(name="sk_full")  # any sk_v: a load's element has one target
        new = {"val": val, "uaddr": uaddr, "kind": d["kind"], "index": d["index"], "my": d["my"], "pm": pm_word,
               "saddr": (d["kind"][:2] << scan.index_bits) | Mux(d["fixed"], d["index"], e)}
        free = Signal(name="cq_free")  # cq empty or its element taken this cycle
        m.d.comb += [free.eq(~(cq_v["scan"] & ~scan.cfg.ready) & ~(cq_v["had"] & ~had.cfg.ready)
                             & ~(cq_v["embed"] & ~rq.i.ready)),
                     emit.eq(cur_v & ~sk_full)]
        with m.If(free):
            m.d.sync += [cq[f].eq(Mux(sk_full, sk[f], new[f])) for f in fields]
            m.d.sync += [cq_v[t].eq(Mux(sk_full, sk_v[t], emit & d[f"t_{t}"])) for t in cq_targets]
            m.d.sync += sk_full.eq(0)
        with m.Elif(emit):
            m.d.sync += [sk[f].eq(new[f]) for f in fields] + [sk_v[t].eq(d[f"t_{t}"]) for t in cq_targets]
            m.d.sync += sk_full.eq(1)
        for t in ("norm", "rq", "table", "conv"):
            u = units[t]
            m.d.comb += [u.cfg.valid.eq(cq_v[t]), u.cfg.payload.kind.eq(cq["kind"]),
                         u.cfg.payload.addr.eq(cq["uaddr"]), u.cfg.payload.value.eq(cq["val"])]
        # (m_y registered into cq with its element: no block RAM read ahead of the scan's cfg logic, and a stalled
        # cq holds its m_y)
        m.d.comb += [scan.cfg.valid.eq(cq_v["scan"]), scan.cfg.payload.addr.eq(cq["saddr"]),
                     scan.cfg.payload.data.eq(Mux(cq["my"], cq["pm"] | (cq["val"] << su.MY_BITS), cq["val"])),
                     had.cfg.valid.eq(cq_v["had"]), had.cfg.payload.addr.eq(cq["index"]),
                     had.cfg.payload.data.eq(cq["val"])]
        with m.If(cq_v["embed"]):
            m.d.comb += [rq.i.valid.eq(1), rq.i.payload.v.eq(cq["val"]), rq.i.payload.idx.eq(0),
                         rq.i.payload.uniform.eq(1), rq.i.payload.bias.eq(0), rq.i.payload.wide.eq(1)]

        # ---- the burst: requested once, a beat taken when its last element is going. The beat registers change
        # outside the step's load flag: lst and cur_v, cleared as every step ends, are set in load steps only, so
        # emit and take imply d.load and the wide `cur` sees no decode of the step behind its enable
        want, take, jlast = Signal(), Signal(), Signal()  # jlast == (jb == d.perm1), a register
        m.d.comb += [want.eq(lst & (~cur_v | (emit & jlast))), take.eq(mem_port.data.valid & want)]
        with m.If(emit):
            m.d.sync += [e.eq(e + 1), e1.eq(e1 + 1), e2.eq(e2 + 1), last.eq(e == last_m1), jb.eq(jb + 1),
                         jlast.eq(jb + 1 == d["perm1"]), cur.eq(step_out)]
            with m.If(jlast | last):
                m.d.sync += cur_v.eq(0)
        with m.If(take):
            m.d.sync += [cur.eq(mem_port.data.payload), cur_v.eq(1), jb.eq(0), jlast.eq(d["perm1"] == 0)]
        with m.If(d["load"]):
            m.d.comb += [mem_port.req.valid.eq(~lst), mem_port.req.payload.addr.eq(abase),
                         mem_port.req.payload.beats.eq(d["beats"])]
            with m.If(mem_port.req.ready):
                m.d.sync += lst.eq(1)
            m.d.comb += mem_port.data.ready.eq(want)  # through the shared port
            with m.If(d["t_embed"]):
                writer(rq.o, rbuf_w, rq.o.payload)
                m.d.comb += ld_done.eq(written)
            with m.Else():  # the last element emitted (ld_em) and in cq, not the skid: a register (ld_last) set
                # from the skid's next state, so the step's end reads flip-flops
                with m.If(emit & last):
                    m.d.sync += ld_em.eq(1)
                m.d.sync += ld_last.eq((ld_em | (emit & last)) & (free | ~(sk_full | emit)))
                m.d.comb += ld_done.eq(ld_last)

    def descriptor(self, step) -> dict:
        """A step's constants for the controller's descriptor registers (see elaborate)."""
        _state, _label, sp = step
        out = dict.fromkeys(DESCRIPTOR, 0)
        out["step"] = 1
        if sp[0] == "load":
            _, name, target, kind, index, _sel = sp
            off, dt, shape, rel = self.field(name)
            size, signed_ = np.dtype(dt).itemsize, np.dtype(dt).kind == "i"
            count = int(np.prod(shape, dtype=np.int64))
            beats = -(-count * size // self.B)
            if target == "embed":
                count, beats = self.dm, self.dm // self.B
                out["wn"] = self.dm  # its requantized values written to the residual
            out.update({"load": 1, "off": off, "rel": int(rel), "beats": beats, "last0": int(count == 1),
                        "last_m1": max(count - 2, 0),  # (unread for one element: e_last is set from the start)
                        "perm1": self.B // size - 1, "signed": int(signed_), f"sz{size}": 1, f"t_{target}": 1})
            if target in ("norm", "rq", "table", "conv"):
                out.update(kind=int(kind), addr0=int(kind == Kind.EPS or (kind in (Kind.M, Kind.S) and count == 1)),
                           convw=int(kind == Kind.W))
            elif target == "scan":
                out.update(kind=int(kind), my=int(kind == su.MY), fixed=int(index is not None), index=index or 0)
            elif target == "had":
                out.update(index=index)
        elif sp[1] in ("in_proj", "x_proj", "dt_proj", "out_proj", "lm_head"):
            name, n, k = self.gemv_of(sp[1])
            off, _dt, _shape, rel = self.field(name)
            out.update(gemv=1, off=off, rel=int(rel), n=n, k=k, rq_op=int(sp[1] != "lm_head"),
                       uniform=int(sp[1] == "dt_proj"), bias=int(sp[1] == "dt_proj"), wide=int(sp[1] == "out_proj"))
        if sp[0] == "op":
            dm, D, N, R, HL = self.dm, self.D, self.N, self.R, self.had_lanes
            counts = {"norm": (dm, dm), "in_proj": (dm, 2 * D), "conv": (D, D), "x_proj": (D, R + 2 * N),
                      "dt_proj": (R, D), "silu_z": (D, D), "scan": (D, D), "hadamard": (D // HL, D // HL),
                      "out_proj": (D, dm), "residual": (dm, dm), "lm_head": (dm, self.V)}
            out.update({f"o_{sp[1]}": 1, "rn": counts[sp[1]][0], "wn": counts[sp[1]][1], "bc": int(sp[1] == "scan")})
        return out

    def gemv_of(self, op: str) -> tuple[str, int, int]:
        """(weight field, rows n, columns k) of a GEMV op."""
        dm, D, N, R, V = self.dm, self.D, self.N, self.R, self.V
        return {"in_proj": ("P.in_proj.q", 2 * D, dm), "x_proj": ("P.x_proj.q", R + 2 * N, D),
                "dt_proj": ("P.dt_proj.q", D, R), "out_proj": ("P.out_proj.q", dm, D),
                "lm_head": ("lm_head.q", V, dm)}[op]
