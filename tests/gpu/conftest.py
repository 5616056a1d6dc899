"""Two backends for the kernel tests: `cuda` (a GPU through CuPy; skipped, saying why, where there
is none) and `emu` (the same kernel sources and launch code on the CPU emulator, tests/gpu/emu)."""

from __future__ import annotations

import pytest
import torch

import cuda_emulator
from gpu import runtime


@pytest.fixture(scope="session")
def emu_kernels():
    why = cuda_emulator.unavailable()
    if why:
        pytest.skip(f"CPU emulator unavailable: {why}")
    return cuda_emulator.EmuKernels()


@pytest.fixture(params=["cuda", "emu"])
def device(request, monkeypatch) -> torch.device:
    if request.param == "cuda":
        why = runtime.unavailable()
        if why:
            pytest.skip(f"no GPU here: {why}")
        return torch.device("cuda")
    kernels = request.getfixturevalue("emu_kernels")
    monkeypatch.setattr(runtime, "kernels", lambda: kernels)
    return torch.device("cpu")

