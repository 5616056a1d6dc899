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


def exp2_frac_table() -> np.ndarray:
    """Q15 values of 2**(-i/256), i in [0, 256): the fractional part of the state decay."""
    i = np.arange(1 << spec.EXP_FRAC_BITS, dtype=np.float64)
    return spec.round_half_up(2.0**spec.DECAY_BITS * np.exp2(-i / (1 << spec.EXP_FRAC_BITS))).astype(np.int64)


def rsqrt_table() -> np.ndarray:
    """round(2**19 / sqrt(m)) for the normalized mantissa m in [256, 1024)."""
    m = np.arange(256, 1024, dtype=np.float64)
    return spec.round_half_up(2.0**spec.RSQRT_TABLE_BITS / np.sqrt(m)).astype(np.int64)
