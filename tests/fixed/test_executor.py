"""NumPy and Numba executors, prefill and step: identical integers for every tensor, 512 tokens."""

import numpy as np
import pytest

from qsim.fixed.executor import FixedExecutor, Trace
from qsim.text import read_text
from qsim.tokenizer import for_model

SEQ = 512


def _tokens():
    text, _ = read_text("shakespeare/valid.txt")
    return for_model(None, 256).encode(text[1000 : 1000 + SEQ])


def _run(qm, backend, mode, tokens):
    ex = FixedExecutor(qm, backend)
    tr = Trace()
    if mode == "prefill":
        logits, state = ex.prefill(tokens, trace=tr)
    else:
        state = ex.new_state()
        rows = []
        for t in tokens:
            row, state = ex.step(int(t), state, tr)
            rows.append(row)
        logits = np.stack(rows)
    return logits, tr, state


@pytest.mark.parametrize("bits", ["w8a8", "w4a8"])
def test_four_executions_are_bit_identical(tiny_artifacts, bits):
    qm = tiny_artifacts[1][bits]
    tokens = _tokens()
    assert len(tokens) == SEQ
    ref_logits, ref_tr, ref_state = _run(qm, "numpy", "prefill", tokens)
    per_layer = {"residual", "u", "xz", "conv_pre", "xs", "x_proj", "dt_pre", "dt", "sz", "y", "y_had", "yo", "out"}
    expected = {(i, n) for i in range(qm.config.n_layer) for n in per_layer}
    expected |= {(qm.config.n_layer, n) for n in ("residual", "u_f", "logits")}
    assert set(ref_tr.tensors) == expected  # every intermediate integer tensor is compared
    for backend, mode in [("numpy", "step"), ("numba", "prefill"), ("numba", "step")]:
        logits, tr, state = _run(qm, backend, mode, tokens)
        assert logits.dtype == np.int64 and np.array_equal(logits, ref_logits), (backend, mode)
        assert tr.tensors.keys() == ref_tr.tensors.keys()
        for key in ref_tr.tensors:
            a, b = ref_tr.get(*key), tr.get(*key)
            assert a.shape == b.shape and np.array_equal(a, b), (backend, mode, key)
        for i in range(qm.config.n_layer):
            assert np.array_equal(state.h[i], ref_state.h[i]) and np.array_equal(state.conv[i], ref_state.conv[i])
        assert dict(tr.saturation) == dict(ref_tr.saturation)


def test_prefill_then_step_continues_exactly(tiny_artifacts):
    qm = tiny_artifacts[1]["w8a8"]
    tokens = _tokens()[:200]
    ex = FixedExecutor(qm, "numba")
    whole, _ = ex.prefill(tokens)
    head, state = ex.prefill(tokens[:150])
    tail = [ex.step(int(t), state)[0] for t in tokens[150:]]
    assert np.array_equal(np.vstack([head, np.stack(tail)]), whole)


def test_fixed_logits_track_float(tiny_artifacts):
    from qsim import float_model, metrics

    lm, arts = tiny_artifacts
    tokens = _tokens()[:256]
    ref = float_model.forward(lm.config, lm.weights, tokens)
    ex = FixedExecutor(arts["w8a8"], "numba")
    logits, _ = ex.prefill(tokens)
    assert metrics.sqnr_db(ref, logits * ex.logit_scale()) > 15
