"""Look-up tables of the `fixed` datapath, built once at calibration time.

Each int8-input table has 256 entries indexed by ``q + 128``. Executors read
the tables from the artifact; these builders run only in calibration and in
tests.
"""

from __future__ import annotations

import numpy as np

from qsim import spec

INT8_CODES = np.arange(-128, 128, dtype=np.float64)


def _quantized(values, s_out: float, bits: int, signed: bool) -> np.ndarray:
    q = spec.round_half_up(values / s_out)
    lo, hi = spec.int_range(bits, signed)
    return np.clip(q, lo, hi).astype(np.int64)


def silu(v):
    return v / (1.0 + np.exp(-v))


def softplus(v):
    return np.logaddexp(0.0, v)


def silu_table(s_in: float, s_out: float) -> np.ndarray:
    """int8 -> int8: SiLU(q * s_in) in scale s_out."""
    return _quantized(silu(INT8_CODES * s_in), s_out, 8, signed=True)


def gate_table(s_in: float, s_out: float) -> np.ndarray:
    """int8 -> signed GATE_BITS: SiLU(z) for gating the scan output."""
    return _quantized(silu(INT8_CODES * s_in), s_out, spec.GATE_BITS, signed=True)


def softplus_table(s_in: float, s_out: float) -> np.ndarray:
    """int8 -> unsigned DT_BITS: softplus(q * s_in) in scale s_out (dt is non-negative)."""
    return _quantized(softplus(INT8_CODES * s_in), s_out, spec.DT_BITS, signed=False)


def _largest(ok, hi: int) -> int:
    """The largest k in [0, hi] with ok(k), for a predicate true up to some k and false after."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def exp2_frac_table() -> np.ndarray:
    """Q15 values round_half_up(2**15 * 2**(-i/256)), i in [0, 256): the fractional part of the state decay.

    Integer-defined, so every machine gets the same table: T[i] is the largest k with
    k - 1/2 <= 2**(15 - i/256), i.e. (2k - 1)**256 <= 2**(16*256 - i)."""
    n, one = 1 << spec.EXP_FRAC_BITS, spec.DECAY_BITS
    return np.array([_largest(lambda k, i=i: (2 * k - 1) ** n <= 1 << ((one + 1) * n - i), 1 << one)
                     for i in range(n)], dtype=np.int64)


def rsqrt_table() -> np.ndarray:
    """round_half_up(2**19 / sqrt(m)) for the normalized mantissa m in [256, 1024).

    Integer-defined: R[m - 256] is the largest k with k - 1/2 <= 2**19 / sqrt(m), i.e. m (2k - 1)**2 <= 2**40."""
    b = spec.RSQRT_TABLE_BITS
    return np.array([_largest(lambda k, m=m: m * (2 * k - 1) ** 2 <= 1 << (2 * b + 2), 1 << b)
                     for m in range(256, 1024)], dtype=np.int64)
