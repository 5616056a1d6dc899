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


def engine_reference(ex, prompt: list[int], steps: int, n_layer: int) -> dict:
    """Greedy decoding by the `fixed` executor (embed, then n_layer blocks, then head), as the engine benches check it:
    `steps` tokens, the prompt's first, then the argmax (first maximum) of the previous logits. Per token: the tokens
    fed, the residual after each layer (steps, n_layer, d_model), each layer's SSM state (steps, n_layer,
    d_inner * d_state) and conv window (steps, n_layer, d_conv - 1, d_inner), and the logits (steps, vocab). With
    every layer, the logits are also checked to be step()'s (the executor's decode path)."""
    from qsim.fixed.executor import Trace

    state, whole = ex.new_state(), ex.new_state()
    out = {k: [] for k in ("tokens", "residual", "h", "conv", "logits")}
    for t in range(steps):
        token = prompt[t] if t < len(prompt) else int(np.argmax(out["logits"][-1]))
        tr = Trace()
        r = ex.embed([token], tr)
        res = []
        for i in range(n_layer):
            r = ex.block(i, r, state, tr)
            res.append(r[0])
        out["tokens"].append(token)
        out["residual"].append(res)
        out["h"].append([state.h[i].ravel().copy() for i in range(n_layer)])
        out["conv"].append([state.conv[i].copy() for i in range(n_layer)])
        out["logits"].append(ex.head(r, tr)[0])
        if n_layer == ex.cfg.n_layer:
            logits, whole = ex.step(token, whole)
            assert np.array_equal(logits, out["logits"][-1]), f"token {t}: embed/block/head differ from step()"
    return {k: np.array(v, np.int64) for k, v in out.items()}
