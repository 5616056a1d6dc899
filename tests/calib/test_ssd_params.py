"""calib.ssd_params: float scales and Mamba-2 parameters -> SSD integer constants (qsim/SPEC.md 14.1, 5.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calib import ssd_params as sp
from qsim import spec, tables
from qsim.errors import QsimError

H, P, N, G = 4, 8, 16, 2
D = H * P


def args(**change):
    r = np.random.default_rng(0)
    a = {"s_x": np.repeat(r.uniform(0.01, 0.05, (H, 2)), P // 2, axis=1).reshape(-1),
         "s_B": np.array([0.02, 0.03]), "s_C": np.array([0.025, 0.015]), "s_dt_raw": 4 / 127,
         "dt_bias": np.array([-6.9, -4.6, -3.0, -2.3]), "A_log": np.log([1.0, 4.0, 9.0, 16.0]),
         "D": np.array([1.0, 0.5, -0.3, 2.0]), "s_state": np.array([1e-5, 2e-5, 4e-6, 3e-5]),
         "s_ys": np.array([1e-4, 2e-4]), "d_state": N, "state_bits": 24, "where": "layers.7"}
    a.update(change)
    return a


def test_constants_follow_the_calibration_rules():
    a = args()
    p, info = sp.ssd_params(**a)
    head, grp = np.arange(D) // P, (np.arange(D) // P) // (H // G)
    s_st = np.repeat(a["s_state"], P)
    # m_h / 2**s_h is the real ratio s_dt s_x s_B / s_state to 15 bits, per channel
    real_h = info["s_dt"][head] * a["s_x"] * a["s_B"][grp] / s_st
    assert np.all(np.abs(p["m_h"] / 2.0 ** p["s_h"] / real_h - 1) <= 2.0**-15)
    assert np.all((p["m_h"] >= 1 << 14) & (p["m_h"] < 1 << 15))
    # channels with the same scales get the same constants (piecewise-constant s_x -> piecewise-constant m_h)
    assert len({(int(m), int(s)) for m, s in zip(p["m_h"][:P // 2], p["s_h"][:P // 2])}) == 1
    assert np.array_equal(p["Dq"], spec.round_half_up(a["D"][head] * a["s_x"] / (a["s_C"][grp] * s_st)))
    norm_grp = np.arange(D) // (D // 2)
    real_y = a["s_C"][grp] * s_st / a["s_ys"][norm_grp]
    assert np.all(np.abs(p["m_y"] / 2.0 ** p["s_y"] / real_y - 1) <= 2.0**-15)
    # decay: a_q / 2**frac is exp(A_log) log2(e) s_dt; the largest head uses the top bit
    assert spec.A_FRAC_MIN <= p["frac"] <= spec.A_FRAC_MAX and 1 << 15 <= p["a_q"].max() <= 65535
    assert np.allclose(p["a_q"] / 2.0 ** p["frac"], np.exp(a["A_log"]) / math.log(2) * info["s_dt"], rtol=2e-4)
    # dt: each head's row spans the uint15 range and is softplus(code * s + bias) / s_dt
    assert p["dt_table"].shape == (H, 256) and np.all(p["dt_table"][:, 255] == spec.DT_MAX)
    dt = np.logaddexp(0, tables.INT8_CODES[None] * a["s_dt_raw"] + a["dt_bias"][:, None])
    assert np.all(np.abs(p["dt_table"] * info["s_dt"][:, None] - dt) <= 0.5 * info["s_dt"][:, None] * (1 + 1e-9))
    assert np.all(np.diff(p["dt_table"], axis=1) >= 0)
    assert p["state_bits"] == 24 and np.array_equal(p["exp_tab"], tables.exp2_frac_table())


def test_state_scale_per_channel_and_scalar_ys():
    a = args(s_state=np.linspace(1e-6, 1e-5, D), s_ys=1e-4)
    _, info = sp.ssd_params(**a)
    assert np.array_equal(info["s_state"], a["s_state"]) and info["s_ys"].tolist() == [1e-4]
    p2, _ = sp.ssd_params(**args(s_state=2e-6))  # one scale for every channel
    assert p2["Dq"].shape == (D,)


def test_dt_limits_are_in_the_table():
    tab, s_dt = sp.dt_table(4 / 127, np.array([-6.0, -3.0]), dt_min=1e-3, dt_max=0.2)
    assert np.allclose(s_dt, [np.logaddexp(0, 127 * 4 / 127 - 6.0) / spec.DT_MAX, 0.2 / spec.DT_MAX])
    assert tab[0, 0] == round(1e-3 / s_dt[0])  # softplus(-10) = 4.5e-5 < dt_min
    assert tab[1, 255] == spec.DT_MAX  # softplus(1) > dt_max: clamped
    assert tab[1, 128] == int(spec.round_half_up(np.logaddexp(0, -3.0) / s_dt[1]))
    tab2, s2 = sp.dt_table(4 / 127, np.array([-6.0, 0.0]), s_dt=0.1 / spec.DT_MAX)  # a given scale clamps
    assert tab2[1, 255] == spec.DT_MAX and np.allclose(s2, 0.1 / spec.DT_MAX)


def test_gated_norm_params():
    w = np.linspace(-0.5, 1.5, 64)
    pn, info = sp.gated_norm_params(w, s_ys=[1e-4, 3e-4], s_sz=2e-4, s_y=5e-4, eps=1e-5, norm_groups=2,
                                    where="layers.0.norm")
    assert pn["w"].max() == 32767 and np.allclose(pn["w"] * info["w_scale"], w, atol=info["w_scale"] / 2)
    s_g = np.array([1e-4, 3e-4]) * 2e-4 * 128
    assert pn["eps_int"].tolist() == [int(spec.round_half_up(1e-5 * 32 / v**2)) for v in s_g]
    assert abs(pn["m"] / 2.0 ** pn["s"] / (math.sqrt(32) * info["w_scale"] * 2.0**-15 / 5e-4) - 1) <= 2.0**-15
    pn1, _ = sp.gated_norm_params(w, s_ys=1e-4, s_sz=2e-4, s_y=5e-4, eps=0.0)  # eps 0 -> eps_int 1 (ss >= 1)
    assert pn1["eps_int"].tolist() == [1]


def test_silu_z_table_covers_the_codes():
    tab, s_sz = sp.silu_z_table(4 / 127)
    assert tab.max() == spec.GATE_MAX and np.array_equal(tab, tables.gate_table(4 / 127, s_sz))


@pytest.mark.parametrize("change,match", [
    ({"s_x": np.full(D, -0.1)}, "s_x must be > 0"),
    ({"s_x": np.full(D - 1, 0.1)}, "do not split into 4 heads"),
    ({"s_B": np.array([0.02, 0.02, 0.02])}, "SSD groups"),
    ({"s_C": np.array([0.02, np.nan])}, "s_C is not finite"),
    ({"s_state": np.ones(3)}, "s_state has 3 entries"),
    ({"s_ys": np.ones(3)}, "norm groups"),
    ({"state_bits": 33}, "state_bits"), ({"state_bits": 11}, "state_bits"),
    ({"d_state": 0}, "d_state"),
    ({"s_dt_raw": 0.0}, "dt_raw scale"),
    ({"dt_bias": np.array([1.0, np.inf, 0.0, 0.0])}, "dt_bias is not finite"),
    ({"dt_min": 0.1, "dt_max": 0.05}, "dt limits"),
    ({"A_log": np.array([0.0, 0.0, 40.0, 0.0])}, "a_q head 2"),
    ({"D": np.array([1.0, 1.0, 1e9, 1.0])}, "Dq channel (1[6-9]|2[0-3]): "),  # head 2's channels
    ({"s_state": np.full(H, 1e-13)}, "Dq channel"),  # a state unit far too fine for the skip term
    ({"s_state": np.full(H, 1e-30)}, "m_h"),  # ... and for the state input: beyond a 31-bit multiplier
    ({"s_ys": np.array([1e-30, 1e-4])}, "m_y"),  # ratio beyond a 31-bit multiplier
])
def test_ssd_params_rejects(change, match):
    with pytest.raises(QsimError, match=f"layers.7.*{match}"):
        sp.ssd_params(**args(**change))


@pytest.mark.parametrize("kw,match", [
    ({"norm_groups": 3}, "norm groups"), ({"s_ys": [1e-4, 1e-4, 1e-4]}, "s_ys has 3"),
    ({"s_y": 0.0}, "output scale"), ({"eps": -1.0}, "eps"), ({"s_ys": 1e-20}, "eps_int group 0"),
    ({"s_sz": math.inf}, "SiLU"),
])
def test_gated_norm_params_rejects(kw, match):
    base = {"s_ys": 1e-4, "s_sz": 2e-4, "s_y": 5e-4, "eps": 1e-5, "norm_groups": 1, "where": "layers.5.norm"}
    with pytest.raises(QsimError, match=f"layers.5.norm.*{match}"):
        sp.gated_norm_params(np.ones(64), **{**base, **kw})
