"""Cycle counts of the selective-scan unit and the Hadamard unit: the contract with RTL.

The RTL components (issue 4) implement exactly these formulas, and their
cocotb runs are compared with them (tests/hw/test_hw_rtl_agreement.py). To
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

Measured cycle counts (reports/rtl/cycles.json) are expected as a list of
records: {"unit": "scan", "lanes", "d_inner", "d_state", "tokens", "cycles"}
or {"unit": "hadamard", "lanes", "n", "vectors", "cycles"}; other keys (e.g.
"simulator") are kept for display.
"""

from __future__ import annotations

import math

from qsim.errors import QsimError
from qsim.hadamard import factor

SCAN_PIPELINE_LATENCY = 28
SCAN_RECURRENCE_LATENCY = 14
HADAMARD_PASS_LATENCY = 9


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
