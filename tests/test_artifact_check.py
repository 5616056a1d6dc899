"""Artifacts outside the spec's bounds are refused when they load, with one line naming the parameter."""

import copy

import numpy as np
import pytest

from qsim import artifact, artifact_check, spec
from qsim.cli import main
from qsim.errors import QsimError

COMMITTED = artifact.SHIPPED_ARTIFACTS / "mamba-tiny-w8a8"


@pytest.fixture(scope="module")
def good():
    return artifact.load(COMMITTED)


def _layer(qm, i):
    return qm.manifest["layers"][i]


BREAKAGES = {
    # the case: a 2**40 accumulator times a 31-bit multiplier wraps around in int64
    "scan y multiplier": (lambda qm: qm.tensors["layers.3.scan.m_y"].__setitem__(17, 2**31 - 1),
                          "layers.3.scan.y multiplier, channel 17"),
    "scan y shift": (lambda qm: qm.tensors["layers.2.scan.s_y"].__setitem__(300, 63),
                     "layers.2.scan.y shift, channel 300"),
    "scan y per layer": (lambda qm: qm.tensors.__setitem__("layers.0.scan.m_y", qm.tensors["layers.0.scan.m_y"][:1]),
                         "layers.0.scan.m_y"),
    "multiplier >= 2**31": (lambda qm: qm.tensors.__setitem__("layers.2.in_proj.rq_m", np.full(1024, 2**31)),
                            "layers.2.in_proj multiplier"),
    "shift 63": (lambda qm: _layer(qm, 0)["conv"].update(s=63), "layers.0.conv shift"),
    "frac 8": (lambda qm: _layer(qm, 1)["scan"].update(a_frac_bits=8), "layers.1.scan.a_frac_bits"),
    "frac 31": (lambda qm: _layer(qm, 1)["scan"].update(a_frac_bits=31), "layers.1.scan.a_frac_bits"),
    "Dq beyond 25 bits": (lambda qm: qm.tensors["layers.4.D.q"].__setitem__(0, spec.scan_dq_limit(16, 24) + 1),
                          "layers.4.D.q"),
    "a_q beyond uint16": (lambda qm: qm.tensors.__setitem__("layers.0.A.q", qm.tensors["layers.0.A.q"] + 65536),
                          "layers.0.A.q"),
    "exp2 table": (lambda qm: qm.manifest["tables"]["exp2_frac"].__setitem__(7, 1), "tables.exp2_frac"),
    "gate table width": (lambda qm: _layer(qm, 2)["tables"]["silu_z"].__setitem__(0, 40000),
                         "layers.2.tables.silu_z"),
    "state width": (lambda qm: qm.manifest.update(state_bits=30), "state_bits"),
    "wrong shape": (lambda qm: qm.tensors.__setitem__("layers.1.conv.b", qm.tensors["layers.1.conv.b"][:-1]),
                    "layers.1.conv.b"),
    "missing key": (lambda qm: _layer(qm, 0).pop("out_in"), "out_in"),
}


def test_the_committed_artifact_is_valid(good):
    artifact_check.validate(good)


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_each_breakage_is_refused_naming_its_parameter(good, case):
    edit, name = BREAKAGES[case]
    bad = copy.deepcopy(good)
    edit(bad)
    with pytest.raises(QsimError, match=name.replace(".", r"\.")) as info:
        artifact_check.validate(bad)
    assert "\n" not in str(info.value)


def test_requantize_refuses_a_product_that_would_wrap():
    """spec.requantize(2**40, 2**31 - 1, 40, 24) returned -1 with no saturation; the exact answer saturates."""
    with pytest.raises(QsimError, match="2\\*\\*62"):
        spec.requantize(np.array([2**40]), 2**31 - 1, 40, 24)
    q, n = spec.requantize(np.array([2**40]), 2**21, 40, 24)  # the same shape of product, 2**61: exact
    assert q.tolist() == [2**21] and n == 0


def test_run_refuses_an_invalid_artifact_in_one_line(good, tmp_path, capsys):
    bad = copy.deepcopy(good)
    bad.tensors["layers.3.scan.m_y"][17] = 2**31 - 1
    artifact.save(bad, tmp_path / "bad")  # a consistent sha256: only the bound is wrong
    code = main(["run", "--model", "mamba-tiny", "--bits", "w8a8", "--artifact", str(tmp_path / "bad"),
                 "--seq-len", "16", "--eval-seqs", "1"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "bad") in lines[0], err
    assert "layers.3.scan.y multiplier, channel 17" in lines[0], err
