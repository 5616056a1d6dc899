"""Numba twins of qsim.fixed.ops: the same integers, computed fast.

int8 GEMMs run on torch's integer GEMM (`torch._int_mm`, int32 accumulation:
exact while K * 128 * 127 < 2**31, i.e. K < 132000); int4-group weights
(|q * gs| <= 2040) run on float64 BLAS, exact below 2**53. Everything else is
explicit integer loops compiled by Numba; the scan runs channels in parallel.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from qsim import hadamard, spec
from qsim.fixed.ops import lut  # table look-up is a single gather in both backends
from qsim.qweights import IntLinear

_jit = numba.njit(cache=True, nogil=True)

__all__ = ["conv", "hadamard_rows", "linear", "lut", "prepare_linear", "requantize", "rmsnorm", "scan"]


def prepare_linear(w: IntLinear):
    """(kind, weight laid out for the GEMM): int8 as a transposed torch view, int4 groups as float64."""
    if w.gs is None:
        return "i8", torch.from_numpy(np.ascontiguousarray(w.q)).t()
    return "f64", np.ascontiguousarray(w.effective().T.astype(np.float64))


def linear(x, prep) -> np.ndarray:
    kind, wt = prep
    if kind == "f64":
        return (np.asarray(x, dtype=np.float64) @ wt).astype(np.int64)
    x8 = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int8))
    return torch._int_mm(x8, wt).numpy().astype(np.int64)


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


# Threads pay off only on long sequences; a decode step stays serial, since
# waking workers costs more than one token's work and contends with torch's.
_scan_parallel = numba.njit(cache=True, nogil=True, parallel=True)(_scan_impl)
_scan_serial = _jit(_scan_impl)
PARALLEL_MIN_WORK = 1 << 16


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
