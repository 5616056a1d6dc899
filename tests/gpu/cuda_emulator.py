"""Run gpu/kernels/*.cu on the CPU: built with g++ against tests/gpu/emu/cuda_emu.h.

`EmuKernels` has gpu.runtime.Kernels' interface and converts arguments with the same
gpu.runtime._arg, so a test that installs it (`monkeypatch.setattr(runtime, "kernels", ...)`)
runs the real kernel sources and the real launch code on torch CPU tensors. The emulator checks
each argument's size against the kernel's parameter, the launch against an H100's limits, and
barrier/shuffle convergence; a nonzero seed shuffles block and thread order, and shared memory is
fresh, exact-size and poisoned in every block (see cuda_emu.h). The build treats every warning as
an error; `sanitize=True` builds with AddressSanitizer and UndefinedBehaviorSanitizer (the library
then loads only into a process started with LD_PRELOAD of libasan: see test_gpu_sanitizers.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from gpu import runtime

EMU = Path(__file__).parent / "emu"
# Every warning fails the build, except #pragma unroll: nvcc's, unknown to g++ (kernels use it on purpose).
WARNINGS = ["-Wall", "-Wextra", "-Wshadow", "-Wconversion", "-Werror", "-Wno-unknown-pragmas"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
_FLAGS = ["-std=c++20", "-O1", *WARNINGS, f"-I{EMU / 'include'}", "-include", str(EMU / "cuda_emu.h")]
# `__shared__ [__align__(n)] T name[dims];` in a function, and `extern __shared__ T name[];`
_STATIC_SHARED = re.compile(r"__shared__\s+(?:__align__\((\d+)\)\s+)?([\w:]+)\s+(\w+)((?:\[[^\]]+\])+)\s*;")
_DYNAMIC_SHARED = re.compile(r"^extern __shared__ (\w+) (\w+)\[\];", re.MULTILINE)


@dataclass(frozen=True)
class DeviceProperties:
    """What the emulated device reports, as torch.cuda.get_device_properties names it: an H100 SXM.
    The launch limits (threads and dimensions per block, grid dimensions, shared memory per block
    without the opt-in attribute, which gpu.runtime never sets) are enforced on every launch."""

    name: str = "NVIDIA H100 80GB HBM3 (CPU emulation)"
    major: int = 9
    minor: int = 0
    multi_processor_count: int = 132
    warp_size: int = 32
    max_threads_per_block: int = 1024
    max_threads_per_multi_processor: int = 2048
    max_block_dims: tuple = (1024, 1024, 64)
    max_grid_dims: tuple = (2**31 - 1, 65535, 65535)
    shared_memory_per_block: int = 48 * 1024
    shared_memory_per_block_optin: int = 227 * 1024
    shared_memory_per_multiprocessor: int = 228 * 1024
    total_memory: int = 80 * 2**30


H100 = DeviceProperties()


def unavailable() -> str | None:
    if platform.machine() != "x86_64":
        return f"the emulator's fiber switch is x86-64 assembly, this is {platform.machine()}"
    return None if shutil.which("g++") else "g++ is not installed"


def emulated(code: str) -> str:
    """CUDA text with its shared memory declarations made emulator calls: dynamic shared memory is
    the block's buffer, each static array a per-block slot."""
    code = _DYNAMIC_SHARED.sub(r"#define \2 (reinterpret_cast<\1 *>(emu::dyn_smem))", code)
    code = _STATIC_SHARED.sub(lambda m: f"auto &{m[3]} = emu::shared<{m[2]}{m[4]}, {m[1] or 0}>([] {{}});", code)
    if "__shared__" in code:
        raise ValueError("a __shared__ declaration the emulator cannot rewrite")
    return code


def _names(code: str) -> list[str]:
    """extern "C" kernel names after preprocessing (the decode kernels come from a macro)."""
    pre = subprocess.run(["g++", "-E", "-P", "-x", "c++", *_FLAGS, *runtime.spec_defines(), "-"], input=code,
                         capture_output=True, text=True, check=True).stdout
    return re.findall(r'extern "C"\s+void\s+(\w+)\s*\(', pre)


def compile_flags(sanitize: bool) -> list[str]:
    return [*_FLAGS, *(SANITIZE if sanitize else []), "-fPIC", "-shared", *runtime.spec_defines()]


def compile_library(module: str, cuda: str, sanitize: bool = False) -> Path:
    """The CUDA text `cuda` built as a library of `emu_<kernel>` launchers, cached on disk by content."""
    code = emulated(cuda)
    code += "\nstatic std::string emu_err;\n"
    code += 'extern "C" const char *emu_error() { return emu_err.c_str(); }\n'
    code += 'extern "C" void emu_limits(size_t smem) { emu::smem_limit = smem; }\n'
    for n in _names(code):
        code += (f'extern "C" int emu_{n}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, '
                 f'unsigned bz, size_t shared, void **args, const int *sizes, int nargs, uint64_t seed) {{\n'
                 f'  try {{ emu::launch({n}, {{gx, gy, gz}}, {{bx, by, bz}}, shared, args, sizes, nargs, seed, "{n}"); '
                 f'return 0; }}\n'
                 f'  catch (const std::exception &e) {{ emu_err = e.what(); return 1; }}\n}}\n')
    flags = compile_flags(sanitize)
    headers = "".join(p.read_text() for p in sorted(EMU.rglob("*.h")))
    key = hashlib.sha256((code + headers + " ".join(flags)).encode()).hexdigest()[:16]
    cache_dir = Path(tempfile.gettempdir()) / "qsim-cuda-emu"
    lib = cache_dir / f"{module}-{key}.so"
    if not lib.exists():
        cache_dir.mkdir(exist_ok=True)
        src = cache_dir / f"{module}-{key}.cpp"
        src.write_text(code)
        tmp = lib.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")  # concurrent builds side by side
        res = subprocess.run(["g++", *flags, str(src), "-o", str(tmp)], capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"{module} does not build in the emulator:\n{res.stderr}")
        tmp.replace(lib)
    return lib


def prebuild(sanitize: bool = False) -> None:
    """Builds every gpu/kernels module at once: with a cold cache the tests wait for the slowest
    build, not for the sum."""
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda p: compile_library(p.stem, runtime.source(p), sanitize),
                      sorted(runtime.KERNEL_DIR.glob("*.cu"))))


@cache
def build(module: str, cuda: str, sanitize: bool = False) -> ctypes.CDLL:
    dll = ctypes.CDLL(str(compile_library(module, cuda, sanitize)))
    dll.emu_error.restype = ctypes.c_char_p
    dll.emu_limits(ctypes.c_size_t(H100.shared_memory_per_block))
    return dll


def install(monkeypatch, seed: int = 0, sanitize: bool = False) -> EmuKernels:
    """Makes gpu.runtime launch on the emulator, and torch report the emulated H100's properties
    (what the launch code sizes grids by)."""
    import torch

    kernels = EmuKernels(seed, sanitize)
    monkeypatch.setattr(runtime, "kernels", lambda: kernels)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: H100)
    return kernels


class EmuKernel:
    def __init__(self, kernels: EmuKernels, name: str):
        module, fn = name.split(".")
        self.kernels, self.name, self.dll = kernels, name, build(module, kernels.source(module), kernels.sanitize)
        self.fn = getattr(self.dll, f"emu_{fn}")
        self.fn.argtypes = [*[ctypes.c_uint] * 6, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                            ctypes.c_uint64]

    def __call__(self, grid, block, *args, shared: int = 0) -> None:
        grid, block = runtime.dims(grid), runtime.dims(block)
        if min(grid) < 1:
            return
        g, b = (grid + (1, 1))[:3], (block + (1, 1))[:3]
        if np.prod(b) > H100.max_threads_per_block or any(map(int.__gt__, b, H100.max_block_dims)) \
                or any(map(int.__gt__, g, H100.max_grid_dims)):
            raise RuntimeError(f"{self.name}: grid {g} of blocks {b} exceeds an H100's launch limits")
        vals = [np.array(runtime._arg(a)) for a in args]
        ptrs = (ctypes.c_void_p * max(1, len(vals)))(*[v.ctypes.data for v in vals])
        sizes = (ctypes.c_int * max(1, len(vals)))(*[v.itemsize for v in vals])
        if self.fn(*g, *b, shared, ptrs, sizes, len(vals), self.kernels.launch_seed()):
            raise RuntimeError(f"{self.name}: {self.dll.emu_error().decode()}")


class EmuKernels:
    """gpu/kernels' modules (or `sources`: module name -> CUDA text) on the emulator. seed 0 runs blocks
    and threads in their natural order; another seed shuffles both, differently in each launch,
    deterministically: the n-th launch of this object always gets the same order."""

    def __init__(self, seed: int = 0, sanitize: bool = False, sources: dict[str, str] | None = None):
        self.seed, self.sanitize, self.sources, self.launches = seed, sanitize, sources, 0
        self._fns: dict[str, EmuKernel] = {}

    def launch_seed(self) -> int:
        self.launches += 1
        if self.seed == 0:
            return 0
        return int.from_bytes(hashlib.sha256(f"{self.seed}/{self.launches}".encode()).digest()[:8], "little") | 1

    def source(self, module: str) -> str:
        if self.sources is not None:
            return self.sources[module]
        return runtime.source(runtime.KERNEL_DIR / f"{module}.cu")

    def __getitem__(self, name: str) -> EmuKernel:
        if name not in self._fns:
            self._fns[name] = EmuKernel(self, name)
        return self._fns[name]
