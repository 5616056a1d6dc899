"""RTL-measured unit cycles (reports/rtl/cycles.json) against the formulas of qsim/hw/units.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qsim.errors import QsimError
from qsim.hw.units import hadamard_unit_cycles, scan_unit_cycles

UNITS = {
    "scan": (scan_unit_cycles, ("lanes", "d_inner", "d_state", "tokens")),
    "hadamard": (hadamard_unit_cycles, ("lanes", "n", "vectors")),
}


@dataclass(frozen=True)
class CycleCheck:
    unit: str
    params: dict[str, int]
    measured: int
    model: int
    extra: str  # e.g. the simulator

    @property
    def agrees(self) -> bool:
        return self.measured == self.model


def check(recs: list[dict], path: Path) -> list[CycleCheck]:
    out = []
    for i, r in enumerate(recs):
        unit = r.get("unit")
        if unit not in UNITS:
            raise QsimError(f"{path}: record {i}: unit {unit!r} is not one of {', '.join(UNITS)}")
        fn, keys = UNITS[unit]
        try:
            params = {k: int(r[k]) for k in keys}
            measured = int(r["cycles"])
        except (KeyError, TypeError, ValueError) as exc:
            raise QsimError(f"{path}: record {i} ({unit}): needs integer {', '.join(keys)}, cycles ({exc})") from None
        extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in (*keys, "unit", "cycles"))
        out.append(CycleCheck(unit, params, measured, fn(**params), extra))
    return out
