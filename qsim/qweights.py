"""Integer weight formats: int8 per-tensor, and int4 in groups with integer group scales.

int4 format: w ~= q * gs[c, g] * scale[c], with q in [-8, 7], gs in [1, 255]
(uint8, one per output channel c and group g of `group` input columns) and a
real per-channel scale. Two int4 values pack into one byte, the even column in
the low nibble. The integer dot product is sum_g gs[c, g] * sum_{k in g} q x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qsim import spec


@dataclass
class IntLinear:
    """An integer weight matrix (out, in): int8 per tensor, or int4 grouped (gs set)."""

    q: np.ndarray  # int8 values (int4 already unpacked), shape (out, in)
    gs: np.ndarray | None = None  # uint8 group scales (out, n_groups) for int4
    group: int = 0

    def effective(self, dtype=np.int64) -> np.ndarray:
        """q * gs expanded per column: the integer matrix the dot product applies.

        |q * gs| <= 8 * 255, so int16 (a quarter of int64's memory traffic) or any float holds it exactly."""
        if self.gs is None:
            return self.q.astype(dtype)
        gs = np.repeat(self.gs.astype(dtype), self.group, axis=1)[:, : self.q.shape[1]]
        return np.multiply(self.q, gs, dtype=dtype)


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, float]:
    s = spec.symmetric_scale(float(np.abs(w).max()), 8)
    return np.clip(spec.round_half_up(w / s), -127, 127).astype(np.int8), s


def int4_channel_scales(w: np.ndarray, group: int) -> np.ndarray:
    """Per-channel real scale: the largest group step of the row, spread over the uint8 group scale."""
    out_f, in_f = w.shape
    n_groups = -(-in_f // group)
    wg = w if in_f % group == 0 else np.pad(w, ((0, 0), (0, n_groups * group - in_f)))
    ch = (np.abs(wg.reshape(out_f, n_groups, group)).max(axis=2) / 7.0).max(axis=1) / 255.0
    return np.where(ch > 0, ch, 1.0)


def int4_group_scales(cols: np.ndarray, ch: np.ndarray) -> np.ndarray:
    """The uint8 scale of one group of columns (out, <= group), given the per-channel scales."""
    return np.clip(spec.round_half_up(np.abs(cols).max(axis=1) / 7.0 / ch), 1, 255).astype(np.uint8)


def int4_group_codes(cols: np.ndarray, ch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize one group of columns (out, <= group) given the per-channel scales: (int4 q, uint8 gs)."""
    gs = int4_group_scales(cols, ch)
    q = np.clip(spec.round_half_up(cols / (gs * ch)[:, None]), -8, 7)
    return q.astype(np.int8), gs


def quantize_int4_grouped(w: np.ndarray, group: int) -> tuple[IntLinear, np.ndarray]:
    """Round-to-nearest int4 with integer group scales; returns the weight and per-channel scales."""
    ch = int4_channel_scales(w, group)
    parts = [int4_group_codes(w[:, g : g + group], ch) for g in range(0, w.shape[1], group)]
    q = np.concatenate([p[0] for p in parts], axis=1)
    gs = np.stack([p[1] for p in parts], axis=1)
    return IntLinear(q, gs, group), ch.astype(np.float64)


def pack_int4(q: np.ndarray) -> np.ndarray:
    flat = q.astype(np.int16)
    if flat.shape[-1] % 2:
        flat = np.pad(flat, ((0, 0), (0, 1)))
    lo, hi = flat[:, 0::2] & 0xF, flat[:, 1::2] & 0xF
    return (lo | (hi << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, cols: int) -> np.ndarray:
    p = packed.astype(np.int16)
    both = np.stack([p & 0xF, p >> 4], axis=-1).reshape(p.shape[0], -1)[:, :cols]
    return np.where(both >= 8, both - 16, both).astype(np.int8)
