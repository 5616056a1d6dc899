"""GPTQ for int4 group weights (Frantar et al., ICLR 2023), as Quamba2 applies it to W4 layers.

Columns are quantized one at a time in the order of the input dimension; the
rounding error of each column is spread over the columns not yet quantized,
weighted by the inverse Hessian H = X^T X of the layer's calibration inputs,
so the layer output X W^T (not the weights) stays close. Group scales are
chosen when a group starts, from the weights as updated so far, in the same
integer format as round-to-nearest (qsim.qweights): executors see no
difference.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from qsim import spec
from qsim.errors import QsimError
from qsim.qweights import IntLinear, int4_channel_scales, int4_group_codes

PERCDAMP = 0.01  # Quamba2's setting: damping of 1 % of the mean Hessian diagonal


def _inverse_cholesky_upper(h: np.ndarray, where: str) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U), the form GPTQ's updates use.

    With J the reversal permutation and J H J = L L^T, H^-1 = (J L^-T J)(J L^-1 J), so U = J L^-1 J (upper,
    positive diagonal: the unique factor). One Cholesky and one triangular inverse, about 2n^3/3 flops;
    forming H^-1 with general inverses and factoring it again took about 7n^3, which for mamba-2.8b's
    5120-input linears was most of a w4a8 calibration."""
    try:
        low = np.linalg.cholesky(h[::-1, ::-1])
    except np.linalg.LinAlgError:
        raise QsimError(f"{where}: calibration Hessian is not positive definite; use more calibration samples") from None
    inv, info = lapack.dtrtri(low, lower=1)
    if info != 0:
        raise QsimError(f"{where}: calibration Hessian is singular; use more calibration samples")
    return np.ascontiguousarray(inv[::-1, ::-1])


def gptq_int4(w: np.ndarray, hessian: np.ndarray, group: int, where: str = "") -> tuple[IntLinear, np.ndarray]:
    """int4 group quantization of w (out, in) minimising the output error on inputs with Hessian H."""
    w = np.array(w, dtype=np.float64)
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += PERCDAMP * np.mean(np.diag(h)) * np.eye(h.shape[0])
    u = _inverse_cholesky_upper(h, where)
    ch = int4_channel_scales(w, group)
    out_f, in_f = w.shape
    q = np.zeros((out_f, in_f), np.int8)
    gs = np.zeros((out_f, -(-in_f // group)), np.uint8)
    for g0 in range(0, in_f, group):
        g1 = min(g0 + group, in_f)
        _, gs[:, g0 // group] = int4_group_codes(w[:, g0:g1], ch)
        step = gs[:, g0 // group] * ch
        err = np.zeros((out_f, g1 - g0))
        for j in range(g0, g1):
            q[:, j] = np.clip(spec.round_half_up(w[:, j] / step), -8, 7)
            e = (w[:, j] - q[:, j] * step) / u[j, j]
            w[:, j + 1 : g1] -= np.outer(e, u[j, j + 1 : g1])
            err[:, j - g0] = e
        w[:, g1:] -= err @ u[g0:g1, g1:]  # the block's error, spread over later columns at once
    return IntLinear(q, gs, group), ch.astype(np.float64)
