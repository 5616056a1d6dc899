"""Mamba-2 fixed executor: NumPy and Numba, prefill and step, bit-identical on every tensor; bad constants refused.

Small synthetic Mamba-2 models calibrated by calib.calibrate2 through the Quamba2 recipe (head/channel
reorder on, so x has several scale groups and the conv several SiLU tables): ngroups 2 with d_state 16 and
headdim 32, ngroups 1 with d_state 128 and headdim 24 (d_inner 96 = 12 * 8, the Paley Hadamard). The short
calibration (2 windows of 64 tokens) leaves the 512 evaluated tokens outside the calibrated ranges now and
then, so the saturating sites (state, conv, in_proj, ...) are exercised and their counts compared too.
"""

import copy
import functools

import numpy as np
import pytest

from qsim import artifact, spec
from qsim.config import Mamba2Config
from qsim.errors import QsimError
from qsim.fixed.executor import Trace
from qsim.fixed.executor2 import FixedExecutor2
from qsim.text import read_text
from qsim.tokenizer import for_model

SEQ, SPLIT = 512, 440  # prefill(SEQ) vs prefill(SPLIT) then SEQ - SPLIT steps
CONFIGS = {
    "g2-n16-hd32": Mamba2Config(d_model=64, n_layer=2, vocab_size=256, d_state=16, headdim=32, ngroups=2),
    "g1-n128-hd24": Mamba2Config(d_model=48, n_layer=2, vocab_size=256, d_state=128, headdim=24, ngroups=1),
}
PER_LAYER = {"residual", "u", "in_proj", "conv_pre", "xBC", "ys", "sz", "y", "y_had", "yo", "out"}


def calibrated(cfg, samples: int = 2, seq_len: int = 64, bits: str = "w8a8"):
    """cfg's seeded synthetic weights through the quamba2 recipe (reorder on) and calib.calibrate2."""
    from calib import calibrate2, recipes
    from calib.calibrate import sample_windows
    from qsim.bits import preset
    from qsim.calib_settings import CalibSettings
    from qsim.run import settings_for
    from qsim.weights import LoadedModel, synthetic_weights

    lm = LoadedModel("tiny2", cfg, synthetic_weights(cfg), "synthetic", "test", "0" * 64, None)
    text, _ = read_text("shakespeare/calib.txt")
    tokens = for_model(None, cfg.vocab_size).encode(text[:40_000])
    s = settings_for(lm, preset(bits), CalibSettings(samples=samples, seq_len=seq_len))
    assert s.method == "quamba2" and s.group_heads and s.hadamard
    rewritten, _ = recipes.get(s.method).apply(lm, s, sample_windows(tokens, s.samples, s.seq_len, "calib"))
    return calibrate2.calibrate(rewritten, preset(bits), s, tokens, "calib")


@functools.cache
def artifact_of(name: str):
    return calibrated(CONFIGS[name])


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def qm(request):
    return artifact_of(request.param)


@pytest.fixture(scope="module")
def tokens():
    text, _ = read_text("shakespeare/valid.txt")
    t = for_model(None, 256).encode(text[2000 : 2000 + SEQ])
    assert len(t) == SEQ
    return t


def _prefill(ex, tokens):
    tr = Trace()
    logits, state = ex.prefill(tokens, trace=tr)
    return logits, tr, state


def _split(ex, tokens):
    """prefill(tokens[:SPLIT]) then one step per remaining token, into one trace (records concatenate)."""
    tr = Trace()
    head, state = ex.prefill(tokens[:SPLIT], trace=tr)
    rows = []
    for t in tokens[SPLIT:]:
        row, state = ex.step(int(t), state, tr)
        rows.append(row)
    return np.vstack([head, np.stack(rows)]), tr, state


def _same(ref, got, what):
    (l0, tr0, st0), (l1, tr1, st1) = ref, got
    assert l1.dtype == np.int64 and np.array_equal(l0, l1), what
    assert tr1.tensors.keys() == tr0.tensors.keys(), what
    for key in tr0.tensors:
        a, b = tr0.get(*key), tr1.get(*key)
        assert a.shape == b.shape and np.array_equal(a, b), (what, key)
    for i in range(len(st0.h)):
        assert np.array_equal(st0.h[i], st1.h[i]) and np.array_equal(st0.conv[i], st1.conv[i]), (what, i)
    assert dict(tr1.saturation) == dict(tr0.saturation), what


def test_numpy_and_numba_prefill_and_step_are_bit_identical(qm, tokens):
    """Every intermediate tensor the executor records, every logit, the final state and the saturation counts:
    NumPy prefill (the reference) = Numba prefill = NumPy and Numba prefill(440) then 72 steps, over 512 tokens."""
    c = qm.config
    ref = _prefill(FixedExecutor2(qm, "numpy"), tokens)
    expected = {(i, n) for i in range(c.n_layer) for n in PER_LAYER}
    expected |= {(c.n_layer, n) for n in ("residual", "u_f", "logits")}
    assert set(ref[1].tensors) == expected  # every recorded tensor is compared
    assert ref[0].shape == (SEQ, c.vocab_size)
    assert ref[2].h[0].shape == (c.nheads, c.headdim, c.d_state) and ref[2].conv[0].shape == (c.d_conv - 1, c.conv_dim)
    sat = ref[1].saturation
    assert sat["state"] > 0 and sat["conv"] > 0, dict(sat)  # the saturating paths are exercised
    numba = FixedExecutor2(qm, "numba")
    _same(ref, _prefill(numba, tokens), "numba prefill")
    _same(ref, _split(numba, tokens), "numba prefill + step")
    _same(ref, _split(FixedExecutor2(qm, "numpy"), tokens), "numpy prefill + step")


def test_saved_artifact_loads_valid_and_runs_the_same(qm, tokens, tmp_path):
    """The stored dtypes (int8/int16/int32/int64 tensors, JSON integers) give the same integers after a round trip."""
    artifact.save(qm, tmp_path / "a")
    loaded = artifact.load(tmp_path / "a")
    short = tokens[:64]
    a, _ = FixedExecutor2(qm, "numba").prefill(short)
    b, _ = FixedExecutor2(loaded, "numba").prefill(short)
    assert np.array_equal(a, b)


def _t(name, fn):
    return lambda qm: qm.tensors.__setitem__(name, fn(qm.tensors[name].copy()))


def _set(name, index, value):
    def edit(a):
        a = a.astype(np.int64)  # a value beyond the stored dtype: the loader accepts any integer dtype
        a[index] = value
        return a

    return _t(name, edit)


def _layer(i, key, **kw):
    return lambda qm: qm.manifest["layers"][i][key].update(**kw)


def _dq_limit(qm):
    return spec.ssd_dq_limit(qm.config.d_state, qm.manifest["state_bits"])


BREAKAGES = {
    "Dq beyond the 48-bit accumulator": (lambda qm: _set("layers.1.ssd.Dq", 5, _dq_limit(qm) + 1)(qm),
                                         "layers.1.ssd: Dq channel 5"),
    "conv group out of range": (lambda qm: _set("layers.0.conv.group", -1, qm.t("layers.0.silu_conv").shape[0])(qm),
                                "layers.0.conv.group: value"),
    "negative conv group": (_set("layers.1.conv.group", 0, -1), "layers.1.conv.group: value -1"),
    "SiLU tables of 255 entries": (_t("layers.0.silu_conv", lambda a: a[:, :255]), "layers.0.silu_conv"),
    "SiLU table value beyond int8": (_set("layers.1.silu_conv", (0, 3), 200), "layers.1.silu_conv: value 200"),
    "dt table of the wrong shape": (_t("layers.0.ssd.dt_table", lambda a: a[:-1]), "layers.0.ssd.dt_table: shape"),
    "dt table beyond uint15": (_set("layers.1.ssd.dt_table", (0, 0), spec.DT_MAX + 1), "layers.1.ssd: dt_table"),
    "a_q beyond uint16": (_set("layers.0.ssd.a_q", 0, 65536), "layers.0.ssd: a_q"),
    "frac 8": (_layer(0, "ssd", frac=8), "layers.0.ssd: frac 8"),
    "state multiplier": (_set("layers.1.ssd.m_h", 3, 2**31), "layers.1.ssd: m_h/s_h channel 3"),
    "ys multiplier wraps": (_set("layers.0.ssd.m_y", 7, 2**31 - 1), "layers.0.ssd: m_y/s_y channel 7"),
    "ys shift 63": (_set("layers.0.ssd.s_y", 2, 63), "layers.0.ssd: m_y/s_y channel 2"),
    "SiLU(z) table of 255 entries": (_t("layers.1.silu_z", lambda a: a[:255]), "layers.1.silu_z: shape"),
    "SiLU(z) beyond int16": (_set("layers.0.silu_z", 0, 40000), "layers.0.silu_z: value 40000"),
    "gated norm weight": (_set("layers.0.gated_norm.w", 1, -32768), "layers.0.gated_norm: norm weight"),
    "gated norm eps 0": (_set("layers.1.gated_norm.eps_int", 0, 0), "layers.1.gated_norm: eps_int group 0"),
    "gated norm eps per group": (_t("layers.0.gated_norm.eps_int", lambda a: np.concatenate([a, a])),
                                 "layers.0.gated_norm.eps_int: shape"),
    "gated norm multiplier": (_layer(1, "gated_norm", m=2**31), "layers.1.gated_norm: m/s"),
    "conv multiplier per channel": (_set("layers.0.conv.rq_m", 9, 2**31), "layers.0.conv multiplier, channel 9"),
    "in_proj rows": (_t("layers.1.in_proj.rq_s", lambda a: a[:-1]), "layers.1.in_proj.rq_s: shape"),
    "out_in shift": (_layer(0, "out_in", s=63), "layers.0.out_in shift"),
    "out_proj multiplier": (_set("layers.1.out_proj.rq_m", 0, 0), "layers.1.out_proj multiplier, channel 0"),
    "layer norm gain": (_set("layers.0.norm.g", 0, 40000), "layers.0.norm.g: value 40000"),
    "state width 33": (lambda qm: qm.manifest.update(state_bits=33), "state_bits: value 33"),
    "residual width": (lambda qm: qm.manifest["residual"].update(bits=16), "residual.bits"),
    "exp2 table": (lambda qm: qm.manifest["tables"]["exp2_frac"].__setitem__(3, 1), "tables.exp2_frac"),
    "missing SSD key": (lambda qm: qm.manifest["layers"][1].pop("ssd"), "key 'ssd' is missing (manifest layers[1])"),
}


@pytest.fixture(scope="module")
def small_qm():
    return artifact_of("g2-n16-hd32")


def test_the_calibrated_artifact_is_valid_and_loads(small_qm, tmp_path):
    artifact.save(small_qm, tmp_path / "good")
    artifact.load(tmp_path / "good")


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_a_corrupted_constant_is_refused_on_load_in_one_line(small_qm, case, tmp_path):
    edit, name = BREAKAGES[case]
    bad = copy.deepcopy(small_qm)
    edit(bad)
    artifact.save(bad, tmp_path / "bad")  # a consistent sha256: only the constant is wrong
    with pytest.raises(QsimError) as info:
        artifact.load(tmp_path / "bad")
    msg = str(info.value)
    assert "\n" not in msg and name in msg and str(tmp_path / "bad") in msg, msg
