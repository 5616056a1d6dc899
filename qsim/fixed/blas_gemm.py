"""Exact integer GEMMs on float BLAS, run as single-threaded BLAS calls over a pool of Python threads.

Why float BLAS: int8 weights times int8 activations over slices of F32_EXACT_K = 1024 inputs give
partial sums of magnitude <= 1024 * 2**14 = 2**24, integers that float32 holds exactly whatever order
the BLAS adds them in; the slices are summed in int64. int4-group weights (|q * gs| <= 2040) run on
float64, exact below 2**53. On this project's 2-core AVX2 machines float32 BLAS is 4-5x a Numba loop
(56 vs 12 GMAC/s for 256 x 768 x 3072).

Why one BLAS thread per call: OpenBLAS's own workers keep spinning for a while after each call, and the
Numba kernels that follow a GEMM (the scan, the SSD, the Hadamard) then share the cores with them.
Measured on a mamba2-130m prefill of 256 tokens: the SSD took 1.53 s with OpenBLAS threaded and 0.76 s
with it held to one thread. So each call holds the BLAS to one thread and splits the output columns
over this module's thread pool (numpy releases the GIL inside BLAS and casts), one slice per Numba
thread.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

F32_EXACT_K = 1 << 10  # K * 128 * 128 <= 2**24: int8 dot products of this length are exact in float32
SPLIT_MIN_MACS = 1 << 20  # below this a GEMM runs in the calling thread: a pool hand-off costs ~50 us

_BLAS = ThreadpoolController().select(user_api="blas")
_POOL = ThreadPoolExecutor(max_workers=numba.config.NUMBA_NUM_THREADS, thread_name_prefix="qsim-gemm")

__all__ = ["F32_EXACT_K", "gemm_f64", "gemm_i8", "matmul_f64", "run_sliced"]


def _slices(n: int, work: int, align: int = 1) -> list[slice]:
    parts = numba.get_num_threads() if work >= SPLIT_MIN_MACS else 1
    per = -(-n // parts)
    per += -per % align
    return [slice(lo, min(n, lo + per)) for lo in range(0, n, per)]


def _column_slices(m: int, n: int, k: int) -> list[slice]:
    return _slices(n, m * n * k)


def run_sliced(fn, n: int, work: int, align: int = 1) -> None:
    """fn(slice) over slices of range(n), one per pool thread when `work` (multiply-adds or elements) is
    worth a hand-off, with BLAS held to one thread: for float code whose rows are independent. Slices
    start at multiples of `align`."""
    _run(fn, _slices(n, work, align))


def _run(fn, slices: list[slice]) -> None:
    with _BLAS.limit(limits=1):
        if len(slices) == 1:
            fn(slices[0])
        else:
            for f in [_POOL.submit(fn, sl) for sl in slices]:
                f.result()


def gemm_i8(x8: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x8 (M, K) int8 @ w (N, K).T int8 -> (M, N) int64, exactly (module docstring)."""
    m, k = x8.shape
    xf = x8.astype(np.float32)
    out = np.empty((m, w.shape[0]), np.int64)

    def columns(sl: slice) -> None:
        o = out[:, sl]
        for k0 in range(0, k, F32_EXACT_K):
            part = xf[:, k0:k0 + F32_EXACT_K] @ w[sl, k0:k0 + F32_EXACT_K].astype(np.float32).T
            if k0 == 0:
                o[...] = part
            else:
                o += part.astype(np.int64)

    _run(columns, _column_slices(m, w.shape[0], k))
    return out


def gemm_f64(x: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """x (M, K) integers @ wt (K, N) float64 holding integers -> (M, N) int64, exact below 2**53."""
    xf = np.asarray(x, dtype=np.float64)
    out = np.empty((xf.shape[0], wt.shape[1]), np.int64)

    def columns(sl: slice) -> None:
        out[:, sl] = xf @ wt[:, sl]

    _run(columns, _column_slices(xf.shape[0], wt.shape[1], xf.shape[1]))
    return out


def matmul_f64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (M, K) @ b (K, N) in float64 for code that runs Numba kernels between its GEMMs (calib.gptq):
    the rows of a split over the pool, one BLAS thread each (module docstring)."""
    out = np.empty((a.shape[0], b.shape[1]), np.float64)

    def rows(sl: slice) -> None:
        out[sl] = a[sl] @ b

    _run(rows, _column_slices(b.shape[1], a.shape[0], a.shape[1]))
    return out
