"""Quamba2 (Chiang et al., arXiv 2503.22879) for Mamba-2: sort-and-cluster reorder, grouped scales, Hadamard.

The offline rewrite: (1) the residual stream in the Hadamard basis: norm
weights folded, embedding, in_proj's input columns, out_proj's output rows
and lm_head rotated by H / sqrt(d_model); (2) per layer, Quamba2's head/channel
reorder (calib.reorder) from the SSM input's per-channel mean |x| on the
calibration windows, which also fixes the scale groups of x, one per (SSD
group, head group, channel group); `--no-group-heads` skips it and x gets one
scale per tensor, as Quamba1 would. The rotation acts on the residual side of
in_proj and out_proj, the reorder on the other: they commute. Calibration adds the online
Hadamard before out_proj (its weights rotated to match) and GPTQ for 4-bit
weights; B and C get one scale per SSD group.
"""

from __future__ import annotations

import numpy as np

from calib import reorder
from calib.recipes import Recipe
from calib.recipes.fuse import fold_norms, map_layers, random_hadamard, rotate_residual
from qsim import float_model2

PAPER = "Chiang et al., Quamba2, ICML 2025 (arXiv 2503.22879)"


def mean_abs_input(cfg, lw: dict, rs: list[np.ndarray]) -> np.ndarray:
    """Per channel of the SSM input x: the mean |x| over a window's tokens, maximised over the windows."""
    stat = None
    for r in rs:
        m = np.abs(float_model2.ssm_input(cfg, lw, r).astype(np.float64)).mean(axis=0)
        stat = m if stat is None else np.maximum(stat, m)
    return stat


class InputReorder:
    """Layer i's reorder, planned from the SSM input on the calibration windows entering layer i.

    The residual rotation leaves x unchanged (exact arithmetic), so the statistic is taken on the rotated
    model, from the residual windows the calibration pass already carries (`feed`): one float pass over
    the calibration batch instead of two (mamba2-2.7b: 16 blocks of 0.46 s per layer saved). A model
    used without a calibration pass (a float forward in a test) carries its own windows, in layer order,
    through the un-reordered layers (the same function)."""

    def __init__(self, lm, windows: list[np.ndarray]):
        self.lm, self.plans = lm, {}
        self._at, self._rs = 0, [float_model2.embed(lm.weights, w) for w in windows]

    def feed(self, i: int, rs: list[np.ndarray]) -> None:
        """The residual windows entering layer i of the rewritten model (from a calibration pass)."""
        self._at, self._rs = i, rs

    def layer(self, i: int, lw: dict) -> dict:
        cfg = self.lm.config
        if i not in self.plans:
            if self._at > i:
                raise RuntimeError(f"quamba2 reorder: layer {i} requested after layer {self._at}'s inputs")
            for j in range(self._at, i):
                self._rs = [float_model2.block(cfg, self.lm.weights.layers[j], r, j) for r in self._rs]
            self._at = i
            self.plans[i] = reorder.plan(mean_abs_input(cfg, lw, self._rs), cfg.nheads, cfg.ngroups)
        return reorder.apply(lw, self.plans[i], cfg)


def transform(lm, s, windows):
    q = random_hadamard(lm.config.d_model, None, f"{lm.name}: residual rotation")
    lm = rotate_residual(fold_norms(lm), q)
    notes = [f"norm weights folded; residual stream in the Hadamard basis (H / sqrt({lm.config.d_model}))"]
    if s.group_heads:
        plan = InputReorder(lm, windows)
        lm = map_layers(lm, plan.layer, feed=plan.feed)
        notes.insert(0, f"heads and channels reordered per layer (sort and cluster: {reorder.HEAD_GROUPS} head "
                     f"groups x {reorder.CHANNEL_GROUPS} channel groups per SSD group, statistic mean |x| over "
                     f"tokens, max over {len(windows)} calibration windows)")
    return lm, notes


RECIPES = (
    Recipe("quamba2", "Mamba-2: head/channel reorder with grouped x scales, per-group B/C scales, Hadamard "
           "residual and out_proj input, GPTQ", PAPER, transform, percentile=False, hadamard=True,
           families=("mamba2",)),
)
