"""`qsim stats`: the activation statistics that make Mamba hard to quantize.

Per layer, for the in_proj output, SSM input x, dt, B, C and the scan output:
max/std (how far the largest value sits from the bulk: an int8 absmax scale
spends its range on it) and kurtosis (heavy tails). A plot shows the largest
magnitude per channel of one layer, where outlier channels stand out.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from qsim import float_model
from qsim.errors import QsimError
from qsim.fileio import write_json_atomic
from qsim.text import read_text
from qsim.tokenizer import for_model
from qsim.weights import resolve

TENSORS = {"in_proj": ("x_in", "z"), "ssm_x": ("xs",), "dt": ("dt",), "B": ("B",), "C": ("C",), "scan_out": ("y",)}


def describe(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64).ravel()
    std = float(x.std())
    c = x - x.mean()
    kurt = float(np.mean(c**4) / std**4) if std > 0 else float("nan")
    return {"absmax": float(np.abs(x).max()), "std": std,
            "max_over_std": float(np.abs(x).max() / std) if std > 0 else float("nan"), "kurtosis": kurt}


def collect(lm, tokens: np.ndarray) -> dict:
    seen = defaultdict(list)

    def hook(layer, name, x):
        if any(name in names for names in TENSORS.values()):
            seen[(layer, name)].append(np.array(x))

    float_model.forward(lm.config, lm.weights, tokens, hook)
    out = {}
    for i in range(lm.config.n_layer):
        for key, names in TENSORS.items():
            out[(i, key)] = np.concatenate([np.concatenate(seen[(i, n)]) for n in names], axis=-1)
    return out


def plot_channels(acts: dict, layer: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8))
    for ax, key in zip(axes, ("in_proj", "ssm_x", "scan_out")):
        a = np.abs(acts[(layer, key)]).max(axis=0)
        ax.bar(np.arange(a.size), a, width=1.0)
        ax.axhline(np.median(a), color="k", lw=0.8, ls="--", label="median channel")
        ax.set_ylabel(f"max |{key}|")
        ax.legend(loc="upper right")
    axes[-1].set_xlabel("channel")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def stats(model: str, require_weights: bool, seq_len: int, eval_text: str, layer: int,
          json_path: str | None, plot_path: str | None) -> dict:
    lm = resolve(model, require_weights)
    if not 0 <= layer < lm.config.n_layer:
        raise QsimError(f"--layer {layer}: model has layers 0..{lm.config.n_layer - 1}")
    text, tpath = read_text(eval_text)
    ids = for_model(lm.folder, lm.config.vocab_size).encode(text)
    if len(ids) < seq_len:
        raise QsimError(f"{tpath}: {len(ids)} tokens, shorter than one sequence of --seq-len {seq_len}")
    acts = collect(lm, ids[:seq_len])
    table = {key: [describe(acts[(i, key)]) for i in range(lm.config.n_layer)] for key in TENSORS}
    if lm.synthetic:
        print("!! SYNTHETIC WEIGHTS: these statistics describe random weights, not a trained model")
    print(f"model {lm.name} ({lm.source}), {seq_len} tokens of {tpath.name}: max/std and kurtosis per layer")
    print("layer " + " ".join(f"{k:>17}" for k in TENSORS))
    for i in range(lm.config.n_layer):
        cells = [f"{table[k][i]['max_over_std']:>7.1f} {table[k][i]['kurtosis']:>9.1f}" for k in TENSORS]
        print(f"{i:>5} " + " ".join(cells))
    report = {"model": lm.name, "weights": "synthetic" if lm.synthetic else "checkpoint",
              "tokens": seq_len, "text": str(tpath), "per_layer": table,
              "date": datetime.now(UTC).isoformat(timespec="seconds")}
    if plot_path:
        plot_channels(acts, layer, Path(plot_path), f"{lm.name} layer {layer}: largest magnitude per channel")
        report["plot"] = plot_path
        print(f"wrote {plot_path}")
    if json_path:
        write_json_atomic(Path(json_path), report)
    return report
