"""CUDA twins of qsim.fixed.ops for whole rows (the prefill path), on torch device tensors.

Each function launches the kernel that sits beside the qsim op it equals (gpu/kernels/*.cu);
the integer GEMMs run on torch._int_mm (cuBLASLt, exact int32 accumulation) followed by the
requantization kernel. Saturation counts go to device counters (`cnt`: one int64 element of a
counter tensor), so nothing here waits for the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gpu import runtime
from gpu.layout import HI_SHIFT, MM_MIN_ROWS, HadamardPlan, LinearLayout

OUT_I8, OUT_I16, OUT_I32 = 0, 1, 2  # OUT_I16 carries dt (unsigned spec.DT_BITS <= 15 bits)
_OUT_DTYPE = {OUT_I8: torch.int8, OUT_I16: torch.int16, OUT_I32: torch.int32}
BLOCK = 256


def to_device(a: np.ndarray, dtype, device) -> torch.Tensor:
    """A NumPy array as a contiguous device tensor of NumPy `dtype`, refusing values that would wrap.
    uint16 travels as int16 bits (torch has no full uint16 support; kernels read unsigned short)."""
    a = np.asarray(a)
    out = np.ascontiguousarray(a.astype(dtype))
    if not np.array_equal(out.astype(np.int64), a.astype(np.int64)):
        raise ValueError(f"values do not fit {np.dtype(dtype).name}")
    if out.dtype == np.uint16:
        out = out.view(np.int16)
    return torch.from_numpy(out).to(device)


@dataclass
class DeviceLinear:
    """A LinearLayout on the device (w is what the decode GEMV streams; hi / lo feed int4 prompts)."""

    lay: LinearLayout
    w: torch.Tensor
    gs: torch.Tensor | None
    hi: torch.Tensor | None
    lo: torch.Tensor | None

    @classmethod
    def of(cls, lay: LinearLayout, device) -> DeviceLinear:
        up = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return cls(lay, up(lay.w), up(lay.gs), up(lay.hi), up(lay.lo))

    def decode_bytes(self) -> int:
        """The weight's own bytes, without the layout's zero padding: the memory floor counts what the
        model must read, not what a kernel chooses to."""
        lay = self.lay
        if lay.fmt == "i8":
            return lay.n * lay.k
        return (lay.n * lay.k + 1) // 2 + lay.n * -(-lay.k // lay.group)


def _mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (M, K) int8 @ w.T (w (Np, Kp) int8): int32 (M, Np), rows and columns zero-padded as
    torch._int_mm requires (M >= 17, K a multiple of 8)."""
    m, k = x.shape
    if k != w.shape[1] or m < MM_MIN_ROWS or not x.is_contiguous():
        x = F.pad(x, (0, w.shape[1] - k, 0, max(0, MM_MIN_ROWS - m))).contiguous()
    return torch._int_mm(x, w.t())[:m]


def linear(x: torch.Tensor, lin: DeviceLinear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ops.linear as int32 accumulators: (acc, None) for int8, (lo, hi) for int4 (acc = lo + hi << HI_SHIFT)."""
    if lin.lay.fmt == "i8":
        return _mm(x, lin.w), None
    return _mm(x, lin.lo), _mm(x, lin.hi)


def requantize(acc, m, s, bits: int, *, out_kind: int, cols: int | None = None, acc_hi=None, bias=None, lut=None,
               pre=None, resid=None, cnt=None, cnt_resid=None, out=None) -> torch.Tensor:
    """spec.requantize (+ lut, + residual add) of int32 rows; m, s: per-column tensors, or 1-element ones.
    pre (optional int8, like out): the requantized values before the table."""
    rows, cols = acc.shape[0], cols or acc.shape[1]
    if out is None:
        out = torch.empty((rows, cols), dtype=_OUT_DTYPE[out_kind], device=acc.device)
    runtime.kernels()["requant.requant_rows"](
        ((cols + BLOCK - 1) // BLOCK, rows), BLOCK, acc, acc.stride(0), acc_hi, HI_SHIFT, bias, m, s,
        int(m.numel() > 1), bits, lut, pre, out, out.stride(0), out_kind, resid,
        0 if resid is None else resid.stride(0), cols, cnt, cnt_resid)
    return out


def linear_requant(x, lin: DeviceLinear, m, s, bits: int, **kw) -> torch.Tensor:
    acc, hi = linear(x, lin)
    return requantize(acc, m, s, bits, cols=lin.lay.n, acc_hi=hi, **kw)


def rmsnorm(r: torch.Tensor, g, eps: int, m: int, s: int, rsqrt_tab, cnt=None) -> torch.Tensor:
    """ops.rmsnorm: int32 residual rows to int8."""
    u = torch.empty(r.shape, dtype=torch.int8, device=r.device)
    runtime.kernels()["rmsnorm.rmsnorm_rows"](r.shape[0], BLOCK, r, r.shape[1], g, np.int64(eps), m, s, rsqrt_tab, u,
                                              cnt)
    return u


def conv(x: torch.Tensor, state: torch.Tensor, w, b, m: int, s: int, lut, cnt=None, pre=None) -> torch.Tensor:
    """ops.conv + requantize + ops.lut: x (L, di) int8 rows (any row stride), state (K-1, di) updated in
    place; pre (optional int8 (L, di)): the requantized values before the table."""
    L, di = x.shape
    K = w.shape[1]
    xs = torch.empty((L, di), dtype=torch.int8, device=x.device)
    k = runtime.kernels()
    k["conv.conv_prefill"](((di + BLOCK - 1) // BLOCK, (L + 15) // 16), BLOCK, x, x.stride(0), state, w, b, K, m, s,
                           lut, pre, xs, L, di, cnt)
    k["conv.conv_state_save"]((di + BLOCK - 1) // BLOCK, BLOCK, state, x, x.stride(0), K, di, L)
    return xs


@dataclass
class ScanParams:
    """A layer's scan constants on the device (the `p` dict of ops.scan)."""

    a_q: torch.Tensor  # uint16 bits (di, N)
    Dq: torch.Tensor  # int64 (di,)
    m_y: torch.Tensor  # int32 (di,)
    s_y: torch.Tensor  # int32 (di,)
    exp_tab: torch.Tensor  # int32 (256,)
    frac: int
    m_h: int
    s_h: int
    state_bits: int

    @classmethod
    def of(cls, p: dict, device) -> ScanParams:
        return cls(to_device(p["a_q"], np.uint16, device), to_device(p["Dq"], np.int64, device),
                   to_device(p["m_y"], np.int32, device), to_device(p["s_y"], np.int32, device),
                   to_device(p["exp_tab"], np.int32, device),
                   *(int(p[k]) for k in ("frac", "m_h", "s_h", "state_bits")))


def scan(xs, dt, B, C, z, silu_z, h: torch.Tensor, p: ScanParams, cnt_state=None, cnt_y=None) -> torch.Tensor:
    """ops.scan with sz = silu_z[z] (an int16 table): rows of xs, dt, z (di) and B, C (N) with any row strides;
    h (di, N) int32 updated in place; returns y (L, di) int16."""
    L, di = xs.shape
    n = h.shape[1]
    if n & (n - 1) or n > 32:
        raise ValueError(f"d_state {n}: the scan kernel needs a power of two <= 32")
    y = torch.empty((L, di), dtype=torch.int16, device=xs.device)
    runtime.kernels()["scan.scan_prefill"](
        (di * n + BLOCK - 1) // BLOCK, BLOCK, xs, xs.stride(0), dt, dt.stride(0), B, C, B.stride(0), z, z.stride(0),
        silu_z, h, p.a_q, p.frac, p.m_h, p.s_h, p.Dq, p.m_y, p.s_y, p.exp_tab, p.state_bits, y, y.stride(0), L, di, n,
        cnt_state, cnt_y)
    return y


def hadamard_rq(y: torch.Tensor, plan: HadamardPlan, O: torch.Tensor, m: int, s: int, cnt=None):
    """ops.hadamard_rows then requantize to int8: (y_had int32, yo int8); O is plan.O on the device."""
    L, n = y.shape
    y_had = torch.empty((L, n), dtype=torch.int32, device=y.device)
    yo = torch.empty((L, n), dtype=torch.int8, device=y.device)
    runtime.kernels()["hadamard.hadamard_rq"](L, BLOCK, y, y.stride(0), n, plan.p1, O, plan.S, m, s, y_had, yo, cnt,
                                      shared=4 * n + plan.S * plan.S)
    return y_had, yo
