"""Cycle counts of the decode engine's units (scan, Hadamard, GEMV, RMSNorm, conv, table, residual, requant):
the contract with RTL.

The RTL components (issues 4 and 14) implement exactly these formulas; their
simulations are compared with them (tests/hw/test_hw_rtl_agreement.py,
tests/rtl/test_rtl_engine_units.py, tests/rtl/test_rtl_engine.py), and
qsim.hw.engine adds them up into the decode engine's cycles per token. To
change a formula, change it here, in this docstring, together with the RTL.

Scan unit (fully pipelined, state held on chip)
    Per token it updates all ``d_inner * d_state`` state elements, ``lanes`` per
    cycle: h = decay*h + (dt*x)*B, y += C*h. A state element is updated again
    only after its previous update has been written back, so a token takes at
    least SCAN_RECURRENCE_LATENCY cycles:

        per_token = max(ceil(d_inner * d_state / lanes), SCAN_RECURRENCE_LATENCY)
        scan_unit_cycles = tokens * per_token + SCAN_PIPELINE_LATENCY   (0 if tokens == 0)

    SCAN_PIPELINE_LATENCY is paid once per burst of back-to-back tokens (one
    layer's prefill, or one decode step): stages dt*A, exp table, decay*h and
    (dt*x)*B, add, C*h, accumulate/requantize.

Hadamard unit (serialized passes over an on-chip vector buffer)
    n = m * 2**k with (m, 2**k) = qsim.hadamard.factor(n), the spec's own split.
    ``lanes`` adders each do one add or subtract per cycle. A radix-2 pass does
    n add/subs (ceil(n/lanes) cycles); the H_m stage does n*(m-1) add/subs, run
    as m-1 sweeps of ceil(n/lanes) cycles. Each pass reads what the previous one
    wrote, so the pipeline drains HADAMARD_PASS_LATENCY cycles per pass:

        passes = k + (m - 1)
        hadamard_unit_cycles = vectors * passes * (ceil(n / lanes) + HADAMARD_PASS_LATENCY)

GEMV unit (weights streamed from memory, rtl/gemv_unit.py; tests/rtl/test_rtl_gemv.py)
    y = W x with W (n, k) int8 in memory, rows ``bus_bytes``-aligned. ``rows``
    output rows in parallel, ``lanes`` MACs each, so a bus beat (one row's
    ``bus_bytes`` columns) takes P = bus_bytes / lanes passes. The memory has a
    fixed ``latency`` (request accepted to first beat) and gives one beat per
    cycle (rtl/dram.py). Counted from the cycle the command is accepted (cycle 0)
    to the cycle of the last output, inclusive, with x streamed one value per
    cycle from cycle 1 + x_delay and no back-pressure:

        C = ceil(k / bus_bytes)  chunks per row      G = ceil(n / rows)  row groups
        r = n - (G - 1) * rows   rows of the last group
        T(q) = max(q, P)         cycles per chunk of a group of q rows
        first = 1 + max(latency, k + x_delay + 1)   first beat taken (after x is loaded: each value is
                                                   registered as it arrives, stored a cycle later)
        E = GEMV_PIPELINE_LATENCY + ceil(log4(lanes))   (gemv_pipeline_latency)
        G == 1: out = first + r - 1 + (C - 1) * T(r) + P + E
        G > 1:  out = first + rows - 1 + ((G - 1) * C - 1) * T(rows) + P + E + max(C * T(r), rows)
        gemv_unit_cycles = out + r

    ``out`` is the cycle of the last group's first output; the ``max`` with
    ``rows`` is the previous group's outputs still leaving (tiny k). With
    rows * lanes >= bus_bytes, T(rows) = rows: one beat per cycle, the memory is
    the bottleneck (n * C beats). E, a group's last beat to its first output
    less the passes, covers issue, x read, products (operands and product
    registered twice, for a DSP placed away from its logic), the adder tree
    (ceil(log4 lanes) register levels), accumulator, output FIFO and output
    register. The unit takes the next command after the last output.

Small units of the decode engine (rtl/rmsnorm_unit.py, rtl/conv_unit.py, rtl/table_unit.py,
rtl/requant_unit.py)
    Each formula counts the cycles of one token's vector from the first input
    transfer to the last output transfer, both inclusive, when the inputs
    arrive back to back (valid held high) and the output is always ready. Gaps
    on either side only add the idle cycles. Every unit issues ``lanes``
    elements per cycle; beats(n, lanes) = n / lanes (lanes divides n).

        table_unit_cycles    = beats(n) + TABLE_LATENCY
        residual_unit_cycles = beats(d_model) + RESIDUAL_LATENCY
        conv_unit_cycles     = beats(d_inner) + CONV_LATENCY
        rmsnorm_unit_cycles  = 2 * beats(d_model) + RMSNORM_GAP + RMSNORM_OUT_LATENCY - 1
        requant_unit_cycles  = n + REQUANT_LATENCY  (one value a cycle)

    Constants are loaded through each unit's ``cfg`` stream at one beat per
    cycle (ready is always high), so a load takes exactly its beat count
    (``*_cfg_beats``); the engine loads a layer's constants between tokens.

    Latencies (stage of the output FIFO write + FIFO_LATENCY, the
    SyncFIFOBuffered write-to-readable delay):

      table     memory read (1 cycle), into the FIFO
      residual  operands registered (1), add and saturate (2), into the FIFO
      conv      memory data (1), taps and weights registered (2), x*w (3),
                + b and sum (4), *m (7), halves (8), rounded and saturated (9),
                SiLU table read (10), into the FIFO
      rmsnorm   pass 1: rows in, r*r (3 cycles), lane sum (4), accumulated (5);
                RMSNORM_GAP cycles from the last input beat to the first pass-2
                issue (ss + eps, bit length, mantissa, rsqrt ROM, registered);
                pass 2: RMSNORM_OUT_LATENCY after each issue (r*t, rounded, *g,
                *m, rounded, saturated, FIFO)
      requant   issue and m/s/b reads (0), data (1), v + b (2), * m (5: the
                3-cycle rtl.pipeline multiplier), 2 * v >> s (6), rounded and
                saturated into the FIFO (7)

Measured cycle counts (reports/rtl/cycles.json) are expected as a list of
records: {"unit": "scan", "lanes", "d_inner", "d_state", "tokens", "cycles"}
or {"unit": "hadamard", "lanes", "n", "vectors", "cycles"}; other keys (e.g.
"simulator") are kept for display.
"""

from __future__ import annotations

import math

from qsim.errors import QsimError
from qsim.hadamard import factor

SCAN_PIPELINE_LATENCY = 32
SCAN_RECURRENCE_LATENCY = 16
HADAMARD_PASS_LATENCY = 11
GEMV_PIPELINE_LATENCY = 9  # without the adder tree: plus gemv_tree_levels(lanes)
FIFO_LATENCY = 2  # amaranth.lib.fifo.SyncFIFOBuffered: written on cycle c, readable (and taken) on c + 2
TABLE_STAGE = 2  # the table read (address registered in the block), its word registered
TABLE_LATENCY = TABLE_STAGE + FIFO_LATENCY
RESIDUAL_STAGE = 2  # operands registered, then added and saturated
RESIDUAL_LATENCY = RESIDUAL_STAGE + FIFO_LATENCY
CONV_STAGE = 12
CONV_LATENCY = CONV_STAGE + FIFO_LATENCY
RMSNORM_GAP = 11  # cycles from the last pass-1 issue to the first pass-2 issue
RMSNORM_STAGE = 14
RMSNORM_OUT_LATENCY = RMSNORM_STAGE + FIFO_LATENCY
REQUANT_STAGE = 9  # 6 + the multiplier's 3 cycles (rtl.pipeline.MUL_LATENCY; rtl.requant_unit checks it)
REQUANT_LATENCY = REQUANT_STAGE + FIFO_LATENCY
TABLE_ENTRIES = 256  # a table is indexed by an int8 code


def _positive(**values: int) -> None:
    for name, v in values.items():
        if int(v) != v or v < 1:
            raise QsimError(f"unit cycles: {name} must be a positive integer, got {v!r}")


def scan_unit_cycles(lanes: int, d_inner: int, d_state: int, tokens: int) -> int:
    """Cycles for one burst of `tokens` tokens through the scan unit (formula in the module docstring)."""
    _positive(lanes=lanes, d_inner=d_inner, d_state=d_state)
    if tokens == 0:
        return 0
    _positive(tokens=tokens)
    per_token = max(math.ceil(d_inner * d_state / lanes), SCAN_RECURRENCE_LATENCY)
    return tokens * per_token + SCAN_PIPELINE_LATENCY


def hadamard_passes(n: int) -> int:
    """Radix-2 passes plus H_m sweeps for a transform of size n."""
    m, p = factor(n)
    return p.bit_length() - 1 + (m - 1)


def hadamard_adds(n: int) -> int:
    """Add/subtract operations in one transform of size n (energy counts them)."""
    return n * hadamard_passes(n)


def hadamard_unit_cycles(lanes: int, n: int, vectors: int) -> int:
    """Cycles to transform `vectors` vectors of size n (formula in the module docstring)."""
    _positive(lanes=lanes, n=n)
    if vectors == 0:
        return 0
    _positive(vectors=vectors)
    return vectors * hadamard_passes(n) * (math.ceil(n / lanes) + HADAMARD_PASS_LATENCY)


def gemv_tree_levels(lanes: int) -> int:
    """Register levels of the GEMV unit's per-row adder tree (4 inputs per adder)."""
    levels = 0
    while lanes > 1:
        lanes, levels = -(-lanes // 4), levels + 1
    return levels


def gemv_pipeline_latency(lanes: int) -> int:
    """A group's last beat to its first output, less the passes (formula in the module docstring)."""
    return GEMV_PIPELINE_LATENCY + gemv_tree_levels(lanes)


def gemv_unit_cycles(rows: int, lanes: int, bus_bytes: int, latency: int, n: int, k: int, x_delay: int = 0) -> int:
    """Cycles of one n x k GEMV command on the GEMV unit, accept to last output (module docstring)."""
    _positive(rows=rows, lanes=lanes, bus_bytes=bus_bytes, latency=latency, n=n, k=k)
    if bus_bytes % lanes:
        raise QsimError(f"unit cycles: lanes {lanes} must divide bus_bytes {bus_bytes}")
    P = bus_bytes // lanes
    C, G = math.ceil(k / bus_bytes), math.ceil(n / rows)
    r = n - (G - 1) * rows
    first = 1 + max(latency, k + x_delay + 1)
    tail = P + gemv_pipeline_latency(lanes)
    if G == 1:
        out = first + r - 1 + (C - 1) * max(r, P) + tail
    else:
        out = first + rows - 1 + ((G - 1) * C - 1) * max(rows, P) + tail + max(C * max(r, P), rows)
    return out + r


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


def requant_unit_cycles(n: int) -> int:
    """n values back to back through the requantization unit."""
    return n + REQUANT_LATENCY


def table_cfg_beats() -> int:
    return TABLE_ENTRIES


def rmsnorm_cfg_beats(d_model: int) -> int:
    """g (d_model), eps_int, m, s."""
    return d_model + 3


def conv_cfg_beats(d_inner: int, d_conv: int) -> int:
    """w (d_inner x d_conv), b (d_inner), m, s, the SiLU table (256)."""
    return d_inner * d_conv + d_inner + 2 + TABLE_ENTRIES
