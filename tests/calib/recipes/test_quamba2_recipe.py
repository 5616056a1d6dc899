"""The quamba2 recipe leaves the float Mamba-2 model's function unchanged (compute invariance).

(Named test_quamba2_recipe.py: tests/test_quamba2.py exists and pytest's default import mode needs
unique basenames in this rootdir-conftest layout.)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_weights_mamba2 import SMALL, write_mamba2_checkpoint

from calib import reorder
from calib.recipes import registry
from qsim import float_model2
from qsim.calib_settings import CalibSettings
from qsim.errors import QsimError
from qsim.weights import load_folder

REL_TOL = 1e-5  # max |logit change| / max |logit|, fp32 forward on rewritten fp32 weights
# odd sizes (tests/test_weights_mamba2.SMALL): head_dim 12, d_state 10, 8 heads, d_model 48 (Hadamard 12 x 4)
CASES = {"groups2": SMALL, "groups1": replace(SMALL, ngroups=1, tie_embeddings=True)}
PROBE = np.random.default_rng(11).integers(0, SMALL.vocab_size, 40)


def _windows(vocab: int, n: int = 3, length: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, vocab, length) for _ in range(n)]


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=list(CASES))
def lm(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"q2_{request.param}")
    write_mamba2_checkpoint(folder, CASES[request.param], seed=3)
    return load_folder(folder)


def _reference_stat(lm, windows) -> dict[int, np.ndarray]:
    """Quamba2's statistic by a separate float pass over the original (un-rotated) model."""
    stat: dict[int, np.ndarray] = {}

    def hook(layer, name, x):
        if name == "x":
            m = np.abs(x.astype(np.float64)).mean(axis=0)
            stat[layer] = np.maximum(stat[layer], m) if layer in stat else m

    for w in windows:
        float_model2.forward(lm.config, lm.weights, w, hook)
    return stat


def _apply(lm, group_heads: bool):
    recipe = registry()["quamba2"]
    return recipe.apply(lm, recipe.settings(CalibSettings(method="quamba2", group_heads=group_heads)),
                        _windows(lm.config.vocab_size))


@pytest.mark.parametrize("group_heads", [True, False], ids=["reorder+rotation", "rotation-only"])
def test_rewrite_keeps_logits(lm, group_heads):
    rewritten, notes = _apply(lm, group_heads)
    ref = float_model2.forward(lm.config, lm.weights, PROBE)
    out = float_model2.forward(rewritten.config, rewritten.weights, PROBE)
    assert _rel(out, ref) <= REL_TOL, f"logits moved by {_rel(out, ref):.2e} relative"
    assert any("Hadamard" in n for n in notes)
    assert any("reordered" in n for n in notes) == group_heads
    assert all(("x_groups" in lw) == group_heads for lw in rewritten.weights.layers)
    # the rewrite really changed the weights (an identity would pass trivially)
    moved = max(float(np.abs(a[k] - b[k]).max()) for a, b in zip(rewritten.weights.layers, lm.weights.layers)
                for k in ("in_proj", "out_proj"))
    assert moved > 1e-3


def test_reordered_activations_are_the_original_ones_permuted(lm):
    """Inside a layer the rewritten model computes the same x, z, scan output and gated-norm output,
    channels in chan_perm's order, and the same dt in head_perm's order (the residual rotation does
    not reach them): the reorder is a relabelling, and x_groups are the plan's scale groups. The plans,
    taken on the rotated model's activations, are those of a separate pass over the original model."""
    cfg = lm.config
    rewritten, _ = _apply(lm, True)
    stat = _reference_stat(lm, _windows(cfg.vocab_size))
    plans = [reorder.plan(stat[i], cfg.nheads, cfg.ngroups) for i in range(cfg.n_layer)]
    assert any(not np.array_equal(p.chan_perm, np.arange(cfg.d_inner)) for p in plans)

    def record(w):
        seen = {}
        float_model2.forward(cfg, w, PROBE, lambda layer, name, x: seen.setdefault((layer, name), np.array(x)))
        return seen

    before, after = record(lm.weights), record(rewritten.weights)
    for i, p in enumerate(plans):
        assert np.array_equal(rewritten.weights.layers[i]["x_groups"], p.groups)
        for name in ("x", "z", "ys", "y"):
            assert _rel(after[(i, name)], before[(i, name)][:, p.chan_perm]) < 1e-4, (i, name)
        assert _rel(after[(i, "dt")], before[(i, "dt")][:, p.head_perm]) < 1e-4
        for name in ("B", "C"):  # shared by the group's heads: untouched
            assert _rel(after[(i, name)], before[(i, name)]) < 1e-4


def test_rewrite_does_not_touch_the_input_model(lm):
    before = {k: v.copy() for k, v in lm.weights.layers[0].items()}
    emb = lm.weights.embedding.copy()
    _apply(lm, True)
    assert set(before) == set(lm.weights.layers[0])
    assert all(np.array_equal(before[k], lm.weights.layers[0][k]) for k in before)
    assert np.array_equal(emb, lm.weights.embedding)


def test_recipes_refuse_the_other_family(lm, hf_checkpoint):
    with pytest.raises(QsimError, match=r"does not apply .*Mamba-2"):
        registry()["quarot"].apply(lm, CalibSettings(method="quarot"), _windows(lm.config.vocab_size))
    mamba1 = load_folder(hf_checkpoint[0])
    with pytest.raises(QsimError, match=r"quamba2: does not apply .*Mamba-1"):
        registry()["quamba2"].apply(mamba1, CalibSettings(method="quamba2"), _windows(256))
