"""The offline rewrites one by one: folding, rotations, smoothing factors, KLT."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from calib.recipes import fuse
from calib.recipes.mambaquant import klt, klt_hadamard
from qsim import float_model
from qsim.errors import QsimError
from qsim.weights import LazyLayers, resolve


@pytest.fixture(scope="module")
def lm(hf_checkpoint):
    return resolve(str(hf_checkpoint[0]), True)


def _rel(lm, other, tokens):
    a = float_model.forward(lm.config, lm.weights, tokens)
    b = float_model.forward(other.config, other.weights, tokens)
    return float(np.abs(a - b).max() / np.abs(a).max())


def test_fold_then_rotate_is_invariant_and_unties(lm):
    tokens = np.arange(0, 200, 7)
    folded = fuse.fold_norms(lm)
    assert all(np.all(lw["norm"] == 1) for lw in folded.weights.layers) and np.all(folded.weights.norm_f == 1)
    assert _rel(lm, folded, tokens) <= 1e-5
    rotated = fuse.rotate_residual(folded, fuse.random_hadamard(lm.config.d_model, 3, "test"))
    assert _rel(lm, rotated, tokens) <= 1e-5
    assert not rotated.config.tie_embeddings and rotated.weights.lm_head is not rotated.weights.embedding


def test_rotation_needs_folded_norms(lm):
    with pytest.raises(ValueError, match="fold the norm weights first"):
        fuse.rotate_residual(lm, np.eye(lm.config.d_model)).weights.layers[0]
    folded = fuse.fold_norms(lm)
    folded.weights.layers[1]["norm"] = folded.weights.layers[1]["norm"] * 2  # a small model keeps built layers
    rotated = fuse.rotate_residual(folded, np.eye(lm.config.d_model))
    assert np.array_equal(rotated.weights.layers[0]["in_proj"], folded.weights.layers[0]["in_proj"])
    with pytest.raises(ValueError, match=r"fold the norm weights first \(layer 1\)"):
        rotated.weights.layers[1]


def test_rewrites_of_a_streamed_model_build_each_layer_when_used(lm):
    """A large model's layers are streamed: folding and rotating it holds no more of them than its input does."""
    built = []

    def build(i):
        built.append(i)
        return {k: v.copy() for k, v in lm.weights.layers[i].items()}

    streamed = replace(lm, weights=replace(lm.weights, layers=LazyLayers(lm.config.n_layer, build, keep=False)))
    q = fuse.random_hadamard(lm.config.d_model, 3, "test")
    rotated = fuse.rotate_residual(fuse.fold_norms(streamed), q)
    assert built == []
    eager = fuse.rotate_residual(fuse.fold_norms(lm), q)
    for i in (1, 0):
        assert all(np.array_equal(rotated.weights.layers[i][k], v) for k, v in eager.weights.layers[i].items())
    assert built == [1, 0]


def test_random_hadamard_is_orthogonal_and_seeded():
    a, b = fuse.random_hadamard(24, 1, "t").dense(), fuse.random_hadamard(24, 2, "t").dense()
    fuse.check_orthogonal(a, "t")
    assert np.allclose(np.abs(a), 1 / np.sqrt(24)) and not np.array_equal(a, b)
    with pytest.raises(QsimError, match="no Hadamard matrix of order 28"):
        fuse.random_hadamard(28, 0, "t")


@pytest.mark.parametrize("n, seed", [(256, None), (2560, 5), (48, 1)])
def test_fast_rotation_equals_the_dense_product(n, seed):
    """x Q by the factored transform and by a dense float64 GEMM, both rounded once to float32: the float64
    results differ in their last bits at most, so the float32 values agree but for rare rounding ties."""
    q = fuse.random_hadamard(n, seed, "t")
    x = np.random.default_rng(0).standard_normal((64, n)).astype(np.float32)
    fast, dense = q.right(x), (x @ q.dense()).astype(np.float32)
    assert fast.dtype == np.float32
    assert np.count_nonzero(fast != dense) <= 1 and np.abs(fast - dense).max() <= 1e-6 * np.abs(dense).max()


def test_check_orthogonal_rejects_a_scaled_rotation():
    with pytest.raises(QsimError, match="not orthogonal"):
        fuse.check_orthogonal(1.001 * np.eye(4), "R")


def test_smoothing_factors():
    s = fuse.smoothing_factors(np.array([4.0, 0.0, 9.0]), np.array([1.0, 2.0, 0.0]), 0.5)
    assert np.array_equal(s, [2.0, 1.0, 1.0])  # 4^0.5 / 1^0.5; zero channels keep factor 1
    assert fuse.smoothing_factors(np.array([8.0]), np.array([2.0]), 1 / 3)[0] == pytest.approx(2 / 2 ** (2 / 3))


def test_klt_diagonalises_with_a_sign_convention():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    cov = np.cov(x.T, bias=True)
    k = klt(cov)
    d = k.T @ cov @ k
    assert np.abs(d - np.diag(np.diag(d))).max() < 1e-9 * np.abs(d).max()
    assert np.all(np.diff(np.diag(d)) <= 0)  # descending eigenvalues
    assert np.all(k[np.argmax(np.abs(k), axis=0), np.arange(6)] > 0)
    fuse.check_orthogonal(klt_hadamard(np.cov(rng.normal(size=(100, 8)).T), 0, "R"), "R")
