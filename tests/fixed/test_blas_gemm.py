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
