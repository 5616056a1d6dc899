"""Shared fixtures: a small random Mamba checkpoint written by transformers, and an isolated cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from checkpoints import write_hf_checkpoint


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_ckpt")
    model = write_hf_checkpoint(folder)
    return folder, model


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QSIM_CACHE", str(tmp_path_factory.getbasetemp() / "qsim-cache"))


@pytest.fixture(scope="session")
def tiny_artifacts(hf_checkpoint):
    """Calibrated artifacts of the tiny checkpoint: w8a8 and w4a8, Hadamard on (d_inner 128)."""
    from calib.calibrate import CalibSettings, calibrate
    from qsim.bits import preset
    from qsim.text import read_text
    from qsim.tokenizer import for_model
    from qsim.weights import load_folder

    lm = load_folder(hf_checkpoint[0])
    text, _ = read_text("shakespeare/calib.txt")
    tokens = for_model(None, 256).encode(text[:200_000])
    settings = CalibSettings(samples=4, seq_len=128)
    return lm, {b: calibrate(lm, preset(b), settings, tokens, "calib.txt") for b in ("w8a8", "w4a8")}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
