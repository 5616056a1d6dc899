import numpy as np
import pytest

from calib.calibrate import sample_windows
from calib.observers import AbsMax, Percentile
from qsim.errors import QsimError


def test_absmax_tracks_the_largest_magnitude():
    o = AbsMax()
    o.update(np.array([1.0, -3.0]))
    o.update(np.array([2.0]))
    assert o.value == 3.0


def test_percentile_clips_outliers_and_averages_samples():
    r = np.random.default_rng(0)
    o = Percentile(0.999)
    for _ in range(4):
        x = r.standard_normal(100_000)
        x[0] = 1e3  # one outlier per sample
        o.update(x)
    assert 3.0 < o.value < 3.6  # the 0.999 quantile of |N(0,1)| is 3.29; the outlier is ignored
    assert Percentile(1.0).value == 0.0


def test_windows_are_deterministic_and_checked():
    t = np.arange(1000)
    a = sample_windows(t, 3, 100, "x")
    assert [w[0] for w in a] == [0, 450, 900]
    with pytest.raises(QsimError, match="calib.txt: 50 tokens, shorter than one sequence of 100"):
        sample_windows(t[:50], 1, 100, "calib.txt")


def test_snap_range_is_a_coarse_upper_grid():
    """Ranges snap up to 8 significant bits: never below the observation, at most 2**-7 above it, and a drift of
    a few 1e-7 (another CPU's float rounding) lands on the same grid point unless it straddles one."""
    from calib.observers import snap_range

    r = np.random.default_rng(3)
    for v in np.exp(r.uniform(-20, 20, 2000)):
        s = snap_range(float(v))
        assert v <= s <= v * (1 + 2**-7)
        m, e = np.frexp(s)
        assert (m * 2**8) == int(m * 2**8) and snap_range(s) == s
    assert snap_range(0.0) == 0.0 and snap_range(1.0) == 1.0 and snap_range(1.0 + 2**-40) == 1.0 + 2**-7
    same = sum(snap_range(float(v)) == snap_range(float(v) * (1 + 1e-6)) for v in np.exp(r.uniform(-5, 5, 2000)))
    assert same >= 1990  # straddles: ~2000 * 1e-6 * 2**8 = 0.5 expected
