"""Numba twins of qsim.fixed.ssd: the same integers (SPEC.md section 15), computed in compiled loops.

Heads are independent, time is the recurrence: the SSD kernel runs its heads in parallel
(numba.prange) when a call has enough work, serially otherwise (a decode step). Every value is
int64; the bounds of SPEC.md 5.3 keep every product below 2**62.
"""

from __future__ import annotations

import numba
import numpy as np

from qsim import spec
from qsim.errors import QsimError
from qsim.fixed.ops_numba import (
    PARALLEL_MIN_WORK,
    _bit_length,
    _rshift_round,
    _sat,
    serial_and_parallel,
)
from qsim.fixed.ssd import check_int8, new_state

__all__ = ["gated_rmsnorm", "new_state", "ssd_prefill", "ssd_step"]

_jit = numba.njit(cache=True, nogil=True)


def _ssd_impl(x, B, C, dt_raw, state, dt_table, a_q, frac, exp_tab, m_h, s_h, Dq, m_y, s_y, state_bits, out_bits,
              decay_bits, exp_frac_bits, shift_cap, split):
    """Branch-free inner loop over the state, written so that LLVM vectorizes it with AVX2's 32 x 32 -> 64-bit
    multiply (vpmuldq; AVX2 has no int64 multiply, and emulating one costs three multiplies and four shifts):
    - the decay dA (< 2**16), the saturated state (W <= 32 bits) and C (int8) are held as int32;
    - dt * x * m_h (< 2**53) is split at `split` bits into two int32 halves that each multiply B; the low
      half reads B from a second array and the high half is shifted by a runtime amount, because LLVM
      otherwise refactors hi * B << split + lo * B back into one int64 multiply (measured: 60.8 -> 48.9 ms
      per serial mamba2-130m layer of 256 tokens);
    - AVX2 has no arithmetic int64 right shift either: a value v with |v| + 2**(s-1) < 2**62 (SPEC.md 5.1)
      is rounded as ((v + 2**(s-1) + 2**62) >>> s) - (2**62 >> s), a logical shift of a non-negative
      value, exactly floor((v + 2**(s-1)) / 2**s) because 2**s divides 2**62 (s <= 62); 48.9 -> 42.9 ms.
    Rounding adds (1 << s) >> 1, which is 0 for s = 0."""
    L, D = x.shape
    H, P, N = state.shape
    hpg = H // B.shape[1]  # heads per SSD group
    h = state.astype(np.int32)
    B32 = B.astype(np.int32)
    B32_lo = B32.copy()  # the low half reads B from a second array (docstring)
    C32 = C.astype(np.int32)
    ys = np.empty((L, D), np.int64)
    hlo, hhi = -(np.int64(1) << (state_bits - 1)), (np.int64(1) << (state_bits - 1)) - 1
    ylo, yhi = -(np.int64(1) << (out_bits - 1)), (np.int64(1) << (out_bits - 1)) - 1
    fmask = (np.int64(1) << exp_frac_bits) - 1
    bias = np.int64(1) << 62
    half_d = (np.int64(1) << (decay_bits - 1)) + bias
    off_d = bias >> decay_bits
    ud = np.uint64(decay_bits)
    sat_h = 0
    sat_y = 0
    for hd in numba.prange(H):
        g = hd // hpg
        dts = np.empty(L, np.int64)
        dAs = np.empty(L, np.int32)
        for t in range(L):
            dt = dt_table[hd, dt_raw[t, hd] + 128]
            er = _rshift_round(dt * a_q[hd], frac - exp_frac_bits)
            dts[t] = dt
            dAs[t] = _rshift_round(exp_tab[er & fmask], min(er >> exp_frac_bits, shift_cap))
        for p in range(P):  # one channel's state row stays in L1 through all L tokens
            d = hd * P + p
            sh = s_h[d]
            half_s = ((np.int64(1) << sh) >> 1) + bias
            off_s = bias >> sh
            us = np.uint64(sh)
            hp = h[hd, p]
            for t in range(L):
                xv = x[t, d]
                dA = dAs[t]
                dxm = dts[t] * xv * m_h[d]  # < 2**53: two int32 halves (docstring)
                dxh = np.int64(np.int32(dxm >> split))
                dxl = np.int64(np.int32(dxm & ((np.int64(1) << split) - 1)))
                Bt = B32[t, g]
                Bt_lo = B32_lo[t, g]
                Ct = C32[t, g]
                acc = Dq[d] * xv
                nsat = 0
                for n in range(N):
                    u = np.int64(np.uint64(np.int64(dA) * np.int64(hp[n]) + half_d) >> ud) - off_d \
                        + np.int64(np.uint64(((dxh * np.int64(Bt[n])) << split) + dxl * np.int64(Bt_lo[n]) + half_s) >> us) - off_s
                    v = min(max(u, hlo), hhi)
                    nsat += u != v
                    hp[n] = np.int32(v)
                    acc += np.int64(Ct[n]) * np.int64(hp[n])
                sat_h += nsat
                ys[t, d], c = _sat(_rshift_round(acc * m_y[d], s_y[d]), ylo, yhi)
                sat_y += c
    return ys, h.astype(np.int64), sat_h, sat_y


_ssd_serial, _ssd_parallel = serial_and_parallel(_ssd_impl)


def _i64(a):
    return np.ascontiguousarray(a, dtype=np.int64)


def ssd_prefill(x, B, C, dt_raw, state, p: dict, parallel: bool | None = None):
    """As qsim.fixed.ssd.ssd_prefill: ys (L, D) int16, the final state, {"state": n, "ssd_out": n}.

    `parallel` None picks the threaded kernel when L * D * N reaches PARALLEL_MIN_WORK."""
    x, B, C, dt_raw = _i64(x), _i64(B), _i64(C), _i64(dt_raw)
    H = p["a_q"].shape[0]
    if x.ndim != 2 or B.ndim != 3 or x.shape[1] % H or B.shape[1] < 1 or H % B.shape[1]:
        raise QsimError(f"ssd: shapes x {x.shape}, B {B.shape} and {H} heads do not fit")
    if not spec.A_FRAC_MIN <= p["frac"] <= spec.A_FRAC_MAX:
        raise QsimError(f"decay: frac {p['frac']} outside [{spec.A_FRAC_MIN}, {spec.A_FRAC_MAX}]")
    check_int8("dt_raw", dt_raw)
    if dt_raw.shape != (x.shape[0], H):
        raise QsimError(f"ssd: dt_raw {dt_raw.shape} is not (tokens, heads) = {(x.shape[0], H)}")
    state = new_state(H, x.shape[1] // H, B.shape[2]) if state is None else _i64(state)
    if state.shape != (H, x.shape[1] // H, B.shape[2]) or C.shape != B.shape or B.shape[0] != x.shape[0]:
        raise QsimError(f"ssd: state {state.shape}, B {B.shape}, C {C.shape} do not fit x {x.shape} and {H} heads")
    if parallel is None:
        parallel = x.size * B.shape[2] >= PARALLEL_MIN_WORK
    fn = _ssd_parallel if parallel else _ssd_serial
    ys, h, sat_h, sat_y = fn(x, B, C, dt_raw, state, _i64(p["dt_table"]), _i64(p["a_q"]), int(p["frac"]),
                             _i64(p["exp_tab"]), _i64(p["m_h"]), _i64(p["s_h"]), _i64(p["Dq"]), _i64(p["m_y"]),
                             _i64(p["s_y"]), int(p["state_bits"]), spec.SSD_OUT_BITS, spec.DECAY_BITS,
                             spec.EXP_FRAC_BITS, spec.DECAY_SHIFT_CAP, 24)
    return ys, h, {"state": int(sat_h), "ssd_out": int(sat_y)}


def ssd_step(x, B, C, dt_raw, state, p: dict):
    """One token (x (D,), B and C (G, N), dt_raw (H,)), serial: as qsim.fixed.ssd.ssd_step."""
    ys, h, sat = ssd_prefill(np.asarray(x)[None], np.asarray(B)[None], np.asarray(C)[None],
                             np.asarray(dt_raw)[None], state, p, parallel=False)
    return ys[0], h, sat


@_jit
def _gated_rmsnorm(ys, sz, w, eps_int, m, s, tab, tab_bits_minus_frac, gate_shift, out_bits):
    L, D = ys.shape
    gn = eps_int.shape[0]
    per = D // gn
    out = np.empty((L, D), np.int64)
    g = np.empty(per, np.int64)
    lo, hi = -(np.int64(1) << (out_bits - 1)), (np.int64(1) << (out_bits - 1)) - 1
    nsat = 0
    for i in range(L):
        for k in range(gn):
            ss = eps_int[k]
            for j in range(per):
                v = _rshift_round(ys[i, k * per + j] * sz[i, k * per + j], gate_shift)
                g[j] = v
                ss += v * v
            sh = _bit_length(ss) - 10
            sh += sh & 1
            mant = ss >> sh if sh >= 0 else ss << (-sh)
            t = tab[mant - 256]
            shift = tab_bits_minus_frac + sh // 2
            for j in range(per):
                d = k * per + j
                out[i, d], c = _sat(_rshift_round(_rshift_round(g[j] * t, shift) * w[d] * m, s), lo, hi)
                nsat += c
    return out, nsat


def gated_rmsnorm(ys, sz, w, eps_int, m, s, rsqrt_tab):
    """As qsim.fixed.ssd.gated_rmsnorm: (y int16 with the shape of ys, saturation count)."""
    ys = np.asarray(ys)
    y2, sz2 = _i64(np.atleast_2d(ys)), _i64(np.atleast_2d(sz))
    eps = _i64(np.atleast_1d(eps_int))
    if y2.shape[1] % eps.shape[0]:
        raise QsimError(f"gated_rmsnorm: {y2.shape[1]} channels do not split into {eps.shape[0]} norm groups")
    out, n = _gated_rmsnorm(y2, sz2, _i64(w), eps, int(m), int(s), _i64(rsqrt_tab),
                            spec.RSQRT_TABLE_BITS - spec.NORM_FRAC_BITS, spec.GATE_PRODUCT_SHIFT, spec.GATED_BITS)
    return out.reshape(ys.shape), int(n)
