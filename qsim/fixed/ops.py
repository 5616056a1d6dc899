"""NumPy reference ops of the `fixed` datapath: readable, vectorised, the definition.

Every function returns int64 arrays and, where it saturates, the number of
clamped values. qsim/SPEC.md states each rule; qsim.artifact_check proves,
when an artifact loads, that every product here stays below 2**62 (e.g.
residual r < 2**23 so r*r summed over d_model stays below 2**62; state
|h| <= 2**27; y's narrowed accumulator fits 25 bits, times the int16 SiLU(z)
gate and its channel's m_y).
"""

from __future__ import annotations

import numpy as np

from qsim import hadamard, spec
from qsim.errors import QsimError
from qsim.qweights import IntLinear


def bit_length(v: np.ndarray) -> np.ndarray:
    """Exact bit length of positive int64 values (float64 estimate, then corrected)."""
    v = np.asarray(v, dtype=np.int64)
    bl = np.frexp(v.astype(np.float64))[1].astype(np.int64)
    bl = np.where(np.right_shift(v, np.maximum(bl - 1, 0)) == 0, bl - 1, bl)
    return np.where(np.right_shift(v, np.minimum(bl, 62)) != 0, bl + 1, bl)


def rsqrt_normalize(ss: np.ndarray, rsqrt_tab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sum of squares ss >= 1: table value T and right shift n with r*T >> n == r/sqrt(ss) in Q15.

    ss ~= m * 2**sh with m in [256, 1024) and sh even, so
    1/sqrt(ss) = T[m - 256] * 2**-19 * 2**(-sh/2).
    """
    sh = bit_length(ss) - 10
    sh = sh + (sh & 1)
    m = np.where(sh >= 0, np.right_shift(ss, np.maximum(sh, 0)), np.left_shift(ss, np.maximum(-sh, 0)))
    shift = spec.RSQRT_TABLE_BITS - spec.NORM_FRAC_BITS + sh // 2
    return rsqrt_tab[m - 256], shift


def rmsnorm(r, g, eps_int, m, s, rsqrt_tab):
    """Fixed-point RMSNorm of residual rows r (L, d) to int8."""
    r = np.asarray(r, dtype=np.int64)
    ss = np.sum(r * r, axis=-1) + eps_int
    t, shift = rsqrt_normalize(ss, rsqrt_tab)
    normed = spec.rshift_round(r * t[:, None], shift[:, None])
    return spec.requantize(normed * g.astype(np.int64), m, s, 8)


def linear(x, w: IntLinear) -> np.ndarray:
    """Integer x @ W.T; int4 weights sum each group first, then weight it by its group scale."""
    if w.gs is None:
        return spec.exact_int_matmul(x, w.q)
    acc = np.zeros((x.shape[0], w.q.shape[0]), dtype=np.int64)
    for g in range(w.gs.shape[1]):
        cols = slice(g * w.group, (g + 1) * w.group)
        acc += spec.exact_int_matmul(x[:, cols], w.q[:, cols]) * w.gs[:, g].astype(np.int64)
    return acc


def conv(x, conv_state, w, b):
    """Causal depthwise conv: x (L, D) int8, conv_state (K-1, D) the previous inputs; int32 bias."""
    k = w.shape[1]
    xp = np.concatenate([conv_state, x]).astype(np.int64)
    acc = np.broadcast_to(b.astype(np.int64), x.shape).copy()
    for j in range(k):
        acc += xp[j : j + x.shape[0]] * w[:, j].astype(np.int64)
    return acc, xp[xp.shape[0] - (k - 1) :]


def lut(q, table):
    """int8 index into a 256-entry table."""
    return table[np.asarray(q, dtype=np.int64) + 128]


def decay(dt, a_q, frac, exp_tab):
    """Q15 exp(-dt*|A|) in [0, 2**15]: E = dt*a in Q(frac), rounded to 8 fraction bits; its fraction
    indexes the 2**-f table, its integer part k shifts the entry right, rounded, by min(k, 40)."""
    if not spec.A_FRAC_MIN <= frac <= spec.A_FRAC_MAX:
        raise QsimError(f"decay: frac {frac} outside [{spec.A_FRAC_MIN}, {spec.A_FRAC_MAX}]")
    e = dt.astype(np.int64)[:, None] * a_q
    er = spec.rshift_round(e, frac - spec.EXP_FRAC_BITS)
    k = np.minimum(np.right_shift(er, spec.EXP_FRAC_BITS), spec.DECAY_SHIFT_CAP)
    return spec.rshift_round(exp_tab[er & ((1 << spec.EXP_FRAC_BITS) - 1)], k)


def scan(xs, dt, B, C, sz, h, p: dict):
    """Selective scan over L tokens from state h (D, N); returns y*SiLU(z) as int16, h, sat counts.

    p holds a_q, frac, m_h, s_h, Dq, m_y, s_y, exp_tab, state_bits; Dq, m_y, s_y have one entry per channel.
    """
    h = h.copy()
    y = np.empty(xs.shape, dtype=np.int64)
    sat_h = sat_y = 0
    for t in range(xs.shape[0]):
        dA = decay(dt[t], p["a_q"], p["frac"], p["exp_tab"])
        dbx = spec.rshift_round((dt[t] * xs[t])[:, None] * B[t][None, :] * p["m_h"], p["s_h"])
        h, n = spec.saturate(spec.rshift_round(dA * h, spec.DECAY_BITS) + dbx, p["state_bits"])
        sat_h += n
        acc = spec.rshift_round(h @ C[t].astype(np.int64) + p["Dq"] * xs[t], spec.scan_acc_shift(p["state_bits"]))
        y[t], n = spec.requantize(acc * sz[t], p["m_y"], p["s_y"], spec.GATED_BITS)
        sat_y += n
    return y, h, sat_h, sat_y


def hadamard_rows(y):
    return hadamard.fwht(y)


def requantize(acc, m, s, bits: int):
    return spec.requantize(acc, m, s, bits)


def prepare_linear(w: IntLinear) -> IntLinear:
    """The reference uses the weight as stored."""
    return w
