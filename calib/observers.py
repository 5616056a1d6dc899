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
    """

    def __init__(self, n_layer: int, percentile_alpha: float | None, rotate: bool):
        self.alpha = percentile_alpha
        self.rotate = rotate
        self.obs: dict[tuple[int, str], object] = defaultdict(AbsMax)
        self.xs_pct: dict[int, Percentile] = {}

    def __call__(self, layer: int, name: str, x: np.ndarray) -> None:
        self.obs[(layer, name)].update(x)
        if name == "xs" and self.alpha is not None:
            self.xs_pct.setdefault(layer, Percentile(self.alpha)).update(x)
        if name == "y":
            n = x.shape[-1]
            y_rot = hadamard.fwht_float(x) / np.sqrt(n) if self.rotate else x
            self.obs[(layer, "y_rot")].update(y_rot)

    def absmax(self, layer: int, name: str) -> float:
        return self.obs[(layer, name)].value

    def ssm_input(self, layer: int) -> float:
        """The SSM input range: percentile when enabled, else absmax."""
        if self.alpha is None:
            return self.absmax(layer, "xs")
        return self.xs_pct[layer].value
