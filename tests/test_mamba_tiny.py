"""The shipped trained model: loads through the normal path, equals transformers, is the default."""

import json

import numpy as np
import torch

from qsim.cli import main
from qsim.float_model import forward
from qsim.weights import SHIPPED_MODELS, resolve


def test_shipped_checkpoint_matches_transformers():
    from transformers import MambaForCausalLM

    lm = resolve("mamba-tiny", require_weights=True)
    assert lm.source == "shipped" and lm.config.d_model == 256 and lm.config.vocab_size == 256
    assert (SHIPPED_MODELS / "mamba-tiny" / "model.safetensors").stat().st_size <= 10 * 2**20
    hf = MambaForCausalLM.from_pretrained(SHIPPED_MODELS / "mamba-tiny").eval()
    tokens = np.frombuffer(b"ROMEO. But soft, what light through yonder window breaks?", np.uint8).astype(np.int64)
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)[None]).logits[0].numpy()
    ours = forward(lm.config, lm.weights, tokens)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_default_run_is_mamba_tiny_offline_within_quality_bar(tmp_path, capsys):
    """w8a8 stays within a few millinats of float on these settings (2 x 256 bytes, 4 calibration samples).

    Measured (nats/byte): float 1.2814, fixed 1.2824 (+0.0010), quamba 1.2847 (+0.0034); with calibration
    ranges snapped to 8 significant bits (procedure 2) fixed 1.2811 (-0.0003), quamba 1.2801 (-0.0013). Changing
    only the calibration samples (2, 8), eval sequences (8) or length (512) gave gaps of
    fixed -0.0003..+0.0023 and quamba -0.0016..+0.0055. Allowances: fixed +0.005 (0.001 plus 0.004,
    the gap README reports over 32 x 1024 and 3x the largest deviation above, 0.0013); quamba
    +0.008 (0.0034 plus twice its largest upward deviation, 0.0021). Dropping the Hadamard costs
    fixed +0.018 and quamba +0.035, so these bounds catch it.
    """
    p = tmp_path / "r.json"
    assert main(["run", "--eval-seqs", "2", "--seq-len", "256", "--calib-samples", "4", "--json", str(p)]) == 0
    r = json.loads(p.read_text())
    assert r["model"] == "mamba-tiny" and r["weights"] == "checkpoint" and r["accuracy_meaningful"]
    assert r["tokenizer"] == "bytes"
    assert r["nats_per_token"]["float"] <= 1.75
    nats = r["nats_per_token"]
    assert nats["fixed"] <= nats["float"] + 0.005 and nats["quamba"] <= nats["float"] + 0.008, nats
