"""Numba twins of qsim.fixed.ops: the same integers, computed fast.

int8 GEMMs with many rows (prefill) run on float32 BLAS over slices of
F32_EXACT_K = 1024 inputs: every product of two int8 values is at most 2**14 in
magnitude, so every partial sum of a slice, in whatever order the BLAS adds,
is an integer of magnitude <= 2**24 and therefore exact in float32; the slices
are summed in int64. On this project's 2-core AVX2 machines that is 4-5x the
Numba loop (56 vs 12 GMAC/s for 256 x 768 x 3072). Few rows (decode) are
memory-bound, and there the Numba loop over the int8 rows, with int32 sums
(exact while K < 131072), reads a quarter of the bytes. torch's CPU
`_int_mm` measured ~1 GMAC/s here. int4-group weights (|q * gs| <= 2040) run
on float64 BLAS, exact below 2**53.
Everything else is explicit integer loops compiled by Numba; the GEMMs and the
scan run in parallel when the work is large enough.
"""

from __future__ import annotations

import numba
import numpy as np

from qsim import hadamard, spec
from qsim.errors import QsimError
from qsim.fixed.ops import lut  # table look-up is a single gather in both backends
from qsim.qweights import IntLinear

_jit = numba.njit(cache=True, nogil=True)
# Threads pay off only above this many inner iterations (GEMM MACs, scan state
# updates); below it, waking the workers costs more than the work.
PARALLEL_MIN_WORK = 1 << 16
I8_MAX_K = 1 << 17  # K * 128 * 128 < 2**31: int8 dot products of this length fit an int32
F32_EXACT_K = 1 << 10  # K * 128 * 128 <= 2**24: int8 dot products of this length are exact in float32
F32_MIN_ROWS = 32  # from this many rows on the BLAS path beats the Numba loop (crossover measured at 16-32)

__all__ = ["conv", "hadamard_rows", "linear", "lut", "prepare_linear", "requantize", "rmsnorm", "scan"]


def prepare_linear(w: IntLinear):
    """(kind, weight laid out for the GEMM): int8 rows as stored (out, in), int4 groups as float64 (in, out)."""
    if w.gs is None:
        if w.q.shape[1] >= I8_MAX_K:
            raise QsimError(f"int8 GEMM: {w.q.shape[1]} inputs would overflow its int32 accumulator")
        return "i8", np.ascontiguousarray(w.q, dtype=np.int8)
    return "f64", np.ascontiguousarray(w.effective().T.astype(np.float64))


@_jit
def _dot_i8(a, b):
    acc = np.int32(0)
    for c in range(a.shape[0]):
        acc += np.int32(a[c]) * np.int32(b[c])
    return acc


def _gemm_i8_impl(x, w):
    """x (M, K) int8 @ w (N, K).T; int32 sums (exact for K < 131072, see the module docstring) widened on store.

    Blocks of 2 x rows by 4 weight rows share each loaded byte across 8 accumulators (measured 1.5-2x
    over one dot product at a time on prefill); single rows and edge columns take plain dot products."""
    m, k = x.shape
    n = w.shape[0]
    out = np.empty((m, n), np.int64)
    for jb in numba.prange((n + 3) // 4):
        j0 = jb * 4
        j1 = min(j0 + 4, n)
        i0 = 0
        if j1 - j0 == 4:
            for i in range(0, m - 1, 2):
                a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.int32(0)
                for c in range(k):
                    xa, xb = np.int32(x[i, c]), np.int32(x[i + 1, c])
                    w0, w1, w2, w3 = np.int32(w[j0, c]), np.int32(w[j0 + 1, c]), np.int32(w[j0 + 2, c]), \
                        np.int32(w[j0 + 3, c])
                    a0 += xa * w0
                    a1 += xa * w1
                    a2 += xa * w2
                    a3 += xa * w3
                    b0 += xb * w0
                    b1 += xb * w1
                    b2 += xb * w2
                    b3 += xb * w3
                out[i, j0], out[i, j0 + 1], out[i, j0 + 2], out[i, j0 + 3] = a0, a1, a2, a3
                out[i + 1, j0], out[i + 1, j0 + 1], out[i + 1, j0 + 2], out[i + 1, j0 + 3] = b0, b1, b2, b3
            i0 = m - m % 2
        for j in range(j0, j1):
            for i in range(i0, m):
                out[i, j] = _dot_i8(x[i], w[j])
    return out


_gemm_i8_parallel = numba.njit(cache=True, nogil=True, parallel=True)(_gemm_i8_impl)
_gemm_i8_serial = _jit(_gemm_i8_impl)


def _gemm_i8_blas(x8, w):
    """x8 (M, K) @ w (N, K).T in float32 BLAS, K sliced so that every slice is exact (module docstring)."""
    xf = x8.astype(np.float32)
    out = None
    for k0 in range(0, w.shape[1], F32_EXACT_K):
        part = (xf[:, k0:k0 + F32_EXACT_K] @ w[:, k0:k0 + F32_EXACT_K].astype(np.float32).T).astype(np.int64)
        out = part if out is None else out + part
    return out


def linear(x, prep) -> np.ndarray:
    kind, wt = prep
    if kind == "f64":
        return (np.asarray(x, dtype=np.float64) @ wt).astype(np.int64)
    x8 = np.ascontiguousarray(x, dtype=np.int8)
    if x8.shape[0] >= F32_MIN_ROWS:
        return _gemm_i8_blas(x8, wt)
    fn = _gemm_i8_parallel if x8.shape[0] * wt.size >= PARALLEL_MIN_WORK else _gemm_i8_serial
    return fn(x8, wt)


@_jit
def _rshift_round(v, s):
    if s == 0:
        return v
    return (v + (np.int64(1) << (s - 1))) >> s


@_jit
def _sat(v, lo, hi):
    """Clamp; the second value is 1 when the clamp changed v (for the saturation counters)."""
    if v < lo:
        return lo, 1
    if v > hi:
        return hi, 1
    return v, 0


@_jit
def _requant2d(acc, m, s, lo, hi):
    out = np.empty(acc.shape, np.int64)
    nsat = 0
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            out[i, j], c = _sat(_rshift_round(acc[i, j] * m[j], s[j]), lo, hi)
            nsat += c
    return out, nsat


def requantize(acc, m, s, bits: int):
    acc = np.ascontiguousarray(acc, dtype=np.int64)
    cols = acc.shape[1]
    m = np.broadcast_to(np.asarray(m, np.int64), (cols,)).copy()
    s = np.broadcast_to(np.asarray(s, np.int64), (cols,)).copy()
    lo, hi = spec.int_range(bits)
    return _requant2d(acc, m, s, lo, hi)


@_jit
def _bit_length(v):
    n = 0
    while v > 0:
        v >>= 1
        n += 1
    return n


@_jit
def _rmsnorm(r, g, eps_int, m, s, tab, tab_bits_minus_frac):
    rows, d = r.shape
    out = np.empty((rows, d), np.int64)
    nsat = 0
    for i in range(rows):
        ss = eps_int
        for j in range(d):
            ss += r[i, j] * r[i, j]
        sh = _bit_length(ss) - 10
        sh += sh & 1
        mant = ss >> sh if sh >= 0 else ss << (-sh)
        t = tab[mant - 256]
        shift = tab_bits_minus_frac + sh // 2
        for j in range(d):
            out[i, j], c = _sat(_rshift_round(_rshift_round(r[i, j] * t, shift) * g[j] * m, s), -128, 127)
            nsat += c
    return out, nsat


def rmsnorm(r, g, eps_int, m, s, rsqrt_tab):
    return _rmsnorm(np.ascontiguousarray(r, np.int64), g.astype(np.int64), eps_int, m, s, rsqrt_tab,
                    spec.RSQRT_TABLE_BITS - spec.NORM_FRAC_BITS)


@_jit
def _conv(x, conv_state, w, b):
    L, D = x.shape
    km1 = conv_state.shape[0]
    xp = np.empty((km1 + L, D), np.int64)
    xp[:km1] = conv_state
    xp[km1:] = x
    acc = np.empty((L, D), np.int64)
    for t in range(L):
        for d in range(D):
            a = b[d]
            for j in range(km1 + 1):
                a += xp[t + j, d] * w[d, j]
            acc[t, d] = a
    return acc, xp[L:].copy()


def conv(x, conv_state, w, b):
    return _conv(np.ascontiguousarray(x, np.int64), conv_state, w, b)


def _scan_impl(xs, dt, B, C, sz, h, a_q, frac, m_h, s_h, Dq, m_y, s_y, exp_tab, state_bits, gated_bits, decay_bits,
               acc_shift):
    L, D = xs.shape
    N = B.shape[1]
    h = h.copy()
    y = np.empty((L, D), np.int64)
    hlo, hhi = -(np.int64(1) << (state_bits - 1)), (np.int64(1) << (state_bits - 1)) - 1
    ylo, yhi = -(np.int64(1) << (gated_bits - 1)), (np.int64(1) << (gated_bits - 1)) - 1
    half = np.int64(1) << (frac - 9)
    sat_h = 0
    sat_y = 0
    for d in numba.prange(D):  # channels are independent; time is the recurrence
        for t in range(L):
            dtd = dt[t, d]
            dx = dtd * xs[t, d]
            acc = Dq[d] * xs[t, d]
            for n in range(N):
                er = (dtd * a_q[d, n] + half) >> (frac - 8)
                dA = _rshift_round(exp_tab[er & 255], min(er >> 8, 40))
                v, c = _sat(_rshift_round(dA * h[d, n], decay_bits) + _rshift_round(dx * B[t, n] * m_h, s_h),
                            hlo, hhi)
                sat_h += c
                h[d, n] = v
                acc += C[t, n] * v
            y[t, d], c = _sat(_rshift_round(_rshift_round(acc, acc_shift) * sz[t, d] * m_y[d], s_y[d]), ylo, yhi)
            sat_y += c
    return y, h, sat_h, sat_y


_scan_parallel = numba.njit(cache=True, nogil=True, parallel=True)(_scan_impl)
_scan_serial = _jit(_scan_impl)


def scan(xs, dt, B, C, sz, h, p: dict):
    c = np.ascontiguousarray
    fn = _scan_parallel if xs.size * B.shape[1] >= PARALLEL_MIN_WORK else _scan_serial
    return fn(c(xs, np.int64), c(dt, np.int64), c(B, np.int64), c(C, np.int64), c(sz, np.int64), h,
                 p["a_q"], p["frac"], p["m_h"], p["s_h"], p["Dq"], p["m_y"], p["s_y"], p["exp_tab"],
                 p["state_bits"], spec.GATED_BITS, spec.DECAY_BITS, spec.scan_acc_shift(p["state_bits"]))


@_jit
def _fwht(y, m, p, base):
    rows = y.shape[0]
    out = np.empty_like(y)
    tmp = np.empty(m * p, np.int64)
    for r in range(rows):
        v = y[r].copy()
        for blk in range(m):  # radix-2 butterflies within each block of p
            o = blk * p
            h = 1
            while h < p:
                for i in range(0, p, 2 * h):
                    for j in range(i, i + h):
                        a, b = v[o + j], v[o + j + h]
                        v[o + j], v[o + j + h] = a + b, a - b
                h *= 2
        for i in range(m):  # then the small base matrix across blocks
            for j in range(p):
                s = 0
                for k in range(m):
                    s += base[i, k] * v[k * p + j]
                tmp[i * p + j] = s
        out[r] = tmp
    return out


def hadamard_rows(y):
    m, p = hadamard.factor(y.shape[-1])
    return _fwht(np.ascontiguousarray(y, np.int64), m, p, hadamard.base_matrix(m))
