"""Range observers: absmax for every activation, a percentile observer for the SSM input."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from qsim import hadamard


class AbsMax:
    """Running max |x| over everything seen."""

    def __init__(self):
        self.value = 0.0

    def update(self, x: np.ndarray) -> None:
        self.value = max(self.value, float(np.abs(x).max(initial=0.0)))


class Percentile:
    """The alpha-quantile of |x| per calibration sample, averaged over samples.

    Quamba smooths per-batch quantiles with an EMA; with one sample per batch
    and a fixed sample set, the mean is that EMA's steady state without its
    dependence on sample order.
    """

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.samples: list[float] = []

    def update(self, x: np.ndarray) -> None:
        self.samples.append(float(np.quantile(np.abs(x), self.alpha)))

    @property
    def value(self) -> float:
        return float(np.mean(self.samples)) if self.samples else 0.0


class ObserverHook:
    """The float model's act hook that records ranges; it never changes an activation.

    Besides the named activations it records `y_rot`, the gated scan output
    after the normalised Hadamard rotation, which sets the out_proj input scale.
    With `hessians`, it also sums X^T X of the inputs of in_proj (u), x_proj
    (xs), out_proj (y_rot) and lm_head (u_f) for GPTQ (memory: d^2 per layer).
    """

    GEMM_INPUTS = ("u", "xs", "y_rot", "u_f")

    def __init__(self, n_layer: int, percentile_alpha: float | None, rotate: bool, hessians: bool = False):
        self.alpha = percentile_alpha
        self.rotate = rotate
        self.obs: dict[tuple[int, str], object] = defaultdict(AbsMax)
        self.xs_pct: dict[int, Percentile] = {}
        self.hessians: dict[tuple[int, str], np.ndarray] | None = {} if hessians else None

    def __call__(self, layer: int, name: str, x: np.ndarray) -> None:
        self._observe(layer, name, x)
        if name == "xs" and self.alpha is not None:
            self.xs_pct.setdefault(layer, Percentile(self.alpha)).update(x)
        if name == "y":
            n = x.shape[-1]
            self._observe(layer, "y_rot", hadamard.fwht_float(x) / np.sqrt(n) if self.rotate else x)

    def _observe(self, layer: int, name: str, x: np.ndarray) -> None:
        self.obs[(layer, name)].update(x)
        if self.hessians is not None and name in self.GEMM_INPUTS:
            x64 = x.astype(np.float64)
            key = (layer, name)
            self.hessians[key] = self.hessians.get(key, 0.0) + x64.T @ x64

    def absmax(self, layer: int, name: str) -> float:
        return self.obs[(layer, name)].value

    def ssm_input(self, layer: int) -> float:
        """The SSM input range: percentile when enabled, else absmax."""
        if self.alpha is None:
            return self.absmax(layer, "xs")
        return self.xs_pct[layer].value
