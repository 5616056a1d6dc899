import numpy as np
import pytest

from qsim.qweights import IntLinear


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_effective_weight_is_exact_in_narrow_dtypes(dtype):
    """|q * gs| <= 8 * 255 fits int16 and any float: the hot paths may expand int4 groups there."""
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, (5, 300)).astype(np.int8)
    q[0, :2] = -8
    gs = rng.integers(1, 256, (5, 3)).astype(np.uint8)
    gs[0, 0] = 255
    w = IntLinear(q, gs, 128)  # a partial last group
    ref = np.array([[int(q[r, c]) * int(gs[r, c // 128]) for c in range(300)] for r in range(5)])
    assert ref.min() == -2040
    assert np.array_equal(w.effective(), ref) and np.array_equal(w.effective(dtype), ref.astype(dtype))
    assert w.effective(dtype).dtype == dtype
