"""Each `fixed` op against float math, within an error bound derived from its scales."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qsim import hadamard, spec, tables
from qsim.fixed import ops
from qsim.float_model import rmsnorm as float_rmsnorm
from qsim.qweights import IntLinear, quantize_int4_grouped

SEEDS = st.integers(0, 2**31 - 1)


@settings(max_examples=25, deadline=None)
@given(SEEDS, st.sampled_from([64, 768, 2560]))
def test_rmsnorm_within_bound(seed, d):
    r = np.random.default_rng(seed)
    s_res, s_g = 1e-5, 2.0 / 32767
    x = r.standard_normal((4, d)) * r.uniform(0.01, 20)
    ri = np.clip(np.round(x / s_res), -(2**23) + 1, 2**23 - 1).astype(np.int64)
    g = r.uniform(0.2, 2.0, d)
    gq = np.round(g / s_g).astype(np.int64)
    u_real = float_rmsnorm(ri * s_res, gq * s_g, 1e-5)
    s_u = np.abs(u_real).max() / 127
    m, s = spec.quantize_multiplier(math.sqrt(d) * s_g * 2.0**-15 / s_u)
    u8, _ = ops.rmsnorm(ri, gq, max(1, round(1e-5 * d / s_res**2)), m, s, tables.rsqrt_table())
    # final rounding + rsqrt table (< 2e-3 relative) + Q15 rounding of r/sqrt(ss) + multiplier
    bound = 0.5 * s_u + 2.5e-3 * np.abs(u_real) + 0.5 * 2.0**-15 * math.sqrt(d) * g + 2.0**-13 * np.abs(u_real)
    assert np.all(np.abs(u8 * s_u - u_real) <= bound + 1e-12)


@settings(max_examples=25, deadline=None)
@given(SEEDS)
def test_conv_silu_within_bound(seed):
    r = np.random.default_rng(seed)
    D, L = 32, 20
    s_x, s_w = 0.05, 0.01
    x = r.integers(-128, 128, (L, D))
    w = r.integers(-127, 128, (D, 4))
    b = r.integers(-3000, 3000, D)
    acc, state = ops.conv(x, np.zeros((3, D), np.int64), w, b)
    xp = np.vstack([np.zeros((3, D)), x])
    exact = b + sum(xp[j : j + L] * w[:, j] for j in range(4))
    assert np.array_equal(acc, exact) and np.array_equal(state, x[-3:])
    s_pre = np.abs(acc).max() * s_x * s_w / 127
    s_out = 0.05
    m, s = spec.quantize_multiplier(s_x * s_w / s_pre)
    pre, _ = spec.requantize(acc, m, s, 8)
    out = ops.lut(pre, tables.silu_table(s_pre, s_out))
    true = tables.silu(acc * s_x * s_w)
    # table rounding + SiLU's slope (<= 1.1) times the requant rounding and multiplier error
    bound = 0.5 * s_out + 1.1 * (0.5 * s_pre + np.abs(acc * s_x * s_w) * 2.0**-14)
    ok = np.abs(true) < 127 * s_out  # outside the output range the table saturates
    assert np.all(np.abs(out * s_out - true)[ok] <= bound[ok] + 1e-12)


@settings(max_examples=50, deadline=None)
@given(SEEDS, st.integers(9, 24))
def test_decay_within_bound(seed, frac):
    """dt over its whole unsigned 15-bit range: 0, 1 and DT_MAX always, two uniform and three
    log-uniform draws. Half the exponents a_q are uniform over uint16 (mostly E = dt*a/2**frac past
    the shift cap: decay 0); half are aimed at E spread over [0, 38.4], where 2**-E is not yet lost."""
    r = np.random.default_rng(seed)
    dt = np.concatenate([[0, 1, spec.DT_MAX], r.integers(0, spec.DT_MAX + 1, 2),
                         np.exp2(r.uniform(0, 15, 3)).astype(np.int64)])
    targets = r.permuted(np.tile(np.linspace(0.5, 38, 8), (8, 1)), axis=1) + r.uniform(-0.4, 0.4, (8, 8))
    aimed = np.clip(np.round(targets * 2.0**frac / np.maximum(dt, 1)[:, None]), 0, 65535).astype(np.int64)
    a_q = np.concatenate([r.integers(0, 65536, (8, 8)), aimed], axis=1)
    got = ops.decay(dt, a_q, frac, tables.exp2_frac_table()) / 2.0**15
    e = dt[:, None] * a_q / 2.0**frac
    true = np.exp2(-e)
    assert np.count_nonzero((true > 2.0**-15) & (true < 1)) >= 2  # table and shift exercised (dt = 1 row)
    # E rounded to 1/256 (relative 2**-9 ln 2), table rounding, then a rounded shift
    bound = true * (2.0**-9 * math.log(2)) + 2.0**-16 + 2.0**-16
    assert np.all(np.abs(got - true) <= bound + 1e-15)


def _scan_params(r, D, N, state_bits=24):
    s = {"x": 0.03, "dt": 0.5 / spec.DT_MAX, "B": 0.02, "C": 0.02, "z": 3.8 / spec.GATE_MAX}
    A = np.exp(r.uniform(0, 3, (D, N)))
    a_real = A / math.log(2) * s["dt"]
    frac = int(min(30, math.floor(math.log2(65535 / a_real.max()))))
    s["h"] = 64.0 / 2 ** (state_bits - 1)  # |h| stays below 64 for these ranges
    s["y"] = 64.0 / 32767 * np.exp2(r.uniform(-2, 2, D))  # per channel, as a recipe's smoothing spreads it
    Dreal = r.uniform(0.5, 1.5, D)
    mh, sh = spec.quantize_multiplier(s["dt"] * s["B"] * s["x"] / s["h"])
    s["acc"] = s["C"] * s["h"] * 2.0 ** spec.scan_acc_shift(state_bits)  # y's accumulator after its shift
    my, sy = spec.quantize_multipliers(s["acc"] * s["z"] / s["y"])
    p = {"a_q": np.round(a_real * 2.0**frac).astype(np.int64), "frac": frac, "m_h": mh, "s_h": sh,
         "Dq": np.round(Dreal * s["x"] / (s["C"] * s["h"])).astype(np.int64), "m_y": my, "s_y": sy,
         "exp_tab": tables.exp2_frac_table(), "state_bits": state_bits}
    return p, s, A, Dreal


@settings(max_examples=10, deadline=None)
@given(SEEDS)
def test_scan_tracks_float_scan(seed):
    r = np.random.default_rng(seed)
    D, N, L = 16, 16, 64
    p, s, A, Dreal = _scan_params(r, D, N)
    xs, dt = r.integers(-127, 128, (L, D)), r.integers(0, spec.DT_MAX + 1, (L, D))
    B, C = r.integers(-127, 128, (L, N)), r.integers(-127, 128, (L, N))
    sz = r.integers(-20 * 258, spec.GATE_MAX + 1, (L, D))
    y, h, sat_h, _sat_y = ops.scan(xs, dt, B, C, sz, np.zeros((D, N), np.int64), p)
    hf = np.zeros((D, N))
    yf = np.empty((L, D))
    for t in range(L):
        d = dt[t] * s["dt"]
        hf = np.exp(-d[:, None] * A) * hf + (d * xs[t] * s["x"])[:, None] * (B[t] * s["B"])
        yf[t] = (hf @ (C[t] * s["C"]) + Dreal * xs[t] * s["x"]) * sz[t] * s["z"]
    assert sat_h == 0
    err = y * s["y"] - yf
    ok = np.abs(yf) < 32767 * s["y"]
    # the state carries relative errors of ~2**-9 per decay; over the sequence they stay small
    assert 10 * np.log10(np.sum(yf[ok] ** 2) / np.sum(err[ok] ** 2)) > 35
    assert np.abs(h * s["h"] - hf).max() <= 2e-2 * np.abs(hf).max() + 0.5 * L * s["h"]


def test_scan_single_step_bound():
    r = np.random.default_rng(3)
    D, N = 8, 16
    p, s, _A, Dreal = _scan_params(r, D, N)
    xs, dt = r.integers(-127, 128, (1, D)), r.integers(0, spec.DT_MAX + 1, (1, D))
    B, C, sz = r.integers(-127, 128, (1, N)), r.integers(-127, 128, (1, N)), r.integers(0, spec.GATE_MAX + 1, (1, D))
    y, h, _, _ = ops.scan(xs, dt, B, C, sz, np.zeros((D, N), np.int64), p)
    hf = (dt[0] * s["dt"] * xs[0] * s["x"])[:, None] * (B[0] * s["B"])
    assert np.all(np.abs(h * s["h"] - hf) <= 0.5 * s["h"] + np.abs(hf) * 2.0**-14)
    yf = (hf @ (C[0] * s["C"]) + Dreal * xs[0] * s["x"]) * sz[0] * s["z"]
    bound = (0.5 * s["h"] * np.abs(C[0] * s["C"]).sum() + 0.5 * s["C"] * s["h"] * np.abs(xs[0])
             + 0.5 * s["acc"]) * sz[0] * s["z"]
    assert np.all(np.abs(y[0] * s["y"] - yf) <= bound + 0.5 * s["y"] + np.abs(yf) * 2.0**-13)


@settings(max_examples=20, deadline=None)
@given(SEEDS, st.sampled_from([64, 1536, 2560]))
def test_hadamard_requant_within_half_lsb(seed, n):
    r = np.random.default_rng(seed)
    y = r.integers(-(2**15), 2**15, (3, n))
    s_y, s_o = 1e-4, None
    rot = y @ hadamard.matrix(n).T.astype(np.float64) * s_y / math.sqrt(n)
    s_o = np.abs(rot).max() / 127
    m, s = spec.quantize_multiplier(s_y / math.sqrt(n) / s_o)
    q, nsat = spec.requantize(ops.hadamard_rows(y), m, s, 8)
    assert nsat == 0
    assert np.all(np.abs(q * s_o - rot) <= 0.5 * s_o + np.abs(rot) * 2.0**-14 + 1e-12)


def test_int4_group_linear_equals_effective_weight_product():
    r = np.random.default_rng(0)
    w = r.standard_normal((24, 300)).astype(np.float32)
    lin, ch = quantize_int4_grouped(w, 128)
    assert lin.q.min() >= -8 and lin.q.max() <= 7 and lin.gs.min() >= 1
    x = r.integers(-128, 128, (5, 300))
    assert np.array_equal(ops.linear(x, lin), x @ lin.effective().T)
    deq = lin.effective() * ch[:, None]
    step = lin.gs[:, np.arange(300) // 128] * ch[:, None]
    assert np.all(np.abs(deq - w) <= 0.5 * step + 1e-6)
    assert np.array_equal(ops.linear(x, IntLinear(lin.q)), x @ lin.q.T.astype(np.int64))


def test_decay_is_unsigned_16_bit_and_refuses_frac_outside_the_spec():
    """dA = 2**15 (1.0, which needs 16 bits) at a zero exponent; every shift >= 17 gives 0, so caps of 17 and 40
    agree; a frac outside [9, 30] is a clear error, not numpy's negative shift count."""
    import pytest

    from qsim.errors import QsimError

    tab = tables.exp2_frac_table()
    assert ops.decay(np.array([0]), np.array([65535]), 9, tab)[0, 0] == 1 << spec.DECAY_BITS
    for k in range(17, 42):
        assert spec.rshift_round(tab, k).max() == 0
    assert spec.rshift_round(tab, 16).max() == 1
    for frac in (8, 31, 0):
        with pytest.raises(QsimError, match=f"frac {frac}"):
            ops.decay(np.array([1]), np.array([1]), frac, tab)
