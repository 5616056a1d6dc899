"""How an artifact is calibrated: part of its identity (the cache key) and of its manifest."""

from __future__ import annotations

from dataclasses import dataclass

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

    def validate(self) -> None:
        if self.samples < 1 or self.seq_len < 1:
            raise QsimError(f"calibration: samples and length must be >= 1 (got {self.samples}, {self.seq_len})")
        if not 0.0 < self.alpha <= 1.0:
            raise QsimError(f"--alpha {self.alpha}: must be in (0, 1]")
        if not 12 <= self.state_bits <= 28:
            raise QsimError(f"--state-bits {self.state_bits}: must be in [12, 28] (int64 products stay exact)")
