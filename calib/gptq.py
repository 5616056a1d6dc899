"""GPTQ for int4 group weights (Frantar et al., ICLR 2023), as Quamba2 applies it to W4 layers.

Columns are quantized one at a time in the order of the input dimension; the
rounding error of each column is spread over the columns not yet quantized,
weighted by the inverse Hessian H = X^T X of the layer's calibration inputs,
so the layer output X W^T (not the weights) stays close. Group scales are
chosen when a group starts, from the weights as updated so far, in the same
integer format as round-to-nearest (qsim.qweights): executors see no
difference.

How it is computed (the same quantities as the paper's algorithm, cheaper).
GPTQ's updates use U, the upper Cholesky factor of H^-1 (H^-1 = U^T U). With
D = W - Q (original weights minus the dequantized codes) and E the scaled
errors, the column loop is D = E U. So R = U^-1, the upper factor with
H = R R^T, gives everything GPTQ needs without an inverse: one Cholesky of the
reversed H (R = J chol(J H J) J). Before block c, the errors of the earlier
columns p have moved block c's weights by E_p U[p,c] = -(D_p R[p,c]) U[c,c]
(block inverse of a triangular matrix, with E_p U[p,p] = D_p); U[c,c] is the
inverse of R's 128 x 128 diagonal block. Within a block each output row is an
independent sequential loop (compiled, rows in parallel). For mamba-2.8b's
5120-input linears this drops the n^3/3 triangular inverse and the
column-by-column updates that dominated a w4a8 calibration.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy.linalg import lapack

from qsim.errors import QsimError
from qsim.fixed.blas_gemm import matmul_f64
from qsim.qweights import IntLinear, int4_channel_scales, int4_group_scales

PERCDAMP = 0.01  # Quamba2's setting: damping of 1 % of the mean Hessian diagonal


def reverse_cholesky(h: np.ndarray, where: str) -> np.ndarray:
    """Upper R with H = R R^T and a positive diagonal (so R^-1 is GPTQ's factor U, H^-1 = U^T U).

    H is symmetric, so J H J in C order, read as Fortran order, is itself: both copies run through memory in
    order. R comes back as the transpose of a C-ordered array, so its blocks are BLAS operands as they are."""
    low, info = lapack.dpotrf(np.ascontiguousarray(h[::-1, ::-1]).T, lower=1, clean=1, overwrite_a=1)
    if info != 0:
        raise QsimError(f"{where}: calibration Hessian is not positive definite; use more calibration samples")
    return np.ascontiguousarray(low.T[::-1, ::-1]).T


ROWS_PER_TASK = 256  # output rows per parallel task: the block's slice of them stays in L2


@numba.njit(cache=True, nogil=True, parallel=True)
def _quantize_block(bt, qt, step, ucc):
    """One block's columns quantized in order, on its transpose bt (nb, out) into qt: for column j,
    q = clip(round half up(w / step), -8, 7) (qsim.spec.round_half_up's rule, written out for Numba), and its scaled error e = (w - q step) / U[j,j] moved onto the
    block's later columns (w[:, k] -= e U[j,k]), the operations of GPTQ's column loop. Output rows are
    independent; each task takes a slice of them, so the innermost loop runs over contiguous rows (SIMD)."""
    nb, out = bt.shape
    for task in numba.prange((out + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        r0 = task * ROWS_PER_TASK
        r1 = min(r0 + ROWS_PER_TASK, out)
        e = np.empty(r1 - r0)
        for j in range(nb):
            diag = ucc[j, j]
            for r in range(r0, r1):
                v = bt[j, r] / step[r]
                f = np.floor(v)
                code = min(max(f + (1.0 if v - f >= 0.5 else 0.0), -8.0), 7.0)
                qt[j, r] = np.int8(code)
                e[r - r0] = (bt[j, r] - code * step[r]) / diag
            for k in range(j + 1, nb):
                u = ucc[j, k]
                for r in range(r0, r1):
                    bt[k, r] -= e[r - r0] * u


def gptq_int4(w: np.ndarray, hessian: np.ndarray, group: int, where: str = "") -> tuple[IntLinear, np.ndarray]:
    """int4 group quantization of w (out, in) minimising the output error on inputs with Hessian H."""
    wd = np.array(w, dtype=np.float64)  # W; the columns already quantized are overwritten by D = W - Q
    h = np.array(hessian, dtype=np.float64)
    diag = np.einsum("ii->i", h)  # a writable view of the diagonal
    dead = diag == 0
    diag[dead] = 1.0
    wd[:, dead] = 0.0
    diag += PERCDAMP * np.mean(diag)
    r = reverse_cholesky(h, where)
    del h, diag
    ch = int4_channel_scales(wd, group)
    out_f, in_f = wd.shape
    q = np.zeros((out_f, in_f), np.int8)
    gs = np.zeros((out_f, -(-in_f // group)), np.uint8)
    for g0 in range(0, in_f, group):
        g1 = min(g0 + group, in_f)
        ucc, _ = lapack.dtrtri(r[g0:g1, g0:g1], lower=0)  # R's diagonal is positive: always invertible
        block = wd[:, g0:g1].copy()
        if g0:
            block += matmul_f64(matmul_f64(wd[:, :g0], r[:g0, g0:g1]), ucc)  # what the earlier columns' errors moved onto this block
        gs[:, g0 // group] = int4_group_scales(block, ch)
        step = gs[:, g0 // group] * ch
        qt = np.empty((g1 - g0, out_f), np.int8)
        _quantize_block(np.ascontiguousarray(block.T), qt, step, np.ascontiguousarray(ucc))
        q[:, g0:g1] = qt.T
        wd[:, g0:g1] -= q[:, g0:g1] * step[:, None]
    return IntLinear(q, gs, group), ch.astype(np.float64)
