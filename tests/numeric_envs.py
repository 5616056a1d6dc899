"""Numeric environments that imitate another CPU here (toolchain facts: numpy's runtime SIMD dispatch,
OpenBLAS kernels, oneDNN's ISA, thread counts). Float code may round differently under each; integer
code must not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]


def _numpy_simd() -> str:
    """Every SIMD target numpy dispatches to on this CPU, so that disabling them all forces its baseline loops."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return " ".join(f for f in __cpu_dispatch__ if __cpu_features__.get(f))


ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENVS = {
    "numpy-baseline-simd": {"NPY_DISABLE_CPU_FEATURES": _numpy_simd()},
    "openblas-prescott": {"OPENBLAS_CORETYPE": "Prescott"},
    "openblas-sandybridge": {"OPENBLAS_CORETYPE": "Sandybridge"},
    "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "one-thread": ONE_THREAD,
    "two-threads": {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    "all-at-once": {"NPY_DISABLE_CPU_FEATURES": _numpy_simd(), "OPENBLAS_CORETYPE": "Prescott",
                    "ONEDNN_MAX_CPU_ISA": "SSE41", **ONE_THREAD},
}


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python args...` from the repository root with the environment's variables set (and no Hub access)."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=timeout)
