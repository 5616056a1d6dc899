"""Golden regeneration is integer code only: byte-identical under every numeric environment.

The environments switch numpy's SIMD loops, OpenBLAS's kernels, oneDNN's ISA and the thread count,
which is what moved the float calibration the sets were once cut from (issue: 6 sets failed on
another CPU). Each run is `python -m golden --check` in a subprocess, as a user would run it."""

from __future__ import annotations

import pytest
from numeric_envs import ENVS, run

from golden.generate import SETS


@pytest.mark.parametrize("name", sorted(ENVS))
def test_golden_sets_regenerate_byte_for_byte(name):
    res = run(["-m", "golden", "--check"], ENVS[name])
    lines = res.stdout.splitlines()
    assert res.returncode == 0, f"{name}: {res.stdout}{res.stderr}"
    committed = sorted(p.name for p in SETS.iterdir() if (p / "manifest.json").is_file())
    assert sorted(line.split(":")[0] for line in lines) == committed
    assert all(line.endswith(": identical") for line in lines), res.stdout
