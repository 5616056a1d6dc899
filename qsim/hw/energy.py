"""Energy per operation and per access, scaled from a named 45 nm table to a target's node.

Scaling rule (applied to every entry except off-chip DRAM, marked `scales = false`):

    E = E_table * (node_nm / table_node_nm) * (vdd / table_vdd)**2 * fabric_factor

Dynamic energy is C*V**2 with switched capacitance proportional to feature size
(constant-field scaling, Dennard et al., IEEE JSSC 1974); the supply voltage is
stated per target because it stopped scaling with the node. `fabric_factor`
is 1 for an ASIC; for an FPGA it is the FPGA/ASIC dynamic-power ratio of Kuon
and Rose ("Measuring the gap between FPGAs and ASICs", IEEE TCAD 2007: about
14x for logic, less with hard blocks). Each target file names its factors and
their sources.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from qsim.errors import QsimError

TABLES_DIR = Path(__file__).parent / "energy_tables"
SCALING_RULE = "E = E_table * (node/table_node) * (vdd/table_vdd)^2 * fabric_factor (DRAM unscaled)"


@dataclass(frozen=True)
class EnergyTable:
    name: str
    source: str
    scale: float
    pj: dict[str, float]  # scaled picojoules per operation or per 64-bit access
    sources: dict[str, str]

    def __getitem__(self, key: str) -> float:
        try:
            return self.pj[key]
        except KeyError:
            raise QsimError(f"energy table {self.name}: no entry {key!r}") from None

    def per_byte(self, key: str) -> float:
        """Picojoules per byte of a 64-bit access entry."""
        return self[key] / 8


def table_path(ref: str, relative_to: Path) -> Path:
    """A table name shipped in energy_tables/, or a path relative to the file naming it."""
    shipped = TABLES_DIR / f"{ref}.toml"
    return shipped if shipped.is_file() else relative_to.parent / ref


def load_table(path: Path, node_nm: float, vdd: float, fabric_factor: float) -> EnergyTable:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise QsimError(f"{path}: unreadable energy table ({exc})") from None
    try:
        base_node, base_vdd = float(raw["node_nm"]), float(raw["vdd"])
        scale = (node_nm / base_node) * (vdd / base_vdd) ** 2 * fabric_factor
        pj, sources = {}, {}
        for key, entry in raw["pj"].items():
            value = float(entry["value"])
            if value <= 0:
                raise ValueError(f"{key}: value must be positive")
            pj[key] = value * (scale if entry.get("scales", True) else 1.0)
            sources[key] = str(entry["source"])
        return EnergyTable(str(raw["name"]), str(raw["source"]), scale, pj, sources)
    except (KeyError, TypeError, ValueError) as exc:
        raise QsimError(f"{path}: bad energy table ({type(exc).__name__}: {exc})") from None
