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
