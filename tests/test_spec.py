import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsim import spec
from qsim.errors import QsimError


def test_rshift_round_ties_go_up_for_both_signs():
    v = np.array([5, -5, 6, -6, 7, -7, 4, -4])  # /4: 1.25 -1.25 1.5 -1.5 1.75 -1.75 1 -1
    assert spec.rshift_round(v, 2).tolist() == [1, -1, 2, -1, 2, -2, 1, -1]
    assert spec.rshift_round(v, 0).tolist() == v.tolist()


def test_requantize_saturates_and_counts():
    q, n = spec.requantize(np.array([1000, -1000, 10, -129 * 4, 127 * 4 + 1]), 1, 2, 8)
    assert q.tolist() == [127, -128, 3, -128, 127]  # 10/4 = 2.5 -> 3 (half up); 509/4 = 127.25
    assert n == 3  # 1000, -1000 and -516 left the int8 range; 509 rounds to 127


def test_requantize_unsigned():
    q, n = spec.requantize(np.array([-3, 300 * 2, 7]), 1, 1, 8, signed=False)
    assert q.tolist() == [0, 255, 4] and n == 2


@given(st.floats(min_value=1e-9, max_value=1e6, allow_nan=False))
def test_quantize_multiplier_is_accurate(real):
    m, s = spec.quantize_multiplier(real)
    assert 0 <= s <= 62 and 0 < m < 2**31
    if s > 0:
        assert 2**14 <= m < 2**15
    assert abs(m / 2.0**s - real) <= real * 2**-14 + 0.5 * (s == 0)


@settings(max_examples=200)
@given(st.integers(-(2**31), 2**31 - 1), st.floats(1e-6, 10.0))
def test_requantize_within_half_lsb_plus_multiplier_error(acc, real):
    m, s = spec.quantize_multiplier(real)
    q, _ = spec.requantize(np.array([acc]), m, s, 40)  # wide enough never to saturate
    exact = acc * m / 2.0**s
    assert abs(q[0] - exact) <= 0.5
    assert abs(q[0] - acc * real) <= 0.5 + abs(acc) * real * 2**-14


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_quantize_multiplier_rejects(bad):
    with pytest.raises(QsimError):
        spec.quantize_multiplier(bad, "t")


def test_exact_int_matmul_matches_int64_and_refuses_overflow():
    r = np.random.default_rng(0)
    a, b = r.integers(-128, 128, (7, 300)), r.integers(-127, 128, (5, 300))
    assert (spec.exact_int_matmul(a, b) == a @ b.T).all()
    with pytest.raises(QsimError):
        spec.exact_int_matmul(np.full((1, 4), 2**30), np.full((1, 4), 2**30))


def test_scan_accumulator_fits_its_width_after_the_shift_for_every_state_width():
    for sb in range(12, 29):
        worst = (1 << (sb - 1)) * 128 * 16  # |h| * |C| * d_state
        acc = spec.rshift_round(worst, spec.scan_acc_shift(sb))
        assert 2 * acc <= 1 << (spec.SCAN_ACC_BITS - 1)  # half the range: D*x may add as much again
        assert 2 * acc * spec.GATE_MAX * (1 << spec.MULT_BITS) < 1 << 62


def test_round_half_up_is_exact_on_doubles():
    """floor(v + 0.5) in doubles rounds the sum first: 0.49999999999999994 + 0.5 == 1.0."""
    v = np.array([0.49999999999999994, -0.5, 0.5, -1.5, 2.5, -2.4999999999999996, 2.0**52 + 1, -(2.0**52) - 1])
    assert spec.round_half_up(v).tolist() == [0, 0, 1, -1, 3, -2, 2.0**52 + 1, -(2.0**52) - 1]


@pytest.mark.parametrize("real, expect", [
    (1.0, (16384, 14)), (32767.5 / 2**15, (16384, 14)), (32767.25 / 2**15, (32767, 15)), (16383.5, (32767, 1)), (16384.5, (16385, 0)),
    (2.0**31 - 1, (2**31 - 1, 0)), (2.0**-40, (16384, 54)), (0.49999999999999994, (32768 // 2, 15)),
])
def test_quantize_multiplier_rounds_the_exact_value_and_carries(real, expect):
    """The carry case (M rounds to 2**15) halves M and drops one shift; S = 0 rounds the ratio itself."""
    assert spec.quantize_multiplier(real) == expect


def test_scan_dq_limit_is_the_largest_dq_that_fits():
    for n, sb in ((16, 24), (16, 12), (8, 28), (16, 16)):
        k, lim = spec.scan_acc_shift(sb), spec.scan_dq_limit(n, sb)
        worst = lambda dq: spec.rshift_round(n * (1 << (sb - 1)) * 128 + dq * 128, k)  # noqa: E731
        assert worst(lim) < 1 << (spec.SCAN_ACC_BITS - 1) <= worst(lim + 1)
    assert spec.scan_dq_limit(32, 24) == -1  # C.h alone overflows 25 bits
