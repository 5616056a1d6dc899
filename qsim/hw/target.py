"""Accelerator descriptions: editable TOML files, validated with errors naming file and key.

A target is a MAC array plus three fixed units (scan, Hadamard, table units
that also do the element-wise work), three on-chip buffers, one off-chip
memory and an energy table; optionally also a decode engine ([engine],
qsim.hw.engine.EngineConfig: rtl/engine.py's configuration), whose cycles then
give a Mamba-1 w8a8 decode step (qsim.hw.cost). Shipped presets live in
qsim/hw/targets/; a user passes a preset name or a path to their own file.
Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from qsim.errors import QsimError
from qsim.hw.energy import EnergyTable, load_table, table_path
from qsim.hw.engine import EngineConfig

PRESETS_DIR = Path(__file__).parent / "targets"
MAC_FORMATS = ("w16a16", "w8a16", "w4a16", "w8a8", "w4a8")  # every format the --bits presets produce
KIB = 1024


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    kind: str  # "fpga" or "asic"
    part: str  # FPGA part whose synthesis Fmax may set the clock; "" for an ASIC
    clock_mhz: float
    clock_source: str
    mac_rows: int
    mac_cols: int
    mac_rate: dict[str, float]  # MACs per processing element per cycle, per operand format
    scan_lanes: int
    hadamard_lanes: int
    table_units: int
    weight_buffer_bytes: int
    act_buffer_bytes: int
    state_buffer_bytes: int
    offchip_bytes_per_s: float
    buffer_access: str  # energy-table entry for an on-chip buffer access
    offchip_access: str  # energy-table entry for an off-chip access
    energy: EnergyTable
    scaling_source: str
    path: Path
    engine: EngineConfig | None = None  # the decode engine, when the target describes one

    @property
    def origin(self) -> str:
        """The file, shown relative to the package for shipped presets."""
        return f"qsim/hw/targets/{self.path.name}" if self.path.parent == PRESETS_DIR else str(self.path)

    def macs_per_cycle(self, fmt: str) -> float:
        return self.mac_rows * self.mac_cols * self.mac_rate[fmt]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_target(spec: str) -> Target:
    """A shipped preset name or a path to a target TOML file."""
    preset = PRESETS_DIR / f"{spec}.toml"
    path = preset if preset.is_file() else Path(spec)
    if not path.is_file():
        raise QsimError(f"--target {spec!r}: not a preset ({', '.join(preset_names())}) nor a file")
    return parse_target(path)


class _Section:
    """Typed access to one TOML table; every error names the file and the key."""

    def __init__(self, path: Path, raw: dict, name: str, keys: set[str], label: str = ""):
        self.path, self.name = path, label or name
        where = f"[{self.name}]" if name else "top level"
        self.raw = raw.get(name, {}) if name else raw
        if not isinstance(self.raw, dict):
            raise QsimError(f"{path}: [{name}] must be a table")
        unknown = set(self.raw) - keys
        if unknown:
            raise QsimError(f"{path}: {where}: unknown key(s) {', '.join(sorted(unknown))}")

    def _err(self, key: str, msg: str) -> QsimError:
        return QsimError(f"{self.path}: {'[' + self.name + '] ' if self.name else ''}{key}: {msg}")

    def get(self, key: str, default=None):
        if key not in self.raw:
            if default is None:
                raise self._err(key, "missing")
            return default
        return self.raw[key]

    def text(self, key: str, default: str | None = None) -> str:
        v = self.get(key, default)
        if not isinstance(v, str):
            raise self._err(key, f"must be a string, got {v!r}")
        return v

    def number(self, key: str) -> float:
        v = self.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise self._err(key, f"must be a positive number, got {v!r}")
        return float(v)

    def integer(self, key: str) -> int:
        v = self.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise self._err(key, f"must be a positive integer, got {v!r}")
        return v


def parse_target(path: Path) -> Target:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise QsimError(f"{path}: unreadable ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise QsimError(f"{path}: not valid TOML ({exc})") from None
    sections = ("mac_array", "units", "memory", "energy", "engine")
    top = _Section(path, raw, "", {"name", "description", "kind", "part", "clock_mhz", "clock_source", *sections})
    mac = _Section(path, raw, "mac_array", {"rows", "cols", "rate", "note"})
    units = _Section(path, raw, "units", {"scan_lanes", "hadamard_lanes", "table_units", "note"})
    mem = _Section(path, raw, "memory", {"weight_buffer_kib", "act_buffer_kib", "state_buffer_kib",
                                         "offchip_gb_per_s", "note"})
    en = _Section(path, raw, "energy", {"table", "node_nm", "vdd", "fabric_factor", "buffer_access",
                                        "offchip_access", "scaling_source"})
    kind = top.text("kind")
    if kind not in ("fpga", "asic"):
        raise top._err("kind", f"must be 'fpga' or 'asic', got {kind!r}")
    rate = _Section(path, mac.raw, "rate", set(MAC_FORMATS), label="mac_array.rate")
    energy = load_table(table_path(en.text("table"), path), en.number("node_nm"), en.number("vdd"),
                        en.number("fabric_factor"))
    for key in ("buffer_access", "offchip_access"):
        if en.text(key) not in energy.pj:
            raise en._err(key, f"{en.text(key)!r} is not an entry of energy table {energy.name}")
    offchip_bytes_per_s = mem.number("offchip_gb_per_s") * 1e9
    return Target(
        name=top.text("name"),
        description=top.text("description"),
        kind=kind,
        part=top.text("part", ""),
        clock_mhz=top.number("clock_mhz"),
        clock_source=top.text("clock_source"),
        mac_rows=mac.integer("rows"),
        mac_cols=mac.integer("cols"),
        mac_rate={f: rate.number(f) for f in MAC_FORMATS},
        scan_lanes=units.integer("scan_lanes"),
        hadamard_lanes=units.integer("hadamard_lanes"),
        table_units=units.integer("table_units"),
        weight_buffer_bytes=int(mem.number("weight_buffer_kib") * KIB),
        act_buffer_bytes=int(mem.number("act_buffer_kib") * KIB),
        state_buffer_bytes=int(mem.number("state_buffer_kib") * KIB),
        offchip_bytes_per_s=offchip_bytes_per_s,
        buffer_access=en.text("buffer_access"),
        offchip_access=en.text("offchip_access"),
        energy=energy,
        scaling_source=en.text("scaling_source"),
        path=path,
        engine=_engine(path, raw, offchip_bytes_per_s),
    )


def _engine(path: Path, raw: dict, offchip_bytes_per_s: float) -> EngineConfig | None:
    """[engine], whose bus (bus_bytes a beat, one beat a cycle at clock_mhz) must carry exactly the off-chip
    bandwidth: the engine's cycle contract assumes the memory delivers a beat every cycle."""
    if "engine" not in raw:
        return None
    sec = _Section(path, raw, "engine", {"note"} | set(EngineConfig.__dataclass_fields__))
    e = EngineConfig.from_dict({k: v for k, v in sec.raw.items() if k != "note"}, f"{path}: [engine]")
    if not math.isclose(e.bytes_per_s, offchip_bytes_per_s, rel_tol=1e-9):
        raise sec._err("bus_bytes", f"{e.bus_bytes} B a cycle at clock_mhz {e.clock_mhz:g} is "
                                    f"{e.bytes_per_s / 1e9:g} GB/s, not [memory] offchip_gb_per_s "
                                    f"{offchip_bytes_per_s / 1e9:g}")
    return e
