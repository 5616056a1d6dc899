"""Numba kernels against the NumPy reference ops, element by element, at the int8 edges."""

import numpy as np
import pytest

from qsim import spec
from qsim.errors import QsimError
from qsim.fixed import blas_gemm, ops, ops_numba
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
    if m > 1 and n > 1:  # odd products: an unsliced float32 sum past 2**24 would lose its last bit
        x[1], q[1] = -127, 127
    w = IntLinear(q=q)
    ref = ops.linear(x, ops.prepare_linear(w))
    got = ops_numba.linear(x, ops_numba.prepare_linear(w))
    assert got.dtype == np.int64 and np.array_equal(got, ref)
    assert ref[0, 0] == k * 128 * 128
    for parts in (1, 2, 3):  # the dot-product kernel, serial and in row slices (uneven included)
        assert np.array_equal(ops_numba._gemm_i8_serial(x, q, parts), ref)
        assert np.array_equal(ops_numba._gemm_i8_parallel(x, q, parts), ref)
    assert np.array_equal(blas_gemm.gemm_i8(x, q), ref)  # the BLAS path at every size, split or not


def test_int8_gemm_refuses_a_length_that_would_overflow_int32():
    w = IntLinear(q=np.zeros((1, ops_numba.I8_MAX_K), np.int8))
    with pytest.raises(QsimError, match="int32"):
        ops_numba.prepare_linear(w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scan_equals_reference_at_the_edges(seed, tiny_artifacts):
    """A real layer's constants (the tiny test checkpoint, layer 1) with int8 extremes, the largest dt its
    table gives and a state started anywhere in its range (so the state saturates), over 40 tokens;
    serial and threaded kernels."""
    from qsim.fixed.executor import FixedExecutor

    P = FixedExecutor(tiny_artifacts[1]["w8a8"], "numpy").layers[1]
    p = P["scan"]
    state_bits = p["state_bits"]
    D, N = p["a_q"].shape
    r = np.random.default_rng(seed)
    L = 40
    xs = r.integers(-128, 128, (L, D))
    xs[:4] = -128
    dt = r.choice(P["softplus_dt"], (L, D))
    dt[:4] = P["softplus_dt"].max()
    B, C = r.integers(-128, 128, (L, N)), r.integers(-128, 128, (L, N))
    B[:4], C[:4] = -128, 127
    sz = r.choice(P["silu_z"], (L, D))
    lim = 1 << (state_bits - 1)
    h = r.integers(-lim, lim, (D, N))
    ref = ops.scan(xs, dt, B, C, sz, h, p)
    assert ref[2] > 0 and np.abs(ref[0]).max() > 1000, "the inputs should saturate the state and move y"
    for fn in (ops_numba._scan_serial, ops_numba._scan_parallel):
        got = fn(xs, dt, B, C, sz, h, p["a_q"], p["frac"], p["m_h"], p["s_h"], p["Dq"], p["m_y"], p["s_y"],
                 p["exp_tab"], state_bits, spec.GATED_BITS, spec.DECAY_BITS, spec.scan_acc_shift(state_bits))
        assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1]) and got[2:] == ref[2:]


def test_lut_equals_reference_and_refuses_non_int8_indices():
    table = np.random.default_rng(0).integers(-(1 << 20), 1 << 20, 256)
    q = np.arange(-128, 128).reshape(16, 16)
    assert np.array_equal(ops_numba.lut(q, table), ops.lut(q, table))
    for bad in (128, -129):
        with pytest.raises(QsimError, match="outside int8"):
            ops_numba.lut(np.array([[0, bad]]), table)


@pytest.mark.parametrize("n,rows", [(64, 1), (1536, 5), (40, 3), (5120, 2)])
def test_hadamard_rows_equal_reference(n, rows):
    """Power-of-two sizes and the 12- and 20-point base matrices, int16 extremes included."""
    y = np.random.default_rng(n).integers(-(1 << 15), 1 << 15, (rows, n))
    y[0] = -(1 << 15)
    assert np.array_equal(ops_numba.hadamard_rows(y), ops.hadamard_rows(y))


@pytest.mark.parametrize("L", [1, 7])
def test_conv_equals_reference(L):
    r = np.random.default_rng(L)
    D, K = 48, 4
    x, state = r.integers(-128, 128, (L, D)), r.integers(-128, 128, (K - 1, D))
    w, b = r.integers(-128, 128, (D, K)), r.integers(-(1 << 20), 1 << 20, D)
    x[0], w[0] = -128, -128
    ref, got = ops.conv(x, state, w, b), ops_numba.conv(x, state, w, b)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])


def test_serial_and_threaded_builds_have_their_own_cache_entries():
    """Numba caches by function name and line: a shared name made both builds run one cached kernel."""
    from qsim.fixed import ssd_numba

    for serial, threaded in [(ops_numba._gemm_i8_serial, ops_numba._gemm_i8_parallel),
                             (ops_numba._scan_serial, ops_numba._scan_parallel),
                             (ssd_numba._ssd_serial, ssd_numba._ssd_parallel)]:
        assert not serial.targetoptions.get("parallel") and threaded.targetoptions.get("parallel")
        assert serial._cache._cache_file._index_name != threaded._cache._cache_file._index_name
