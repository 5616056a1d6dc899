"""Float scales and Mamba-2 parameters -> the integer constants of the SSD datapath (qsim/SPEC.md 15).

Quamba2's recipe at the datapath level: x int8 with a per-channel scale vector s_x[d] (piecewise
constant after its channel reorder; any vector works here), B and C int8 with one scale per SSD group,
dt_raw int8 per tensor (dt_bias, softplus and the [dt_min, dt_max] clamp live in a per-head table), z
int8 per tensor, A_log and D per head. Every real becomes an integer by the spec's rules
(qsim.spec.round_half_up, quantize_multiplier); the constants are checked against SPEC.md 5.3 before
they are returned, and anything out of range raises a QsimError naming the layer (`where`) and the
constant.

Units (informative, SPEC.md 14.1): the state h[h, p, n] of channel d = h * P + p is in units of
s_state[d]; the accumulator C.h + Dq*x of channel d in units of s_C[g] * s_state[d]; ys and the gated
product g in units of one scale per norm group (s_ys[k], s_ys[k] * s_sz * 2**7).
"""

from __future__ import annotations

import math

import numpy as np

from qsim import spec, tables
from qsim.errors import QsimError
from qsim.fixed.ssd import validate_gated_norm, validate_ssd

LOG2E = 1.0 / math.log(2.0)
A_Q_MAX = 65535


def _vec(v, n: int, name: str, where: str, positive: bool = True) -> np.ndarray:
    """v as a float64 vector of length n (a scalar is repeated); finite, and > 0 when `positive`."""
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    a = a.reshape(-1)
    if a.size != n:
        raise QsimError(f"{where}: {name} has {a.size} entries, expected {n}")
    if not np.all(np.isfinite(a)):
        raise QsimError(f"{where}: {name} is not finite (entry {int(np.argmin(np.isfinite(a)))})")
    if positive and np.any(a <= 0):
        raise QsimError(f"{where}: {name} must be > 0 (entry {int(np.argmax(a <= 0))} is {a[np.argmax(a <= 0)]!r})")
    return a


def _scalar(v, name: str, where: str) -> float:
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise QsimError(f"{where}: {name} must be finite and > 0, got {v!r}")
    return v


def dt_table(s_dt_raw: float, dt_bias, dt_min: float = 0.0, dt_max: float = math.inf, s_dt=None,
             where: str = "ssd") -> tuple[np.ndarray, np.ndarray]:
    """Per-head softplus tables: T[h, j] = clamp(round_half_up(dt_h(j) / s_dt[h]), 0, 2**15 - 1) with
    dt_h(j) = clamp(softplus((j - 128) * s_dt_raw + dt_bias[h]), dt_min, dt_max).

    s_dt (per head or scalar) defaults to each head's largest dt over the 256 codes / (2**15 - 1), so every
    head uses the whole uint15 range. Returns (tables (H, 256) int64, s_dt (H,))."""
    s_raw = _scalar(s_dt_raw, "dt_raw scale", where)
    bias = _vec(dt_bias, np.size(dt_bias), "dt_bias", where, positive=False)
    dt_min, dt_max = float(dt_min), float(dt_max)
    if not (math.isfinite(dt_min) and dt_min >= 0 and dt_max > dt_min) or math.isnan(dt_max):
        raise QsimError(f"{where}: dt limits [{dt_min!r}, {dt_max!r}] must satisfy 0 <= dt_min < dt_max")
    dt = np.clip(tables.softplus(tables.INT8_CODES[None, :] * s_raw + bias[:, None]), dt_min, dt_max)
    if not np.all(np.isfinite(dt)):
        raise QsimError(f"{where}: dt overflows a double (dt_raw scale {s_raw!r}, dt_bias up to {bias.max()!r})")
    if s_dt is None:
        s_dt = dt.max(axis=1) / spec.DT_MAX
        s_dt = np.where(s_dt > 0, s_dt, 1.0)
    s_dt = _vec(s_dt, bias.size, "dt scale s_dt", where)
    q = np.clip(spec.round_half_up(dt / s_dt[:, None]), 0, spec.DT_MAX).astype(np.int64)
    return q, s_dt


def decay_constants(A_log, s_dt, where: str = "ssd") -> tuple[np.ndarray, int]:
    """a_q[h] = round_half_up(exp(A_log[h]) * log2(e) * s_dt[h] * 2**frac) with the layer's frac the largest
    in [9, 30] that keeps every a_q <= 65535 (9.1: dt * a_q / 2**frac is the decay exponent in log2 units)."""
    a_log = _vec(A_log, np.size(A_log), "A_log", where, positive=False)
    a_real = np.exp(a_log) * LOG2E * _vec(s_dt, a_log.size, "s_dt", where)
    if not np.all(np.isfinite(a_real)):
        raise QsimError(f"{where}: exp(A_log) * s_dt overflows (head {int(np.argmin(np.isfinite(a_real)))})")
    amax = float(a_real.max())
    frac = int(np.clip(math.floor(math.log2(A_Q_MAX / amax)), spec.A_FRAC_MIN, spec.A_FRAC_MAX)) if amax > 0 \
        else spec.A_FRAC_MAX
    a_q = spec.round_half_up(a_real * 2.0**frac)
    while a_q.max() > A_Q_MAX and frac > spec.A_FRAC_MIN:  # log2 in doubles may land one too high
        frac -= 1
        a_q = spec.round_half_up(a_real * 2.0**frac)
    if a_q.max() > A_Q_MAX:
        h = int(np.argmax(a_q))
        raise QsimError(f"{where}: a_q head {h}: exp(A_log) * log2(e) * s_dt = {a_real[h]:.4g} needs more than "
                        f"{A_Q_MAX} at the smallest frac {spec.A_FRAC_MIN}; use a finer dt scale")
    return a_q.astype(np.int64), frac


def ssd_params(*, s_x, s_B, s_C, s_dt_raw: float, dt_bias, A_log, D, s_state, s_ys, d_state: int,
               state_bits: int, dt_min: float = 0.0, dt_max: float = math.inf, s_dt=None,
               where: str = "ssd") -> tuple[dict, dict]:
    """The integer constants of one layer's SSD (SPEC.md 15.2) and the informative reals behind them.

    s_x (D,) per channel; s_B, s_C (G,) per SSD group; s_dt_raw the per-tensor dt_raw scale; dt_bias,
    A_log, D (H,) per head; s_state the real value of one state unit, per head (H,) or per channel
    (H, P) / (D,); s_ys the real value of one ys unit, one scale or one per norm group (Gn,), the
    groups of the gated RMSNorm. Returns (constants for qsim.fixed.ssd, {"s_dt", "a_real", ...})."""
    if not (isinstance(state_bits, int | np.integer)
            and spec.SSD_STATE_BITS_MIN <= state_bits <= spec.SSD_STATE_BITS_MAX):
        raise QsimError(f"{where}: state_bits {state_bits!r} outside "
                        f"[{spec.SSD_STATE_BITS_MIN}, {spec.SSD_STATE_BITS_MAX}]")
    if not (isinstance(d_state, int | np.integer) and d_state >= 1):
        raise QsimError(f"{where}: d_state {d_state!r} must be a positive integer")
    a_log = _vec(A_log, np.size(A_log), "A_log", where, positive=False)
    H = a_log.size
    d_skip = _vec(D, H, "D", where, positive=False)
    s_x = _vec(s_x, np.size(s_x), "x scale s_x", where)
    n_ch = s_x.size
    if H == 0 or n_ch % H:
        raise QsimError(f"{where}: {n_ch} x channels do not split into {H} heads")
    P = n_ch // H
    G = np.size(s_B)
    if G == 0 or H % G:
        raise QsimError(f"{where}: {H} heads do not split into {G} SSD groups (the length of the B scales)")
    s_B = _vec(s_B, G, "B scale s_B", where)
    s_C = _vec(s_C, G, "C scale s_C", where)
    st = np.asarray(s_state, np.float64)
    if st.size == 1:
        st = np.full(n_ch, float(st.reshape(-1)[0]))
    elif st.size == H:
        st = np.repeat(st.reshape(H), P)  # one scale per head
    elif st.size != n_ch:
        raise QsimError(f"{where}: state scale s_state has {st.size} entries; expected 1, {H} (heads) or "
                        f"{n_ch} (channels)")
    s_st = _vec(st, n_ch, "state scale s_state", where)
    gn = np.size(s_ys)
    if gn == 0 or n_ch % gn:
        raise QsimError(f"{where}: {n_ch} channels do not split into {gn} norm groups (the length of s_ys)")
    s_ys = _vec(s_ys, gn, "ys scale s_ys", where)

    table, s_dt = dt_table(s_dt_raw, _vec(dt_bias, H, "dt_bias", where, positive=False), dt_min, dt_max, s_dt,
                           where)
    a_q, frac = decay_constants(a_log, s_dt, where)
    head = np.arange(n_ch) // P
    grp = head // (H // G)
    ngrp = np.arange(n_ch) // (n_ch // gn)
    m_h, s_h = spec.quantize_multipliers(s_dt[head] * s_x * s_B[grp] / s_st, f"{where}.m_h")
    acc_unit = s_C[grp] * s_st
    dq = spec.round_half_up(d_skip[head] * s_x / acc_unit)
    limit = spec.ssd_dq_limit(int(d_state), int(state_bits))
    if np.abs(dq).max() > limit:
        d = int(np.argmax(np.abs(dq)))
        raise QsimError(f"{where}: Dq channel {d}: D * s_x / (s_C * s_state) = {dq[d]:.4g} exceeds "
                        f"ssd_dq_limit({d_state}, {state_bits}) = {limit}; use a coarser state scale")
    m_y, s_y = spec.quantize_multipliers(acc_unit / s_ys[ngrp], f"{where}.m_y")
    p = {"dt_table": table, "a_q": a_q, "frac": frac, "exp_tab": tables.exp2_frac_table(),
         "m_h": m_h, "s_h": s_h, "Dq": dq.astype(np.int64), "m_y": m_y, "s_y": s_y, "state_bits": int(state_bits)}
    validate_ssd(p, int(d_state), G, where)
    info = {"s_dt": s_dt, "a_real": np.exp(a_log) * LOG2E * s_dt, "s_state": s_st, "s_ys": s_ys,
            "acc_unit": acc_unit}
    return p, info


def silu_z_table(s_z: float, s_sz: float | None = None, where: str = "ssd") -> tuple[np.ndarray, float]:
    """SiLU(z) gate table (6.2's silu_z: int8 -> int16) and its scale; s_sz defaults to the largest
    |SiLU| over the 256 codes / (2**15 - 1)."""
    s_z = _scalar(s_z, "z scale", where)
    if s_sz is None:
        s_sz = float(np.abs(tables.silu(tables.INT8_CODES * s_z)).max()) / spec.GATE_MAX or 1.0
    s_sz = _scalar(s_sz, "SiLU(z) scale", where)
    return tables.gate_table(s_z, s_sz), s_sz


def gated_norm_params(weight, *, s_ys, s_sz: float, s_y: float, eps: float, norm_groups: int = 1,
                      where: str = "gated_norm") -> tuple[dict, dict]:
    """Constants of the gated RMSNorm (SPEC.md 15.5): int16 weight (one symmetric scale), eps_int per norm
    group in units of g^2 (g = ys * sz >> 7, one unit = s_ys[k] * s_sz * 2**7), and (m, s) of
    sqrt(D / Gn) * s_w * 2**-15 / s_y, s_y the real value of one unit of the int16 output y."""
    w = _vec(weight, np.size(weight), "norm weight", where, positive=False)
    n_ch = w.size
    if not (isinstance(norm_groups, int | np.integer) and norm_groups >= 1 and n_ch % norm_groups == 0):
        raise QsimError(f"{where}: {n_ch} channels do not split into {norm_groups!r} norm groups")
    s_ys = _vec(s_ys, norm_groups, "ys scale s_ys", where)
    s_sz, s_y = _scalar(s_sz, "SiLU(z) scale", where), _scalar(s_y, "output scale s_y", where)
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise QsimError(f"{where}: eps {eps!r} must be finite and >= 0")
    per = n_ch // norm_groups
    s_w = spec.symmetric_scale(float(np.abs(w).max()), 16, f"{where}.w")
    wq = np.clip(spec.round_half_up(w / s_w), -32767, 32767).astype(np.int64)
    s_g = s_ys * s_sz * 2.0**spec.GATE_PRODUCT_SHIFT
    eps_real = eps * per / s_g**2
    eps_max = spec.PRODUCT_LIMIT - per * (1 << 46) - 1
    if not np.all(eps_real < eps_max):
        k = int(np.argmax(eps_real >= eps_max))
        raise QsimError(f"{where}: eps_int group {k}: eps * {per} / s_g^2 = {eps_real[k]:.4g} leaves no room "
                        f"for the sum of squares below 2**62 (the ys scale is too fine)")
    eps_int = np.maximum(1, spec.round_half_up(eps_real)).astype(np.int64)
    m, s = spec.quantize_multiplier(math.sqrt(per) * s_w * 2.0**-spec.NORM_FRAC_BITS / s_y, f"{where}.m")
    pn = {"w": wq, "eps_int": eps_int, "m": m, "s": s}
    validate_gated_norm(pn, n_ch, where)
    return pn, {"w_scale": s_w, "g_scale": s_g, "out_scale": s_y}
