"""Conv unit: one token of the causal depthwise conv (SPEC 7.3, qsim.fixed.ops.conv with L = 1), its requantization
to conv_pre and the SiLU table to xs (the executor's "conv_pre" and "xs"), bit for bit.

Streams, per token, d_inner / lanes beats of `lanes` int8 x (channels in order) with a `first` flag: set on every
beat of a sequence's first token, it reads the window as zeros (a new sequence, SPEC 7.3 "zeros at the start").
Emits per beat `lanes` conv_pre (int8) and `lanes` xs (int8). The window (the d_conv - 1 previous x of every
channel, oldest first) stays in on-chip memory across tokens: read at issue, each bank's word registered, the
addressed bank's selected (rtl.banked), written back shifted by one with the new x three cycles after issue (with
fewer than four rows a layer, a row's window still being written is forwarded from the pipeline, so one row per
token also works).

One unit keeps the windows of `n_layer` layers (a decode engine runs every layer's token through it) in one window
memory, layer-major: layer l's d_inner / lanes rows start at row l * d_inner / lanes (`window_words`, `window_cell`,
`window_segments`), and the window address is that base plus the row counter (one add). The memory is banked
(rtl.banked.BankedMemory `win`, Verilog memories `win0`, `win1`, ...; one DP16KD deep a bank by default): mamba-tiny's
five layers of windows are five block RAMs, and a select among RAMs right behind their 5.8 ns read was the
engine's critical path. With n_layer > 1 the input `layer` says whose
window a beat reads and writes: it is part of the `i` beat (valid whenever i.valid, read in the cycle the beat
transfers), so a token's beats carry its layer and tokens of different layers may follow each other back to back at
the same cycles; `first` zeroes only that layer's window (it is read as zeros). A one-layer build has no `layer` port
(Verilog has no zero-width port; `layer` is then the constant 0). The constants are not per layer: load layer l's
before its tokens.

Run-time constants (rtl.table_unit's cfg convention): Kind.W w[d, j] at addr (j << index_bits) | d;
Kind.VEC b[d]; Kind.M m; Kind.S s; Kind.TABLE silu_conv[q + 128]. cfg is always ready; a beat is registered as it
arrives and written a cycle later (rtl.table_unit.registered_cfg: the sender's valid reaches no write enable),
holding tokens off in that cycle. Elaboration: d_inner, d_conv, lanes, n_layer.

Pipeline (stage = cycles after issue): 0 issue, memory reads; 1 data (window banks, w, b, x); 2 data registered;
3 the window's bank selected, window written; 4 taps and weights registered; 5 x*w per tap; 6 b + sum; 9 * m
(Pipeline.mul); 10 2 * prod >> s (halves); 11 rounded, saturated to int8 = conv_pre, SiLU table read (distributed
RAM, asynchronous); 12 xs registered: conv_pre and xs into the output FIFO (qsim.hw.units.CONV_LATENCY).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qsim.hw.units import CONV_STAGE, TABLE_ENTRIES
from rtl.banked import READ_STAGES, BankedMemory, bank_bits_for
from rtl.ebr import NO_RW_CHECK, RegisteredMemory
from rtl.pipeline import MUL_LATENCY, Pipeline, bits_for
from rtl.table_unit import (
    Kind,
    OutFifo,
    beat,
    cfg_signature,
    fifo_depth,
    halves,
    registered_cfg,
    round_saturate_halves,
    scalar_reg,
    table_beats,
    vector_write,
)

M_SHAPE = signed(32)  # 1 <= m < 2**31 (SPEC 2.3)
S_SHAPE = unsigned(6)  # 0 <= s <= 62
BIAS = signed(32)  # the image's int32 bias (rtl/IMAGE.md 4.4)


class ConvUnit(wiring.Component):
    def __init__(self, *, d_inner: int, d_conv: int, lanes: int, n_layer: int = 1, bank_bits: int | None = None,
                 primitive: bool = False):
        if lanes < 1 or lanes & (lanes - 1) or d_inner % lanes or d_conv < 2 or n_layer < 1:
            raise ValueError(f"conv unit: lanes {lanes} must be a power of two dividing d_inner {d_inner}; "
                             f"d_conv {d_conv} >= 2; n_layer {n_layer} >= 1")
        self.d_inner, self.d_conv, self.lanes, self.rows = d_inner, d_conv, lanes, d_inner // lanes
        self.n_layer, self.primitive = n_layer, primitive
        self.index_bits = max((d_inner - 1).bit_length(), 1)
        if self.index_bits + max((d_conv - 1).bit_length(), 1) > 16:
            raise ValueError("conv unit: w's cfg address does not fit 16 bits")
        super().__init__({
            "cfg": In(cfg_signature()),
            "i": In(stream.Signature(data.StructLayout({"x": data.ArrayLayout(signed(8), lanes), "first": 1}))),
            "o": Out(stream.Signature(data.StructLayout({"pre": data.ArrayLayout(signed(8), lanes),
                                                         "xs": data.ArrayLayout(signed(8), lanes)}))),
        } | ({"layer": In(range(n_layer))} if n_layer > 1 else {}))
        if n_layer == 1:
            self.layer = Const(0)
        width = 8 * (d_conv - 1) * lanes
        self.win = BankedMemory(width=width, depth=self.rows * n_layer, name="win",
                                bank_bits=bank_bits_for(width) if bank_bits is None else bank_bits,
                                primitive=primitive)

    def window_words(self, layer: int) -> range:
        """Layer `layer`'s words of the window memory `win` (row r: lanes channels r*lanes.., d_conv - 1 int8 each,
        oldest first per channel)."""
        if not 0 <= layer < self.n_layer:
            raise ValueError(f"conv unit: layer {layer} outside [0, {self.n_layer})")
        return range(layer * self.rows, (layer + 1) * self.rows)

    def window_cell(self, word: int):
        """The memory cell holding window word `word` (window_words), for a simulation to read."""
        return self.win.cell(word)

    def window_segments(self, layer: int) -> list[tuple[int, range]]:
        """Layer `layer`'s window words as (bank, words of that bank), in word order (memory `win{bank}`)."""
        return self.win.segments(self.window_words(layer))

    def load_beats(self, w, b, m: int, s: int, silu) -> list[dict]:
        """The cfg beats of one layer's conv constants (w (d_inner, d_conv), b (d_inner,), m, s, SiLU table)."""
        if len(w) != self.d_inner or len(w[0]) != self.d_conv or len(b) != self.d_inner:
            raise ValueError("conv unit: w must be (d_inner, d_conv) and b (d_inner,)")
        return ([beat(Kind.W, (j << self.index_bits) | d, w[d][j]) for d in range(self.d_inner)
                 for j in range(self.d_conv)] + [beat(Kind.VEC, d, b[d]) for d in range(self.d_inner)]
                + [beat(Kind.M, 0, m), beat(Kind.S, 0, s)] + table_beats(silu))

    def elaborate(self, platform):
        m = Module()
        pl = Pipeline(m, primitive=self.primitive)
        L, K, R, NL = self.lanes, self.d_conv, self.rows, self.n_layer
        lane_bits = (L - 1).bit_length()
        m.d.comb += self.cfg.ready.eq(1)
        cfg = registered_cfg(m, self.cfg)  # written a cycle after it arrives; no token issues while one is written

        # ---- constants: w (rows x lanes x K int8, one byte enable each), b, m, s, the SiLU table
        # w and b read at the issued row, each word registered in its block (rtl.ebr: the DP16KD's output register
        # for synthesis) and taken at stage 2 as it is. Written by cfg beats only, in cycles no token issues
        wmem = RegisteredMemory(width=8 * K * L, depth=R, name="w", primitive=self.primitive, granularity=8)
        bmem = RegisteredMemory(width=32 * L, depth=R, name="b", primitive=self.primitive, granularity=32)
        wmem.build(m)
        bmem.build(m)
        ww = wmem.w
        d = cfg.payload.addr[:self.index_bits]
        tap = cfg.payload.addr[self.index_bits:16]
        hit = cfg.valid & (cfg.payload.kind == Kind.W)
        m.d.comb += [ww.addr.eq(d >> lane_bits), ww.data.eq(Cat(*[cfg.payload.value[:8]] * (K * L)))]
        for j in range(L):
            for k in range(K):
                m.d.comb += ww.en[j * K + k].eq(hit & (tap == k) & ((d & (L - 1)) == j if L > 1 else 1))
        vector_write(m, cfg, Kind.VEC, bmem, L, BIAS, self.d_inner)
        mult = scalar_reg(m, cfg, Kind.M, M_SHAPE, "m")
        shift = scalar_reg(m, cfg, Kind.S, S_SHAPE, "s")
        # the SiLU table read asynchronously at conv_pre's register, its word registered into the FIFO's data; in
        # distributed RAM (ram_style): yosys would fold the address register into a block RAM's synchronous read,
        # whose 5.8 ns clock-to-out then reached the FIFO (seed 1's routed path at 4875867)
        m.submodules.silu = silu = Memory(shape=unsigned(8), depth=TABLE_ENTRIES, init=[],
                                          attrs=NO_RW_CHECK | {"ram_style": "distributed"})
        sw = silu.write_port()
        m.d.comb += [sw.addr.eq(cfg.payload.addr[:8]), sw.data.eq(cfg.payload.value[:8]),
                     sw.en.eq(cfg.valid & (cfg.payload.kind == Kind.TABLE))]

        # ---- issue: one row of lanes channels per cycle, rows in order
        out = OutFifo(m, self.o, 16 * L, fifo_depth(CONV_STAGE))
        issue, row = Signal(), Signal(range(R))
        m.d.comb += [self.i.ready.eq(out.room & ~cfg.valid), issue.eq(self.i.valid & self.i.ready)]  # (not on valid)
        with m.If(issue):
            m.d.sync += row.eq(Mux(row == R - 1, 0, row + 1))
        # the windows, layer-major; a beat's address: its layer's base (a table of constants, no multiplier) plus
        # the row
        self.win.build(m)
        waddr = pl.put(Signal(range(R * NL)), 0)
        m.d.comb += waddr.eq(Array(Const(i * R, len(waddr)) for i in range(NL))[self.layer] + row)
        w_q, b_q = pl.put(wmem.read(m, row), 2), pl.put(bmem.read(m, row), 2)

        # ---- stage 1: memory data, registered at stage 2 (a block RAM's clock-to-out leaves no room for logic
        # behind it); stage 3 (WS): the window's bank selected, the window written back shifted
        old_win = self.win.read(pl, waddr, 0, "win")
        v1, WS = pl.reg(issue, 1, "v"), READ_STAGES
        first_ws = pl.at(pl.reg(self.i.payload.first, 1, "first"), WS)
        x_ws = [pl.at(pl.reg(self.i.payload.x[j], 1, f"x{j}"), WS) for j in range(L)]
        new_win = Signal(self.win.width)
        if R < WS + 1:  # a row read again before the window of its previous beat is written: forward that window
            nw = pl.reg(new_win, WS + 1, "nw")
            for st in range(2 * WS, WS, -1):  # the newest write last
                hit = pl.at(v1, st) & (pl.at(waddr, st) == pl.at(waddr, WS))
                old_win = Mux(hit, pl.at(nw, st), old_win)
        taps = []
        for j in range(L):
            old = [old_win[(j * (K - 1) + i) * 8:(j * (K - 1) + i + 1) * 8].as_signed() for i in range(K - 1)]
            xp = [Mux(first_ws, 0, o) for o in old] + [x_ws[j]]  # oldest first; zeros at a sequence start
            m.d.comb += new_win[8 * (K - 1) * j:8 * (K - 1) * (j + 1)].eq(Cat(*xp[1:]))
            taps.append(xp)
        self.win.write(m, pl.at(waddr, WS), new_win, pl.at(v1, WS))
        # stage 4: taps and weights registered; 5: x*w per tap
        prods = []
        for j, xp in enumerate(taps):
            xr = [pl.reg(xp[k], WS + 1, f"xw{j}_{k}", signed(8)) for k in range(K)]
            wr_ = [pl.at(w_q, WS + 1)[(j * K + k) * 8:(j * K + k + 1) * 8].as_signed() for k in range(K)]
            prods.append([pl.reg(xr[k] * wr_[k], WS + 2, f"p{j}_{k}", signed(16)) for k in range(K)])

        # ---- stage 6 on: acc = b + sum x*w; requantized; SiLU table
        SUM = WS + 3
        # b + sum x*w exactly: int32 plus d_conv int8 x int8 products (33 bits at d_conv 4: two 17-bit pieces into
        # the multiplier, four partial products to sum, not six as a 36-bit accumulator made them)
        acc_shape = bits_for(-(1 << 31) - K * 128 * 127, (1 << 31) - 1 + K * 128 * 128)
        pl.put(mult, SUM)
        pre, xs = [], []
        for j in range(L):
            bj = pl.at(b_q, SUM - 1)[32 * j:32 * (j + 1)].as_signed()
            acc = pl.reg(bj + sum(prods[j]), SUM, f"acc{j}", acc_shape)
            prod = pl.mul(acc, mult, SUM, f"am{j}")
            rounded = pl.reg(halves(prod, shift), SUM + MUL_LATENCY + 1, f"r{j}")
            q = pl.reg(round_saturate_halves(rounded, signed(8)), CONV_STAGE - 1, f"pre{j}")
            p = silu.read_port(domain="comb")
            m.d.comb += p.addr.eq(Cat(q[:7], ~q[7]))
            pre.append(pl.at(q, CONV_STAGE))
            xs.append(pl.reg(p.data, CONV_STAGE, f"xs{j}"))
        assert SUM + MUL_LATENCY + 2 == CONV_STAGE - 1
        out.connect(issue, pl.at(v1, CONV_STAGE), Cat(*pre, *xs))
        return m
