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
    p = tmp_path / "r.json"
    assert main(["run", "--eval-seqs", "2", "--seq-len", "256", "--calib-samples", "4", "--json", str(p)]) == 0
    r = json.loads(p.read_text())
    assert r["model"] == "mamba-tiny" and r["weights"] == "checkpoint" and r["accuracy_meaningful"]
    assert r["tokenizer"] == "bytes"
    assert r["nats_per_token"]["float"] <= 1.75
    assert r["nats_per_token"]["fixed"] <= r["nats_per_token"]["float"] + 0.1  # w8a8 stays close to float
