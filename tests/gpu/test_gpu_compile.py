"""Every gpu/kernels/*.cu compiles: with nvcc for sm_90 (CI), and with NVRTC where its library is
installed (what CuPy uses at run time: no host headers, only what NVRTC ships). The text compiled
is exactly what gpu.runtime hands to NVRTC (includes inlined, the spec's defines)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gpu import runtime

SOURCES = sorted(runtime.KERNEL_DIR.glob("*.cu"))


def test_there_are_kernels_and_each_names_the_qsim_op_it_equals():
    assert {p.stem for p in SOURCES} >= {"requant", "rmsnorm", "conv", "scan", "hadamard", "decode", "fp16"}
    for p in SOURCES:
        head = p.read_text().split("#include")[0]
        assert "qsim." in head, f"{p.name}: the header comment must name the qsim op the kernel equals"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed (CUDA toolkit absent)")
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles_for_sm90(path, tmp_path):
    src = tmp_path / path.name
    src.write_text(runtime.source(path))
    res = subprocess.run(["nvcc", "-arch=sm_90", "--ptx", *runtime.options(), "-o", str(tmp_path / "k.ptx"), str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr.lower(), res.stderr
    assert ".entry" in (tmp_path / "k.ptx").read_text()


def test_kernels_refuse_to_compile_without_the_spec_defines(tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed (CUDA toolkit absent)")
    src = tmp_path / "requant.cu"
    src.write_text(runtime.source(runtime.KERNEL_DIR / "requant.cu"))
    res = subprocess.run(["nvcc", "-arch=sm_90", "--ptx", "-std=c++17", "-o", str(tmp_path / "k.ptx"), str(src)],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "spec_defines" in res.stderr


def _nvrtc():
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib  # ships with CuPy 14

        return ctypes.CDLL(load_nvidia_dynamic_lib("nvrtc").abs_path)
    except Exception:  # not installed, or no NVRTC in the wheels it knows
        name = ctypes.util.find_library("nvrtc")
        return ctypes.CDLL(name) if name else None


def _cuda_include() -> list[str]:
    """The toolkit's include folder, which CuPy passes to NVRTC (cuda_fp16.h for fp16.cu)."""
    for d in (os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if d and (Path(d) / "include" / "cuda_fp16.h").is_file():
            return [f"-I{Path(d) / 'include'}"]
    return []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_nvrtc_compiles(path):
    lib = _nvrtc()
    if lib is None:
        pytest.skip("no NVRTC library here (it comes with CuPy's CUDA wheels)")
    if "<cuda_fp16.h>" in path.read_text() and not _cuda_include():
        pytest.skip("cuda_fp16.h: no CUDA toolkit include folder here")
    prog = ctypes.c_void_p()
    code = runtime.source(path).encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), code, path.name.encode(), 0, None, None) == 0
    opts = [o.encode() for o in (*runtime.options(), "-arch=compute_90", *_cuda_include())]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, log.value.decode()
