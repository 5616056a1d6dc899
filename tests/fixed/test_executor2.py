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


# ---------------------------------------------------------------- SPEC.md 15.8, transcribed
def _rsr(v, s):
    """2.1 rshift_round, elementwise."""
    v, s = np.asarray(v, np.int64), np.asarray(s, np.int64)
    return np.where(s > 0, (v + np.left_shift(1, np.maximum(s - 1, 0))) >> s, v)


def _rq(acc, m, s, bits):
    """2.3 requantize."""
    return np.clip(_rsr(np.asarray(acc, np.int64) * np.asarray(m, np.int64), s), -(1 << bits - 1), (1 << bits - 1) - 1)


def _normed(r, eps_int, rs_tab):
    """7.1 up to `normed`, on Python integers."""
    ss = int(eps_int) + sum(int(v) * int(v) for v in r)
    sh = ss.bit_length() - 10
    sh += sh & 1
    mant = ss >> sh if sh >= 0 else ss << -sh
    return _rsr(np.asarray(r, np.int64) * int(rs_tab[mant - 256]), 4 + sh // 2)


def _spec_token_loop(qm, tokens):
    """SPEC.md 15.8 (with 7.1-7.5, 9.1, 10 and 15.3-15.5) read line by line, one token at a time: no executor,
    no qsim.fixed code; only the artifact and section 10's matrix."""
    from qsim.hadamard import matrix

    c, m, t = qm.config, qm.manifest, lambda name: qm.t(name).astype(np.int64)
    D, N, K, G, H, hd = c.d_inner, c.d_state, c.d_conv, c.ngroups, c.nheads, c.headdim
    cd, gn = D + 2 * G * N, G if c.norm_per_group else 1
    T, Rs, W = m["tables"]["exp2_frac"], m["tables"]["rsqrt"], m["state_bits"]
    window = [np.zeros((K - 1, cd), np.int64) for _ in range(c.n_layer)]
    S = [np.zeros((H, hd, N), np.int64) for _ in range(c.n_layer)]
    logits = []
    for token in tokens:
        r = _rq(t("embedding.q")[token], m["embedding"]["m"], m["embedding"]["s"], 24)
        for i, L in enumerate(m["layers"]):
            P = f"layers.{i}"
            u = _rq(_normed(r, L["norm"]["eps_int"], Rs) * t(f"{P}.norm.g"), L["norm"]["m"], L["norm"]["s"], 8)
            v = _rq(t(f"{P}.in_proj.q") @ u, t(f"{P}.in_proj.rq_m"), t(f"{P}.in_proj.rq_s"), 8)
            z, xbc, dt_raw = v[:D], v[D : D + cd], v[D + cd :]
            xp = np.vstack([window[i], xbc[None]])
            window[i] = xp[1:]
            acc = t(f"{P}.conv.b") + sum(xp[j] * t(f"{P}.conv.w")[:, j] for j in range(K))
            pre = _rq(acc, t(f"{P}.conv.rq_m"), t(f"{P}.conv.rq_s"), 8)
            xs = t(f"{P}.silu_conv")[t(f"{P}.conv.group"), pre + 128]
            x, B, C = xs[:D], xs[D : D + G * N].reshape(G, N), xs[D + G * N :].reshape(G, N)
            ssd = {k: t(f"{P}.ssd.{k}") for k in ("dt_table", "a_q", "m_h", "s_h", "Dq", "m_y", "s_y")}
            ys = np.zeros(D, np.int64)
            for h in range(H):
                g = h // (H // G)
                dt = int(ssd["dt_table"][h, dt_raw[h] + 128])
                er = int(_rsr(dt * int(ssd["a_q"][h]), L["ssd"]["frac"] - 8))
                dA = int(_rsr(T[er & 255], min(er >> 8, 40)))
                for p in range(hd):
                    d = h * hd + p
                    dbx = _rsr(dt * int(x[d]) * B[g] * int(ssd["m_h"][d]), int(ssd["s_h"][d]))
                    S[i][h, p] = np.clip(_rsr(dA * S[i][h, p], 15) + dbx, -(1 << W - 1), (1 << W - 1) - 1)
                    acc_d = int(C[g] @ S[i][h, p]) + int(ssd["Dq"][d]) * int(x[d])
                    ys[d] = _rq(acc_d, int(ssd["m_y"][d]), int(ssd["s_y"][d]), 16)
            gate = _rsr(ys * t(f"{P}.silu_z")[z + 128], 7)
            normed = np.concatenate([_normed(grp, e, Rs) for grp, e in
                                     zip(gate.reshape(gn, D // gn), t(f"{P}.gated_norm.eps_int"))])
            y = _rq(normed * t(f"{P}.gated_norm.w"), L["gated_norm"]["m"], L["gated_norm"]["s"], 16)
            if m["hadamard"]:
                y = matrix(D).astype(np.int64) @ y
            yo = _rq(y, L["out_in"]["m"], L["out_in"]["s"], 8)
            out = _rq(t(f"{P}.out_proj.q") @ yo, t(f"{P}.out_proj.rq_m"), t(f"{P}.out_proj.rq_s"), 24)
            r = np.clip(r + out, -(1 << 23), (1 << 23) - 1)
        fn = m["final_norm"]
        uf = _rq(_normed(r, fn["eps_int"], Rs) * t("norm_f.g"), fn["m"], fn["s"], 8)
        logits.append(t("lm_head.q") @ uf)
    return np.stack(logits)


def test_the_spec_token_loop_transcribed_gives_the_executors_integers(qm, tokens):
    """Someone who reads only SPEC.md 15.7-15.8 gets the same logits as FixedExecutor2 (int8 weights)."""
    short = tokens[:24]
    ref, _ = FixedExecutor2(qm, "numpy").prefill(short)
    assert np.array_equal(_spec_token_loop(qm, short), ref)
