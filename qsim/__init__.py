"""qsim: one integer contract for quantized Mamba, executed many ways and compared bit for bit."""

from qsim.spec import SPEC_VERSION

__all__ = ["SPEC_VERSION"]
