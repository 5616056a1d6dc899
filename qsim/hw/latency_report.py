"""The report's latency-model section: fitted parameters, leave-one-out table, plot and JSON."""

from __future__ import annotations

from pathlib import Path

from qsim.bits import PRESETS
from qsim.fileio import write_json_atomic
from qsim.hw import plots
from qsim.hw.devices import DEVICES
from qsim.hw.devices import predict as roofline
from qsim.hw.latency import Implementation, predict
from qsim.hw.latency_fit import (
    TARGETS,
    complete,
    fit,
    leave_one_out,
    parameter_rows,
    points,
)
from qsim.hw.render import markdown_table
from qsim.hw.shapes import model_names, model_shape

NOT_MODELLED = (
    ("Kernel differences between two recipes of one format and one op list: Quamba and Quamba2 W8A8 on "
    "Mamba2-8B run the same operations here, so the model predicts one TPOT for both (published 14.12 and "
    "12.61 ms on the A5000)."),
    ("The online Hadamard's own compute: it counts as one kernel plus its bytes, so SmoothQuant-SSM and "
    "Quamba W8A8 (one requantization kernel against one Hadamard kernel) are predicted alike."),
    ("Device-specific GEMM efficiency: eps and kappa are shared by the devices; the Orin Nano's w4a8 prefill "
    "reaches a smaller fraction of its int8 peak than the A5000's, so its TTFT is predicted low and the A5000's "
    "w4a8 TTFT high."),
    ("Mamba-2's chunked SSD prefill does matmuls (about 3 % of Mamba2-8B's prefill MACs); the model counts the "
    "scan as memory traffic only."),
)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def section(out: Path, prompt_len: int, provenance: dict) -> tuple[list[str], list[Path]]:
    """Markdown lines of the section, and the files written (latency_fit.png, latency_fit.json)."""
    pts = points()
    fitted = fit(pts)
    params = complete(fitted)
    results = leave_one_out(pts)
    misses = [r for r in results if not r.within_target]
    md = ["### Latency model", "",
          ("qsim/hw/latency.py: per operation max(compute, memory) with the achieved fraction eta of each device's "
          "bandwidth, the fraction eps of the dense tensor-core peak its GEMMs reach (int8 and fp16 paths), the ALU "
          "work kappa of dequantizing int4 weights in prefill GEMMs, plus tau per kernel (launch and "
          "synchronisation) times the kernels of the pass, including the recipe's online work (the online "
          "Hadamard kernel, per-token scale kernels). Fitted (qsim/hw/latency_fit.py) on every published GPU "
          f"point with a figure ({len(pts)} points: {sum(p.metric == 'TPOT' for p in pts)} TPOT, "
          f"{sum(p.metric == 'TTFT' for p in pts)} TTFT), least squares on relative errors, closed form "
          "(deterministic). Leave-one-out: each point predicted by the model fitted on the others. What each "
          "published implementation runs (online Hadamard, per-token scales, state width) is read from its paper "
          "and code: qsim/hw/published.toml, qsim/hw/SOURCES.md \"Published implementations\"."), "",
          markdown_table(["parameter", "value", "unit", "basis"], parameter_rows(params, fitted, pts)), "",
          "Datasheet inputs (bandwidth, dense tensor-core peaks, ALU rate): qsim/hw/devices.py, sources below.", "",
          markdown_table(["device", "model", "bits", "method", "metric", "roofline ms", "fitted ms",
                          "leave-one-out ms", "published ms", "leave-one-out error", "target"],
                         [[p.device, p.model, p.bits, p.method, p.metric, _fmt(r.roofline_ms), _fmt(r.fitted_ms),
                           _fmt(r.loo_ms), _fmt(p.published_ms), f"{r.loo_error:+.1%}",
                           f"±{TARGETS[p.metric]:.0%} " + ("met" if r.within_target else "**missed**")]
                          for r in results for p in [r.point]]), "",
          f"{len(results) - len(misses)} of {len(results)} points within their target (TPOT ±"
          f"{TARGETS['TPOT']:.0%}, TTFT ±{TARGETS['TTFT']:.0%}, leave-one-out)"
          + ("." if not misses else "; missed: " + "; ".join(
              f"{r.point.device} {r.point.method} {r.point.metric} ({r.loo_error:+.1%})" for r in misses)
             + " (effects not modelled below)."), "",
          "Effects the model does not have (where its remaining errors come from):", "",
          *[f"- {n}" for n in NOT_MODELLED], "",
          ("Plot: latency_fit.png (roofline hollow, leave-one-out prediction filled, target bands); data: "
          "latency_fit.json."), ""]

    impl = Implementation()
    header = ["model", "bits"] + [f"{d} TPOT / TTFT ms" for d in DEVICES]
    table = []
    for name in model_names():
        shape = model_shape(name)
        for b in PRESETS.values():
            cells = []
            for dev in DEVICES.values():
                if not roofline(shape, b, dev, prompt_len).fits:
                    cells.append("out of memory")
                    continue
                p = predict(shape, b, dev, impl, prompt_len, params)
                cells.append(f"{p.tpot_ms:.3g} / {p.ttft_ms:.3g}")
            table.append([name, b.name, *cells])
    md += [(f"Latency model TPOT / TTFT (prompt {prompt_len}) of qsim's datapath on every device (online Hadamard "
           "for quantized presets, static scales, the SSM state in 32-bit words; the H100's tau is assumed, see "
           "the parameters):"), "", markdown_table(header, table), ""]

    rows = [(r.point.device, r.point.metric, r.point.published_ms, r.roofline_ms, r.loo_ms) for r in results]
    png = plots.latency_fit(rows, TARGETS, out / "latency_fit.png")
    data = {**provenance, "fit_subset": "every [[gpu]] entry of qsim/hw/published.toml with a TPOT or TTFT figure",
            "targets": TARGETS,
            "parameters": [dict(zip(("name", "value", "unit", "basis"), r))
                           for r in parameter_rows(params, fitted, pts)],
            "points": [{"device": r.point.device, "model": r.point.model, "bits": r.point.bits,
                        "method": r.point.method, "metric": r.point.metric, "prompt_len": r.point.prompt_len,
                        "roofline_ms": r.roofline_ms, "fitted_ms": r.fitted_ms, "loo_ms": r.loo_ms,
                        "published_ms": r.point.published_ms, "loo_error": r.loo_error,
                        "within_target": r.within_target, "source": r.point.source} for r in results],
            "not_modelled": list(NOT_MODELLED)}
    write_json_atomic(out / "latency_fit.json", data)
    return md, [png, out / "latency_fit.json"]
