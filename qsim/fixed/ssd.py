"""NumPy reference of the Mamba-2 SSD datapath (qsim/SPEC.md section 15): the definition, readable.

Per layer, with H heads of P channels (D = H * P), G SSD groups of B and C (head h reads group
h // (H / G)) and N = d_state:

* `ssd_step` / `ssd_prefill`: dt by a per-head table, one decay per head and token (9.1), the state
  (H, P, N) int W updated with per-channel multipliers that fold x's per-channel scale, ys = C.h + Dq*x
  exact in 48 bits, requantized per channel to int16 on a common scale. `ssd_prefill` is a loop of
  `ssd_step`, so prefill(a + b) == prefill(a) then steps(b) bit for bit.
* `gated_rmsnorm`: g = ys * SiLU(z) >> 7, the RMSNorm of 7.1 per norm group, times the int16 weight,
  requantized to int16 (then section 10's Hadamard and out_in, as in Mamba-1).

Every function returns int64 arrays and the saturation counts of its sites (a dict for the SSD,
an int for the norm), as qsim.fixed.ops does. `validate_ssd` / `validate_gated_norm` are the
validity rules of SPEC.md 5.3: a loader (and a calibrator before writing) refuses what they refuse,
and with them every product and sum of these functions stays below 2**62.
"""

from __future__ import annotations

import numpy as np

from qsim import spec
from qsim.errors import QsimError
from qsim.fixed.ops import decay, rsqrt_normalize

SSD_KEYS = ("dt_table", "a_q", "frac", "exp_tab", "m_h", "s_h", "Dq", "m_y", "s_y", "state_bits")
NORM_KEYS = ("w", "eps_int", "m", "s")
TABLE_SIZE = 256


def new_state(nheads: int, headdim: int, d_state: int) -> np.ndarray:
    """The state a sequence starts from: (H, P, N) zeros."""
    return np.zeros((nheads, headdim, d_state), np.int64)


def dt_lookup(dt_raw, dt_table) -> np.ndarray:
    """dt[..., h] = dt_table[h, dt_raw[..., h] + 128]: each head reads its own 256-entry row (7.4)."""
    dt_raw = np.asarray(dt_raw, dtype=np.int64)
    check_int8("dt_raw", dt_raw)
    return dt_table[np.arange(dt_table.shape[0]), dt_raw + 128]


def check_int8(name: str, v: np.ndarray) -> None:
    """Table indices must be int8 codes (an out-of-range index would read another head's row)."""
    if v.size and (v.min() < -128 or v.max() > 127):
        raise QsimError(f"ssd: {name} outside int8 ([{int(v.min())}, {int(v.max())}])")


def head_decay(dt, a_q, frac, exp_tab) -> np.ndarray:
    """dA[h] = decay(dt[h], a_q[h], frac) of 9.1: one exp2 table look-up per head."""
    return decay(np.asarray(dt, np.int64), np.asarray(a_q, np.int64)[:, None], frac, exp_tab)[:, 0]


def _dims(x, B, state, p):
    H, P, N = state.shape
    G = B.shape[-2]
    if x.shape[-1] != H * P or B.shape[-1] != N or p["a_q"].shape != (H,) or H % G:
        raise QsimError(f"ssd: shapes x {x.shape}, B {B.shape}, state {state.shape}, a_q {p['a_q'].shape} "
                        "do not fit (D = H * P, N = d_state, H a multiple of G)")
    return H, P, N, G


def ssd_step(x, B, C, dt_raw, state, p: dict):
    """One token: x (D,) int8, B and C (G, N) int8, dt_raw (H,) int8, state (H, P, N) int W.

    Returns ys (D,) int16, the new state and the saturation counts {"state": n, "ssd_out": n}."""
    x, B, C = (np.asarray(v, np.int64) for v in (x, B, C))
    state = np.asarray(state, np.int64)
    H, P, _, G = _dims(x, B, state, p)
    grp = np.arange(H) // (H // G)  # the SSD group of each head
    xh = x.reshape(H, P)
    dt = dt_lookup(dt_raw, p["dt_table"])  # (H,) uint15
    dA = head_decay(dt, p["a_q"], p["frac"], p["exp_tab"])  # (H,) Q15 in [0, 2**15]
    m_h, s_h = p["m_h"].reshape(H, P, 1), p["s_h"].reshape(H, P, 1)
    dbx = spec.rshift_round((dt[:, None] * xh)[:, :, None] * B[grp][:, None, :] * m_h, s_h)
    h, sat_h = spec.saturate(spec.rshift_round(dA[:, None, None] * state, spec.DECAY_BITS) + dbx, p["state_bits"])
    acc = np.einsum("hpn,hn->hp", h, C[grp]) + p["Dq"].reshape(H, P) * xh  # exact, |acc| < 2**47
    ys, sat_y = spec.requantize(acc.reshape(-1), p["m_y"], p["s_y"], spec.SSD_OUT_BITS)
    return ys, h, {"state": sat_h, "ssd_out": sat_y}


def ssd_prefill(x, B, C, dt_raw, state, p: dict):
    """L tokens in order from `state` (None: zeros): x (L, D), B and C (L, G, N), dt_raw (L, H).

    Returns ys (L, D) int16, the state after the last token and the summed saturation counts."""
    x = np.asarray(x, np.int64)
    H, P, N = p["a_q"].shape[0], x.shape[1] // p["a_q"].shape[0], np.shape(B)[-1]
    h = new_state(H, P, N) if state is None else np.asarray(state, np.int64)
    ys = np.empty(x.shape, np.int64)
    sat = {"state": 0, "ssd_out": 0}
    for t in range(x.shape[0]):
        ys[t], h, n = ssd_step(x[t], B[t], C[t], dt_raw[t], h, p)
        for k in sat:
            sat[k] += n[k]
    return ys, h, sat


def gate_product(ys, sz) -> np.ndarray:
    """g = rshift_round(ys * sz, GATE_PRODUCT_SHIFT): int16 x int16, |g| <= 2**23."""
    return spec.rshift_round(np.asarray(ys, np.int64) * np.asarray(sz, np.int64), spec.GATE_PRODUCT_SHIFT)


def gated_rmsnorm(ys, sz, w, eps_int, m, s, rsqrt_tab):
    """RMSNorm(ys * SiLU(z)) * w per norm group, to int16: ys, sz (L, D) or (D,); w (D,); eps_int (Gn,).

    The Gn groups are the contiguous D / Gn channel blocks (Gn = len(eps_int)); each group is normalized
    as 7.1 normalizes a residual row. Returns (y, saturation count of the int16 requantization)."""
    ys = np.asarray(ys, np.int64)
    g = np.atleast_2d(gate_product(ys, sz))
    eps_int = np.atleast_1d(np.asarray(eps_int, np.int64))
    L, D = g.shape
    gn = eps_int.shape[0]
    if D % gn:
        raise QsimError(f"gated_rmsnorm: {D} channels do not split into {gn} norm groups")
    gg = g.reshape(L, gn, D // gn)
    ss = np.sum(gg * gg, axis=-1) + eps_int  # (L, Gn), < 2**62 (5.3)
    t, shift = rsqrt_normalize(ss.reshape(-1), rsqrt_tab)
    normed = spec.rshift_round(gg * t.reshape(L, gn, 1), shift.reshape(L, gn, 1)).reshape(L, D)
    y, n = spec.requantize(normed * np.asarray(w, np.int64), m, s, spec.GATED_BITS)
    return y.reshape(ys.shape), n


# ---------------------------------------------------------------- validity (SPEC.md 5.3)
def _bad(where: str, what: str):
    raise QsimError(f"{where}: {what}")


def _int_array(p: dict, key: str, shape: tuple, where: str) -> np.ndarray:
    if key not in p:
        _bad(where, f"constant {key} is missing")
    a = np.asarray(p[key])
    if a.shape != shape or not np.issubdtype(a.dtype, np.integer):
        _bad(where, f"{key} must be an integer array of shape {shape}, got {a.dtype} {a.shape}")
    return a.astype(np.int64)


def _check_pairs(m, s, acc_max: int, key: str, where: str) -> None:
    """Each (M, S) of a site: 1 <= M < 2**31, 0 <= S <= 62 and acc_max * M + 2**(S-1) < 2**62 (5.1)."""
    for i, (mi, si) in enumerate(zip(np.ravel(m).tolist(), np.ravel(s).tolist())):
        if not (1 <= mi < 1 << 31 and 0 <= si <= 62):
            _bad(where, f"{key} channel {i}: multiplier {mi}, shift {si} outside 1 <= M < 2**31, 0 <= S <= 62")
        if acc_max * mi + ((1 << si) >> 1) >= spec.PRODUCT_LIMIT:
            _bad(where, f"{key} channel {i}: |acc| {acc_max} x multiplier {mi} reaches 2**62")


def validate_ssd(p: dict, d_state: int, ngroups: int, where: str = "ssd") -> None:
    """SPEC.md 5.3: refuse SSD constants outside the ranges the bounds are proven for (one line naming it)."""
    w = p.get("state_bits")
    if not (isinstance(w, int | np.integer) and spec.SSD_STATE_BITS_MIN <= w <= spec.SSD_STATE_BITS_MAX):
        _bad(where, f"state_bits {w!r} outside [{spec.SSD_STATE_BITS_MIN}, {spec.SSD_STATE_BITS_MAX}]")
    frac = p.get("frac")
    if not (isinstance(frac, int | np.integer) and spec.A_FRAC_MIN <= frac <= spec.A_FRAC_MAX):
        _bad(where, f"frac {frac!r} outside [{spec.A_FRAC_MIN}, {spec.A_FRAC_MAX}]")
    a_q = np.asarray(p.get("a_q"))
    if a_q.ndim != 1 or a_q.size == 0:
        _bad(where, "a_q must be a vector with one entry per head")
    H = a_q.shape[0]
    D = np.asarray(p.get("Dq")).size
    if ngroups < 1 or H % ngroups or D == 0 or D % H or d_state < 1:
        _bad(where, f"{H} heads, {D} channels, {ngroups} groups, d_state {d_state}: need D = H * P, H = k * G")
    a_q = _int_array(p, "a_q", (H,), where)
    if a_q.min() < 0 or a_q.max() > 65535:
        _bad(where, f"a_q outside [0, 65535] (head {int(np.argmax((a_q < 0) | (a_q > 65535)))})")
    tab = _int_array(p, "dt_table", (H, TABLE_SIZE), where)
    if tab.min() < 0 or tab.max() > spec.DT_MAX:
        _bad(where, f"dt_table outside [0, {spec.DT_MAX}]")
    exp_tab = _int_array(p, "exp_tab", (1 << spec.EXP_FRAC_BITS,), where)
    if exp_tab.min() < 0 or exp_tab.max() > 1 << spec.DECAY_BITS:
        _bad(where, "exp_tab is not the exp2_frac table of 6.1")
    dq = _int_array(p, "Dq", (D,), where)
    limit = spec.ssd_dq_limit(d_state, int(w))
    if int(np.abs(dq).max()) > limit:
        _bad(where, f"Dq channel {int(np.argmax(np.abs(dq)))}: |Dq| {int(np.abs(dq).max())} exceeds "
                    f"ssd_dq_limit({d_state}, {w}) = {limit} (ys's accumulator would leave {spec.SSD_ACC_BITS} bits)")
    dbx_max = spec.DT_MAX * (1 << 7) * (1 << 7)
    _check_pairs(_int_array(p, "m_h", (D,), where), _int_array(p, "s_h", (D,), where), dbx_max, "m_h/s_h", where)
    acc_max = spec.ssd_acc_bound(d_state, int(w), int(np.abs(dq).max()))
    _check_pairs(_int_array(p, "m_y", (D,), where), _int_array(p, "s_y", (D,), where), acc_max, "m_y/s_y", where)


def validate_gated_norm(pn: dict, d_inner: int, where: str = "gated_norm") -> None:
    """SPEC.md 5.3 for the gated RMSNorm: weight in [-32767, 32767], eps_int >= 1 per norm group with
    (D / Gn) * 2**46 + eps_int < 2**62, and the output (M, S) against |normed * w| <= 2**16 * maxabs(w)."""
    eps = np.atleast_1d(np.asarray(pn.get("eps_int")))
    if eps.ndim != 1 or eps.size == 0 or not np.issubdtype(eps.dtype, np.integer) or d_inner % eps.size:
        _bad(where, f"eps_int must hold one integer per norm group dividing {d_inner} channels")
    wq = _int_array(pn, "w", (d_inner,), where)
    if np.abs(wq).max() > 32767:
        _bad(where, "norm weight w outside [-32767, 32767]")
    per = d_inner // eps.size
    for k, e in enumerate(eps.tolist()):
        if e < 1 or per * (1 << 46) + e >= spec.PRODUCT_LIMIT:
            _bad(where, f"eps_int group {k}: {e} outside [1, 2**62 - {per} * 2**46)")
    m, s = pn.get("m"), pn.get("s")
    if not (isinstance(m, int | np.integer) and isinstance(s, int | np.integer)):
        _bad(where, "m, s must be integers")
    _check_pairs([int(m)], [int(s)], (1 << 16) * int(np.abs(wq).max()), "m/s", where)
