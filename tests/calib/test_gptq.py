import numpy as np
import pytest

from calib.gptq import PERCDAMP, gptq_int4, reverse_cholesky
from qsim import spec
from qsim.errors import QsimError
from qsim.qweights import int4_channel_scales, int4_group_codes, quantize_int4_grouped


def _correlated_inputs(rng, n, d):
    mix = rng.standard_normal((d, d)) * 0.3 + np.eye(d)
    x = rng.standard_normal((n, d)) @ mix
    x[:, :4] *= 8  # a few outlier channels, as in Mamba activations
    return x


def test_gptq_lowers_output_error_against_round_to_nearest():
    rng = np.random.default_rng(0)
    d_in, d_out = 256, 64
    x = _correlated_inputs(rng, 2048, d_in)
    w = rng.standard_normal((d_out, d_in)) * 0.05
    rtn, ch_r = quantize_int4_grouped(w, 128)
    gq, ch_g = gptq_int4(w, x.T @ x, 128)
    ref = x @ w.T
    err_rtn = np.sum((ref - x @ (rtn.effective() * ch_r[:, None]).T) ** 2)
    err_gptq = np.sum((ref - x @ (gq.effective() * ch_g[:, None]).T) ** 2)
    assert err_gptq < 0.7 * err_rtn
    assert gq.q.min() >= -8 and gq.q.max() <= 7 and gq.gs.min() >= 1 and gq.gs.dtype == np.uint8


def test_gptq_with_identity_hessian_is_close_to_round_to_nearest():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 128))
    rtn, _ = quantize_int4_grouped(w, 128)
    gq, _ = gptq_int4(w, np.eye(128) * 1e6, 128)  # uncorrelated inputs: nothing to compensate
    assert np.mean(gq.q == rtn.q) > 0.95


def _textbook_gptq(w, h, group):
    """The paper's algorithm as written: U = chol(H^-1) upper, then column by column, each column's scaled
    error moved onto all later columns at once (no blocks, no reversed factor)."""
    w = np.array(w, dtype=np.float64)
    h = h + PERCDAMP * np.mean(np.diag(h)) * np.eye(h.shape[0])
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    ch = int4_channel_scales(w, group)
    q = np.zeros(w.shape, np.int8)
    gs = np.zeros((w.shape[0], -(-w.shape[1] // group)), np.uint8)
    for j in range(w.shape[1]):
        if j % group == 0:
            _, gs[:, j // group] = int4_group_codes(w[:, j : j + group], ch)
        step = gs[:, j // group] * ch
        q[:, j] = np.clip(spec.round_half_up(w[:, j] / step), -8, 7)
        e = (w[:, j] - q[:, j] * step) / u[j, j]
        w[:, j + 1 :] -= np.outer(e, u[j, j + 1 :])
    return q, gs


@pytest.mark.parametrize("d_in", [384, 300])  # whole groups, and a last group of 44
def test_gptq_gives_the_codes_of_the_textbook_algorithm(d_in):
    """The blocked form with the reversed factor is the same computation: every int4 code and group scale
    equals the plain column loop's (their floats differ in the last bits, far from any rounding boundary)."""
    rng = np.random.default_rng(3)
    x = _correlated_inputs(rng, 1500, d_in)
    w = rng.standard_normal((40, d_in)) * 0.05
    got, _ = gptq_int4(w, x.T @ x, 128)
    q, gs = _textbook_gptq(w, x.T @ x, 128)
    assert np.array_equal(got.q, q) and np.array_equal(got.gs, gs)
    assert np.mean(got.q != quantize_int4_grouped(w, 128)[0].q) > 0.1  # and it is not round to nearest


def test_reverse_cholesky_factor_is_upper_and_factors_the_hessian():
    """R R^T = H with R upper and a positive diagonal (the unique factor), for a correlated Hessian."""
    x = _correlated_inputs(np.random.default_rng(2), 600, 97)
    h = x.T @ x
    r = reverse_cholesky(h, "t")
    assert np.array_equal(r, np.triu(r)) and r.diagonal().min() > 0
    assert np.abs(r @ r.T - h).max() < 1e-9 * np.abs(h).max()


def test_a_hessian_that_is_not_positive_definite_is_refused_with_its_layer():
    with pytest.raises(QsimError, match="layers.3.in_proj: calibration Hessian is not positive definite"):
        reverse_cholesky(-np.eye(8), "layers.3.in_proj")
