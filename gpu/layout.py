"""Device layouts of the artifact's integers: what the kernels assume about shapes, in NumPy.

Pure functions without a GPU, tested on the CPU: weight padding to whole 16-byte vectors,
int4 packing per vector, the int4 split that lets the int8 GEMM (torch._int_mm) run grouped
weights exactly, and the two-stage plan of the integer Hadamard transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qsim import hadamard
from qsim.qweights import IntLinear, pack_int4

VEC_COLS = {"i8": 16, "i4": 32, "f16": 8}  # columns per 16-byte weight vector (F::COLS in common.cuh)
XPROJ_CHUNK = 128  # columns per conv_xproj block (KC in decode.cu)
HI_SHIFT = 7  # int4 effective weights q * gs = hi * 2**7 + lo, both int8
P1_MAX = 256  # Hadamard segment done inside one scan_step block
MM_MIN_ROWS = 17  # torch._int_mm needs more than 16 rows


def roundup(x: int, m: int) -> int:
    return -(-x // m) * m


def outproj_chunk(fmt: str) -> int:
    """Columns per had_outproj block: one 16-byte vector per lane of a warp (KD in decode.cu)."""
    return 32 * VEC_COLS[fmt]


@dataclass
class LinearLayout:
    """A weight matrix (n, k) padded to (rows, kp): rows to a multiple of 8 (torch._int_mm), columns
    to whole vectors and to the column chunk of the kernel that streams it.

    i8: w int8 (rows, kp). i4: w uint8 (rows, kp // 2) packed, gs uint8 (rows, kp // group) group
    scales, and hi / lo int8 (rows, kp) with hi * 2**HI_SHIFT + lo == q * gs for the prompt GEMMs.
    """

    fmt: str
    n: int
    k: int
    w: np.ndarray
    gs: np.ndarray | None = None
    group: int = 1
    hi: np.ndarray | None = None
    lo: np.ndarray | None = None

    @property
    def kp(self) -> int:
        return self.w.shape[1] * (2 if self.fmt == "i4" else 1)


def lay_linear(lin: IntLinear, chunk: int = 1) -> LinearLayout:
    n, k = lin.q.shape
    fmt = "i8" if lin.gs is None else "i4"
    kp = roundup(k, math.lcm(chunk, VEC_COLS[fmt], 8))
    q = np.zeros((roundup(n, 8), kp), np.int8)
    q[:n, :k] = lin.q
    if fmt == "i8":
        return LinearLayout("i8", n, k, q)
    if lin.group % VEC_COLS["i4"]:
        raise ValueError(f"int4 group {lin.group}: the GPU kernels need a multiple of {VEC_COLS['i4']}")
    gs = np.zeros((q.shape[0], roundup(kp, lin.group) // lin.group), np.uint8)
    gs[:n, : lin.gs.shape[1]] = lin.gs
    eff = q.astype(np.int64) * gs[:, np.arange(kp) // lin.group]
    hi = eff >> HI_SHIFT
    lo = eff - (hi << HI_SHIFT)
    return LinearLayout("i4", n, k, pack_int4(q), gs, lin.group, hi.astype(np.int8), lo.astype(np.int8))


@dataclass(frozen=True)
class HadamardPlan:
    """H_n = kron(O, H_p1): p1-point radix-2 stage inside segments, then O (order S) across them."""

    p1: int
    O: np.ndarray  # int8 (S, S), entries +-1

    @property
    def S(self) -> int:
        return self.O.shape[0]


def hadamard_plan(n: int, p1_max: int) -> HadamardPlan:
    """For n = m * p (qsim.hadamard.factor): p1 = min(p, p1_max), O = kron(H_m, H_(p / p1)).

    Sylvester's H_p = kron(H_(p/p1), H_p1), so kron(O, H_p1) == qsim.hadamard.matrix(n).
    """
    m, p = hadamard.factor(n)
    p1 = min(p, p1_max)
    return HadamardPlan(p1, np.kron(hadamard.base_matrix(m), hadamard.matrix(p // p1)).astype(np.int8))
