"""cocotb bench of the decode engine's Verilog (rtl/engine.py) with the Verilog DRAM model (dram_model.v) serving
the memory image: greedy decoding from an empty state, every token's tensors compared with the `fixed` executor's.

Driver: one token beat per decode step on `tok` (`start` on the first); the prompt's tokens first, then each next
token is the argmax of the engine's own logits (the first maximum), so the engine really decodes.
Monitor: at every `layer_done` the residual buffer, that layer's SSM state (the scan unit's state banks) and conv
window (the conv unit's window memory); at `done` the logits buffer and the per-label cycle counters.
Reference model: the pytest side's `fixed` executor run of the same tokens (rtl_vectors.engine_reference), saved
as an .npz. Scoreboard: element by element, failing on the first token/layer/tensor that differs.
"""

from __future__ import annotations

import time

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge
from rtl_tb import TB, Source, pack, scoreboard, signed
from rtl_vectors import unpack_state

from rtl.engine import LABELS, TOKEN


def read_words(handle, words) -> list[int]:
    return [int(handle[w].value) for w in words]


def node(dut, path: list[str]):
    for name in path:
        dut = getattr(dut, name)
    return dut


def compare(name: str, got, expected) -> None:
    got, expected = np.asarray(got, np.int64).ravel(), np.asarray(expected, np.int64).ravel()
    scoreboard(got.tolist(), expected.tolist(), lambda i: f"{name} element {i}")


def segment_words(dut, segments) -> list[int]:
    """The words of a banked memory's segments (rtl.banked), in order."""
    return [w for seg in segments for w in read_words(node(dut, seg["path"]), range(*seg["words"]))]


@cocotb.test()
async def engine_decode(dut):
    tb = TB(dut)
    env = tb.env
    ref = np.load(env["reference"])
    n_layer, prompt, steps = env["n_layer"], env["prompt"], env["tokens"]
    rbuf, lbuf = node(dut, env["rbuf"]), node(dut, env["lbuf"])
    rbits, dm, vocab = env["residual_bits"], env["d_model"], env["vocab"]
    tok = Source(tb, "tok")
    await tb.reset()
    fed, cycles, logits, t0 = [], [], [], time.time()
    for t in range(steps):
        token = prompt[t] if t < len(prompt) else int(np.argmax(logits))
        fed.append(token)
        before = {lab: int(getattr(dut, f"cyc_{lab}").value) for lab in LABELS}
        await tok.send([pack(TOKEN, {"token": token, "start": int(t == 0)})])
        for i in range(n_layer):
            await RisingEdge(dut.layer_done)
            await ReadOnly()
            where = f"token {t} layer {i}"
            compare(f"{where} residual", [signed(v, rbits) for v in read_words(rbuf, range(dm))], ref["residual"][t, i])
            scan = env["scan_state"][i]
            words = segment_words(dut, scan["segments"])
            compare(f"{where} SSM state", unpack_state(words, scan["lanes"], scan["bits"]), ref["h"][t, i])
            conv = env["conv_window"][i]
            words = segment_words(dut, conv["segments"])
            compare(f"{where} conv window", unpack_state(words, conv["taps"], 8).reshape(-1, conv["taps"]).T,
                    ref["conv"][t, i])
        await RisingEdge(dut.done)
        await ReadOnly()
        logits = [signed(v, 32) for v in read_words(lbuf, range(vocab))]
        compare(f"token {t} logits", logits, ref["logits"][t])
        cycles.append({lab: int(getattr(dut, f"cyc_{lab}").value) - before[lab] for lab in LABELS})
        dut._log.info(f"token {t} ({token}): {sum(cycles[-1].values())} cycles, {time.time() - t0:.0f} s so far")
    compare("tokens fed", fed, ref["tokens"])
    tb.record(tokens=fed, cycles=cycles, wall_s=round(time.time() - t0, 1))
