import numpy as np
import pytest

from qsim import hadamard, spec
from qsim.errors import QsimError

SIZES = [1, 2, 4, 64, 12, 24, 20, 40, 1536, 2048, 3072, 5120]


@pytest.mark.parametrize("n", SIZES)
def test_orthogonality(n):
    h = hadamard.matrix(n)
    assert set(np.unique(h)) <= {-1, 1}
    hf = h.astype(np.float64)  # BLAS; sums of n <= 5120 terms of +-1 are exact
    assert (hf @ hf.T == n * np.eye(n)).all()


@pytest.mark.parametrize("n", SIZES)
def test_fast_transform_equals_matrix_product(n):
    x = np.random.default_rng(n).integers(-(2**15), 2**15, (3, n))
    assert (hadamard.fwht(x) == spec.exact_int_matmul(x, hadamard.matrix(n))).all()


def test_1536_is_kronecker_of_h12_and_h128():
    assert hadamard.factor(1536) == (12, 128)
    h = hadamard.matrix(1536)
    assert (h == np.kron(hadamard.base_matrix(12), hadamard.matrix(128))).all()


def test_float_transforms_invert():
    x = np.random.default_rng(1).standard_normal((2, 1536)).astype(np.float32)
    back = hadamard.fwht_float_t(hadamard.fwht_float(x)) / 1536
    assert np.allclose(back, x, atol=1e-4)


@pytest.mark.parametrize("transpose", [False, True])
def test_float_transform_rows_are_independent_of_their_blocks(transpose):
    """Rows are transformed in blocks over the pool's threads: each row gives the bits it gives alone, and
    the result is the dense product (float64 rounding aside); no rows gives no rows."""
    x = np.random.default_rng(2).standard_normal((3 * hadamard.TRANSFORM_ROWS + 5, 2560))
    whole = hadamard.transform64(x, transpose)
    assert all(np.array_equal(whole[i], hadamard.transform64(x[i], transpose)) for i in (0, 70, x.shape[0] - 1))
    h = hadamard.matrix(2560).astype(np.float64)
    assert np.abs(whole - x @ (h if transpose else h.T)).max() < 1e-9
    assert hadamard.transform64(np.zeros((0, 48)), transpose).shape == (0, 48)


def test_unsupported_size_is_an_error():
    with pytest.raises(QsimError, match="Hadamard size 144"):
        hadamard.factor(48 * 3)
    assert not hadamard.supported(144)
