"""RTL-measured cycles (reports/rtl/cycles.json) against the cost model: unit records against the formulas of
qsim/hw/units.py, decode-engine records (unit "engine") operation by operation against qsim.hw.engine.

An engine record carries the model's dimensions ("model": EngineModel's fields), the engine's build ("engine":
EngineConfig's fields but the clock, which no cycle count depends on) and the cycles of one measured decode step
per label ("per_op"); it gives one check per label and one for the step's total."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qsim.errors import QsimError
from qsim.hw.engine import LABELS, EngineConfig, EngineModel, decode_step_cycles
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
        if unit == "engine":
            out += engine_checks(r, i, path)
            continue
        if unit not in UNITS:
            raise QsimError(f"{path}: record {i}: unit {unit!r} is not one of {', '.join(UNITS)}, engine")
        fn, keys = UNITS[unit]
        try:
            params = {k: int(r[k]) for k in keys}
            measured = int(r["cycles"])
        except (KeyError, TypeError, ValueError) as exc:
            raise QsimError(f"{path}: record {i} ({unit}): needs integer {', '.join(keys)}, cycles ({exc})") from None
        extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in (*keys, "unit", "cycles"))
        out.append(CycleCheck(unit, params, measured, fn(**params), extra))
    return out


def engine_checks(r: dict, i: int, path: Path) -> list[CycleCheck]:
    try:
        model = EngineModel(**{k: int(v) for k, v in r["model"].items()})
        engine = EngineConfig(**{k: int(v) for k, v in r["engine"].items()})
        measured = {lab: int(r["per_op"][lab]) for lab in LABELS}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise QsimError(f"{path}: record {i} (engine): needs model (EngineModel's fields), engine (EngineConfig's "
                        f"but clock_mhz) and per_op cycles of every label ({exc!r})") from None
    predicted = decode_step_cycles(model, engine)
    params = {"d_model": model.d_model, "d_state": model.d_state, "n_layer": model.n_layer,
              "bus_bytes": engine.bus_bytes, "gemv_lanes": engine.gemv_lanes}
    extra = ", ".join(f"{k}={r[k]}" for k in ("set", "simulator") if k in r)
    return ([CycleCheck(f"engine {lab}", params, measured[lab], predicted[lab], extra) for lab in LABELS]
            + [CycleCheck("engine step", params, sum(measured.values()), sum(predicted.values()), extra)])
