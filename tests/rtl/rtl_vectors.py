"""Golden sets as unit beats and expected outputs, shared by the Amaranth tests and the cocotb benches."""

from __future__ import annotations

import numpy as np


def scan_beats(arrays: dict, channels: int | None = None):
    """Per token: the bc beat and the channel beats; expected y (tokens, channels).

    Channels are independent given B and C, so the first `channels` of a layer
    are a valid smaller problem (the unit is then built with those channels' constants).
    """
    sel = slice(0, channels)
    tokens = []
    for t in range(arrays["xs"].shape[0]):
        bc = {"b": arrays["B"][t].tolist(), "c": arrays["C"][t].tolist(), "start": int(arrays["start"][t] or t == 0)}
        chans = [{"x": int(x), "dt": int(d), "sz": int(s)}
                 for x, d, s in zip(arrays["xs"][t, sel], arrays["dt"][t, sel], arrays["sz"][t, sel])]
        tokens.append((bc, chans))
    return tokens, arrays["y"][:, sel].astype(np.int64)


def hadamard_beats(arrays: dict, lanes: int):
    """Input rows (lists of `lanes` int16) in vector order; expected int8 output rows."""
    y, yo = arrays["y"], arrays["yo"]
    rows = y.reshape(-1, lanes).tolist()
    return rows, yo.reshape(-1, lanes).astype(np.int64)


def unpack_state(words: list[int], lanes: int, bits: int) -> np.ndarray:
    """State memory words (lanes elements of `bits` each) as a (words * lanes,) signed array."""
    out = []
    for w in words:
        for j in range(lanes):
            v = (w >> (j * bits)) & ((1 << bits) - 1)
            out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return np.array(out, dtype=np.int64)
