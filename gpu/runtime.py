"""Run-time kernel loading: the CUDA C files of gpu/kernels compiled by NVRTC through CuPy.

No build step: each `.cu` file becomes one `cupy.RawModule` on first use, with its quoted
includes inlined (so CuPy's compile cache keys on the whole text) and qsim.spec's constants
passed as defines. Kernels are launched on torch's current stream with raw device pointers:
torch owns every buffer, and a CUDA graph captured by torch records every launch.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

KERNEL_DIR = Path(__file__).parent / "kernels"
_INCLUDE = re.compile(r'^#include "([^"]+)"[ \t]*$', re.MULTILINE)
_ONCE = re.compile(r"^#pragma once[ \t]*\n", re.MULTILINE)


def spec_defines() -> list[str]:
    """The spec's constants as compiler defines (common.cuh refuses to compile without them)."""
    from qsim import spec

    return [f"-DQ_RESIDUAL_BITS={spec.RESIDUAL_BITS}", f"-DQ_GATED_BITS={spec.GATED_BITS}",
            f"-DQ_DECAY_BITS={spec.DECAY_BITS}", f"-DQ_DT_BITS={spec.DT_BITS}", f"-DQ_GATE_BITS={spec.GATE_BITS}",
            f"-DQ_SCAN_ACC_STATE_BITS={scan_acc_state_bits()}",
            f"-DQ_NORM_SHIFT={spec.RSQRT_TABLE_BITS - spec.NORM_FRAC_BITS}"]


def scan_acc_state_bits() -> int:
    """k with spec.scan_acc_shift(sb) == max(0, sb - k) for every state width an int32 state holds: the
    kernels apply the rule in that form, since state_bits reaches them only at run time. Raises if
    the spec's rule has another form."""
    from qsim import spec

    widths = range(1, 33)
    k = max((sb for sb in widths if spec.scan_acc_shift(sb) == 0), default=0)
    if any(spec.scan_acc_shift(sb) != max(0, sb - k) for sb in widths):
        raise ValueError("spec.scan_acc_shift is not max(0, state_bits - k): change scan_output in common.cuh")
    return k


def options() -> tuple[str, ...]:
    return ("-std=c++17", *spec_defines())


def source(path: Path, seen: set | None = None) -> str:
    """The file's text with `#include "x"` replaced by x's text, once each (the job of #pragma once)."""
    seen = set() if seen is None else seen

    def inline(m: re.Match) -> str:
        inc = (path.parent / m.group(1)).resolve()
        if inc in seen:
            return ""
        seen.add(inc)
        return source(inc, seen)

    return _INCLUDE.sub(inline, _ONCE.sub("", path.read_text()))


def unavailable() -> str | None:
    """Why GPU kernels cannot run here, or None when they can."""
    try:
        import cupy
        import torch
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[gpu]')"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return f"CuPy cannot use the GPU ({exc})"
    return None


def _arg(a):
    """A kernel argument as CuPy passes it: tensors as device pointers, ints as int32 (explicit
    NumPy scalars pass as they are, e.g. np.int64 for `long long` parameters)."""
    import torch

    if isinstance(a, torch.Tensor):
        return np.uint64(a.data_ptr())
    if a is None:
        return np.uint64(0)
    if isinstance(a, np.generic):
        return a
    if isinstance(a, (bool, int)):
        if not -(2**31) <= a < 2**31:
            raise OverflowError(f"kernel int argument {a} does not fit int32; pass np.int64 for long long")
        return np.int32(a)
    if isinstance(a, float):
        return np.float32(a)
    raise TypeError(f"unsupported kernel argument {type(a).__name__}")


def dims(d) -> tuple[int, ...]:
    """A grid or block size as a tuple of ints."""
    return tuple(int(x) for x in (d if isinstance(d, tuple) else (d,)))


class Kernel:
    """One extern "C" kernel; calling it launches on torch's current stream."""

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name

    def __call__(self, grid, block, *args, shared: int = 0) -> None:
        import torch

        grid, block = dims(grid), dims(block)
        if min(grid) < 1:
            return  # nothing to do (an empty dimension)
        # cupy.cuda.function.Function(grid, block, args, shared_mem, stream)
        self.fn(grid, block, tuple(_arg(a) for a in args), shared, _stream(torch.cuda.current_stream().cuda_stream))


@cache
def _stream(ptr: int):
    import cupy

    return cupy.cuda.ExternalStream(ptr)


class Kernels:
    """All kernel modules; `kernels()["decode.scan_step"]` is a Kernel (compiled on first use)."""

    def __init__(self):
        import cupy

        self.modules = {p.stem: cupy.RawModule(code=source(p), options=options())
                        for p in sorted(KERNEL_DIR.glob("*.cu"))}
        self._fns: dict[str, Kernel] = {}

    def __getitem__(self, name: str) -> Kernel:
        if name not in self._fns:
            module, fn = name.split(".")
            self._fns[name] = Kernel(self.modules[module].get_function(fn).kernel, name)
        return self._fns[name]


@lru_cache(maxsize=1)
def kernels() -> Kernels:
    return Kernels()


def greedy_graph(decode, tok, state):
    """A CUDA graph of decode(state) followed by writing its argmax into tok (the next step's input).
    One eager step first, on the stream the capture then uses: it compiles the kernels and creates
    CuPy's wrapper of that stream, so nothing but launches happens during capture. That step
    advances the state by one token."""
    import torch

    def step():
        tok.copy_(torch.argmax(decode(state)).to(tok.dtype).view(1))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    side.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    return graph
