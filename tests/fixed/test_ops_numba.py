"""Numba kernels against the NumPy reference ops, element by element, at the int8 edges."""

import numpy as np
import pytest

from qsim.errors import QsimError
from qsim.fixed import ops, ops_numba
from qsim.qweights import IntLinear


@pytest.mark.parametrize("m,k,n", [(1, 5, 7), (2, 8, 8), (3, 9, 9), (5, 48, 13), (64, 1536, 80), (1, 768, 3072),
                                   (32, 1024, 6), (33, 2049, 17)])
def test_int8_gemm_equals_reference(m, k, n):
    """Every block shape (2 x 4 blocks, odd rows, edge columns) and the float32 BLAS path: K of exactly one
    exact slice (the -128 row's sum is 2**24) and a ragged last slice; -128 rows make the largest products."""
    r = np.random.default_rng(m * 1000 + n)
    x = r.integers(-128, 128, (m, k)).astype(np.int8)
    q = r.integers(-128, 128, (n, k)).astype(np.int8)
    x[0] = -128
    q[0] = -128
    q[-1] = 127
    w = IntLinear(q=q)
    ref = ops.linear(x, ops.prepare_linear(w))
    got = ops_numba.linear(x, ops_numba.prepare_linear(w))
    assert got.dtype == np.int64 and np.array_equal(got, ref)
    assert ref[0, 0] == k * 128 * 128
    for fn in (ops_numba._gemm_i8_serial, ops_numba._gemm_i8_parallel, ops_numba._gemm_i8_blas):  # every path
        assert np.array_equal(fn(x, q), ref)


def test_int8_gemm_refuses_a_length_that_would_overflow_int32():
    w = IntLinear(q=np.zeros((1, ops_numba.I8_MAX_K), np.int8))
    with pytest.raises(QsimError, match="int32"):
        ops_numba.prepare_linear(w)
