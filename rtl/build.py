"""Units built for a configuration, and their Verilog: shared by the CLI, synthesis and the tests.

A unit is built from its configuration alone (scan: lanes, d_inner, d_state,
state_bits; Hadamard: lanes, n); a layer's constants reach it at run time
through its `cfg` stream. A golden set supplies both: its dimensions pick the
build (`make_unit`), its constants the beats a bench loads first (`config`),
so one build runs every layer of a model.
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


def build_unit(unit: str, lanes: int, **dims):
    """`unit` for a configuration: scan d_inner, d_state, state_bits; Hadamard n."""
    from rtl.hadamard_unit import HadamardUnit
    from rtl.scan_unit import ScanUnit

    if unit == "scan":
        return ScanUnit(lanes=lanes, d_inner=dims["d_inner"], d_state=dims["d_state"], state_bits=dims["state_bits"])
    return HadamardUnit(n=dims["n"], lanes=lanes)


def make_unit(unit: str, lanes: int, set_name: str | None = None, channels: int | None = None):
    """(component, manifest, arrays): `unit` built for the configuration of golden set `set_name` (optionally
    only its first `channels` channels); config(component, manifest, arrays) loads the set's constants."""
    from rtl.hadamard_unit import HadamardUnit
    from rtl.scan_unit import ScanUnit

    set_name = set_name or DEFAULT_SET[unit]
    manifest, arrays = load(set_name)
    if manifest["kind"] != unit:
        raise ValueError(f"golden set {set_name} is a {manifest['kind']} set, not {unit}")
    if unit == "scan":
        return ScanUnit.from_golden(manifest, lanes, channels), manifest, arrays
    return HadamardUnit.from_golden(manifest, lanes), manifest, arrays


def config(component, manifest: dict, arrays: dict) -> list[dict]:
    """The `cfg` beats ({"addr", "data"}) that load a golden set's constants into `component`."""
    if hasattr(component, "d_state"):
        return component.golden_config(manifest, arrays)
    return component.config_beats(**manifest["constants"])


def tag(component) -> str:
    """Folder/top-level name of one configuration."""
    c = component
    if hasattr(c, "d_state"):
        return f"scan_d{c.d_inner}_n{c.d_state}_w{c.state_bits}_l{c.lanes}"
    return f"hadamard_n{c.n}_l{c.lanes}"


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
                "cycles_per_token": c.cycles_per_token, "load_cycles": c.load_cycles(),
                "cfg": {k: c.cfg_layout[k].shape.width for k in ("addr", "data")}}
    return {"unit": "hadamard", "lanes": c.lanes, "n": c.n, "passes": c.passes, "pass_latency": c.pass_latency,
            "cycles_per_vector": c.cycles_per_vector, "load_cycles": c.load_cycles(),
            "cfg": {k: c.cfg_layout[k].shape.width for k in ("addr", "data")}}


def stamp(command: str) -> dict:
    """Command, UTC date and machine, stamped on every measurement under reports/rtl: where a figure came from."""
    return {"command": command, "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, "
                       f"Python {platform.python_version()})"}
