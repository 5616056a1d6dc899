"""Offline rewrites of the float model that leave its function unchanged.

Each returns a new LoadedModel (the input is never modified). Norm folding
moves RMSNorm's weight into the following linears; a residual rotation Q
(orthogonal) turns the residual stream r into r Q: RMSNorm without weight
commutes with it (||r Q|| = ||r||), so embedding, in_proj, out_proj and
lm_head absorb Q. Smoothing divides an activation per channel by s and
multiplies the consuming linear's input columns by s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from qsim import hadamard
from qsim.errors import QsimError
from qsim.weights import LazyLayers, LoadedModel, MambaWeights, keep_layers

ORTHOGONAL_TOL = 1e-9  # max |R^T R - I| accepted for a rotation built in float64


def map_layers(lm: LoadedModel, fn, *, untie: bool = False, feed=None) -> LoadedModel:
    """A new model whose layer i is fn(i, a new dict of the input's layer i), built when it is used, as the
    input's layers are: a streamed model's rewritten layers are never all in memory at once. fn assigns new
    arrays, never writes into the input's. `untie` gives lm_head its own array (a rotation or fold breaks
    the tie). `feed` (LazyLayers.feed) takes the calibration windows entering a layer, for an fn that
    depends on them."""
    w = lm.weights
    tied = w.lm_head is w.embedding
    emb = w.embedding.copy()
    head = emb if tied and not untie else w.lm_head.copy()
    base = w.layers
    layers = LazyLayers(len(base), lambda i: fn(i, dict(base[i])), keep_layers(lm.config), feed)
    cfg = replace(lm.config, tie_embeddings=False) if untie else lm.config
    return replace(lm, config=cfg, weights=MambaWeights(emb, w.norm_f.copy(), head, layers))


def as_f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def fold_norms(lm: LoadedModel) -> LoadedModel:
    """RMSNorm weights into in_proj's and lm_head's input columns; the norms keep weight 1."""

    def fold(i: int, lw: dict) -> dict:
        lw["in_proj"] = as_f32(lw["in_proj"].astype(np.float64) * lw["norm"].astype(np.float64))
        lw["norm"] = np.ones_like(lw["norm"])
        return lw

    out = map_layers(lm, fold, untie=True)
    w = out.weights
    w.lm_head = as_f32(w.lm_head.astype(np.float64) * w.norm_f.astype(np.float64))
    w.norm_f = np.ones_like(w.norm_f)
    return out


def check_orthogonal(r: np.ndarray, what: str) -> None:
    err = float(np.abs(r.T @ r - np.eye(r.shape[0])).max())
    if not err <= ORTHOGONAL_TOL:
        raise QsimError(f"{what}: rotation is not orthogonal (max |R^T R - I| = {err:.2e})")


@dataclass(frozen=True)
class SignedHadamard:
    """diag(signs) H / sqrt(n), QuaRot's randomized Hadamard, applied as the fast transform (float64):
    x Q = ((x * signs) H) / sqrt(n) costs O(n (m + log n)) per row against a dense GEMM's O(n^2)
    (mamba2-2.7b's in_proj, 10576 x 2560, took 3.7 s per layer as a dense float64 product)."""

    signs: np.ndarray

    @property
    def n(self) -> int:
        return self.signs.shape[0]

    def dense(self) -> np.ndarray:
        return self.signs[:, None] * hadamard.matrix(self.n).astype(np.float64) / np.sqrt(self.n)

    def right(self, x: np.ndarray) -> np.ndarray:
        """x Q in float64, rounded once to float32."""
        return as_f32(hadamard.transform64(x.astype(np.float64) * self.signs, transpose=True) / np.sqrt(self.n))


def random_hadamard(n: int, seed: int | None, what: str) -> SignedHadamard:
    """QuaRot's randomized Hadamard of order n (seed None: all signs +1, H / sqrt(n))."""
    if not hadamard.supported(n):
        raise QsimError(f"{what}: no Hadamard matrix of order {n} (orders m*2^k, m in {hadamard.BASE_ORDERS})")
    return SignedHadamard(np.ones(n) if seed is None else np.random.default_rng(seed).choice([-1.0, 1.0], n))


def rotate_residual(lm: LoadedModel, q: np.ndarray | SignedHadamard) -> LoadedModel:
    """Residual stream r -> r Q; the norms must already be folded (weight 1: a layer's is checked when built)."""
    if np.any(lm.weights.norm_f != 1):
        raise ValueError("rotate_residual: fold the norm weights first")
    right = q.right if isinstance(q, SignedHadamard) else (lambda x: as_f32(x @ q))

    def rotate(i: int, lw: dict) -> dict:
        if np.any(lw["norm"] != 1):
            raise ValueError(f"rotate_residual: fold the norm weights first (layer {i})")
        lw["in_proj"] = right(lw["in_proj"])
        lw["out_proj"] = np.ascontiguousarray(right(lw["out_proj"].T).T)  # Q^T W = (W^T Q)^T
        return lw

    out = map_layers(lm, rotate, untie=True)
    w = out.weights
    w.embedding = right(w.embedding)
    w.lm_head = right(w.lm_head)
    return out


def smoothing_factors(act_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's s = max|X|^a / max|W|^(1-a) per channel; 1 where either side is zero."""
    ok = (act_max > 0) & (w_max > 0)
    s = np.where(ok, np.power(np.where(ok, act_max, 1.0), alpha) / np.power(np.where(ok, w_max, 1.0), 1 - alpha), 1.0)
    return s.astype(np.float64)


def _column_factors(lm: LoadedModel, key: str, act_max: dict[int, np.ndarray], alpha: float) -> list[np.ndarray]:
    """Per layer the smoothing factors of linear `key`'s input columns (one pass that builds each layer)."""
    return [smoothing_factors(act_max[i], np.abs(lm.weights.layers[i][key]).max(axis=0).astype(np.float64), alpha)
            for i in range(lm.config.n_layer)]


def smooth_in_proj(lm: LoadedModel, u_max: dict[int, np.ndarray], alpha: float) -> tuple[LoadedModel, np.ndarray]:
    """in_proj's input u divided by s through the norm weight, its columns times s."""
    factors = _column_factors(lm, "in_proj", u_max, alpha)

    def smooth(i: int, lw: dict) -> dict:
        lw["norm"] = as_f32(lw["norm"] / factors[i])
        lw["in_proj"] = as_f32(lw["in_proj"] * factors[i])
        return lw

    return map_layers(lm, smooth), np.array([s.max() / s.min() for s in factors])


def smooth_out_proj(lm: LoadedModel, y_max: dict[int, np.ndarray], alpha: float) -> tuple[LoadedModel, np.ndarray]:
    """out_proj's input divided by s (the layer's out_smooth, applied to the gated scan output)."""
    factors = _column_factors(lm, "out_proj", y_max, alpha)

    def smooth(i: int, lw: dict) -> dict:
        lw["out_smooth"] = as_f32(lw.get("out_smooth", 1.0) * factors[i])
        lw["out_proj"] = as_f32(lw["out_proj"] * factors[i])
        return lw

    return map_layers(lm, smooth), np.array([s.max() / s.min() for s in factors])
