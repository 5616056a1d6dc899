"""Every rewriting recipe leaves the float model's logits unchanged (compute invariance)."""

from __future__ import annotations

import numpy as np
import pytest

from calib.recipes import registry
from qsim import float_model
from qsim.calib_settings import CalibSettings
from qsim.weights import resolve

REWRITING = [name for name, r in registry().items() if r.transform is not None and "mamba" in r.families]  # Mamba-1
# (quamba2, for Mamba-2, has its own invariance test: tests/calib/recipes/test_quamba2_recipe.py)
REL_TOL = 1e-5  # the bound: max |logit change| / max |logit|, fp32 forward on rotated fp32 weights


def _windows(vocab: int, n: int = 3, length: int = 48):
    rng = np.random.default_rng(7)
    return [rng.integers(0, vocab, length) for _ in range(n)]


@pytest.fixture(scope="module")
def models(hf_checkpoint):
    return {"mamba-tiny": resolve("mamba-tiny", True), "random": resolve(str(hf_checkpoint[0]), True)}


def test_every_rewriting_recipe_is_tested():
    assert set(REWRITING) == {"smoothquant", "quarot", "quamba-rot", "mambaquant"}


@pytest.mark.parametrize("which", ["mamba-tiny", "random"])
@pytest.mark.parametrize("name", REWRITING)
def test_rewrite_keeps_logits(models, which, name):
    lm = models[which]
    recipe = registry()[name]
    wins = _windows(lm.config.vocab_size)
    rewritten, notes = recipe.apply(lm, recipe.settings(CalibSettings()), wins)
    assert notes, "a rewrite says what it did"
    probe = np.random.default_rng(11).integers(0, lm.config.vocab_size, 40)
    ref = float_model.forward(lm.config, lm.weights, probe)
    out = float_model.forward(rewritten.config, rewritten.weights, probe)
    rel = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert rel <= REL_TOL, f"{name} on {which}: logits moved by {rel:.2e} relative"
    # the rewrite really changed the weights (an identity rewrite would pass the check above trivially)
    moved = max(float(np.abs(a[k] - b[k]).max()) for a, b in zip(rewritten.weights.layers, lm.weights.layers)
                for k in ("in_proj", "out_proj", "x_proj"))
    assert moved > 1e-3


def test_rewrite_does_not_touch_the_input_model(models):
    lm = models["random"]
    before = {k: v.copy() for k, v in lm.weights.layers[0].items()}
    emb = lm.weights.embedding.copy()
    registry()["mambaquant"].apply(lm, CalibSettings(method="mambaquant"), _windows(lm.config.vocab_size))
    assert all(np.array_equal(before[k], lm.weights.layers[0][k]) for k in before)
    assert "out_smooth" not in lm.weights.layers[0]
    assert np.array_equal(emb, lm.weights.embedding)
