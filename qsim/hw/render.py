"""Estimates and comparisons as text tables, markdown tables and JSON-ready dictionaries."""

from __future__ import annotations

from dataclasses import asdict

from qsim.hw.compare import Comparison
from qsim.hw.cost import RULES, Estimate, PhaseCost
from qsim.hw.energy import SCALING_RULE

MB = 1e6


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to width; the first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
                      *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)])


def _phase_rows(p: PhaseCost) -> list[list[str]]:
    cycles, energy = p.cycles, sum(o.energy_pj for o in p.ops)
    rows = [[o.name, f"{o.cycles:,}", f"{o.cycles / p.clock_hz * 1e3:.4g}", f"{o.energy_pj * 1e-9:.4g}",
             f"{o.cycles / cycles:.1%}", f"{o.energy_pj / energy:.1%}", o.bound, f"{o.offchip_bytes / MB:.4g}"]
            for o in p.ops]
    rows.append(["total", f"{cycles:,}", f"{p.seconds * 1e3:.4g}", f"{energy * 1e-9:.4g}", "100%", "100%", "",
                 f"{sum(o.offchip_bytes for o in p.ops) / MB:.4g}"])
    return rows


PHASE_HEADERS = ["op", "cycles", "time ms", "energy mJ", "time share", "energy share", "bound", "off-chip MB"]


def phase_totals(p: PhaseCost) -> str:
    return (f"{p.tokens_per_s:.4g} tokens/s, {p.tokens_per_j:.4g} tokens/J, {p.j_per_token:.4g} J/token "
            f"({p.seconds * 1e3:.4g} ms, {p.energy_j:.4g} J)")


def estimate_header(e: Estimate) -> list[str]:
    t, m = e.target, e.model
    return [
        f"model  {m.name} ({m.family}; {m.source})",
        f"bits   {e.bits.name}    target {t.name}: {t.description} ({t.origin})",
        f"clock  {t.clock_mhz:g} MHz ({t.clock_source})",
        (f"memory weights {m.weight_bytes(e.bits) / MB:.4g} MB ({'resident' if e.weights_resident else 'streamed'}; "
        f"weight buffer {t.weight_buffer_bytes / MB:.4g} MB), state {m.state_bytes(e.bits) / MB:.4g} MB "
        f"({'resident' if e.state_resident else 'streamed'}; state buffer {t.state_buffer_bytes / MB:.4g} MB), "
        f"off-chip {t.offchip_bytes_per_s / 1e9:g} GB/s"),
        f"energy {t.energy.name} x{t.energy.scale:.4g}: {SCALING_RULE}; {t.scaling_source}",
        (f"recipe online Hadamard before out_proj: {'yes' if e.features.online_hadamard else 'no'}; scan output "
        f"multiplier: {'per channel' if e.features.scan_out_per_channel else 'per layer'}"),
        f"decode {e.decode_source}",
    ]


def estimate_text(e: Estimate) -> str:
    parts = estimate_header(e)
    for p, title in ((e.prefill, f"prefill, {e.prompt_len} tokens"), (e.decode, "decode, one token")):
        parts += ["", title, text_table(PHASE_HEADERS, _phase_rows(p)), phase_totals(p)]
    parts += ["", "rules: qsim/hw/cost.py RULES (also in --json output and reports/hw/summary.md)"]
    return "\n".join(parts)


def estimate_markdown(e: Estimate) -> str:
    parts = [f"- {line}" for line in estimate_header(e)]
    for p, title in ((e.prefill, f"prefill, {e.prompt_len} tokens"), (e.decode, "decode, one token")):
        parts += ["", f"**{title}**: {phase_totals(p)}", "", markdown_table(PHASE_HEADERS, _phase_rows(p))]
    return "\n".join(parts)


def _phase_dict(p: PhaseCost) -> dict:
    energy = sum(o.energy_pj for o in p.ops)
    return {
        "tokens": p.tokens, "cycles": p.cycles, "seconds": p.seconds, "energy_j": p.energy_j,
        "tokens_per_s": p.tokens_per_s, "tokens_per_j": p.tokens_per_j, "j_per_token": p.j_per_token,
        "ops": [{
            "name": o.name, "instances": o.instances, "cycles": o.cycles, "compute_cycles": o.compute_cycles,
            "memory_cycles": o.memory_cycles, "bound": o.bound, "seconds": o.cycles / p.clock_hz,
            "offchip_bytes": o.offchip_bytes, "onchip_bytes": o.onchip_bytes, "energy_j": o.energy_pj * 1e-12,
            "compute_j": o.compute_pj * 1e-12, "onchip_j": o.onchip_pj * 1e-12, "offchip_j": o.offchip_pj * 1e-12,
            "time_share": o.cycles / p.cycles, "energy_share": o.energy_pj / energy,
        } for o in p.ops],
    }


def estimate_dict(e: Estimate) -> dict:
    t, m = e.target, e.model
    return {
        "model": m.name, "model_source": m.source, "family": m.family, "bits": e.bits.name,
        "target": t.name, "target_file": t.origin, "clock_mhz": t.clock_mhz, "clock_source": t.clock_source,
        "prompt_len": e.prompt_len,
        "online_hadamard": e.features.online_hadamard, "scan_out_per_channel": e.features.scan_out_per_channel,
        "weight_bytes": m.weight_bytes(e.bits), "state_bytes": m.state_bytes(e.bits),
        "weights_resident": e.weights_resident, "state_resident": e.state_resident,
        "energy_table": {"name": t.energy.name, "source": t.energy.source, "scale": t.energy.scale,
                         "rule": SCALING_RULE, "scaling_source": t.scaling_source,
                         "entries_pj": t.energy.pj, "entry_sources": t.energy.sources},
        "prefill": _phase_dict(e.prefill), "decode": _phase_dict(e.decode),
        "decode_source": e.decode_source, "decode_clock_mhz": e.decode.clock_hz / 1e6,
        "engine": asdict(t.engine) if t.engine else None,
        "rules": list(RULES),
    }


def projection_text(target, shapes, phases: list[PhaseCost]) -> str:
    """qsim.hw.cost.engine_projection as a table, with the engine's configuration."""
    e = target.engine
    rows = [[s.name, f"{s.d_model}/{s.d_inner}/{s.n_layer}", f"{p.cycles:,}", f"{p.clock_hz / 1e6:g}",
             f"{p.tokens_per_s:.4g}", f"{p.seconds * 1e3:.4g}", f"{p.j_per_token * 1e3:.4g}",
             f"{p.energy_j * p.tokens_per_s:.3g}", f"{sum(o.offchip_bytes for o in p.ops) / MB:.4g}"]
            for s, p in zip(shapes, phases)]
    return "\n".join([
        (f"decode engine of {target.name} ({target.origin}): bus {e.bus_bytes} B, GEMV {e.gemv_lanes} lanes, "
         f"scan {e.scan_lanes}, Hadamard {e.hadamard_lanes}, DRAM latency {e.dram_latency} cycles, off-chip "
         f"{e.bytes_per_s / 1e9:g} GB/s; w8a8, one decode step (qsim/hw/cost.py RULES)"),
        text_table(["model", "d_model/d_inner/layers", "cycles/token", "clock MHz", "tokens/s", "ms/token",
                    "mJ/token", "W (dynamic)", "off-chip MB/token"], rows)])


COMPARISON_HEADERS = ["device", "model", "bits", "method", "metric", "reference", "predicted", "error"]


def comparison_rows(rows: list[Comparison]) -> list[list[str]]:
    def num(v):
        return "OOM" if v is None else f"{v:.4g}"
    return [[c.where, c.model, c.bits, c.method, c.metric, num(c.reference), num(c.predicted), c.verdict]
            for c in rows]
