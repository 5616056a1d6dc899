import numpy as np
import pytest

from calib.gptq import _inverse_cholesky_upper, gptq_int4
from qsim.errors import QsimError
from qsim.qweights import quantize_int4_grouped


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


def test_inverse_cholesky_factor_is_upper_and_inverts_the_hessian():
    """U^T U = H^-1 with U upper and a positive diagonal (the unique factor), for a correlated Hessian."""
    x = _correlated_inputs(np.random.default_rng(2), 600, 97)
    h = x.T @ x
    u = _inverse_cholesky_upper(h, "t")
    assert np.array_equal(u, np.triu(u)) and u.diagonal().min() > 0
    assert np.abs(u.T @ u @ h - np.eye(97)).max() < 1e-9


def test_a_hessian_that_is_not_positive_definite_is_refused_with_its_layer():
    with pytest.raises(QsimError, match="layers.3.in_proj: calibration Hessian is not positive definite"):
        _inverse_cholesky_upper(-np.eye(8), "layers.3.in_proj")
