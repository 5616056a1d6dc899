"""What the recipes measure on the calibration windows before they rewrite the model.

Per-channel absmax (smoothing factors) and first and second moments
(covariances for KLT rotations) of named activations of the float model.
Ranges are snapped like calibration's (calib.observers.snap_range), so the
factors derived from them rarely move between machines.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from calib.observers import snap_range
from qsim import float_model
from qsim.progress import progress
from qsim.weights import LoadedModel


@dataclass
class ChannelStats:
    absmax: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)  # snapped after the pass
    sums: dict[tuple[int, str], np.ndarray] = field(default_factory=lambda: defaultdict(float))  # sum of x
    moments: dict[tuple[int, str], np.ndarray] = field(default_factory=lambda: defaultdict(float))  # sum x^T x
    counts: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int))

    def layers(self, name: str, n_layer: int) -> dict[int, np.ndarray]:
        return {i: self.absmax[(i, name)] for i in range(n_layer)}

    def covariance(self, keys) -> np.ndarray:
        """The covariance of the rows of every tensor in keys, pooled."""
        n = sum(self.counts[k] for k in keys)
        mean = sum(self.sums[k] for k in keys) / n
        cov = sum(self.moments[k] for k in keys) / n - np.outer(mean, mean)
        return (cov + cov.T) / 2


def channel_stats(lm: LoadedModel, windows: list[np.ndarray], absmax=(), moments=(),
                  desc: str = "observe") -> ChannelStats:
    st = ChannelStats()
    want_abs, want_mom = set(absmax), set(moments)

    def hook(layer: int, name: str, x: np.ndarray) -> None:
        key = (layer, name)
        if name in want_abs:
            m = np.abs(x).max(axis=0).astype(np.float64)
            st.absmax[key] = np.maximum(st.absmax[key], m) if key in st.absmax else m
        if name in want_mom:
            x64 = x.astype(np.float64)
            st.sums[key] = st.sums[key] + x64.sum(axis=0)
            st.moments[key] = st.moments[key] + x64.T @ x64
            st.counts[key] += x64.shape[0]

    for w in progress(windows, desc=desc, unit="seq"):
        float_model.forward(lm.config, lm.weights, w, hook)
    st.absmax = {k: np.array([snap_range(float(v)) for v in a]) for k, a in st.absmax.items()}
    return st
