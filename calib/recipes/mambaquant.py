"""MambaQuant (Xu et al., ICLR 2025, arXiv 2501.13484): KLT-enhanced and smooth-fused rotations.

- R1 = K H on the residual stream (norm weights folded first): K the
  eigenvectors of the covariance of the normalized residual (every layer's
  in_proj input and the final norm's, pooled), H a randomized Hadamard.
- R_dt = K_dt H on the low-rank dt path: x_proj's dt rows and dt_proj's columns.
- B/C smoothing through the scan: B's rows of x_proj divided by s4, C's rows
  times s4, s4 = sqrt(max|B| / max|C|) per state (h scales by 1/s4; C.h does not
  change), which balances the two ranges.
- Smooth-fused rotation of out_proj's input: s = max|y|^a / max|W|^(1-a)
  (a = 0.5 as MambaQuant) divides the gated output (per-channel scan output
  multiplier in the integer datapath; MambaQuant folds it into an S-SiLU gate,
  the same function), then the online Hadamard.
Static per-tensor activation scales, as the other recipes here: MambaQuant's
language-model runs use dynamic per-token scales, which the integer datapath
does not have.
"""

from __future__ import annotations

import numpy as np

from calib.recipes import Recipe
from calib.recipes.fuse import (
    as_f32,
    check_orthogonal,
    fold_norms,
    map_layers,
    random_hadamard,
    rotate_residual,
    smooth_out_proj,
    smoothing_factors,
)
from calib.recipes.observe import channel_stats

SEED = 0


def klt(cov: np.ndarray) -> np.ndarray:
    """Eigenvectors of a covariance, by descending eigenvalue, each with its largest entry positive."""
    vals, vecs = np.linalg.eigh(cov)
    vecs = vecs[:, np.argsort(-vals, kind="stable")]
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])])
    return vecs * np.where(signs == 0, 1.0, signs)


def klt_hadamard(cov: np.ndarray, seed: int, what: str) -> np.ndarray:
    r = klt(cov) @ random_hadamard(cov.shape[0], seed, what).dense()
    check_orthogonal(r, what)
    return r


def rotate_dt_path(lm, r_dt: np.ndarray):
    """dt_r -> dt_r R: x_proj's dt rows by R^T, dt_proj's columns by R."""
    rank = lm.config.dt_rank

    def rotate(i: int, lw: dict) -> dict:
        xp = lw["x_proj"].astype(np.float64)
        xp[:rank] = r_dt.T @ xp[:rank]
        lw["x_proj"] = as_f32(xp)
        lw["dt_w"] = as_f32(lw["dt_w"].astype(np.float64) @ r_dt)
        return lw

    return map_layers(lm, rotate)


def smooth_bc(lm, b_max: dict[int, np.ndarray], c_max: dict[int, np.ndarray]):
    r, n = lm.config.dt_rank, lm.config.d_state

    def smooth(i: int, lw: dict) -> dict:
        s4 = smoothing_factors(b_max[i], c_max[i], 0.5)  # sqrt(max|B| / max|C|)
        xp = lw["x_proj"].astype(np.float64)
        xp[r : r + n] /= s4[:, None]
        xp[r + n :] *= s4[:, None]
        lw["x_proj"] = as_f32(xp)
        return lw

    return map_layers(lm, smooth)


def transform(lm, s, windows):
    cfg = lm.config
    nl = cfg.n_layer
    lm = fold_norms(lm)
    # dt_r, B, C and y do not change under R1 (exact arithmetic): one pass measures everything
    st = channel_stats(lm, windows, absmax=("B", "C", "y"), moments=("u", "u_f", "dtr"), desc="mambaquant")
    resid = [(i, "u") for i in range(nl)] + [(nl, "u_f")]
    r1 = klt_hadamard(st.covariance(resid), SEED, f"{lm.name}: R1")
    r_dt = klt_hadamard(st.covariance([(i, "dtr") for i in range(nl)]), SEED + 1, f"{lm.name}: R_dt")
    lm = rotate_residual(lm, r1)
    lm = rotate_dt_path(lm, r_dt)
    lm = smooth_bc(lm, st.layers("B", nl), st.layers("C", nl))
    lm, spread = smooth_out_proj(lm, st.layers("y", nl), s.smooth_alpha)
    return lm, [
        (f"norm weights folded; residual stream rotated by R1 = K H (order {cfg.d_model}, KLT of the pooled "
        "normalized residual)"),
        f"dt path rotated by R_dt = K_dt H (order {cfg.dt_rank})",
        "B and C balanced through the scan (s4 = sqrt(max|B| / max|C|) per state)",
        (f"out_proj input smoothed (alpha {s.smooth_alpha}; max/min factor up to {spread.max():.3g}), then the "
        "online Hadamard"),
    ]


RECIPES = (Recipe("mambaquant", "KLT-enhanced rotations (residual, dt path), B/C and out_proj smoothing, online "
                  "Hadamard", "Xu et al., MambaQuant, ICLR 2025 (arXiv 2501.13484)", transform, hadamard=True),)
