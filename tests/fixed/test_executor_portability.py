"""The Numba executor's float32-BLAS GEMMs are exact, so its logits are the same bytes under every numeric
environment that moves float rounding (OpenBLAS kernels of other CPUs, numpy's baseline SIMD, thread counts).

Each environment runs, in a subprocess, the committed Mamba-1 and Mamba-2 artifacts (a 64-token prefill takes
the BLAS path) and a random int8 GEMM whose 2049 inputs span three exact slices; the digests must equal the
NumPy reference's (int64 loops, no BLAS) computed here."""

from __future__ import annotations

import hashlib
import importlib
import json

import numpy as np
import pytest
from numeric_envs import ENVS, run

PROBE = ("import json, sys; sys.path[:0] = ['tests', 'tests/fixed']; "
         "from test_executor_portability import digests; print(json.dumps(digests('numba')))")


def _sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, np.int64).tobytes()).hexdigest()


def digests(backend: str) -> dict[str, str]:
    from qsim import artifact
    from qsim.qweights import IntLinear
    from qsim.run import fixed_executor

    out = {}
    for name in ("mamba-tiny-w8a8", "mamba2-tiny-w8a8"):
        logits, _ = fixed_executor(artifact.load(artifact.SHIPPED_ARTIFACTS / name), backend).prefill(
            np.arange(64) * 7 % 256)
        out[name] = _sha(logits)
    r = np.random.default_rng(5)
    x, w = r.integers(-128, 128, (40, 2049)).astype(np.int8), r.integers(-128, 128, (33, 2049)).astype(np.int8)
    x[0], w[0] = -128, -128
    x[1], w[1] = -127, 127  # odd products: an unsliced float32 sum past 2**24 would lose the last bit
    ops = importlib.import_module("qsim.fixed.ops_numba" if backend == "numba" else "qsim.fixed.ops")
    out["gemm"] = _sha(ops.linear(x, ops.prepare_linear(IntLinear(q=w))))
    return out


@pytest.fixture(scope="module")
def reference():
    return digests("numpy")


@pytest.mark.parametrize("name", sorted(ENVS))
def test_numba_executor_gives_the_reference_bytes(name, reference):
    res = run(["-c", PROBE], ENVS[name])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1]) == reference, name
