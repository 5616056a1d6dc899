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


def test_scan_split_over_threads_gives_the_one_pass_bits():
    """selective_scan runs slices of channels on the pool in time chunks: same bits as one pass over all."""
    from qsim.fixed.blas_gemm import SPLIT_MIN_MACS
    from qsim.float_model import SCAN_CHUNK, selective_scan

    rng = np.random.default_rng(3)
    length, d_inner, n = 4 * SCAN_CHUNK + 5, 1030, 16  # a partial last chunk, an odd channel split
    assert length * d_inner * n >= SPLIT_MIN_MACS
    x = rng.standard_normal((length, d_inner), dtype=np.float32)
    dt = rng.random((length, d_inner), dtype=np.float32) * np.float32(0.2)
    A = -np.exp(rng.standard_normal((d_inner, n), dtype=np.float32))
    B, C = (rng.standard_normal((length, n), dtype=np.float32) for _ in range(2))
    D = rng.standard_normal(d_inner, dtype=np.float32)
    h = np.zeros((d_inner, n), np.float32)
    hmax, y = np.zeros_like(h), np.empty_like(x)
    dA, dBx = np.exp(dt[:, :, None] * A[None]), (dt * x)[:, :, None] * B[:, None, :]
    for t in range(length):
        h = dA[t] * h + dBx[t]
        hmax = np.maximum(hmax, np.abs(h))
        y[t] = h @ C[t]
    got_y, got_hmax = selective_scan(x, dt, A, B, C, D)
    assert np.array_equal(got_y, y + x * D) and np.array_equal(got_hmax, hmax)
