"""`qsim stats`: the activation statistics that make Mamba hard to quantize.

Per layer, for the in_proj output, SSM input x, dt, B, C and the scan output:
max/std (how far the largest value sits from the bulk: an int8 absmax scale
spends its range on it) and kurtosis (heavy tails). A plot shows the largest
magnitude per channel of one layer, where outlier channels stand out.

Mamba-2 adds what Quamba2's grouped scales respond to: per head of the SSM
input x its max |x|, mean |x| and the spread of its channels' ranges (largest
over smallest max |x| of the head's channels); B and C per SSD group; dt per
head; and the reorder quamba2 would plan from this sequence (calib.reorder,
statistic mean |x| over the tokens) with x's int8 SQNR on this sequence under
one absmax scale per tensor and per scale group. Its plot shows x's range per
channel coloured by head, then the same channels after the reorder with the
channel groups marked.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from qsim import float_model2
from qsim.errors import QsimError
from qsim.fileio import write_json_atomic
from qsim.text import read_text
from qsim.tokenizer import for_model
from qsim.weights import resolve

TENSORS = {"in_proj": ("x_in", "z"), "ssm_x": ("xs",), "dt": ("dt",), "B": ("B",), "C": ("C",), "scan_out": ("y",)}
# Mamba-2: in_proj's z and xBC rows, the SSM input after conv and SiLU, dt per head, the scan output (D x included)
TENSORS2 = {"in_proj": ("z", "xBC"), "ssm_x": ("x",), "dt": ("dt",), "B": ("B",), "C": ("C",), "scan_out": ("ys",)}


def tensors_of(cfg) -> dict[str, tuple[str, ...]]:
    return TENSORS2 if cfg.family == "mamba2" else TENSORS


def describe(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64).ravel()
    std = float(x.std())
    c = x - x.mean()
    kurt = float(np.mean(c**4) / std**4) if std > 0 else float("nan")
    return {"absmax": float(np.abs(x).max()), "std": std,
            "max_over_std": float(np.abs(x).max() / std) if std > 0 else float("nan"), "kurtosis": kurt}


def collect(lm, tokens: np.ndarray) -> dict:
    tensors = tensors_of(lm.config)
    seen = defaultdict(list)

    def hook(layer, name, x):
        if any(name in names for names in tensors.values()):
            seen[(layer, name)].append(np.array(x))

    float_model2.dispatch(lm.config).forward(lm.config, lm.weights, tokens, hook)
    out = {}
    for i in range(lm.config.n_layer):
        for key, names in tensors.items():
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
    _save(fig, path)


def x_per_head(x: np.ndarray, nheads: int) -> list[dict]:
    """Per head of the SSM input x (L, d_inner): max |x|, mean |x| and its channels' ranges (max |x| per
    channel): smallest, median, largest over smallest (spread; inf when a channel is all zero)."""
    a = np.abs(np.asarray(x, np.float64))
    rng = a.max(axis=0).reshape(nheads, -1)
    mean = a.mean(axis=0).reshape(nheads, -1)
    out = []
    for h in range(nheads):
        lo, hi = float(rng[h].min()), float(rng[h].max())
        out.append({"absmax": hi, "mean_abs": float(mean[h].mean()), "channel_range_min": lo,
                    "channel_range_median": float(np.median(rng[h])),
                    "channel_range_spread": hi / lo if lo > 0 else float("inf")})
    return out


def dt_per_head(dt: np.ndarray) -> list[dict]:
    dt = np.asarray(dt, np.float64)
    return [{"min": float(c.min()), "mean": float(c.mean()), "max": float(c.max())} for c in dt.T]


def per_group(v: np.ndarray, ngroups: int) -> list[dict]:
    """describe() of each SSD group's columns of B or C (L, ngroups * d_state)."""
    return [describe(part) for part in np.split(np.asarray(v), ngroups, axis=1)]


def _fake_quant_sqnr(x: np.ndarray, scale: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    q = np.clip(np.rint(x / scale), -128, 127) * scale
    err = float(np.sum((x - q) ** 2))
    return round(10 * math.log10(float(np.sum(x**2)) / err), 3) if err > 0 else float("inf")


def reorder_effect(x: np.ndarray, cfg) -> dict:
    """The reorder quamba2 would plan from this sequence's x (mean |x| over the tokens) and what it buys:
    x quantized to int8 with calibrate2's absmax scales, one per tensor or one per scale group (SQNR, dB)."""
    from calib import reorder
    from calib.calibrate2 import grouped_scales

    a = np.abs(np.asarray(x, np.float64))
    r = reorder.plan(a.mean(axis=0), cfg.nheads, cfg.ngroups)
    groups = np.empty(cfg.d_inner, np.int64)
    groups[r.chan_perm] = r.groups  # the scale group of every channel, in the model's order
    chan_max = a.max(axis=0)
    tensor, grouped = grouped_scales(chan_max, None), grouped_scales(chan_max, groups)
    return {"head_perm": r.head_perm.tolist(), "chan_perm": r.chan_perm.tolist(), "groups": r.groups.tolist(),
            "n_groups": len(np.unique(r.groups)),
            "x_sqnr_db": {"per_tensor": _fake_quant_sqnr(x, tensor), "grouped": _fake_quant_sqnr(x, grouped)},
            "mean_scale_ratio": float(np.mean(tensor / grouped))}


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def plot_x_channels2(x: np.ndarray, cfg, effect: dict, path: Path, title: str) -> None:
    """Mamba-2: max |x| per channel of the SSM input, one colour per head (Quamba2's per-channel range
    figure), then the same bars after quamba2's reorder with the channel runs of a scale group shaded
    alternately and each group's range (what its one scale covers, over every head of its head group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.abs(np.asarray(x, np.float64)).max(axis=0)
    head = np.arange(cfg.d_inner) // cfg.headdim
    cmap = plt.get_cmap("tab20")
    perm, groups = np.asarray(effect["chan_perm"]), np.asarray(effect["groups"])
    fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharey=True)
    top, bottom = axes
    top.bar(np.arange(cfg.d_inner), rng, width=1.0, color=cmap(head % 20))
    top.axhline(rng.max(), color="k", lw=0.8, ls="--", label="per-tensor range")
    top.set_title("model order: colour = head (tab20, cycling)", fontsize=9)
    bottom.bar(np.arange(cfg.d_inner), rng[perm], width=1.0, color=cmap(head[perm] % 20))
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], cfg.d_inner]
    group_max = {g: rng[perm[groups == g]].max() for g in np.unique(groups)}  # a group spans its head group
    for k, (a, b) in enumerate(zip(starts, ends)):
        if k % 2:
            bottom.axvspan(a - 0.5, b - 0.5, color="0.9", zorder=0)
        bottom.hlines(group_max[groups[a]], a - 0.5, b - 0.5, color="k", lw=1.0,
                      label="range of the channel's scale group" if k == 0 else None)
    sq = effect["x_sqnr_db"]
    bottom.set_title(f"after quamba2's reorder: {effect['n_groups']} channel groups (shaded alternately); int8 x "
                     f"SQNR per tensor {sq['per_tensor']:.1f} dB, per group {sq['grouped']:.1f} dB", fontsize=9)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylabel("max |x| (log)")
        ax.set_xlim(-0.5, cfg.d_inner - 0.5)
        ax.legend(loc="upper right", fontsize=8)
    bottom.set_xlabel("channel of x (SSM input)")
    fig.suptitle(title)
    _save(fig, path)


def _mamba2_details(lm, acts: dict) -> dict:
    cfg = lm.config
    n = range(cfg.n_layer)
    return {"x_per_head": [x_per_head(acts[(i, "ssm_x")], cfg.nheads) for i in n],
            "dt_per_head": [dt_per_head(acts[(i, "dt")]) for i in n],
            "B_per_group": [per_group(acts[(i, "B")], cfg.ngroups) for i in n],
            "C_per_group": [per_group(acts[(i, "C")], cfg.ngroups) for i in n],
            "reorder": [reorder_effect(acts[(i, "ssm_x")], cfg) for i in n]}


def _print_mamba2(details: dict, cfg, layer: int) -> None:
    print("quamba2 reorder per layer (planned from this sequence): int8 SQNR of x, one scale per tensor -> "
          "per scale group")
    for i, e in enumerate(details["reorder"]):
        sq = e["x_sqnr_db"]
        worst = max(h["channel_range_spread"] for h in details["x_per_head"][i])
        print(f"{i:>5} {sq['per_tensor']:>7.1f} dB -> {sq['grouped']:>5.1f} dB  ({e['n_groups']} groups; "
              f"widest channel-range spread in a head {worst:.1f})")
    print(f"layer {layer}, SSM input x per head: max |x|, mean |x|, channel ranges (max |x| per channel): "
          "min, median, spread (max/min); dt per head: min, mean, max")
    print(" head    max|x|   mean|x| range min  median    spread    dt min   dt mean    dt max")
    for h, (xh, dh) in enumerate(zip(details["x_per_head"][layer], details["dt_per_head"][layer])):
        print(f"{h:>5} {xh['absmax']:>9.4g} {xh['mean_abs']:>9.4g} {xh['channel_range_min']:>9.4g} "
              f"{xh['channel_range_median']:>7.4g} {xh['channel_range_spread']:>9.4g} "
              f"{dh['min']:>9.4g} {dh['mean']:>9.4g} {dh['max']:>9.4g}")
    print(f"layer {layer}, B and C per SSD group: absmax, max/std, kurtosis")
    for g in range(cfg.ngroups):
        b, c = details["B_per_group"][layer][g], details["C_per_group"][layer][g]
        print(f"group {g}: B {b['absmax']:.4g} {b['max_over_std']:.1f} {b['kurtosis']:.1f}   "
              f"C {c['absmax']:.4g} {c['max_over_std']:.1f} {c['kurtosis']:.1f}")


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
    tensors = tensors_of(lm.config)
    mamba2 = lm.config.family == "mamba2"
    table = {key: [describe(acts[(i, key)]) for i in range(lm.config.n_layer)] for key in tensors}
    if lm.synthetic:
        print("!! SYNTHETIC WEIGHTS: these statistics describe random weights, not a trained model")
    print(f"model {lm.name} ({lm.source}), {seq_len} tokens of {tpath.name}: max/std and kurtosis per layer")
    print("layer " + " ".join(f"{k:>17}" for k in tensors))
    for i in range(lm.config.n_layer):
        cells = [f"{table[k][i]['max_over_std']:>7.1f} {table[k][i]['kurtosis']:>9.1f}" for k in tensors]
        print(f"{i:>5} " + " ".join(cells))
    report = {"model": lm.name, "weights": "synthetic" if lm.synthetic else "checkpoint",
              "tokens": seq_len, "text": str(tpath), "per_layer": table,
              "date": datetime.now(UTC).isoformat(timespec="seconds")}
    if mamba2:
        details = _mamba2_details(lm, acts)
        _print_mamba2(details, lm.config, layer)
        report = {**report, "family": "mamba2", **details}
    if plot_path and mamba2:
        plot_x_channels2(acts[(layer, "ssm_x")], lm.config, report["reorder"][layer], Path(plot_path),
                         f"{lm.name} layer {layer}: range of the SSM input x per channel")
    elif plot_path:
        plot_channels(acts, layer, Path(plot_path), f"{lm.name} layer {layer}: largest magnitude per channel")
        report["plot"] = plot_path
        print(f"wrote {plot_path}")
    if json_path:
        write_json_atomic(Path(json_path), report)
    return report
