"""PNG figures of the report (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from qsim.hw.compare import Comparison
from qsim.hw.cost import Estimate

plt.switch_backend("Agg")


def _save(fig, path: Path) -> Path:
    """Write the PNG to a temporary sibling, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def breakdown(estimates: list[Estimate], quantity: str, path: Path) -> Path:
    """Stacked shares per operation, one bar per target, prefill and decode side by side.

    quantity: "time" (cycles) or "energy".
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.9 * len(estimates) + 2), sharey=True)
    # a decode engine's steps (qsim.hw.engine.LABELS) differ from the MAC-array model's operations: one color each
    names = list(dict.fromkeys(o.name for e in estimates for p in (e.prefill, e.decode) for o in p.ops))
    colors = plt.get_cmap("tab20")
    for ax, phase in zip(axes, ("prefill", "decode")):
        labelled = set()
        for row, est in enumerate(estimates):
            ops = getattr(est, phase).ops
            values = [o.cycles if quantity == "time" else o.energy_pj for o in ops]
            total, left = sum(values), 0.0
            for o, v in zip(ops, values):
                share = v / total
                ax.barh(row, share, left=left, color=colors(names.index(o.name) % 20),
                        label=None if o.name in labelled else o.name)
                labelled.add(o.name)
                left += share
        ax.set_yticks(range(len(estimates)), [e.target.name for e in estimates])
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"share of {quantity}")
        ax.set_title(f"{phase} ({estimates[0].prompt_len} tokens)" if phase == "prefill" else "decode (one token)")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    e = estimates[0]
    fig.suptitle(f"{quantity} per operation: {e.model.name} {e.bits.name}")
    return _save(fig, path)


def latency(rows: list[Comparison], path: Path) -> Path:
    """Predicted against published or measured latency, log-log, with the y = x line."""
    rows = [c for c in rows if c.error is not None and c.metric.endswith("ms")]
    fig, ax = plt.subplots(figsize=(7, 6))
    devices = sorted({c.where for c in rows})
    markers = {"TPOT ms": "o", "TTFT ms": "s"}
    for i, dev in enumerate(devices):
        for metric, marker in markers.items():
            pts = [c for c in rows if c.where == dev and c.metric == metric]
            if pts:
                ax.scatter([c.reference for c in pts], [c.predicted for c in pts], marker=marker,
                           color=plt.get_cmap("tab10")(i), label=f"{dev} {metric.split()[0]}")
    values = [v for c in rows for v in (c.reference, c.predicted)]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = reference")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi),
           xlabel="published or measured latency, ms", ylabel="roofline prediction, ms",
           title="GPU latency: prediction against reference")
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto(points: list[tuple[str, str, float, float]], metric: str, path: Path) -> Path:
    """Accuracy against energy per decoded token; points are (series, label, J/token, metric value)."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, series in enumerate(sorted({p[0] for p in points})):
        pts = sorted((p for p in points if p[0] == series), key=lambda p: p[2])
        color = plt.get_cmap("tab10")(i)
        ax.scatter([p[2] for p in pts], [p[3] for p in pts], color=color, label=series)
        for _, label, x, y in pts:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front, best = [], float("inf")
        for p in pts:  # lower energy and lower perplexity are both better
            if p[3] < best:
                front.append(p)
                best = p[3]
        ax.plot([p[2] for p in front], [p[3] for p in front], color=color, lw=1)
    ax.set(xscale="log", xlabel="energy per decoded token, J", ylabel=metric,
           title="accuracy against energy per token (Pareto front per series)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def rtl_cycles(points: list[tuple[str, int, int]], path: Path) -> Path:
    """RTL-measured cycles against the model's; points are (unit, measured, model)."""
    fig, ax = plt.subplots(figsize=(6, 6))
    for i, unit in enumerate(sorted({p[0] for p in points})):
        pts = [p for p in points if p[0] == unit]
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], color=plt.get_cmap("tab10")(i), label=unit)
    values = [v for p in points for v in p[1:]]
    lo, hi = max(min(values) / 1.5, 1), max(values) * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="model = RTL")
    ax.set(xscale="log", yscale="log", xlabel="cycles measured in cocotb", ylabel="cycles of qsim/hw/units.py",
           title="RTL cycles against model cycles")
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency_fit(rows: list[tuple[str, str, float, float, float]], targets: dict[str, float], path: Path) -> Path:
    """Roofline (hollow) and leave-one-out prediction (filled) against the published figure, log-log,
    with y = x and each metric's target band; rows are (device, metric, published, roofline, loo)."""
    fig, ax = plt.subplots(figsize=(7, 6))
    markers = {"TPOT": "o", "TTFT": "s"}
    for i, dev in enumerate(sorted({r[0] for r in rows})):
        color = plt.get_cmap("tab10")(i)
        for metric, marker in markers.items():
            pts = [r for r in rows if r[0] == dev and r[1] == metric]
            if pts:
                ax.scatter([r[2] for r in pts], [r[3] for r in pts], marker=marker, facecolors="none",
                           edgecolors=color, label=f"{dev} {metric} roofline")
                ax.scatter([r[2] for r in pts], [r[4] for r in pts], marker=marker, color=color,
                           label=f"{dev} {metric} latency model (leave-one-out)")
    values = [v for r in rows for v in r[2:]]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="prediction = published")
    for (metric, band), style in zip(targets.items(), ("--", ":")):
        for f in (1 - band, 1 + band):
            ax.plot([lo, hi], [lo * f, hi * f], "k", ls=style, lw=0.7,
                    label=f"{metric} target ±{band:.0%}" if f > 1 else None)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="published latency, ms",
           ylabel="predicted latency, ms", title="GPU latency model against published figures")
    ax.legend(fontsize=7)
    return _save(fig, path)
