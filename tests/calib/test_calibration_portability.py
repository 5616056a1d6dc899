"""Float calibration across numeric environments: deterministic where it runs, bounded drift elsewhere.

The committed artifact qsim/artifacts/mamba-tiny-w8a8 was cut with the command in its README; here the
same calibration runs again in subprocesses under each numeric environment and must stay within
calib.portability's rule of the committed bytes. Snapped ranges (calib.observers.snap_range) make them
identical in every environment on the machine that cut it; elsewhere a range may straddle a grid point,
which the rule still bounds. The integer contract does not depend on this: golden sets come from the
committed artifact."""

from __future__ import annotations

import pytest
from numeric_envs import ENVS, run

from calib import portability
from qsim import artifact

COMMITTED = artifact.SHIPPED_ARTIFACTS / "mamba-tiny-w8a8"
ARGS = ["--model", "mamba-tiny", "--calib-samples", "8", "--calib-len", "256", "--calib-text", "shakespeare/calib.txt"]


def calibrate(out, env, bits="w8a8") -> artifact.QuantizedModel:
    res = run(["-m", "qsim", "calibrate", *ARGS, "--bits", bits, "--out", str(out)], env)
    assert res.returncode == 0, res.stderr
    return artifact.load(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """w8a8: the committed artifact; w4a8 (GPTQ, whose float Hessians the range snap does not reach): this
    machine's default environment."""
    return {"w8a8": artifact.load(COMMITTED), "w4a8": calibrate(tmp_path_factory.mktemp("w4a8") / "a", {}, "w4a8")}


def test_same_environment_gives_the_same_bytes(tmp_path):
    for k in ("a", "b"):
        calibrate(tmp_path / k, {})
    for f in (artifact.MANIFEST, artifact.WEIGHTS):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


@pytest.mark.parametrize("bits", ["w8a8", "w4a8"])
@pytest.mark.parametrize("name", sorted(ENVS))
def test_drift_from_the_reference_artifact_stays_within_the_rule(name, bits, reference, tmp_path):
    drift = portability.compare(reference[bits], calibrate(tmp_path / name, ENVS[name], bits))
    assert not drift.violations, f"{name} {bits}: " + "; ".join(drift.violations[:5])
    print(f"{name} {bits}: {sum(drift.moved.values())} values moved within the rule: {drift.moved}")


def _moved_copy(qm, edit):
    out = artifact.QuantizedModel({**qm.manifest, "layers": [dict(L) for L in qm.manifest["layers"]]},
                                  {k: v.copy() for k, v in qm.tensors.items()})
    edit(out)
    return out


def test_the_rule_refuses_drift_beyond_it():
    base = artifact.load(COMMITTED)

    def scale(qm):
        qm.manifest["layers"][2] = {**qm.manifest["layers"][2], "scales": dict(qm.manifest["layers"][2]["scales"])}
        qm.manifest["layers"][2]["scales"]["dt"] *= 1 + 4 * portability.SCALE_REL

    def weight(qm):
        qm.tensors["layers.1.in_proj.q"][3, 7] += 2 if qm.tensors["layers.1.in_proj.q"][3, 7] < 0 else -2

    def multiplier(qm):
        qm.tensors["layers.0.out_proj.rq_m"][5] += 8

    def scan_multiplier(qm):
        qm.tensors["layers.3.scan.m_y"][9] += 8

    for edit in (scale, weight, multiplier, scan_multiplier):
        assert portability.compare(base, _moved_copy(base, edit)).violations, edit.__name__
    within = {"layers.1.A.q": ((0, 0), "layers.1.A.q"), "layers.3.scan.m_y": (9, "layers.3.scan.m_y/s_y")}
    for name, (at, label) in within.items():  # one unit: within the rule, counted under its label
        one = portability.compare(base, _moved_copy(base, lambda qm, name=name, at=at: qm.tensors[name].__setitem__(
            at, qm.tensors[name][at] + 1)))
        assert not one.violations and one.moved == {label: 1}, name
