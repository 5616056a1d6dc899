"""Static calibration of a Mamba-2 model at Quamba2's quantization points.

Layer by layer over the calibration batch (as calib.calibrate for Mamba-1):
ranges observed on the float model, in_proj and out_proj (Hadamard fused)
quantized, int4 by GPTQ when asked. Scales: u, z, the xBC rows of in_proj's
output, dt and the out_proj input per tensor; the SSM input x per scale group
of the recipe's reorder (`x_groups`: one per (SSD group, head group, channel
group)) or per tensor; B and C per SSD group. A_log and D are int8 with one
scale each, dt_bias float16 (Quamba2's storage).
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from calib.calibrate import PROCEDURE, quant_linear, sample_windows
from calib.observers import RANGE_GRID_BITS, ObserverHook, snap_range
from qsim import float_model2, hadamard, spec
from qsim.artifact import FORMAT, QuantizedModel
from qsim.bits import BitsPreset
from qsim.calib_settings import CalibSettings
from qsim.errors import QsimError
from qsim.progress import progress
from qsim.qweights import IntLinear, quantize_int8
from qsim.weights import LoadedModel

SMALL_KEYS = ("norm", "conv_w", "conv_b", "dt_bias", "A_log", "D", "gnorm", "x_groups", "chan_perm")


class ChannelObserver(ObserverHook):
    """ObserverHook plus the per-channel max |x| of the SSM input and of B and C (grouped scales)."""

    PER_CHANNEL = ("x", "B", "C", "conv_pre", "ys")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel: dict[tuple[int, str], np.ndarray] = {}

    def __call__(self, layer: int, name: str, x: np.ndarray) -> None:
        super().__call__(layer, name, x)
        if name in self.PER_CHANNEL:
            m = np.abs(x).max(axis=0).astype(np.float64)
            key = (layer, name)
            self.channel[key] = np.maximum(self.channel[key], m) if key in self.channel else m
        elif name == "h":  # running max |state| (H, P, N): per channel of x
            m = x.max(axis=-1).reshape(-1).astype(np.float64)
            key = (layer, "h")
            self.channel[key] = np.maximum(self.channel[key], m) if key in self.channel else m


def grouped_scales(chan_max: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Per-channel scales, equal within a group: each group's snapped max / 127 (one group when None)."""
    if groups is None:
        groups = np.zeros(chan_max.shape[0], np.int64)
    out = np.empty(chan_max.shape[0])
    for g in np.unique(groups):
        v = snap_range(float(chan_max[groups == g].max()))
        out[groups == g] = v / 127 if v > 0 else 1.0
    return out


def observe(lm: LoadedModel, windows: list[np.ndarray], s: CalibSettings, bits: BitsPreset):
    cfg = lm.config
    hook = ChannelObserver(cfg.n_layer, None, s.hadamard, hessians=s.gptq and bits.weight_bits == 4)
    rs = [float_model2.embed(lm.weights, w) for w in windows]
    linears, small = [], []
    feed = getattr(lm.weights.layers, "feed", None)
    for i in progress(range(cfg.n_layer), desc=f"calibrate ({len(windows)} seq)", unit="layer"):
        if feed is not None:
            feed(i, rs)
        lw = lm.weights.layers[i]
        rs = [float_model2.block(cfg, lw, r, i, hook) for r in rs]
        wout = lw["out_proj"]
        if s.hadamard:
            wout = (hadamard.fwht_float(wout) / np.float32(math.sqrt(wout.shape[1]))).astype(np.float32)
        p = f"layers.{i}"
        linears.append({"in_proj": quant_linear(lw["in_proj"], bits, hook, (i, "u"), f"{p}.in_proj"),
                        "out_proj": quant_linear(wout, bits, hook, (i, "y_rot"), f"{p}.out_proj")})
        small.append({k: lw[k] for k in SMALL_KEYS if k in lw})
        hook.drop(i)
    for r in rs:
        float_model2.final_norm(cfg, lm.weights, r, hook)
    tied = cfg.tie_embeddings and bits.weight_bits == 8
    head = None if tied else quant_linear(lm.weights.lm_head, bits, hook, (cfg.n_layer, "u_f"), "lm_head")
    return hook, linears, small, head


def _layer(qm: QuantizedModel, i: int, lw: dict, lin_q: dict, cfg, hook: ChannelObserver) -> dict:
    p, g, n = f"layers.{i}", cfg.ngroups, cfg.d_state
    a = lambda name: hook.absmax(i, name) / 127 or 1.0  # an all-zero tensor: any scale
    groups = lw.get("x_groups")
    qm.tensors[f"{p}.x.scale"] = grouped_scales(hook.channel[(i, "x")], groups)
    bc = {k: grouped_scales(hook.channel[(i, k)], np.repeat(np.arange(g), n)).reshape(g, n)[:, 0] for k in "BC"}
    qm.tensors[f"{p}.B.scale"], qm.tensors[f"{p}.C.scale"] = bc["B"], bc["C"]
    if groups is not None:
        qm.tensors[f"{p}.x_groups"] = np.asarray(groups, np.int32)
        qm.tensors[f"{p}.chan_perm"] = np.asarray(lw["chan_perm"], np.int32)  # informative: the reorder
    for name in ("in_proj", "out_proj"):
        lin, wsc = lin_q[name]
        qm.set_linear(f"{p}.{name}", lin)
        qm.tensors[f"{p}.{name}.scale"] = wsc
    cw, s_cw = quantize_int8(lw["conv_w"])
    qm.tensors[f"{p}.conv.w"] = cw
    qm.tensors[f"{p}.conv.b"] = spec.round_half_up(lw["conv_b"] / (a("xBC") * s_cw)).astype(np.int32)
    out = {"scales": {k: a(k) for k in ("u", "z", "xBC", "dt_raw", "y_rot")},
           "conv": {"w_scale": s_cw}, "quamba": {}}
    for key in ("A_log", "D"):
        q, qs = quantize_int8(lw[key])
        qm.tensors[f"{p}.quamba.{key}"] = q
        out["quamba"][key] = qs
    for key in ("norm", "gnorm", "dt_bias"):
        qm.tensors[f"{p}.{key}"] = lw[key].astype(np.float16)
    return out


def build(lm: LoadedModel, bits: BitsPreset, s: CalibSettings, observed) -> QuantizedModel:
    hook, linears, small, head = observed
    cfg, w = lm.config, lm.weights
    if s.hadamard and not hadamard.supported(cfg.d_inner):
        raise QsimError(f"d_inner {cfg.d_inner}: no integer Hadamard of that size; use --no-hadamard")
    grouped = any("x_groups" in lw for lw in small)
    qm = QuantizedModel({
        "format": FORMAT,
        "spec_version": spec.SPEC_VERSION,
        "model": {"name": lm.name, "source": lm.source, "weights_sha256": lm.sha256, "config": cfg.to_dict(),
                  "family": cfg.family},
        "bits": asdict(bits),
        "calibration": {
            **asdict(s), "procedure": PROCEDURE,
            "observers": "absmax; x per " + ("(SSD group, head group, channel group)" if grouped else "tensor")
            + f", B and C per SSD group; every range snapped up to {RANGE_GRID_BITS} significant bits",
            "weights": "int8 per tensor (half up); int4 per group of "
            f"{bits.group_size} " + ("by GPTQ (percdamp 0.01)" if hook.collects_hessians else "(half up)"),
        },
        "hadamard": s.hadamard,
        "linears": {},
        "layers": [],
    }, {})
    eq, s_emb = quantize_int8(w.embedding)
    qm.tensors["embedding.q"] = eq
    qm.manifest["embedding"] = {"scale": s_emb}
    for i in range(cfg.n_layer):
        qm.manifest["layers"].append(_layer(qm, i, small[i], linears[i], cfg, hook))
    qm.tensors["norm_f"] = w.norm_f.astype(np.float16)
    qm.manifest["final_norm"] = {"out_scale": hook.absmax(cfg.n_layer, "u_f") / 127 or 1.0}
    tied = head is None
    lin, sc = (IntLinear(eq), np.full(cfg.vocab_size, s_emb)) if tied else head
    qm.set_linear("lm_head", lin)
    qm.tensors["lm_head.scale"] = np.asarray(sc, np.float64)
    qm.manifest["lm_head"] = {"tied_to_embedding": tied}
    if bits.act_bits == 8:
        from calib import datapath2

        datapath2.add(qm, lm, hook, small, s.state_bits)
    return qm


def calibrate(lm: LoadedModel, bits: BitsPreset, s: CalibSettings, tokens: np.ndarray, where: str) -> QuantizedModel:
    s.validate("mamba2")
    return build(lm, bits, s, observe(lm, sample_windows(tokens, s.samples, s.seq_len, where), s, bits))
