"""The integer spec: rounding, saturation, requantization and fixed-point formats.

The normative text is qsim/SPEC.md (same version); this module is its one
implementation of the shared rules, and every executor (NumPy, Numba, CUDA,
RTL) must reproduce these integers exactly. Any change to a rule here is a
spec change and bumps SPEC_VERSION.

Rules
-----
* Rounding: one rule everywhere, *round half up* done as
  ``(v + 2**(s-1)) >> s`` with an arithmetic (floor) shift; ``s == 0`` is
  the identity. This is what RTL does with an adder and a wire shift.
* Requantization: ``sat_b(rshift_round(acc * M, S))`` with an integer
  multiplier ``1 <= M < 2**31`` (normally 15 bits, ``2**14 <= M < 2**15``) and
  shift ``0 <= S <= 62``. An artifact is valid only if every product stays
  below 2**62 in magnitude (qsim.artifact_check proves it from the declared
  widths when the artifact loads), so 64-bit signed arithmetic is exact.
* Saturation: clamp to the signed range of the target width
  (``[-2**(b-1), 2**(b-1)-1]``) or, for unsigned formats, ``[0, 2**b-1]``.
  Every clamp that changes a value is counted.
* Reals become integers (calibration, tables) by ``floor(v + 1/2)`` on the
  exact value of the float64 ``v``: the same half-up rule, with no rounding
  of the sum. The fixed tables (exp2 fraction, rsqrt) are defined by integer
  criteria and computed without floats.
"""

from __future__ import annotations

import math

import numpy as np

from qsim.errors import QsimError

SPEC_VERSION = "1.5.0"
# Versions a loader accepts: 1.5.0 added the Mamba-2 SSD datapath (SPEC.md section 15) and changed nothing in
# Mamba-1's, so a 1.4.0 (Mamba-1) artifact is read as written (qsim/artifacts/mamba-tiny-w8a8 is one).
ACCEPTED_SPEC_VERSIONS = ("1.4.0", "1.5.0")

MULT_BITS = 15  # requantization multipliers live in [2**14, 2**15)
RESIDUAL_BITS = 24  # residual stream width
GATED_BITS = 16  # scan output y*SiLU(z), the Hadamard input
DT_BITS = 15  # dt = softplus(dt_pre) is unsigned 15-bit: 8 bits put 3/4 of a long-tailed dt on codes 0-2
DT_MAX = (1 << DT_BITS) - 1
GATE_BITS = 16  # SiLU(z), the scan output's gate, is signed 16-bit: 8 bits cost ~1 dB of scan-output SQNR
GATE_MAX = (1 << (GATE_BITS - 1)) - 1
SCAN_ACC_BITS = 25  # y's accumulator C.h + D*x, narrowed by scan_acc_shift, fits this (checked when an artifact loads)
EXP_FRAC_BITS = 8  # the 2**-frac table has 2**EXP_FRAC_BITS entries
DECAY_BITS = 15  # fraction bits of the state decay exp(-dt|A|): unsigned Q15 in [0, 2**15], stored in 16 bits
A_FRAC_MIN, A_FRAC_MAX = 9, 30  # valid fraction bits of the decay exponent a_q (dt*a_q + half stays below 2**32)
DECAY_SHIFT_CAP = 40  # the decay's integer part shifts by min(int, 40); every shift >= 17 already gives 0
STATE_BITS_MIN, STATE_BITS_MAX = 12, 28  # SSM state widths the bounds are proven for
PRODUCT_LIMIT = 1 << 62  # every product and pre-shift sum of a valid artifact stays below this in magnitude
RSQRT_TABLE_BITS = 19  # rsqrt table values are round(2**19 / sqrt(m)), m in [256, 1024)
NORM_FRAC_BITS = 15  # RMSNorm's normalized value r/sqrt(sum r^2) in Q15

# Mamba-2 SSD datapath (SPEC.md section 15)
SSD_STATE_BITS_MIN, SSD_STATE_BITS_MAX = 12, 32  # state widths W the SSD bounds are proven for
SSD_ACC_BITS = 48  # ys's accumulator C.h + Dq*x is exact, never narrowed; a valid layer keeps it below 2**47
SSD_OUT_BITS = 16  # ys = C.h + D*x requantized per channel onto the gated norm's common scale
GATE_PRODUCT_SHIFT = 7  # ys * SiLU(z) (int16 x int16, |.| <= 2**30) shifted to |g| <= 2**23 for the gated RMSNorm
GATE_PRODUCT_MAX = 1 << 23  # |g| bound: rshift_round(2**30, 7)


def scan_acc_shift(state_bits: int) -> int:
    """Right shift (round half up) of y's accumulator C.h + D*x before the gate multiply.

    max(0, state_bits - 13): with d_state 16, |C.h| <= 16 * 2**(state_bits-1) * 128 = 2**(state_bits + 10)
    shifts to at most 2**23, leaving SCAN_ACC_BITS (signed) a bit of headroom for D*x (an artifact whose
    worst case does not fit is refused when it loads). The dropped bits lie far below one output LSB,
    whose size the largest gated values set."""
    return max(0, state_bits + 12 - SCAN_ACC_BITS)


def scan_dq_limit(d_state: int, state_bits: int) -> int:
    """Largest |Dq| for which y's narrowed accumulator rshift_round(C.h + Dq*x, scan_acc_shift) fits
    SCAN_ACC_BITS signed bits for every int8 C and x and every state; -1 when none does (d_state too large)."""
    k = scan_acc_shift(state_bits)
    room = ((1 << (SCAN_ACC_BITS - 1)) << k) - ((1 << k) >> 1) - d_state * (1 << (state_bits - 1)) * 128 - 1
    return room // 128 if room > 0 else -1


def ssd_acc_bound(d_state: int, state_bits: int, dq_maxabs: int) -> int:
    """Largest |C.h + Dq*x| of one Mamba-2 channel: N products int8 x int(W), plus |Dq| * 2**7."""
    return d_state * (1 << 7) * (1 << (state_bits - 1)) + dq_maxabs * (1 << 7)


def ssd_dq_limit(d_state: int, state_bits: int) -> int:
    """Largest |Dq| that keeps ys's accumulator below 2**(SSD_ACC_BITS - 1) for every input; -1 when none does.

    For d_state <= 128 and state_bits <= 32 the C.h part is at most 2**45, leaving |Dq| up to 3 * 2**38 - 1."""
    room = (1 << (SSD_ACC_BITS - 1)) - 1 - ssd_acc_bound(d_state, state_bits, 0)
    return room // 128 if room >= 0 else -1


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def round_half_up(v):
    """floor(v + 1/2) on the exact value of each float64 v (returned as float64).

    ``np.floor(v + 0.5)`` is not that: the sum is rounded first, so 0.49999999999999994 + 0.5 gives 1.0.
    Splitting v into floor(v) and its fraction (both exact for doubles) avoids the rounded sum."""
    v = np.asarray(v, dtype=np.float64)
    f = np.floor(v)
    return f + (v - f >= 0.5)


def rshift_round(v, s):
    """Round-half-up arithmetic right shift of int64 values by s >= 0 (scalar or array).

    The caller keeps |v| + 2**(s-1) below 2**63 (valid artifacts keep it below PRODUCT_LIMIT)."""
    v = np.asarray(v, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return np.right_shift(v + half, s)


def saturate(v, bits: int, signed: bool = True):
    """Clamp to the width; returns (values, number of values changed)."""
    lo, hi = int_range(bits, signed)
    v = np.asarray(v, dtype=np.int64)
    out = np.clip(v, lo, hi)
    return out, int(np.count_nonzero(out != v))


def requantize(acc, m, s, bits: int, signed: bool = True):
    """sat_bits(rshift_round(acc * m, s)); returns (int64 values, saturation count).

    Refuses operands whose product could reach PRODUCT_LIMIT instead of wrapping around in int64
    (artifact_check rules such operands out for a loaded artifact; this guards every other caller)."""
    acc = np.asarray(acc, dtype=np.int64)
    m, s = np.asarray(m, dtype=np.int64), np.asarray(s, dtype=np.int64)
    if acc.size and m.size:
        a_max = int(np.abs(acc).max()) if acc.min() > np.iinfo(np.int64).min else 1 << 63
        if a_max * int(np.abs(m).max()) + ((1 << int(s.max())) >> 1) >= PRODUCT_LIMIT:
            raise QsimError(f"requantize: |acc| {a_max} x multiplier {int(np.abs(m).max())} plus the rounding "
                            "half reaches 2**62; the product would not be exact in 64 bits")
    return saturate(rshift_round(acc * m, s), bits, signed)


def quantize_multiplier(real: float, where: str = "") -> tuple[int, int]:
    """Integer (M, S) with M / 2**S == real to 15 significant bits.

    Large ratios (real >= 2**14) take S == 0 and M == round(real); M must stay
    below 2**31 so that products with 32-bit accumulators fit in int64.
    """
    if not (math.isfinite(real) and real > 0):
        raise QsimError(f"{where}: requantization ratio must be finite and > 0, got {real!r}")
    num, den = float(real).as_integer_ratio()  # exact: den is a power of two
    s = MULT_BITS - 1 - (math.frexp(real)[1] - 1)  # frexp's exponent is floor(log2 real) + 1, exactly
    if s <= 0:
        m = (2 * num + den) // (2 * den)  # floor(real + 1/2)
        if m >= 1 << 31:
            raise QsimError(f"{where}: requantization ratio {real:g} does not fit a 31-bit multiplier")
        return m, 0
    m = (num * 2 ** (s + 1) + den) // (2 * den)  # floor(real * 2**s + 1/2), exactly
    if m >= 1 << MULT_BITS:  # rounding carried into a new bit: m == 2**15
        m, s = m >> 1, s - 1
    if s > 62:
        raise QsimError(f"{where}: requantization ratio {real:g} is too small for a 62-bit shift")
    return m, s


def quantize_multipliers(reals, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Vector form of quantize_multiplier (per output channel)."""
    pairs = [quantize_multiplier(float(r), f"{where}[{i}]") for i, r in enumerate(np.ravel(reals))]
    m = np.array([p[0] for p in pairs], dtype=np.int64)
    s = np.array([p[1] for p in pairs], dtype=np.int64)
    return m, s


def symmetric_scale(absmax: float, bits: int, where: str = "") -> float:
    """Per-tensor symmetric scale absmax / (2**(bits-1) - 1); a zero tensor gets scale 1."""
    if not math.isfinite(absmax):
        raise QsimError(f"{where}: calibration range is not finite ({absmax!r})")
    qmax = (1 << (bits - 1)) - 1
    return float(absmax) / qmax if absmax > 0 else 1.0


def exact_int_matmul(a, b_t) -> np.ndarray:
    """Exact integer a @ b_t.T for integer-valued arrays, using float64 BLAS.

    float64 represents every integer below 2**53 exactly, and sums of exact
    products stay exact while the partial sums stay below 2**53; the bound is
    checked from the operands' magnitudes, so a violation is an error, not a
    silent rounding.
    """
    a = np.asarray(a)
    b_t = np.asarray(b_t)
    k = a.shape[-1]
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b_t).max(initial=0)) * k
    if bound >= 2.0**53:
        raise QsimError(f"integer matmul bound {bound:.3g} exceeds float64's exact range")
    return (a.astype(np.float64) @ b_t.astype(np.float64).T).astype(np.int64)
