"""`qsim report`: regenerate reports/hw/ from the shipped presets and the latest measurements.

Writes summary.md (every figure with its source and every skipped part with
its reason), estimates.json, and PNG plots. Optional inputs that are absent
are named in the summary; the plots that need them are removed, not left stale.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from qsim.bits import PRESETS, preset
from qsim.config import Mamba2Config, MambaConfig
from qsim.errors import QsimError
from qsim.fileio import write_json_atomic, write_text_atomic
from qsim.hw import latency_report, plots, units
from qsim.hw.compare import measured_comparisons, published_comparisons
from qsim.hw.cost import RULES, estimate
from qsim.hw.devices import DEVICES, predict
from qsim.hw.measured import records, run_reports, with_synth_clock
from qsim.hw.render import (
    COMPARISON_HEADERS,
    comparison_rows,
    estimate_dict,
    estimate_markdown,
    markdown_table,
)
from qsim.hw.rtl_check import check
from qsim.hw.shapes import ModelShape, model_names, model_shape, shape_for
from qsim.hw.target import load_target, preset_names


def _accuracy(data: dict) -> tuple[float, str] | None:
    """The perplexity a `qsim run` report gives for its own numerics: fixed with 8-bit activations."""
    ppl = data.get("perplexity")
    if isinstance(ppl, (int, float)):
        return float(ppl), "perplexity"
    if not isinstance(ppl, dict):
        return None
    order = ("fixed", "quamba", "float") if preset(data["bits"]).integer_activations else ("quamba", "float")
    for numerics in order:
        if isinstance(ppl.get(numerics), (int, float)):
            return float(ppl[numerics]), f"perplexity ({numerics})"
    return None


def _run_shape(path: Path, data: dict) -> ModelShape:
    """The shape of the model a run report names, or of the configuration it carries."""
    try:
        return model_shape(str(data.get("model")))
    except QsimError:
        if not isinstance(data.get("config"), dict):
            raise
        cfg = data["config"]
        cls = Mamba2Config if "headdim" in cfg else MambaConfig  # a Mamba-2 run report's config has heads
        return shape_for(str(data["model"]), cls.from_dict(cfg), f"{path} config")


def _pareto(reports: Path, targets, prompt_len: int, out: Path, md: list[str]) -> Path | None:
    points, notes, metric = [], [], "perplexity"
    for path, data in run_reports(reports):
        try:
            shape, bits = _run_shape(path, data), preset(str(data.get("bits")))
        except QsimError as exc:
            notes.append(f"{path}: skipped ({exc})")
            continue
        acc = _accuracy(data)
        if acc is None:
            notes.append(f"{path}: skipped (no perplexity figure)")
            continue
        value, metric = acc
        synthetic = not data.get("accuracy_meaningful", data.get("weights") != "synthetic")
        label = bits.name + (" (synthetic weights)" if synthetic else "")
        for t in targets:
            j = estimate(shape, bits, t, prompt_len).decode.j_per_token
            points.append((f"{shape.name} on {t.name}", label, j, value))
        md.append(f"- {path}: {shape.name} {bits.name}, {metric} {value:.4g}"
                  + (" — synthetic weights, not a meaningful accuracy" if synthetic else ""))
    md += [f"- {n}" for n in notes]
    if not points:
        md.append(f"- plot skipped: no usable accuracy in {reports / 'run'}/*.json (run `python -m qsim run --json` "
                  "to produce them)")
        return None
    return plots.pareto(points, metric, out / "pareto.png")


def _rtl(reports: Path, out: Path, md: list[str]) -> Path | None:
    path = reports / "rtl" / "cycles.json"
    recs = records(path)
    if recs is None:
        md.append(f"- {path} absent: the RTL cocotb runs have not recorded cycles yet; plot skipped")
        return None
    checks = check(recs, path)
    if not checks:
        md.append(f"- {path} holds no records; plot skipped")
        return None
    bad = [c for c in checks if not c.agrees]
    md.append(f"- {len(checks)} record(s) from {path}; {len(checks) - len(bad)} agree exactly, {len(bad)} differ")
    md += ["", markdown_table(["unit", "parameters", "RTL cycles", "model cycles", "agrees", "other"],
                              [[c.unit, ", ".join(f"{k}={v}" for k, v in c.params.items()), c.measured, c.model,
                                "yes" if c.agrees else "**NO**", c.extra] for c in checks])]
    return plots.rtl_cycles([(c.unit, c.measured, c.model) for c in checks], out / "rtl_cycles.png")


def _gpu(reports: Path, prompt_len: int, out: Path, md: list[str]) -> Path:
    published = published_comparisons()
    md += [("Published figures: qsim/hw/published.toml (sources there). Roofline predictions are lower bounds: "
           "kernels reach a fraction of peak bandwidth (the latency model below adds what separates them from a "
           "device)."), "",
           markdown_table(COMPARISON_HEADERS, comparison_rows(published))]
    measured = measured_comparisons(reports)
    if measured is None:
        md += ["", (f"Measured H100 latency: {reports / 'gpu' / 'bench.json'} absent (the GPU benchmark has not "
               "run yet); no measured comparison.")]
        rows = published
    else:
        found, notes = measured
        md += ["", f"Measured H100 latency ({reports / 'gpu' / 'bench.json'}):", "",
               markdown_table(COMPARISON_HEADERS, comparison_rows(found)), *[f"- {n}" for n in notes]]
        rows = published + found
    header = ["model", "bits"] + [f"{d} TPOT / TTFT ms" for d in DEVICES]
    table = []
    for name in model_names():
        shape = model_shape(name)
        for b in PRESETS.values():
            cells = []
            for dev in DEVICES.values():
                p = predict(shape, b, dev, prompt_len)
                cells.append(f"{p.tpot_ms:.3g} / {p.ttft_ms:.3g}" if p.fits else "out of memory")
            table.append([name, b.name, *cells])
    md += ["", f"Predicted TPOT / TTFT (prompt {prompt_len}) on every device; bandwidth used: "
           + "; ".join(f"{d.name} {d.bandwidth_note}" for d in DEVICES.values()), "",
           markdown_table(header, table), "", "Device sources:",
           *[f"- {d.name}: {d.sources}" for d in DEVICES.values()]]
    return plots.latency(rows, out / "latency.png")


def provenance(argv: list[str]) -> dict:
    """The command, UTC date and machine a report was made with."""
    return {"command": " ".join(["python -m qsim", *argv]),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
                       f"Python {sys.version.split()[0]}"}


def build(reports: Path, out: Path, model: str, bits_name: str, prompt_len: int,
          made: dict | None = None) -> list[Path]:
    """Regenerate `out` (normally reports/hw); returns the files written. `made`: provenance()."""
    if prompt_len < 1:
        raise QsimError(f"--prompt-len must be at least 1, got {prompt_len}")
    shape, bits = model_shape(model), preset(bits_name)
    targets = [with_synth_clock(load_target(n), reports) for n in preset_names()]
    ests = [estimate(shape, bits, t, prompt_len) for t in targets]
    written = [plots.breakdown(ests, "time", out / "breakdown_time.png"),
               plots.breakdown(ests, "energy", out / "breakdown_energy.png")]

    made = made or provenance(["report"])
    md = ["# Accelerator and GPU cost model", "",
          f"Regenerated by `{made['command']}` on {made['date']} ({made['machine']}).", "",
          ("Cycle formulas: qsim/hw/units.py (held to RTL); "
          "rules: qsim/hw/cost.py; targets: qsim/hw/targets/*.toml; energy tables: qsim/hw/energy_tables/."), "",
          f"## {shape.name} at every preset (prompt {prompt_len})", ""]
    overview = []
    for b in PRESETS.values():
        for t in targets:
            e = estimate(shape, b, t, prompt_len)
            overview.append([b.name, t.name, f"{t.clock_mhz:g}", f"{e.prefill.tokens_per_s:.4g}",
                             f"{e.prefill.seconds * 1e3:.4g}", f"{e.decode.tokens_per_s:.4g}",
                             f"{e.decode.j_per_token:.4g}", f"{e.decode.tokens_per_j:.4g}"])
    md += [markdown_table(["bits", "target", "clock MHz", "prefill tokens/s", "TTFT ms", "decode tokens/s",
                           "decode J/token", "decode tokens/J"], overview), ""]
    md += [f"## Every model at {bits.name}, decode", ""]
    md += [markdown_table(["model"] + [f"{t.name} tokens/s, J/token" for t in targets],
                          [[n] + [f"{e.decode.tokens_per_s:.3g}, {e.decode.j_per_token:.3g}"
                                  for e in (estimate(model_shape(n), bits, t, 1) for t in targets)]
                           for n in model_names()]), ""]
    md += [f"## Per operation: {shape.name} {bits.name}", "",
           "Plots: breakdown_time.png, breakdown_energy.png.", ""]
    for e in ests:
        md += [f"### {e.target.name}", "", estimate_markdown(e), ""]

    md += ["## GPU latency: predicted against published and measured", ""]
    written.append(_gpu(reports, prompt_len, out, md))
    lines, files = latency_report.section(out, prompt_len, made)
    md += ["", *lines]
    written += files
    md += ["", "## Accuracy against energy per token", ""]
    pareto = _pareto(reports, targets, prompt_len, out, md)
    md += ["", "## RTL cycles against model cycles", "",
           (f"Formulas (qsim/hw/units.py): scan = tokens * max(ceil(d_inner*d_state/lanes), "
           f"{units.SCAN_RECURRENCE_LATENCY}) + {units.SCAN_PIPELINE_LATENCY}; Hadamard = vectors * passes * "
           f"(ceil(n/lanes) + {units.HADAMARD_PASS_LATENCY}), passes = log2(n/m) + (m - 1), n = m * 2**k."), ""]
    rtl = _rtl(reports, out, md)
    for name, path in (("pareto.png", pareto), ("rtl_cycles.png", rtl)):
        if path is None:
            (out / name).unlink(missing_ok=True)
        else:
            written.append(path)
    md += ["", "## Rules of the model", "", *[f"- {r}" for r in RULES], ""]
    md += ["## Clocks", "", *[f"- {t.name}: {t.clock_mhz:g} MHz — {t.clock_source}" for t in targets], ""]

    write_json_atomic(out / "estimates.json", [estimate_dict(e) for e in ests])
    write_text_atomic(out / "summary.md", "\n".join(md) + "\n")
    return written + [out / "estimates.json", out / "summary.md"]
