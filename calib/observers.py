"""Range observers: absmax for every activation, a percentile observer for the SSM input.

Every range leaves the hook snapped up to a coarse grid (snap_range): the float
forward pass behind it rounds differently on another CPU (a few 1e-7
relative), and a snapped range absorbs that drift unless it straddles a grid
point, so two machines almost always derive the same scales, multipliers,
tables and integers from it.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from qsim import hadamard

RANGE_GRID_BITS = 8  # ranges become m * 2**e with an 8-bit m: at most 2**-7 (0.8 %) wider than observed


def snap_range(v: float) -> float:
    """The smallest m * 2**e >= v with m an integer in [2**(RANGE_GRID_BITS-1), 2**RANGE_GRID_BITS]; 0 stays 0.

    Exact in float64 (scaling by a power of two and ceil are exact), so it is the same on every machine."""
    if not (math.isfinite(v) and v > 0):
        return v
    e = math.frexp(v)[1] - RANGE_GRID_BITS  # v / 2**e lies in [2**(B-1), 2**B)
    return math.ldexp(math.ceil(math.ldexp(v, -e)), e)


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
    With `hessians`, it also keeps the inputs of in_proj (u), x_proj (xs),
    out_proj (y_rot) and lm_head (u_f) for GPTQ's H = X^T X, one layer at a
    time (memory: the layer's calibration inputs).
    """

    GEMM_INPUTS = ("u", "xs", "y_rot", "u_f")

    def __init__(self, n_layer: int, percentile_alpha: float | None, rotate: bool, hessians: bool = False):
        self.alpha = percentile_alpha
        self.rotate = rotate
        self.obs: dict[tuple[int, str], object] = defaultdict(AbsMax)
        self.xs_pct: dict[int, Percentile] = {}
        self.gemm_inputs: dict[tuple[int, str], list[np.ndarray]] | None = {} if hessians else None

    def __call__(self, layer: int, name: str, x: np.ndarray) -> None:
        self._observe(layer, name, x)
        if name == "xs" and self.alpha is not None:
            self.xs_pct.setdefault(layer, Percentile(self.alpha)).update(x)
        if name == "y":
            n = x.shape[-1]
            self._observe(layer, "y_rot", hadamard.fwht_float(x) / np.sqrt(n) if self.rotate else x)

    def _observe(self, layer: int, name: str, x: np.ndarray) -> None:
        self.obs[(layer, name)].update(x)
        if self.gemm_inputs is not None and name in self.GEMM_INPUTS:
            self.gemm_inputs.setdefault((layer, name), []).append(np.array(x))  # a copy: x may be a view

    @property
    def collects_hessians(self) -> bool:
        return self.gemm_inputs is not None

    def hessian(self, key: tuple[int, str]) -> np.ndarray:
        """X^T X in float64 over every calibration window's rows, in window order: one GEMM (a symmetric
        rank-k update) over the whole batch, about 4x faster than one per window for 5120 inputs."""
        x = np.concatenate(self.gemm_inputs[key], dtype=np.float64)  # joined and cast in one copy
        return x.T @ x

    def drop(self, layer: int) -> None:
        """Free a layer's kept GEMM inputs once its linears are quantized."""
        if self.gemm_inputs is not None:
            for key in [k for k in self.gemm_inputs if k[0] == layer]:
                del self.gemm_inputs[key]

    def absmax(self, layer: int, name: str) -> float:
        return snap_range(self.obs[(layer, name)].value)

    def ssm_input(self, layer: int) -> float:
        """The SSM input range: percentile when enabled, else absmax."""
        if self.alpha is None:
            return self.absmax(layer, "xs")
        return snap_range(self.xs_pct[layer].value)
