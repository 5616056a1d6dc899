"""Numba twins of qsim.fixed.ops: the same integers, computed fast.

int8 GEMMs with many rows (prefill) run on float32 BLAS, exactly (qsim.fixed.blas_gemm says why that is
exact and why each BLAS call is single-threaded). Few rows (decode) are memory-bound, and there
vectorized dot products over the stored int8 rows, with int32 sums (exact while K < 131072), read a
quarter of the bytes. torch's CPU `_int_mm` measured ~1 GMAC/s here. int4-group weights run on float64
BLAS. Everything else is explicit integer loops compiled by Numba; the GEMMs, the scan and the Hadamard
run in parallel when the work is large enough.
"""

from __future__ import annotations

import types as pytypes

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from qsim import hadamard, spec
from qsim.errors import QsimError
from qsim.fixed.blas_gemm import gemm_f64, gemm_i8
from qsim.qweights import IntLinear

_jit = numba.njit(cache=True, nogil=True)


# Threads pay off only above this many inner iterations (GEMM MACs, scan state
# updates); below it, waking the workers costs more than the work.
PARALLEL_MIN_WORK = 1 << 16
I8_MAX_K = 1 << 17  # K * 128 * 128 < 2**31: int8 dot products of this length fit an int32
F32_MIN_ROWS = 16  # from this many rows on the BLAS path beats the Numba dot products (crossover measured at 16)

__all__ = ["conv", "hadamard_rows", "linear", "lut", "prepare_linear", "requantize", "rmsnorm", "scan"]


def serial_and_parallel(fn):
    """(serial, threaded) compiled builds of fn. Numba's on-disk cache keys a function by its name and line,
    not by its compile flags, so two builds of one function share a cache entry and a process gets whichever
    was written first (measured: a one-token Mamba-1 scan took 8 ms instead of 0.17). The threaded build is
    compiled from a copy of fn under another name."""
    twin = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_threaded", fn.__defaults__,
                                fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_threaded"
    return _jit(fn), numba.njit(cache=True, nogil=True, parallel=True)(twin)


def prepare_linear(w: IntLinear):
    """(kind, weight laid out for the GEMM): int8 rows as stored (out, in), int4 groups as float64 (in, out)."""
    if w.gs is None:
        if w.q.shape[1] >= I8_MAX_K:
            raise QsimError(f"int8 GEMM: {w.q.shape[1]} inputs would overflow its int32 accumulator")
        return "i8", np.ascontiguousarray(w.q, dtype=np.int8)
    return "f64", np.ascontiguousarray(w.effective(np.int16).T, dtype=np.float64)


@intrinsic
def _mac_i8(typingctx, acc, a, b):
    """acc + int32(a) * int32(b) in 32-bit arithmetic. Numba widens every integer product to int64, which
    AVX2 multiplies 4 lanes at a time; kept at 32 bits, LLVM turns the dot product into vpmaddwd (16 lanes)."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        acc_v, a_v, b_v = args
        return builder.add(acc_v, builder.mul(builder.sext(a_v, i32), builder.sext(b_v, i32)))

    return types.int32(types.int32, types.int8, types.int8), codegen


@_jit
def _dot_i8(a, b):
    acc = np.int32(0)
    for c in range(a.shape[0]):
        acc = _mac_i8(acc, a[c], b[c])
    return acc


def _gemm_i8_impl(x, w, parts):
    """x (M, K) int8 @ w (N, K).T, one vectorized dot product per output; int32 sums (exact for K < 131072,
    see the module docstring) widened on store. Used for few rows, where reading the weights is the cost:
    `parts` contiguous slices of rows, one per thread, stream at 9-10 GB/s here (a prange over single rows
    measured 5-6 GB/s)."""
    m = x.shape[0]
    n = w.shape[0]
    out = np.empty((m, n), np.int64)
    per = (n + parts - 1) // parts
    for part in numba.prange(parts):
        for j in range(part * per, min(n, (part + 1) * per)):
            wj = w[j]  # sliced once per row (slicing per dot product measured 1.6x slower)
            for i in range(m):
                out[i, j] = _dot_i8(x[i], wj)
    return out


_gemm_i8_serial, _gemm_i8_parallel = serial_and_parallel(_gemm_i8_impl)


def linear(x, prep) -> np.ndarray:
    kind, wt = prep
    if kind == "f64":
        return gemm_f64(x, wt)
    x8 = np.ascontiguousarray(x, dtype=np.int8)
    if x8.shape[0] >= F32_MIN_ROWS:
        return gemm_i8(x8, wt)
    if x8.shape[0] * wt.size >= PARALLEL_MIN_WORK:
        return _gemm_i8_parallel(x8, wt, numba.get_num_threads())
    return _gemm_i8_serial(x8, wt, 1)


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
    """m and s hold one value per column, or one for all (step 0); rounding adds (1 << s) >> 1 (0 for s = 0)."""
    out = np.empty(acc.shape, np.int64)
    step = 1 if m.shape[0] > 1 else 0
    nsat = 0
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            sj = s[j * step]
            v = (acc[i, j] * m[j * step] + ((np.int64(1) << sj) >> 1)) >> sj
            q = min(max(v, lo), hi)
            out[i, j] = q
            nsat += v != q
    return out, nsat


def requantize(acc, m, s, bits: int):
    acc = np.ascontiguousarray(acc, dtype=np.int64)
    m = np.atleast_1d(np.asarray(m, np.int64))
    s = np.atleast_1d(np.asarray(s, np.int64))
    if m.shape != s.shape or m.shape[0] not in (1, acc.shape[1]):
        raise QsimError(f"requantize: multipliers {m.shape} and shifts {s.shape} do not fit {acc.shape[1]} columns")
    lo, hi = spec.int_range(bits)
    return _requant2d(acc, m, s, lo, hi)


@_jit
def _lut(q, table):
    out = np.empty(q.shape, np.int64)
    bad = 0
    for i in range(q.shape[0]):
        k = q[i] + 128
        bad += (k < 0) | (k > 255)
        out[i] = table[min(max(k, 0), 255)]
    return out, bad


def lut(q, table):
    """As qsim.fixed.ops.lut: int8 index into a 256-entry table."""
    q = np.asarray(q)
    out, bad = _lut(np.ascontiguousarray(q, np.int64).reshape(-1), np.ascontiguousarray(table, np.int64))
    if bad:
        raise QsimError(f"table look-up: {bad} indices outside int8")
    return out.reshape(q.shape)


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
    """Inputs and weights are int8 (SPEC 4), held as int32 so the channel loop vectorizes 32 x 32 -> 64."""
    L, D = x.shape
    km1 = conv_state.shape[0]
    xp = np.empty((km1 + L, D), np.int64)
    xp[:km1] = conv_state
    xp[km1:] = x
    xp32 = xp.astype(np.int32)
    wt = w.T.astype(np.int32)
    acc = np.empty((L, D), np.int64)
    for t in range(L):
        a = acc[t]
        a[:] = b
        for j in range(km1 + 1):
            xr = xp32[t + j]
            wr = wt[j]
            for d in range(D):
                a[d] += np.int64(xr[d]) * np.int64(wr[d])
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
    half_d = np.int64(1) << (decay_bits - 1)
    half_s = (np.int64(1) << s_h) >> 1
    sat_h = 0
    sat_y = 0
    for d in numba.prange(D):  # channels are independent; time is the recurrence
        for t in range(L):
            dtd = dt[t, d]
            dx = dtd * xs[t, d]
            acc = Dq[d] * xs[t, d]
            for n in range(N):
                er = (dtd * a_q[d, n] + half) >> (frac - 8)
                sh = min(er >> 8, 40)
                dA = (exp_tab[er & 255] + ((np.int64(1) << sh) >> 1)) >> sh
                u = ((dA * h[d, n] + half_d) >> decay_bits) + ((dx * B[t, n] * m_h + half_s) >> s_h)
                v = min(max(u, hlo), hhi)
                sat_h += u != v
                h[d, n] = v
                acc += C[t, n] * v
            y[t, d], c = _sat(_rshift_round(_rshift_round(acc, acc_shift) * sz[t, d] * m_y[d], s_y[d]), ylo, yhi)
            sat_y += c
    return y, h, sat_h, sat_y


_scan_serial, _scan_parallel = serial_and_parallel(_scan_impl)


def scan(xs, dt, B, C, sz, h, p: dict):
    c = np.ascontiguousarray
    fn = _scan_parallel if xs.size * B.shape[1] >= PARALLEL_MIN_WORK else _scan_serial
    return fn(c(xs, np.int64), c(dt, np.int64), c(B, np.int64), c(C, np.int64), c(sz, np.int64), h,
                 p["a_q"], p["frac"], p["m_h"], p["s_h"], p["Dq"], p["m_y"], p["s_y"], p["exp_tab"],
                 p["state_bits"], spec.GATED_BITS, spec.DECAY_BITS, spec.scan_acc_shift(p["state_bits"]))


def _fwht_impl(y, m, p, base):
    rows = y.shape[0]
    out = np.empty_like(y)
    for r in numba.prange(rows):  # rows are independent
        tmp = np.empty(m * p, np.int64)
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
        for i in range(m):  # then the small base matrix (entries +-1) across blocks, p lanes at a time
            t = tmp[i * p:(i + 1) * p]
            t[:] = 0
            for k in range(m):
                src = v[k * p:(k + 1) * p]
                if base[i, k] > 0:
                    for j in range(p):
                        t[j] += src[j]
                else:
                    for j in range(p):
                        t[j] -= src[j]
        out[r] = tmp
    return out


_fwht_serial, _fwht_parallel = serial_and_parallel(_fwht_impl)


def hadamard_rows(y):
    m, p = hadamard.factor(y.shape[-1])
    fn = _fwht_parallel if y.shape[0] > 1 and y.size * p >= PARALLEL_MIN_WORK else _fwht_serial
    return fn(np.ascontiguousarray(y, np.int64), m, p, hadamard.base_matrix(m))
