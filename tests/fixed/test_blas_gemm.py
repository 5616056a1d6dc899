"""The float-BLAS GEMMs: exact integers whether a call runs whole or split over the pool, BLAS threads restored."""

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from qsim.fixed import blas_gemm


@pytest.mark.parametrize("m,k,n", [(16, 48, 7), (64, 1536, 80), (33, 2049, 17), (256, 768, 1031)])
def test_int8_gemm_is_exact_at_the_extremes(m, k, n):
    """-128 * -128 over a whole slice is 2**24 (the float32 limit); split calls (>= SPLIT_MIN_MACS) cut the
    columns unevenly for odd n."""
    r = np.random.default_rng(n)
    x = r.integers(-128, 128, (m, k)).astype(np.int8)
    w = r.integers(-128, 128, (n, k)).astype(np.int8)
    x[0], w[0] = -128, -128
    got = blas_gemm.gemm_i8(x, w)
    assert got.dtype == np.int64
    assert np.array_equal(got, x.astype(np.int64) @ w.astype(np.int64).T)
    assert got[0, 0] == k * 2 ** 14


@pytest.mark.parametrize("m,k,n", [(1, 64, 5), (40, 640, 513)])
def test_float64_gemm_is_exact_for_int4_group_weights(m, k, n):
    """|q * gs| <= 2040 (int4 times a 255 group scale) against int8 inputs: every sum stays below 2**53."""
    r = np.random.default_rng(k)
    x = r.integers(-128, 128, (m, k))
    wt = r.integers(-2040, 2041, (k, n))
    x[0], wt[:, 0] = -128, -2040
    got = blas_gemm.gemm_f64(x, wt.astype(np.float64))
    assert got.dtype == np.int64 and np.array_equal(got, x @ wt)


def test_a_call_leaves_the_blas_thread_count_as_it_found_it():
    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    x = np.ones((64, 1024), np.int8)
    blas_gemm.gemm_i8(x, np.ones((512, 1024), np.int8))
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before


@pytest.mark.parametrize("m,k,n", [(3, 5, 2), (700, 300, 130)])  # one slice; rows split over the pool
def test_float64_matmul_equals_numpy_on_strided_operands(m, k, n):
    """GPTQ hands it column slices of larger arrays; every row's result is a product of the same rows."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((m, k + 7))[:, 3 : 3 + k]
    b = rng.standard_normal((k + 2, n + 9)).T.T[1 : 1 + k, :n]
    got = blas_gemm.matmul_f64(a, b)
    assert got.shape == (m, n) and got.dtype == np.float64
    np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12 * np.abs(a).sum(axis=1).max())
