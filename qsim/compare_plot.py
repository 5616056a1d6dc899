"""The comparison's figure: accuracy loss against decode energy per token, Pareto front marked."""

from __future__ import annotations

import io
from pathlib import Path

from qsim.compare import accuracy_loss
from qsim.fileio import write_bytes_atomic


def plot(c: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = c["rows"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = dict(zip(sorted({r["bits"] for r in rows}), "osD^v"))
    for r in rows:
        x, y = r["hardware"]["decode_nj_per_token"], accuracy_loss(r)
        ax.scatter([x], [y], marker=markers[r["bits"]], s=60, zorder=3,
                   edgecolors="black" if r["pareto"] else "none", linewidths=1.5)
        label = r["method"] + (f" a={r['alpha']:g}" if r["alpha"] is not None else "") + f" {r['bits']}"
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = sorted((r["hardware"]["decode_nj_per_token"], accuracy_loss(r)) for r in rows if r["pareto"])
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="gray", ls="--", lw=1,
            label="Pareto front (black edge)")
    ax.set_yscale("log")
    ax.set_xlabel(f"decode energy per token, nJ ({c['target']}, cost model)")
    ax.set_ylabel("mean KL vs float (fixed datapath; quamba where fixed is n/a)")
    ax.set_title(f"{c['model']}: recipes, accuracy vs hardware cost")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(Path(path), buf.getvalue())
