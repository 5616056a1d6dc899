"""What other parts of the project measured, read from reports/ when present.

Each reader returns None when its file is absent, so callers can say so; a
present but malformed file is an error naming it. Expected shapes:
  reports/rtl/synth.json   records {"unit", "part", "fmax_mhz", ...}
  reports/rtl/cycles.json  records as described in qsim/hw/units.py
  reports/gpu/bench.json   records {"model", "config", "ttft_ms", "tpot_ms"}, optional
                           "bits" and "prompt_len" (issue 5 times a 1024-token prompt)
  reports/run/*.json       `qsim run --json` reports: "model", "bits", "perplexity"
A file of records may be a list, or an object holding the list under
"results", "units" or "records", or an object mapping unit names to records.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from qsim.errors import QsimError
from qsim.hw.target import Target

REPORTS = Path("reports")
BENCH_PROMPT_LEN = 1024


def read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QsimError(f"{path}: unreadable JSON ({exc})") from None


def records(path: Path) -> list[dict] | None:
    data = read_json(path)
    if data is None:
        return None
    if isinstance(data, dict):
        for key in ("results", "units", "records"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            if all(isinstance(v, dict) for v in data.values()):
                data = [{"unit": k, **v} for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise QsimError(f"{path}: expected a list of records")
    return data


def with_synth_clock(target: Target, reports: Path = REPORTS) -> Target:
    """An FPGA target clocked at the lowest synthesis Fmax of the units built for its part."""
    if target.kind != "fpga":
        return target
    path = reports / "rtl" / "synth.json"
    found = records(path)
    if found is None:
        return replace(target, clock_source=f"{target.clock_source}; {path} absent, preset clock used")
    fmax = [float(r["fmax_mhz"]) for r in found
            if str(r.get("part", "")).lower() == target.part.lower() and "fmax_mhz" in r]
    if not fmax:
        return replace(target, clock_source=f"{target.clock_source}; no {target.part} entry in {path}, "
                                            "preset clock used")
    return replace(target, clock_mhz=min(fmax),
                   clock_source=f"synthesis Fmax from {path}: slowest of {len(fmax)} unit(s) on {target.part}")


def run_reports(reports: Path = REPORTS) -> list[tuple[Path, dict]]:
    found = []
    for path in sorted((reports / "run").glob("*.json")):
        data = read_json(path)
        if isinstance(data, dict):
            found.append((path, data))
    return found
