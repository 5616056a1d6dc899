"""The float Mamba-1 forward in NumPy fp32, with one hook for every tensor that matters.

`act(layer, name, x)` sees each named activation and may return a replacement:
the identity gives the `float` numerics (equal to transformers'
MambaForCausalLM), observers give calibration, fake-quantizers give `quamba`.
Names: residual, u, x_in, z, conv_pre, xs, dtr, B, C, dt_pre, dt, sz, h, y,
out, u_f (layer == n_layer for the final norm).
A layer may carry `out_smooth` (d_inner, > 0): the gated scan output is divided
by it before `y`, as SmoothQuant-SSM and MambaQuant smooth out_proj's input.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qsim.config import MambaConfig
from qsim.fixed.blas_gemm import run_sliced
from qsim.weights import MambaWeights

Hook = Callable[[int, str, np.ndarray], "np.ndarray | None"]


def _identity(layer: int, name: str, x: np.ndarray) -> None:
    return None


def rmsnorm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(var + eps)).astype(np.float32) * g


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1) + np.exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))).astype(np.float32)


def causal_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Depthwise causal conv over time: x (L, D), w (D, K)."""
    length, k = x.shape[0], w.shape[1]
    xp = np.concatenate([np.zeros((k - 1, x.shape[1]), x.dtype), x])
    out = np.broadcast_to(b, x.shape).astype(np.float32)
    for j in range(k):
        out = out + xp[j : j + length] * w[:, j]
    return out


SCAN_CHUNK = 16  # time steps whose exp(dt A) and dt B x are formed at once: 16 x d_inner x d_state stays in cache
# BLAS matrix-vector kernels take rows in groups and the last few by another path, so h @ C over a slice of
# channels gives one-pass bits only where the slice starts on a group boundary: 1030 channels split 515/515
# moved 122 outputs by an ulp, slices at multiples of 16 moved none (tests/test_float_model.py)
SCAN_ROW_ALIGN = 16


def selective_scan(x, dt, A, B, C, D):
    """fp32 scan; returns y (L, D) and the running max |h| (D, N) for calibration.

    Channels are independent, so slices of them run on the thread pool (numpy releases the GIL): every
    element sees the same operations in the same order as one pass over all channels, so the same bits."""
    length, d_inner = x.shape
    y = np.empty_like(x)
    hmax = np.zeros((d_inner, A.shape[1]), np.float32)
    dtx = dt * x

    def channels(sl: slice) -> None:
        y[:, sl], hmax[sl] = _scan_channels(dt[:, sl], dtx[:, sl], A[sl], B, C)

    run_sliced(channels, d_inner, length * d_inner * A.shape[1], SCAN_ROW_ALIGN)
    return y + x * D, hmax


def _scan_channels(dt, dtx, A, B, C):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t and y_t = h_t C_t for a slice of channels."""
    length, d_inner = dt.shape
    h = np.zeros((d_inner, A.shape[1]), np.float32)
    hmax = np.zeros_like(h)
    y = np.empty((length, d_inner), np.float32)
    dA = np.empty((min(SCAN_CHUNK, length), *h.shape), np.float32)
    dBx = np.empty_like(dA)
    for t0 in range(0, length, SCAN_CHUNK):
        k = min(SCAN_CHUNK, length - t0)
        np.exp(np.multiply(dt[t0 : t0 + k, :, None], A[None], out=dA[:k]), out=dA[:k])
        np.multiply(dtx[t0 : t0 + k, :, None], B[t0 : t0 + k, None, :], out=dBx[:k])
        for t in range(k):
            h = dA[t] * h + dBx[t]
            np.maximum(hmax, np.abs(h), out=hmax)
            y[t0 + t] = h @ C[t0 + t]
    return y, hmax


def _apply(act: Hook, layer: int, name: str, x: np.ndarray) -> np.ndarray:
    out = act(layer, name, x)
    return x if out is None else out


def mixer(cfg: MambaConfig, w: dict, u: np.ndarray, layer: int, act: Hook) -> np.ndarray:
    di, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
    xz = u @ w["in_proj"].T
    x = _apply(act, layer, "x_in", xz[:, :di])
    z = _apply(act, layer, "z", xz[:, di:])
    pre = _apply(act, layer, "conv_pre", causal_conv(x, w["conv_w"], w["conv_b"]))
    xs = _apply(act, layer, "xs", silu(pre))
    p = xs @ w["x_proj"].T
    dtr = _apply(act, layer, "dtr", p[:, :r])
    B = _apply(act, layer, "B", p[:, r : r + n])
    C = _apply(act, layer, "C", p[:, r + n :])
    dt_pre = _apply(act, layer, "dt_pre", dtr @ w["dt_w"].T + w["dt_b"])
    dt = _apply(act, layer, "dt", softplus(dt_pre))
    A = -np.exp(w["A_log"])
    y, hmax = selective_scan(xs, dt, A, B, C, w["D"])
    act(layer, "h", hmax)
    sz = _apply(act, layer, "sz", silu(z))
    yg = (y * sz).astype(np.float32)
    if "out_smooth" in w:  # a recipe's per-channel smoothing of out_proj's input (its columns carry the factor)
        yg = yg / w["out_smooth"]
    yg = _apply(act, layer, "y", yg)
    return _apply(act, layer, "out", yg @ w["out_proj"].T)


def embed(w: MambaWeights, tokens: np.ndarray) -> np.ndarray:
    return w.embedding[np.asarray(tokens)].astype(np.float32)


def block(cfg: MambaConfig, lw: dict, r: np.ndarray, layer: int, act: Hook | None = None) -> np.ndarray:
    """One residual block: the residual stream after layer `layer`."""
    act = act or _identity
    r = _apply(act, layer, "residual", r)
    u = _apply(act, layer, "u", rmsnorm(r, lw["norm"], cfg.layer_norm_epsilon))
    return r + _mixer_of(cfg)(cfg, lw, u, layer, act)


def _mixer_of(cfg):
    """The mixer of the config's family: blocks, heads and batching are shared by Mamba-1 and Mamba-2."""
    if cfg.family == "mamba2":
        from qsim import float_model2

        return float_model2.mixer
    return mixer


def final_norm(cfg: MambaConfig, w: MambaWeights, r: np.ndarray, act: Hook) -> np.ndarray:
    r = _apply(act, cfg.n_layer, "residual", r)
    return _apply(act, cfg.n_layer, "u_f", rmsnorm(r, w.norm_f, cfg.layer_norm_epsilon))


def head(cfg: MambaConfig, w: MambaWeights, r: np.ndarray, act: Hook | None = None) -> np.ndarray:
    """Final norm and lm_head: logits (L, vocab)."""
    return final_norm(cfg, w, r, act or _identity) @ w.lm_head.T


def forward(cfg: MambaConfig, w: MambaWeights, tokens: np.ndarray, act: Hook | None = None) -> np.ndarray:
    """Logits (L, vocab) of one token sequence."""
    act = act or _identity
    r = embed(w, tokens)
    for i, lw in enumerate(w.layers):
        r = block(cfg, lw, r, i, act)
    return head(cfg, w, r, act)


def forward_batch(cfg: MambaConfig, w: MambaWeights, windows: list[np.ndarray],
                  acts: list[Hook] | Hook | None = None) -> list[np.ndarray]:
    """forward() of every window, layer-major: each layer's weights are used once for the whole batch.

    Every window sees exactly the operations forward() applies to it, so the logits are identical;
    a hook sees layer 0 of every window, then layer 1, ... (`acts`: one hook for all or one per window).
    """
    hooks = acts if isinstance(acts, list) else [acts or _identity] * len(windows)
    rs = [embed(w, t) for t in windows]
    for i, lw in enumerate(w.layers):
        rs = [block(cfg, lw, r, i, h) for r, h in zip(rs, hooks)]
    return [head(cfg, w, r, h) for r, h in zip(rs, hooks)]
