"""Units built from golden vector sets, and their Verilog: shared by the CLI, synthesis and the tests.

A unit's constants come from a golden set (a scan set's layer constants, a
Hadamard set's requantization multiplier), so every build is tied to vectors
that check it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

from golden.generate import load

BUILD = Path(__file__).parent / "build"  # git-ignored (the repository ignores build/)
DEFAULT_SET = {"scan": "scan_real_l0", "hadamard": "hadamard_real_l0"}


def make_unit(unit: str, lanes: int, set_name: str | None = None, channels: int | None = None):
    """(component, manifest, arrays) for `unit` built with the constants of golden set `set_name`."""
    from rtl.hadamard_unit import HadamardUnit
    from rtl.scan_unit import ScanUnit

    set_name = set_name or DEFAULT_SET[unit]
    manifest, arrays = load(set_name)
    if manifest["kind"] != unit:
        raise ValueError(f"golden set {set_name} is a {manifest['kind']} set, not {unit}")
    if unit == "scan":
        return ScanUnit.from_golden(manifest, arrays, lanes, channels), manifest, arrays
    return HadamardUnit.from_golden(manifest, lanes), manifest, arrays


def tag(unit: str, lanes: int, set_name: str | None, channels: int | None) -> str:
    """Folder/top-level name of one parameter set."""
    return f"{unit}_{set_name or DEFAULT_SET[unit]}_l{lanes}" + (f"_c{channels}" if channels else "")


def write_verilog(component, folder: Path, top: str) -> Path:
    """Verilog of `component` as module `top` in folder/top.v, plus the unit's cycle properties beside it."""
    from amaranth.back import verilog

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{top}.v"
    path.write_text(verilog.convert(component, name=top, emit_src=False))
    (folder / f"{top}.json").write_text(json.dumps(properties(component), indent=1) + "\n")
    return path


def properties(c) -> dict:
    if hasattr(c, "d_state"):
        return {"unit": "scan", "lanes": c.lanes, "d_inner": c.d_inner, "d_state": c.d_state,
                "state_bits": c.state_bits, "latency": c.latency, "recurrence_latency": c.recurrence_latency,
                "cycles_per_token": c.cycles_per_token}
    return {"unit": "hadamard", "lanes": c.lanes, "n": c.n, "passes": c.passes, "pass_latency": c.pass_latency,
            "cycles_per_vector": c.cycles_per_vector}


def stamp(command: str) -> dict:
    """Command, UTC date and machine, stamped on every measurement under reports/rtl: where a figure came from."""
    return {"command": command, "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, "
                       f"Python {platform.python_version()})"}
