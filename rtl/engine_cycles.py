"""Cycle contract of the decode engine's small units (issue 14): RMSNorm, conv, table look-up, residual add.

Each formula counts the cycles of one token's vector from the first input transfer to the last output transfer,
both inclusive, when the inputs arrive back to back (valid held high) and the output is always ready. Gaps on
either side only add the idle cycles. The tests (tests/rtl/test_rtl_engine_units.py) measure these exactly in
simulation. Every unit issues `lanes` elements per cycle; `beats(n, lanes) = n / lanes` (lanes divides n).

Constants are loaded through each unit's `cfg` stream at one beat per cycle (ready is always high), so a load
takes exactly its beat count (`*_cfg_beats`); the engine loads a layer's constants between tokens.

Latencies (stage of the output FIFO write + FIFO_LATENCY, the SyncFIFOBuffered write-to-readable delay):

  table      TABLE_LATENCY      memory read (1 cycle), into the FIFO
  residual   RESIDUAL_LATENCY   add and saturate (1 cycle), into the FIFO
  conv       CONV_LATENCY       memory data (1), x*w (2), + b and sum (3), *m (6), rounded (7), saturated (8),
                                SiLU table read (9), into the FIFO
  rmsnorm    pass 1: rows in, r*r (3 cycles), lane sum (4), accumulated (5); RMSNORM_GAP cycles from the last
             input beat to the first pass-2 issue (ss + eps, bit length, mantissa, rsqrt ROM, registered);
             pass 2: RMSNORM_OUT_LATENCY after each issue (r*t, rounded, *g, *m, rounded, saturated, FIFO)
"""

from __future__ import annotations

FIFO_LATENCY = 2  # amaranth.lib.fifo.SyncFIFOBuffered: written on cycle c, readable (and taken) on c + 2

TABLE_STAGE = 1
TABLE_LATENCY = TABLE_STAGE + FIFO_LATENCY
RESIDUAL_STAGE = 1
RESIDUAL_LATENCY = RESIDUAL_STAGE + FIFO_LATENCY
CONV_STAGE = 9
CONV_LATENCY = CONV_STAGE + FIFO_LATENCY
RMSNORM_GAP = 10  # cycles from the last pass-1 issue to the first pass-2 issue
RMSNORM_STAGE = 13
RMSNORM_OUT_LATENCY = RMSNORM_STAGE + FIFO_LATENCY
TABLE_ENTRIES = 256


def beats(n: int, lanes: int) -> int:
    if lanes < 1 or n % lanes:
        raise ValueError(f"lanes {lanes} must divide the vector length {n}")
    return n // lanes


def table_unit_cycles(n: int, lanes: int) -> int:
    """One vector of n int8 codes through the table look-up."""
    return beats(n, lanes) + TABLE_LATENCY


def residual_unit_cycles(d_model: int, lanes: int) -> int:
    """One residual row: r + out saturated to RESIDUAL_BITS."""
    return beats(d_model, lanes) + RESIDUAL_LATENCY


def conv_unit_cycles(d_inner: int, lanes: int) -> int:
    """One token's x (d_inner int8) to conv_pre and xs."""
    return beats(d_inner, lanes) + CONV_LATENCY


def rmsnorm_unit_cycles(d_model: int, lanes: int) -> int:
    """One residual row to u: pass 1 (rows beats), the normalisation gap, pass 2 (rows issues + latency)."""
    rows = beats(d_model, lanes)
    return rows + RMSNORM_GAP + rows + RMSNORM_OUT_LATENCY - 1


def table_cfg_beats() -> int:
    return TABLE_ENTRIES


def rmsnorm_cfg_beats(d_model: int) -> int:
    """g (d_model), eps_int, m, s."""
    return d_model + 3


def conv_cfg_beats(d_inner: int, d_conv: int) -> int:
    """w (d_inner x d_conv), b (d_inner), m, s, the SiLU table (256)."""
    return d_inner * d_conv + d_inner + 2 + TABLE_ENTRIES
