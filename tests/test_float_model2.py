"""The float Mamba-2 forward (qsim.float_model2) against transformers' Mamba2ForCausalLM."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_weights_mamba2 import SMALL, write_mamba2_checkpoint, write_mamba_ssm_folder

from qsim import float_model, float_model2
from qsim.config import Mamba2Config, MambaConfig
from qsim.errors import QsimError
from qsim.float_model2 import dispatch, forward, forward_batch, ssd_scan
from qsim.weights import load_folder

TOKENS = np.random.default_rng(0).integers(0, 96, 37)  # 37 tokens: chunk 16 does not divide them
HOOKS = ["residual", "u", "z", "xBC", "dt_raw", "conv_pre", "x", "B", "C", "dt", "h", "ys", "sz", "y", "out"]

CASES = {
    "groups2-untied": SMALL,
    "groups1-tied": replace(SMALL, ngroups=1, tie_embeddings=True),
    "groups4-dstate3-conv3": replace(SMALL, ngroups=4, d_state=3, d_conv=3, headdim=6, chunk_size=8, n_layer=3),
}


def _rel(ours, ref) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _reference(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens))[None]).logits[0].numpy()


@pytest.fixture(scope="module", params=list(CASES))
def ckpt(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"m2_{request.param}")
    return folder, write_mamba2_checkpoint(folder, CASES[request.param])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m2_small")
    model = write_mamba2_checkpoint(folder, SMALL, seed=1)
    return load_folder(folder), model


def test_float_logits_equal_transformers(ckpt):
    folder, model = ckpt
    lm = load_folder(folder)
    assert _rel(forward(lm.config, lm.weights, TOKENS), _reference(model, TOKENS)) < 1e-4


def test_dt_limit_is_applied(tmp_path):
    """time_step_limit clamps dt after the softplus (dt_bias is pushed above the limit for some heads)."""
    cfg = replace(SMALL, ngroups=1)
    model = write_mamba2_checkpoint(tmp_path, cfg, seed=2, time_step_limit=[0.05, 0.5])
    lm = load_folder(tmp_path)
    assert (lm.config.dt_min, lm.config.dt_max) == (0.05, 0.5)
    seen = {}
    ours = forward(lm.config, lm.weights, TOKENS, lambda layer, name, x: seen.setdefault((layer, name), x))
    dt = seen[(0, "dt")]
    assert dt.min() == np.float32(0.05) and dt.max() == np.float32(0.5)
    assert _rel(ours, _reference(model, TOKENS)) < 1e-4


def test_mamba_ssm_folder_gives_the_same_logits(small, tmp_path):
    lm, _ = small
    ssm = load_folder(write_mamba_ssm_folder(tmp_path / "ssm", lm.config, lm.weights, vocab_size=90, pad_multiple=32))
    assert ssm.config.vocab_size == 96
    assert np.array_equal(forward(ssm.config, ssm.weights, TOKENS), forward(lm.config, lm.weights, TOKENS))


def test_hooks_see_every_name_in_order_with_shapes(small):
    lm, _ = small
    cfg = lm.config
    seen = []
    forward(cfg, lm.weights, TOKENS, lambda layer, name, x: seen.append((layer, name, x.shape, x.dtype)))
    length, di, gn = len(TOKENS), cfg.d_inner, cfg.ngroups * cfg.d_state
    shapes = {"residual": (length, cfg.d_model), "u": (length, cfg.d_model), "z": (length, di),
              "xBC": (length, cfg.conv_dim), "dt_raw": (length, cfg.nheads), "conv_pre": (length, cfg.conv_dim),
              "x": (length, di), "B": (length, gn), "C": (length, gn), "dt": (length, cfg.nheads),
              "h": (cfg.nheads, cfg.headdim, cfg.d_state), "ys": (length, di), "sz": (length, di),
              "y": (length, di), "out": (length, cfg.d_model)}
    expected = [(i, n, shapes[n], np.float32) for i in range(cfg.n_layer) for n in HOOKS]
    expected += [(cfg.n_layer, "residual", (length, cfg.d_model), np.float32),
                 (cfg.n_layer, "u_f", (length, cfg.d_model), np.float32)]
    assert seen == expected


@pytest.mark.parametrize("name", [n for n in HOOKS if n != "h"] + ["u_f"])
def test_every_hook_may_replace_its_tensor(small, name):
    lm, _ = small
    base = forward(lm.config, lm.weights, TOKENS)
    same = forward(lm.config, lm.weights, TOKENS, lambda layer, n, x: x.copy() if n == name else None)
    assert np.array_equal(same, base)
    changed = forward(lm.config, lm.weights, TOKENS,
                      lambda layer, n, x: x + np.float32(0.25) if n == name else None)  # a scale the norms undo
    assert not np.allclose(changed, base, rtol=1e-3, atol=1e-3)


def test_h_is_observed_not_replaced(small):
    lm, _ = small
    base = forward(lm.config, lm.weights, TOKENS)
    got = forward(lm.config, lm.weights, TOKENS, lambda layer, n, x: np.zeros_like(x) if n == "h" else None)
    assert np.array_equal(got, base)


def test_scan_matches_float64_recurrence():
    """ssd_scan against the recurrence written out per head in float64: y (with D x) and the running max |h|."""
    rng = np.random.default_rng(3)
    length, nh, p, g, n = 23, 6, 5, 3, 4
    x = rng.standard_normal((length, nh * p)).astype(np.float32)
    dt = rng.uniform(0.01, 1.0, (length, nh)).astype(np.float32)
    A = -rng.uniform(0.5, 4, nh).astype(np.float32)
    B, C = (rng.standard_normal((length, g * n)).astype(np.float32) for _ in range(2))
    D = rng.standard_normal(nh).astype(np.float32)
    ys, hmax = ssd_scan(x, dt, A, B, C, D, g)
    h = np.zeros((nh, p, n))
    ref_y, ref_max = np.zeros((length, nh, p)), np.zeros((nh, p, n))
    for t in range(length):
        for k in range(nh):
            grp = k // (nh // g)
            xb = x[t, k * p : (k + 1) * p].astype(np.float64)
            h[k] = np.exp(dt[t, k] * A[k]) * h[k] + dt[t, k] * np.outer(xb, B[t, grp * n : (grp + 1) * n])
            ref_y[t, k] = h[k] @ C[t, grp * n : (grp + 1) * n] + D[k] * xb
        ref_max = np.maximum(ref_max, np.abs(h))
    assert ys.dtype == np.float32 and hmax.dtype == np.float32
    assert _rel(ys, ref_y.reshape(length, -1)) < 1e-5 and _rel(hmax, ref_max) < 1e-5


def test_norm_per_group_matters_only_with_groups(small, tmp_path):
    lm, _ = small
    assert lm.config.ngroups == 2
    whole = replace(lm.config, norm_per_group=False)
    assert _rel(forward(whole, lm.weights, TOKENS), forward(lm.config, lm.weights, TOKENS)) > 1e-3
    one = Mamba2Config(**{**SMALL.to_dict(), "ngroups": 1, "tie_embeddings": True})
    write_mamba2_checkpoint(tmp_path, one, seed=4)
    lm1 = load_folder(tmp_path)
    assert np.array_equal(forward(replace(lm1.config, norm_per_group=False), lm1.weights, TOKENS),
                          forward(lm1.config, lm1.weights, TOKENS))


def test_forward_batch_equals_forward(small):
    lm, _ = small
    windows = [TOKENS, TOKENS[:20][::-1].copy(), TOKENS[5:]]
    seen = []
    outs = forward_batch(lm.config, lm.weights, windows, lambda layer, n, x: seen.append(layer) if n == "u" else None)
    for out, win in zip(outs, windows):
        assert np.array_equal(out, forward(lm.config, lm.weights, win))
    assert seen == [0, 0, 0, 1, 1, 1]  # layer-major


def test_dispatch_by_family():
    assert dispatch(SMALL) is float_model2
    assert dispatch(MambaConfig(d_model=32, n_layer=1, vocab_size=64)) is float_model
    with pytest.raises(QsimError, match="family"):
        dispatch(object())


def test_ssd_split_over_threads_gives_the_one_pass_bits():
    """ssd_scan runs slices of each group's channels on the pool, the state update compiled: same bits as
    NumPy's one pass over all of them, array operation by array operation."""
    from qsim.fixed.blas_gemm import SPLIT_MIN_MACS

    rng = np.random.default_rng(5)
    length, ngroups, nheads, headdim, n = 40, 2, 14, 24, 128  # 168 channels per group: split at 96, not 84
    d_inner = nheads * headdim
    assert length * d_inner * n >= SPLIT_MIN_MACS
    x = rng.standard_normal((length, d_inner), dtype=np.float32)
    dt = rng.random((length, nheads), dtype=np.float32) * np.float32(0.2)
    A = -np.exp(rng.standard_normal(nheads, dtype=np.float32))
    B, C = (rng.standard_normal((length, ngroups * n), dtype=np.float32) for _ in range(2))
    D = rng.standard_normal(nheads, dtype=np.float32)
    rows = d_inner // ngroups
    dA = np.repeat(np.exp(dt * A), headdim, axis=1).reshape(length, ngroups, rows, 1)
    dx = (np.repeat(dt, headdim, axis=1) * x).reshape(length, ngroups, rows, 1)
    h = np.zeros((ngroups, rows, n), np.float32)
    hmax, y = np.zeros_like(h), np.empty((length, ngroups, rows, 1), np.float32)
    for t in range(length):
        h = h * dA[t] + dx[t] * B.reshape(length, ngroups, 1, n)[t]
        hmax = np.maximum(hmax, np.abs(h))
        y[t] = h @ C.reshape(length, ngroups, n, 1)[t]
    got_y, got_hmax = ssd_scan(x, dt, A, B, C, D, ngroups)
    assert np.array_equal(got_y, y.reshape(length, d_inner) + x * np.repeat(D, headdim))
    assert np.array_equal(got_hmax, hmax.reshape(nheads, headdim, n))


def test_compiled_state_update_keeps_nan_in_the_running_max_and_min():
    """max |h| stays NaN once h was NaN, as np.maximum and np.minimum keep it (an overflow is not hidden)."""
    from qsim.float_model2 import _ssd_token

    h = np.array([[[np.nan, 1.0]]], np.float32)
    hi, lo = np.zeros_like(h), np.zeros_like(h)
    ones = np.ones((1, 1, 1), np.float32)
    for _ in range(2):  # NaN entering hi and lo, then NaN already there against a finite h
        _ssd_token(h, ones, ones, np.zeros((1, 1, 2), np.float32), hi, lo)
        h[0, 0, 0] = 5.0
    assert np.isnan(hi[0, 0, 0]) and np.isnan(lo[0, 0, 0]) and hi[0, 0, 1] == 1.0 and lo[0, 0, 1] == 0.0
