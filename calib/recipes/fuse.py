"""Offline rewrites of the float model that leave its function unchanged.

Each returns a new LoadedModel (the input is never modified). Norm folding
moves RMSNorm's weight into the following linears; a residual rotation Q
(orthogonal) turns the residual stream r into r Q: RMSNorm without weight
commutes with it (||r Q|| = ||r||), so embedding, in_proj, out_proj and
lm_head absorb Q. Smoothing divides an activation per channel by s and
multiplies the consuming linear's input columns by s.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qsim import hadamard
from qsim.errors import QsimError
from qsim.weights import LoadedModel, MambaWeights

ORTHOGONAL_TOL = 1e-9  # max |R^T R - I| accepted for a rotation built in float64


def copy_model(lm: LoadedModel, *, untie: bool = False) -> LoadedModel:
    """A deep copy; `untie` gives lm_head its own array (a rotation or fold breaks the tie)."""
    w = lm.weights
    tied = w.lm_head is w.embedding
    emb = w.embedding.copy()
    head = emb if tied and not untie else w.lm_head.copy()
    weights = MambaWeights(emb, w.norm_f.copy(), head, [{k: v.copy() for k, v in lw.items()} for lw in w.layers])
    cfg = replace(lm.config, tie_embeddings=False) if untie else lm.config
    return replace(lm, config=cfg, weights=weights)


def as_f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def fold_norms(lm: LoadedModel) -> LoadedModel:
    """RMSNorm weights into in_proj's and lm_head's input columns; the norms keep weight 1."""
    out = copy_model(lm, untie=True)
    w = out.weights
    for lw in w.layers:
        lw["in_proj"] = as_f32(lw["in_proj"].astype(np.float64) * lw["norm"].astype(np.float64))
        lw["norm"] = np.ones_like(lw["norm"])
    w.lm_head = as_f32(w.lm_head.astype(np.float64) * w.norm_f.astype(np.float64))
    w.norm_f = np.ones_like(w.norm_f)
    return out


def check_orthogonal(r: np.ndarray, what: str) -> None:
    err = float(np.abs(r.T @ r - np.eye(r.shape[0])).max())
    if not err <= ORTHOGONAL_TOL:
        raise QsimError(f"{what}: rotation is not orthogonal (max |R^T R - I| = {err:.2e})")


def random_hadamard(n: int, seed: int | None, what: str) -> np.ndarray:
    """diag(random signs) H / sqrt(n): QuaRot's randomized Hadamard, orthogonal, float64 (seed None: H / sqrt(n))."""
    if not hadamard.supported(n):
        raise QsimError(f"{what}: no Hadamard matrix of order {n} (orders m*2^k, m in {hadamard.BASE_ORDERS})")
    signs = np.ones(n) if seed is None else np.random.default_rng(seed).choice([-1.0, 1.0], n)
    return signs[:, None] * hadamard.matrix(n).astype(np.float64) / np.sqrt(n)


def rotate_residual(lm: LoadedModel, q: np.ndarray) -> LoadedModel:
    """Residual stream r -> r Q; the norms must already be folded (weight 1)."""
    w0 = lm.weights
    if any(np.any(lw["norm"] != 1) for lw in w0.layers) or np.any(w0.norm_f != 1):
        raise ValueError("rotate_residual: fold the norm weights first")
    out = copy_model(lm, untie=True)
    w = out.weights
    w.embedding = as_f32(w.embedding @ q)
    for lw in w.layers:
        lw["in_proj"] = as_f32(lw["in_proj"] @ q)
        lw["out_proj"] = as_f32(q.T @ lw["out_proj"])
    w.lm_head = as_f32(w.lm_head @ q)
    return out


def smoothing_factors(act_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's s = max|X|^a / max|W|^(1-a) per channel; 1 where either side is zero."""
    ok = (act_max > 0) & (w_max > 0)
    s = np.where(ok, np.power(np.where(ok, act_max, 1.0), alpha) / np.power(np.where(ok, w_max, 1.0), 1 - alpha), 1.0)
    return s.astype(np.float64)


def smooth_in_proj(lm: LoadedModel, u_max: dict[int, np.ndarray], alpha: float) -> tuple[LoadedModel, np.ndarray]:
    """in_proj's input u divided by s through the norm weight, its columns times s."""
    out = copy_model(lm)
    spread = []
    for i, lw in enumerate(out.weights.layers):
        s = smoothing_factors(u_max[i], np.abs(lw["in_proj"]).max(axis=0).astype(np.float64), alpha)
        lw["norm"] = as_f32(lw["norm"] / s)
        lw["in_proj"] = as_f32(lw["in_proj"] * s)
        spread.append(s.max() / s.min())
    return out, np.array(spread)


def smooth_out_proj(lm: LoadedModel, y_max: dict[int, np.ndarray], alpha: float) -> tuple[LoadedModel, np.ndarray]:
    """out_proj's input divided by s (the layer's out_smooth, applied to the gated scan output)."""
    out = copy_model(lm)
    spread = []
    for i, lw in enumerate(out.weights.layers):
        s = smoothing_factors(y_max[i], np.abs(lw["out_proj"]).max(axis=0).astype(np.float64), alpha)
        lw["out_smooth"] = as_f32(lw.get("out_smooth", 1.0) * s)
        lw["out_proj"] = as_f32(lw["out_proj"] * s)
        spread.append(s.max() / s.min())
    return out, np.array(spread)
