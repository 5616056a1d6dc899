import numpy as np
import torch

from qsim.float_model import forward
from qsim.weights import load_folder


def test_float_logits_equal_transformers(hf_checkpoint):
    folder, model = hf_checkpoint
    lm = load_folder(folder)
    tokens = np.random.default_rng(0).integers(0, 256, 200)
    ours = forward(lm.config, lm.weights, tokens)
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens)[None]).logits[0].numpy()
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, rel


def test_hook_sees_every_named_tensor(hf_checkpoint):
    lm = load_folder(hf_checkpoint[0])
    seen = set()
    forward(lm.config, lm.weights, np.arange(10), lambda layer, name, x: seen.add((layer, name)))
    names = {"residual", "u", "x_in", "z", "conv_pre", "xs", "dtr", "B", "C", "dt_pre", "dt", "sz", "h", "y", "out"}
    assert {(0, n) for n in names} <= seen
    assert (lm.config.n_layer, "u_f") in seen
