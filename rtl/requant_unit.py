"""Requantization unit for the decode engine: spec.requantize (SPEC 2.3) of GEMV accumulators, bit for bit.

y = saturate(rshift_round((v + b) * m, s), 8 or RESIDUAL_BITS): qsim.fixed.executor `_requant` of
in_proj / x_proj / out_proj (per output row m, s), of dt_proj (its int32 bias b per row, one m, s) and of the
embedding row (one m, s, residual width). One value per beat; each beat says which row it is (`idx`) and how
to treat it:

  idx      the row: selects b[idx], and m[idx], s[idx] unless `uniform`
  uniform  use m[0], s[0] (a layer-wide multiplier and shift)
  bias     add b[idx] before the multiply (dt_proj)
  wide     saturate to RESIDUAL_BITS (out_proj, embedding) instead of int8

Run-time constants (rtl.table_unit's cfg convention, cfg.ready always high): Kind.M addr row: m (1 <= m < 2**31);
Kind.S addr row: s in [0, 62]; Kind.VEC addr row: b (int32). Elaboration: max_rows (the most rows one op
requantizes), in_bits (the accumulator width, 32 for the GEMV unit's int32).

Pipeline (stage = cycles after issue): 0 issue, m/s/b memory reads; 1 data; 2 data registered (no logic behind a
block RAM); 3 v + b; 6 * m (Pipeline.mul); 7 2 * prod >> s (halves); 8 the range checks and the rounding add (for
both widths); 9 saturated (the width selected), into the output FIFO (REQUANT_STAGE); readable FIFO_LATENCY cycles later
(the cycle contract, requant_unit_cycles, is in qsim.hw.units).
The issue stage holds off when the output FIFO could fill (credits), as in rtl.table_unit.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qsim import spec
from qsim.hw.units import REQUANT_LATENCY, REQUANT_STAGE  # noqa: F401 (REQUANT_LATENCY: rtl.engine imports it here)
from rtl.ebr import RegisteredMemory
from rtl.pipeline import MUL_LATENCY, Pipeline
from rtl.table_unit import (
    Kind,
    OutFifo,
    beat,
    cfg_signature,
    fifo_depth,
    halves,
    round_saturate_split,
)

RESIDUAL = signed(spec.RESIDUAL_BITS)
if REQUANT_STAGE != 6 + MUL_LATENCY:  # the contract's stage (qsim.hw.units) is this pipeline's
    raise AssertionError(f"qsim.hw.units.REQUANT_STAGE {REQUANT_STAGE} != 6 + MUL_LATENCY {MUL_LATENCY}")


def in_layout(max_rows: int, in_bits: int) -> data.StructLayout:
    return data.StructLayout({"v": signed(in_bits), "idx": unsigned(max(max_rows - 1, 1).bit_length()),
                              "uniform": 1, "bias": 1, "wide": 1})


class RequantUnit(wiring.Component):
    def __init__(self, *, max_rows: int, in_bits: int = 32, primitive: bool = False):
        if max_rows < 1 or not 1 <= in_bits <= 33:
            raise ValueError(f"requant unit: max_rows {max_rows} >= 1 and in_bits {in_bits} in [1, 33]")
        self.max_rows, self.in_bits, self.primitive = max_rows, in_bits, primitive
        self.idx_bits = max(max_rows - 1, 1).bit_length()
        super().__init__({
            "cfg": In(cfg_signature()),
            "i": In(stream.Signature(in_layout(max_rows, in_bits))),
            "o": Out(stream.Signature(RESIDUAL)),
        })

    def load_beats(self, m, s, b=None) -> list[dict]:
        """Per-row (or one-element) m and s, and optionally the per-row bias b."""
        beats = [beat(Kind.M, k, v) for k, v in enumerate(m)] + [beat(Kind.S, k, v) for k, v in enumerate(s)]
        return beats + ([beat(Kind.VEC, k, v) for k, v in enumerate(b)] if b is not None else [])

    def elaborate(self, platform):
        m = Module()
        pl = Pipeline(m, primitive=self.primitive)
        cfg, n = self.cfg, self.max_rows
        m.d.comb += cfg.ready.eq(1)

        # m, s, b: read at the beat's row, each word registered in its block (rtl.ebr: for synthesis, the DP16KD's
        # output register) and taken at stage 2 as it is. Written by cfg beats only, between ops
        mems = {}
        for kind, name, width in ((Kind.M, "m", 31), (Kind.S, "s", 6), (Kind.VEC, "b", 32)):
            mems[name] = mem = RegisteredMemory(width=width, depth=n, name=name, primitive=self.primitive)
            mem.build(m)
            mem.write(m, cfg.payload.addr[:self.idx_bits], cfg.payload.value[:width],
                      cfg.valid & (cfg.payload.kind == kind))

        out = OutFifo(m, self.o, spec.RESIDUAL_BITS, fifo_depth(REQUANT_STAGE))
        issue = Signal()
        p = self.i.payload
        m.d.comb += [self.i.ready.eq(out.room), issue.eq(self.i.valid & out.room)]  # ready without valid
        row = Mux(p.uniform, 0, p.idx)
        q = {name: pl.put(mems[name].read(m, a), 2) for name, a in (("m", row), ("s", row), ("b", p.idx))}

        v = pl.reg(issue, 1, "v")
        val = pl.reg(p.v, 1, "val")
        bias, wide = pl.reg(p.bias, 1, "bias"), pl.reg(p.wide, 1, "wide")
        mult = pl.put(Signal(signed(32), name="mult"), 2)
        m.d.comb += mult.eq(q["m"])
        acc = pl.reg(pl.at(val, 2) + Mux(pl.at(bias, 2), q["b"].as_signed(), 0), 3, "acc", signed(self.in_bits + 1))
        prod = pl.mul(acc, mult, 3, "prod")
        rnd = pl.reg(halves(prod, pl.at(q["s"], 3 + MUL_LATENCY)), 4 + MUL_LATENCY, "rnd", signed(len(prod) + 1))
        y = pl.reg(Mux(pl.at(wide, REQUANT_STAGE - 1), round_saturate_split(pl, rnd, RESIDUAL, REQUANT_STAGE - 1, "wide"),
                       round_saturate_split(pl, rnd, signed(8), REQUANT_STAGE - 1, "narrow")), REQUANT_STAGE, "y",
                   RESIDUAL)
        out.connect(issue, pl.at(v, REQUANT_STAGE), y)
        return m
