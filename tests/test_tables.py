import numpy as np

from qsim import spec, tables
from qsim.fixed.ops import rsqrt_normalize


def test_silu_table_within_half_lsb():
    s_in, s_out = 0.05, 0.06  # silu(127 * 0.05) / 0.06 < 127: no clipping
    t = tables.silu_table(s_in, s_out)
    x = np.arange(-128, 128) * s_in
    assert t.shape == (256,)
    assert np.all(np.abs(t * s_out - tables.silu(x)) <= 0.5 * s_out + 1e-12)


def test_softplus_table_is_unsigned_and_saturates():
    t = tables.softplus_table(0.1, 2e-4)  # softplus(12.7) = 12.7 > DT_MAX * 2e-4 = 6.55
    assert t.min() >= 0 and t.max() == spec.DT_MAX == 2**15 - 1
    assert np.all(np.diff(t) >= 0)


def test_exp2_table():
    t = tables.exp2_frac_table()
    assert t[0] == 2**15 and t[-1] == round(2**15 * 2 ** (-255 / 256))
    assert np.all(np.diff(t) <= 0)


def test_rsqrt_normalization_accuracy():
    tab = tables.rsqrt_table()
    ss = np.unique(np.concatenate([np.arange(1, 5000), np.random.default_rng(0).integers(1, 2**57, 5000)]))
    t, shift = rsqrt_normalize(ss, tab)
    approx = t / 2.0**shift  # r * t >> shift == r / sqrt(ss) in Q15
    exact = 2.0**15 / np.sqrt(ss.astype(np.float64))
    assert np.all(shift >= 0)
    assert np.max(np.abs(approx / exact - 1)) < 2e-3  # 9-10 bit mantissa


def test_gate_table_is_16_bit_and_within_half_an_lsb():
    s_in, s_out = 0.05, 6.5 / spec.GATE_MAX
    t = tables.gate_table(s_in, s_out)
    assert t.shape == (256,) and t.max() <= spec.GATE_MAX and t.max() > 127
    assert np.all(np.abs(t * s_out - tables.silu(np.arange(-128, 128) * s_in)) <= 0.5 * s_out + 1e-12)


def test_fixed_tables_are_the_nearest_integers_of_their_real_values():
    """The integer definitions (no floats) give round-half-up of the real value: checked against float64
    with a margin, since no entry lies within 1e-6 of a tie (so the comparison itself is portable)."""
    exact = [(tables.exp2_frac_table(), 2.0**15 * np.exp2(-np.arange(256) / 256)),
             (tables.rsqrt_table(), 2.0**19 / np.sqrt(np.arange(256, 1024)))]
    for t, real in exact:
        assert np.all(np.abs(t - real) <= 0.5)
        assert np.abs(np.abs(real - np.floor(real)) - 0.5).min() > 1e-6
