"""Quamba2 (Chiang et al., arXiv 2503.22879) for Mamba-2: sort-and-cluster reorder, grouped scales, Hadamard.

The offline rewrite: (1) per layer, Quamba2's head/channel reorder
(calib.reorder) from the SSM input's per-channel mean |x| on the calibration
windows, which also fixes the scale groups of x, one per (SSD group, head
group, channel group); `--no-group-heads` skips it and x gets one scale per
tensor, as Quamba1 would; (2) the residual stream in the Hadamard basis:
norm weights folded, embedding, in_proj's input columns, out_proj's output
rows and lm_head rotated by H / sqrt(d_model). Calibration adds the online
Hadamard before out_proj (its weights rotated to match) and GPTQ for 4-bit
weights; B and C get one scale per SSD group.
"""

from __future__ import annotations

import numpy as np

from calib import reorder
from calib.recipes import Recipe
from calib.recipes.fuse import fold_norms, map_layers, random_hadamard, rotate_residual
from qsim.progress import progress

PAPER = "Chiang et al., Quamba2, ICML 2025 (arXiv 2503.22879)"


def ssm_input_stat(lm, windows: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Per layer, per channel of x: the mean |x| over a window's tokens, maximised over the windows."""
    from qsim import float_model2

    stat: dict[int, np.ndarray] = {}

    def hook(layer, name, x):
        if name == "x":
            m = np.abs(x.astype(np.float64)).mean(axis=0)
            stat[layer] = np.maximum(stat[layer], m) if layer in stat else m

    cfg = lm.config
    rs = [float_model2.embed(lm.weights, w) for w in windows]
    for i in progress(range(cfg.n_layer), desc="quamba2 reorder statistic", unit="layer"):
        rs = [float_model2.block(cfg, lm.weights.layers[i], r, i, hook) for r in rs]
    return stat


def transform(lm, s, windows):
    notes = []
    if s.group_heads:
        stat = ssm_input_stat(lm, windows)
        cfg = lm.config
        lm = map_layers(lm, lambda i, lw: reorder.apply(lw, reorder.plan(stat[i], cfg.nheads, cfg.ngroups), cfg))
        notes.append(f"heads and channels reordered per layer (sort and cluster: {reorder.HEAD_GROUPS} head groups "
                     f"x {reorder.CHANNEL_GROUPS} channel groups per SSD group, statistic mean |x| over tokens, "
                     f"max over {len(windows)} calibration windows)")
    q = random_hadamard(lm.config.d_model, None, f"{lm.name}: residual rotation")
    notes.append(f"norm weights folded; residual stream in the Hadamard basis (H / sqrt({lm.config.d_model}))")
    return rotate_residual(fold_norms(lm), q), notes


RECIPES = (
    Recipe("quamba2", "Mamba-2: head/channel reorder with grouped x scales, per-group B/C scales, Hadamard "
           "residual and out_proj input, GPTQ", PAPER, transform, percentile=False, hadamard=True,
           families=("mamba2",)),
)
