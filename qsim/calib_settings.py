"""How an artifact is calibrated: part of its identity (the cache key) and of its manifest."""

from __future__ import annotations

from dataclasses import dataclass

from qsim import spec
from qsim.errors import QsimError


@dataclass(frozen=True)
class CalibSettings:
    samples: int = 16
    seq_len: int = 256
    percentile: bool = True
    alpha: float = 0.99999
    hadamard: bool = True
    state_bits: int = 24
    gptq: bool = True  # int4 weights by GPTQ (Quamba2's recipe); False: round to nearest
    text: str = "shakespeare/calib.txt"
    method: str = "quamba"  # the recipe (calib.recipes); it may turn percentile, hadamard and gptq off
    smooth_alpha: float = 0.5  # migration strength of the smoothing recipes: s = max|X|^a / max|W|^(1-a)
    group_heads: bool = True  # Mamba-2 (quamba2): head/channel reorder with grouped x scales (8-bit activations)

    def validate(self, family: str | None = None) -> None:
        """Refuse settings outside their ranges; the state width's range is the model family's (SPEC 5.3,
        15.1), the widest of them before the model is known."""
        if self.samples < 1 or self.seq_len < 1:
            raise QsimError(f"calibration: samples and length must be >= 1 (got {self.samples}, {self.seq_len})")
        from calib.recipes import get

        get(self.method)
        if not 0.0 < self.smooth_alpha < 1.0:
            raise QsimError(f"--smooth-alpha {self.smooth_alpha}: must be in (0, 1)")
        if not 0.0 < self.alpha <= 1.0:
            raise QsimError(f"--alpha {self.alpha}: must be in (0, 1]")
        lo, hi = ((spec.STATE_BITS_MIN, spec.STATE_BITS_MAX) if family == "mamba"
                  else (spec.SSD_STATE_BITS_MIN, spec.SSD_STATE_BITS_MAX))
        if not lo <= self.state_bits <= hi:
            model = f" for a {'Mamba-1' if family == 'mamba' else 'Mamba-2'} model" if family else ""
            raise QsimError(f"--state-bits {self.state_bits}: must be in [{lo}, {hi}]{model} "
                            "(int64 products stay exact)")
