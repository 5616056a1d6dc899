"""The float Mamba-2 forward in NumPy fp32, with one hook for every tensor that matters.

Same contract as `qsim.float_model` (Mamba-1): `act(layer, name, x)` sees each
named activation and may return a replacement; the identity gives the `float`
numerics, equal to transformers' Mamba2ForCausalLM within fp32 rounding (its
chunked SSD and this sequential scan sum in different orders).
Names, in order: residual, u, z, xBC, dt_raw, conv_pre, x, B, C, dt, h, ys,
sz, y, out; at layer == n_layer: residual, u_f.

  residual (L, d_model)   block input          u (L, d_model)      RMSNorm output
  z (L, d_inner)          gate rows of in_proj xBC (L, conv_dim)   x, B, C rows of in_proj, before the conv
  dt_raw (L, nheads)      dt rows of in_proj   conv_pre (L, conv_dim) conv output before SiLU
  x (L, d_inner)          SSM input (SiLU)     B, C (L, ngroups*d_state)
  dt (L, nheads)          softplus(dt_raw + dt_bias) clamped to [dt_min, dt_max]
  h (nheads, headdim, d_state)  running max |state| over time (observation only, return ignored)
  ys (L, d_inner)         scan output, D*x included
  sz (L, d_inner)         SiLU(z)              y (L, d_inner)      gated RMSNorm output = out_proj's input
  out (L, d_model)        out_proj output
"""

from __future__ import annotations

import sys
from types import ModuleType

import numba
import numpy as np

from qsim import float_model
from qsim.config import Mamba2Config
from qsim.errors import QsimError
from qsim.fixed.blas_gemm import run_sliced
from qsim.float_model import (  # block, forward and batching are shared; only the mixer is Mamba-2's
    SCAN_ROW_ALIGN,
    Hook,
    _apply,
    block,
    causal_conv,
    embed,
    final_norm,
    forward,
    forward_batch,
    head,
    rmsnorm,
    silu,
    softplus,
)

__all__ = ["Hook", "block", "dispatch", "embed", "final_norm", "forward", "forward_batch", "gated_rmsnorm",
           "head", "mixer", "ssd_scan", "ssm_input"]


def ssd_scan(x: np.ndarray, dt: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray,
             ngroups: int) -> tuple[np.ndarray, np.ndarray]:
    """The sequential Mamba-2 recurrence in fp32, one token at a time.

    x (L, nheads*headdim), dt (L, nheads), A (nheads,) (negative), B and C (L, ngroups*d_state),
    D (nheads,). Head k reads group k // (nheads / ngroups) of B and C (transformers'
    repeat_interleave, mamba_ssm's layout). Per token and head:
    h = exp(dt A) h + (dt x) outer B;  y = h C + D x.
    Returns y (L, nheads*headdim) and the running max |h| (nheads, headdim, d_state).
    The state is kept per group, (ngroups, heads_per_group*headdim, d_state), so B and C
    broadcast without being repeated and y is one batched matrix-vector product.
    """
    length, d_inner = x.shape
    nheads = dt.shape[1]
    headdim, n = d_inner // nheads, B.shape[1] // ngroups
    rows = d_inner // ngroups  # channels of one group: its heads' headdim rows each
    dA = np.repeat(np.exp(dt * A), headdim, axis=1).reshape(length, ngroups, rows, 1)
    dx = (np.repeat(dt, headdim, axis=1) * x).reshape(length, ngroups, rows, 1)
    B4 = B.reshape(length, ngroups, 1, n)
    C4 = C.reshape(length, ngroups, n, 1)
    y = np.empty((length, ngroups, rows, 1), np.float32)
    hmax = np.empty((ngroups, rows, n), np.float32)

    def channels(sl: slice) -> None:  # the channels of every group are independent (float_model.selective_scan)
        y[:, :, sl], hmax[:, sl] = _ssd_rows(dA[:, :, sl], dx[:, :, sl], B4, C4)

    run_sliced(channels, rows, length * d_inner * n, SCAN_ROW_ALIGN)
    ys = y.reshape(length, d_inner) + x * np.repeat(D, headdim)
    return ys.astype(np.float32, copy=False), hmax.reshape(nheads, headdim, n)


@numba.njit(cache=True, nogil=True)
def _ssd_token(h, dA, dx, B, hi, lo):
    """One token's h = h dA + dx B (ngroups, rows, n) with the running max and min of h, in one pass.

    The same float32 operations, in the same order, as NumPy's multiply, multiply, add, maximum and minimum
    one array at a time (no fastmath, so no fused multiply-add): equal bits, a fifth of the passes over h.
    Maximum and minimum propagate NaN as NumPy's do."""
    for g in range(h.shape[0]):
        for r in range(h.shape[1]):
            a, d = dA[g, r, 0], dx[g, r, 0]
            for k in range(h.shape[2]):
                v = h[g, r, k] * a + d * B[g, 0, k]
                h[g, r, k] = v
                m = hi[g, r, k]
                hi[g, r, k] = m if (m >= v or np.isnan(m)) else v
                m = lo[g, r, k]
                lo[g, r, k] = m if (m <= v or np.isnan(m)) else v


def _ssd_rows(dA: np.ndarray, dx: np.ndarray, B4: np.ndarray, C4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The recurrence for a slice of each group's channels: y (L, ngroups, rows, 1) and max |h|.

    h C stays NumPy's matmul (BLAS): a compiled dot product would sum in another order."""
    length, ngroups, rows = dA.shape[:3]
    h = np.zeros((ngroups, rows, B4.shape[-1]), np.float32)
    hi, lo = np.zeros_like(h), np.zeros_like(h)
    y = np.empty((length, ngroups, rows, 1), np.float32)
    for t in range(length):
        _ssd_token(h, dA[t], dx[t], B4[t], hi, lo)  # max |h| as max(max h, -min h): no |h| per token
        np.matmul(h, C4[t], out=y[t])
    return y, np.maximum(hi, -lo)


def gated_rmsnorm(v: np.ndarray, g: np.ndarray, groups: int, eps: float) -> np.ndarray:
    """RMSNorm of the gated scan output v = ys * SiLU(z) over each of `groups` equal channel groups, times g."""
    length, d = v.shape
    return rmsnorm(v.reshape(length, groups, d // groups), g.reshape(groups, d // groups), eps).reshape(length, d)


def ssm_input(cfg: Mamba2Config, w: dict, r: np.ndarray) -> np.ndarray:
    """The SSM input x of a block (its norm, in_proj's x rows, the conv and SiLU on them) without the rest
    of the mixer: a statistic of x per layer (Quamba2's reorder) needs only this."""
    di = cfg.d_inner
    u = rmsnorm(r, w["norm"], cfg.layer_norm_epsilon)
    return silu(causal_conv(u @ w["in_proj"][di : 2 * di].T, w["conv_w"][:di], w["conv_b"][:di]))


def mixer(cfg: Mamba2Config, w: dict, u: np.ndarray, layer: int, act: Hook) -> np.ndarray:
    di, cd, gn = cfg.d_inner, cfg.conv_dim, cfg.ngroups * cfg.d_state
    zxbcdt = u @ w["in_proj"].T
    z = _apply(act, layer, "z", zxbcdt[:, :di])
    xbc = _apply(act, layer, "xBC", zxbcdt[:, di : di + cd])
    dt_raw = _apply(act, layer, "dt_raw", zxbcdt[:, di + cd :])
    pre = _apply(act, layer, "conv_pre", causal_conv(xbc, w["conv_w"], w["conv_b"]))
    xbc = silu(pre)
    x = _apply(act, layer, "x", xbc[:, :di])
    B = _apply(act, layer, "B", xbc[:, di : di + gn])
    C = _apply(act, layer, "C", xbc[:, di + gn :])
    dt = _apply(act, layer, "dt", np.clip(softplus(dt_raw + w["dt_bias"]), cfg.dt_min, cfg.dt_max))
    ys, hmax = ssd_scan(x, dt, -np.exp(w["A_log"]), B, C, w["D"], cfg.ngroups)
    act(layer, "h", hmax)
    ys = _apply(act, layer, "ys", ys)
    sz = _apply(act, layer, "sz", silu(z))
    groups = cfg.ngroups if cfg.norm_per_group else 1
    y = _apply(act, layer, "y", gated_rmsnorm((ys * sz).astype(np.float32), w["gnorm"], groups,
                                              cfg.layer_norm_epsilon))
    return _apply(act, layer, "out", y @ w["out_proj"].T)


def dispatch(cfg) -> ModuleType:
    """The float-model module of a config's family: `dispatch(cfg).forward_batch(...)`."""
    family = getattr(cfg, "family", None)
    if family == "mamba":
        return float_model
    if family == "mamba2":
        return sys.modules[__name__]
    raise QsimError(f"no float model for architecture family {family!r} (qsim runs 'mamba' and 'mamba2')")
