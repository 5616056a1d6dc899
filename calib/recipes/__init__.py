"""Quantization recipes: each a registered calibration method that yields an ordinary artifact.

A recipe is one module in this package defining `RECIPES` (a tuple of Recipe).
It rewrites the float model offline (rotations and smoothing folded into the
weights, which leaves the float logits unchanged) and names the calibration
features it uses (percentile clipping of the SSM input, the online Hadamard
before out_proj, GPTQ for int4). calib.calibrate then quantizes the rewritten
model like any other, so every executor runs every recipe; a per-channel
smoothing of out_proj's input reaches the integer datapath as the scan's
per-channel output multiplier (spec 1.4.0).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache

import numpy as np

from qsim.calib_settings import CalibSettings
from qsim.errors import QsimError
from qsim.weights import LoadedModel

FAMILY_NAMES = {"mamba": "Mamba-1", "mamba2": "Mamba-2"}

Transform = Callable[[LoadedModel, CalibSettings, list[np.ndarray]], tuple[LoadedModel, list[str]]]


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str  # one line: what the recipe does
    source: str  # the paper it follows
    transform: Transform | None = None  # offline rewrite of the float model: (model, notes)
    percentile: bool = False  # percentile-clipped SSM input scale (alpha)
    hadamard: bool = False  # online Hadamard before out_proj
    gptq: bool = True  # GPTQ for int4 weights (else round to nearest)
    families: tuple[str, ...] = ("mamba",)

    def settings(self, s: CalibSettings) -> CalibSettings:
        """The settings this recipe calibrates with: user ablations (--no-*) may only turn features off."""
        return replace(s, method=self.name, percentile=s.percentile and self.percentile,
                       hadamard=s.hadamard and self.hadamard, gptq=s.gptq and self.gptq)

    def apply(self, lm: LoadedModel, s: CalibSettings, windows: list[np.ndarray]) -> tuple[LoadedModel, list[str]]:
        if lm.config.family not in self.families:
            raise QsimError(f"--method {self.name}: does not apply to {lm.name} (a "
                            f"{FAMILY_NAMES[lm.config.family]} model; it is for "
                            f"{', '.join(FAMILY_NAMES[f] for f in self.families)})")
        return self.transform(lm, s, windows) if self.transform else (lm, [])


@cache
def registry() -> dict[str, Recipe]:
    """Every recipe of every module in this package, by name."""
    found: dict[str, Recipe] = {}
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        for r in getattr(importlib.import_module(f"{__name__}.{mod}"), "RECIPES", ()):
            if r.name in found:
                raise RuntimeError(f"recipe {r.name} registered twice")
            found[r.name] = r
    return found


def get(name: str) -> Recipe:
    recipes = registry()
    if name in recipes:
        return recipes[name]
    raise QsimError(f"--method {name}: unknown recipe; valid: {', '.join(recipes)}")


def effective(s: CalibSettings) -> CalibSettings:
    """The settings after the recipe named in s has set its features."""
    return get(s.method).settings(s)
