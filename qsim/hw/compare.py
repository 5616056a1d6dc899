"""Predictions set beside published and measured latency, with the error of each printed.

Published figures come from the committed qsim/hw/published.toml; measured
H100 figures from reports/gpu/bench.json when the GPU benchmark has run.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from qsim.bits import PRESETS, preset
from qsim.errors import QsimError
from qsim.hw.cost import estimate
from qsim.hw.devices import device, predict
from qsim.hw.measured import BENCH_PROMPT_LEN, REPORTS, records, with_synth_clock
from qsim.hw.shapes import model_shape
from qsim.hw.target import load_target

PUBLISHED = Path(__file__).parent / "published.toml"
MEASURED_DEVICE = "h100-sxm"


@dataclass(frozen=True)
class Comparison:
    source: str  # citation, or the file a measurement came from
    where: str  # device or accelerator target
    model: str
    bits: str
    method: str
    metric: str  # "TPOT ms", "TTFT ms" or "decode tokens/s"
    reference: float | None  # None: the reference ran out of memory
    predicted: float | None  # None: predicted out of memory

    @property
    def error(self) -> float | None:
        """Relative error of the prediction, (predicted - reference) / reference."""
        if self.reference is None or self.predicted is None:
            return None
        return (self.predicted - self.reference) / self.reference

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return f"{self.error:+.1%}"
        if self.reference is None and self.predicted is None:
            return "both out of memory"
        return "predicted out of memory" if self.predicted is None else "reference out of memory"


def _gpu_rows(entry: dict, source: str, prompt_len: int, where: str | None = None) -> list[Comparison]:
    dev = device(where or entry["device"])
    p = predict(model_shape(entry["model"]), preset(entry["bits"]), dev, prompt_len)
    rows = []
    for metric, key in (("TPOT ms", "tpot_ms"), ("TTFT ms", "ttft_ms")):
        if key in entry or entry.get("oom"):
            rows.append(Comparison(source, dev.name, entry["model"], entry["bits"], entry.get("method", ""),
                                   metric, None if entry.get("oom") else float(entry[key]),
                                   getattr(p, key) if p.fits else None))
    return rows


def read_published(path: Path = PUBLISHED) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise QsimError(f"{path}: bad published-figures file ({type(exc).__name__}: {exc})") from None


def published_comparisons(path: Path = PUBLISHED) -> list[Comparison]:
    raw = read_published(path)
    try:
        sources = raw["sources"]
        rows = []
        for e in raw.get("gpu", []):
            rows += _gpu_rows(e, sources[e["source"]], int(e.get("prompt_len", BENCH_PROMPT_LEN)))
        for e in raw.get("accelerator", []):
            target = with_synth_clock(load_target(e["target"]))
            est = estimate(model_shape(e["model"]), preset(e["bits"]), target, prompt_len=1)
            rows.append(Comparison(sources[e["source"]], target.name, e["model"], e["bits"], e["method"],
                                   "decode tokens/s", float(e["decode_tokens_per_s"]), est.decode.tokens_per_s))
        return rows
    except (KeyError, TypeError, ValueError) as exc:
        raise QsimError(f"{path}: bad published-figures file ({type(exc).__name__}: {exc})") from None


def _bits_of(record: dict) -> str | None:
    if record.get("bits") in PRESETS:
        return record["bits"]
    tokens = re.split(r"[^a-z0-9]+", str(record.get("config", "")).lower())
    return next((t for t in tokens if t in PRESETS), None)


def measured_comparisons(reports: Path = REPORTS) -> tuple[list[Comparison], list[str]] | None:
    """H100 predictions beside reports/gpu/bench.json; None when the file is absent.

    Returns the comparisons and one note per record that could not be matched to a model and preset.
    """
    path = reports / "gpu" / "bench.json"
    found = records(path)
    if found is None:
        return None
    rows, notes = [], []
    for r in found:
        bits = _bits_of(r)
        if bits is None or "model" not in r:
            notes.append(f"{path}: record {r.get('model')!r}/{r.get('config')!r} names no model or bits preset")
            continue
        entry = {"model": r["model"], "bits": bits, "method": str(r.get("config", bits))}
        entry |= {k: r[k] for k in ("tpot_ms", "ttft_ms") if isinstance(r.get(k), (int, float))}
        try:
            rows += _gpu_rows(entry, str(path), int(r.get("prompt_len", BENCH_PROMPT_LEN)), MEASURED_DEVICE)
        except QsimError as exc:
            notes.append(f"{path}: {exc}")
    return rows, notes

