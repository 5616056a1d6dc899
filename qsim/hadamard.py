"""Integer Hadamard transforms of size m * 2**k, m in {1, 12, 20}.

H_m for m = 12 and 20 come from Paley's first construction (q = 11, 19, both
prime and 3 mod 4) with Q[i][j] = chi(j - i), a first row of +1 and a first
column of -1 below it, plus I; larger sizes are the Kronecker product
H_m (x) H_{2**k} with Sylvester's H_{2**k} (qsim/SPEC.md, section 10, writes
H_12 out; golden/sets/hadamard_matrices pins them). On integers the transform is exact (additions and
subtractions only); the 1/sqrt(N) normalisation is folded into the
requantization that follows.
"""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np

from qsim.errors import QsimError

BASE_ORDERS = (1, 12, 20)
TRANSFORM_ROWS = 64  # rows per block of the float transform: 64 x 2560 float64 stay in L2


def _paley(q: int) -> np.ndarray:
    """Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    residues = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in residues else -1 for i in range(1, q)], dtype=np.int64)
    jac = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=np.int64)
    s = np.zeros((q + 1, q + 1), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jac
    return s + np.eye(q + 1, dtype=np.int64)


@cache
def base_matrix(m: int) -> np.ndarray:
    if m == 1:
        return np.ones((1, 1), dtype=np.int64)
    if m in (12, 20):
        return _paley(m - 1)
    raise QsimError(f"no Hadamard matrix of base order {m} (supported: {BASE_ORDERS})")


def factor(n: int) -> tuple[int, int]:
    """Split n = m * 2**k with m in BASE_ORDERS, or fail naming n."""
    for m in BASE_ORDERS:
        if n % m == 0:
            p = n // m
            if p & (p - 1) == 0:
                return m, p
    raise QsimError(f"Hadamard size {n} is not 2**k, 12*2**k or 20*2**k")


def supported(n: int) -> bool:
    try:
        factor(n)
    except QsimError:
        return False
    return True


@lru_cache(maxsize=8)
def matrix(n: int) -> np.ndarray:
    """The dense N x N integer matrix the fast transform applies (H H^T = N I)."""
    m, p = factor(n)
    syl = np.ones((1, 1), dtype=np.int64)
    while syl.shape[0] < p:
        syl = np.block([[syl, syl], [syl, -syl]])
    return np.kron(base_matrix(m), syl)


def fwht(x: np.ndarray) -> np.ndarray:
    """Fast integer transform along the last axis: returns x @ matrix(n).T exactly."""
    x = np.asarray(x, dtype=np.int64)
    n = x.shape[-1]
    m, p = factor(n)
    y = x.reshape(*x.shape[:-1], m, p).copy()
    h = 1
    while h < p:  # radix-2 butterflies over the power-of-two factor
        y = y.reshape(*x.shape[:-1], m, p // (2 * h), 2, h)
        a, b = y[..., 0, :].copy(), y[..., 1, :].copy()
        y[..., 0, :], y[..., 1, :] = a + b, a - b
        h *= 2
    y = y.reshape(*x.shape[:-1], m, p)
    if m > 1:
        y = np.einsum("ij,...jp->...ip", base_matrix(m), y)
    return y.reshape(x.shape)


@lru_cache(maxsize=16)
def _float_factor(n: int) -> np.ndarray:
    return matrix(n).astype(np.float64)


def _factored(x: np.ndarray, m: int, p1: int, p2: int, base: np.ndarray) -> np.ndarray:
    """Rows x (r, m * p1 * p2) times base (x) H(p1) (x) H(p2), each factor one 2-D GEMM over the rows."""
    p = p1 * p2
    y = x.reshape(-1, p2) @ _float_factor(p2)
    y = y.reshape(-1, p1, p2).transpose(0, 2, 1).reshape(-1, p1) @ _float_factor(p1)
    y = y.reshape(-1, p2, p1).transpose(0, 2, 1).reshape(-1, m, p).transpose(0, 2, 1).reshape(-1, m) @ base
    return y.reshape(-1, p, m).transpose(0, 2, 1).reshape(x.shape)


def transform64(x: np.ndarray, transpose: bool) -> np.ndarray:
    """x @ matrix(n).T (or x @ matrix(n)) in float64, returned in float64.

    matrix(n) = base(m) x H(p1) x H(p2) (Kronecker; Sylvester matrices factor and are symmetric), so each
    factor acts on one axis of x reshaped to (m, p1, p2): O(n (m + p1 + p2)) instead of a dense O(n^2)
    (mamba-2.8b's d_inner 5120 cost 13 GFLOP per 256 tokens dense). Rows go TRANSFORM_ROWS at a time, in
    cache, on the pool's threads: a (10576, 2560) weight took 0.87 s in one piece and 0.17 s in blocks on
    one thread. Each row's result depends on that row only, whatever the blocks.
    """
    from qsim.fixed.blas_gemm import run_sliced

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    m, p = factor(n)
    p1 = 1 << ((p.bit_length() - 1) // 2)
    base = _float_factor(m) if transpose else _float_factor(m).T
    rows = x.reshape(-1, n)
    out = np.empty_like(rows)
    if rows.shape[0] == 0:
        return out.reshape(x.shape)

    def blocks(sl: slice) -> None:
        for lo in range(sl.start, sl.stop, TRANSFORM_ROWS):
            hi = min(sl.stop, lo + TRANSFORM_ROWS)
            out[lo:hi] = _factored(rows[lo:hi], m, p1, p // p1, base)

    run_sliced(blocks, rows.shape[0], rows.size * (m + p), TRANSFORM_ROWS)
    return out.reshape(x.shape)


def fwht_float(x: np.ndarray) -> np.ndarray:
    """The same transform on float data (x @ matrix(n).T), in float64, for calibration and `quamba`."""
    return transform64(x, transpose=False).astype(np.float32)


def fwht_float_t(x: np.ndarray) -> np.ndarray:
    """The transposed transform (x @ matrix(n)); with fwht_float, H^T H = N I undoes a rotation."""
    return transform64(x, transpose=True).astype(np.float32)
