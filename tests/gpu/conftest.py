"""Backends for the kernel tests: `cuda` (a GPU through CuPy; skipped, saying why, where there is
none) and the same kernel sources and launch code on the CPU emulator (tests/gpu/emu) as an
emulated H100: `emu` runs blocks and threads in their natural order, `emu-shuffled` and
`emu-shuffled-2` in orders shuffled by fixed seeds, so a result that depends on the order fails.
QSIM_EMU_SANITIZE=1 builds the emulated kernels with ASan and UBSan (test_gpu_sanitizers.py)."""

from __future__ import annotations

import os

import pytest
import torch

import cuda_emulator
from gpu import runtime

SEEDS = {"emu": 0, "emu-shuffled": 1, "emu-shuffled-2": 2}
SANITIZE = os.environ.get("QSIM_EMU_SANITIZE") == "1"


@pytest.fixture(scope="session")
def emu_available():
    why = cuda_emulator.unavailable()
    if why:
        pytest.skip(f"CPU emulator unavailable: {why}")
    cuda_emulator.prebuild(SANITIZE)


@pytest.fixture(params=["cuda", "emu", "emu-shuffled"])
def device(request, monkeypatch) -> torch.device:
    """A test may choose other backends by parametrizing `device` indirectly."""
    if request.param == "cuda":
        why = runtime.unavailable()
        if why:
            pytest.skip(f"no GPU here: {why}")
        return torch.device("cuda")
    request.getfixturevalue("emu_available")
    cuda_emulator.install(monkeypatch, SEEDS[request.param], SANITIZE)
    return torch.device("cpu")
