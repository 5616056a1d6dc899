"""Run gpu/kernels/*.cu on the CPU: built with g++ against tests/gpu/emu/cuda_emu.h.

`EmuKernels` has gpu.runtime.Kernels' interface and converts arguments with the same
gpu.runtime._arg, so a test that installs it (`monkeypatch.setattr(runtime, "kernels", ...)`)
runs the real kernel sources and the real launch code on torch CPU tensors. The emulator checks
each argument's size against the kernel's parameter, block sizes, and barrier/shuffle convergence.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from gpu import runtime

EMU = Path(__file__).parent / "emu"
DYN_SMEM = 1 << 18  # bytes of dynamic shared memory offered to a block
_FLAGS = ["-std=c++20", "-O1", "-w", "-fPIC", "-shared", f"-I{EMU / 'include'}", "-include", str(EMU / "cuda_emu.h")]


def unavailable() -> str | None:
    return None if shutil.which("g++") else "g++ is not installed"


def _names(code: str, flags: list[str]) -> list[str]:
    """extern "C" kernel names after preprocessing (the decode kernels come from a macro)."""
    pre = subprocess.run(["g++", "-E", "-P", "-x", "c++", *flags, "-"], input=code, capture_output=True, text=True,
                         check=True).stdout
    return re.findall(r'extern "C"\s+void\s+(\w+)\s*\(', pre)


def build(module: str) -> ctypes.CDLL:
    code = runtime.source(runtime.KERNEL_DIR / f"{module}.cu").replace("extern __shared__", "extern")
    flags = [f for f in _FLAGS if f not in ("-shared", "-fPIC", "-O1", "-w")] + list(runtime.spec_defines())
    names = _names(code, flags)
    code += f"\nalignas(16) int4 dyn_smem[{DYN_SMEM // 16}];\nstatic std::string emu_err;\n"
    code += 'extern "C" const char *emu_error() { return emu_err.c_str(); }\n'
    code += 'extern "C" void emu_poison(int n) { std::memset(dyn_smem, 0x5A, n); }\n'
    for n in names:
        code += (f'extern "C" int emu_{n}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
                 f'unsigned bz, void **args, const int *sizes, int nargs) {{\n'
                 f'  try {{ emu::launch({n}, {{gx, gy, gz}}, {{bx, by, bz}}, args, sizes, nargs, "{n}"); return 0; }}\n'
                 f'  catch (const std::exception &e) {{ emu_err = e.what(); return 1; }}\n}}\n')
    key = hashlib.sha256((code + " ".join(_FLAGS + runtime.spec_defines())).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "qsim-cuda-emu"
    lib = cache / f"{module}-{key}.so"
    if not lib.exists():
        cache.mkdir(exist_ok=True)
        src = cache / f"{module}-{key}.cpp"
        src.write_text(code)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")  # concurrent test processes build side by side
        subprocess.run(["g++", *_FLAGS, *runtime.spec_defines(), str(src), "-o", str(tmp)], check=True)
        tmp.replace(lib)
    dll = ctypes.CDLL(str(lib))
    dll.emu_error.restype = ctypes.c_char_p
    return dll


class EmuKernel:
    def __init__(self, dll: ctypes.CDLL, name: str):
        self.dll, self.name = dll, name
        self.fn = getattr(dll, f"emu_{name.split('.')[1]}")

    def __call__(self, grid, block, *args, shared: int = 0) -> None:
        grid, block = runtime.dims(grid), runtime.dims(block)
        if min(grid) < 1:
            return
        if shared > DYN_SMEM:
            raise RuntimeError(f"{self.name}: {shared} bytes of dynamic shared memory requested")
        vals = [np.array(runtime._arg(a)) for a in args]
        ptrs = (ctypes.c_void_p * max(1, len(vals)))(*[v.ctypes.data for v in vals])
        sizes = (ctypes.c_int * max(1, len(vals)))(*[v.itemsize for v in vals])
        self.dll.emu_poison(shared)  # dynamic shared memory starts as garbage, as on a GPU
        g, b = (grid + (1, 1))[:3], (block + (1, 1))[:3]
        if self.fn(*g, *b, ptrs, sizes, len(vals)):
            raise RuntimeError(f"{self.name}: {self.dll.emu_error().decode()}")


class EmuKernels:
    def __init__(self):
        self.dlls: dict[str, ctypes.CDLL] = {}

    def __getitem__(self, name: str) -> EmuKernel:
        module = name.split(".")[0]
        if module not in self.dlls:
            self.dlls[module] = build(module)
        return EmuKernel(self.dlls[module], name)
