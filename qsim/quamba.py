"""The `quamba` numerics: simulated quantization with the semantics of Quamba's kernels.

Integer storage, static per-tensor scales from the artifact, fp32 compute
inside conv and scan. Quantization points follow Quamba's W8A8 Mamba-1: the
norm output, in_proj output (x and z share one scale), the SSM input (percentile
scale), x_proj output (dt_r, B, C share one scale), dt_proj output, the scan
output cast to fp16, the Hadamard-rotated out_proj input, the final norm
output. A_log, D and dt_bias are int8 with one scale each.

Rounding: round half to even (NumPy rint), as Quamba's Triton kernels and
torch.round do (its CUDA kernels' roundf rounds ties away from zero; ties of
x/s are rare in float data). Unlike Quamba's Hadamard kernel, the int8 cast
clamps, and every clamp is counted.
For 16-bit-activation presets the same points cast to float16 instead.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from qsim import hadamard
from qsim.artifact import QuantizedModel
from qsim.bits import BitsPreset
from qsim.weights import LazyLayers, MambaWeights, keep_layers

QUANT_POINTS = ("u", "x_in", "z", "xs", "dtr", "B", "C", "dt_pre", "u_f")


def dequant_linear(qm: QuantizedModel, name: str) -> np.ndarray:
    scale = qm.t(f"{name}.scale")[:, None]
    return np.multiply(qm.linear(name).effective(np.int16), scale, dtype=np.float64).astype(np.float32)


def dequant_layer(qm: QuantizedModel, i: int) -> dict[str, np.ndarray]:
    """Layer i's float weights exactly as the artifact's integers represent them."""
    L, p = qm.layer(i), f"layers.{i}"
    sc, qa = L["scales"], L["quamba"]
    s_cw, s_wdt = L["conv"]["w_scale"], L["dt_proj"]["w_scale"]
    return {
        "norm": (qm.t(f"{p}.norm.g") * L["norm"]["g_scale"]).astype(np.float32),
        "in_proj": dequant_linear(qm, f"{p}.in_proj"),
        "conv_w": (qm.t(f"{p}.conv.w") * s_cw).astype(np.float32),
        "conv_b": (qm.t(f"{p}.conv.b") * (sc["x"] * s_cw)).astype(np.float32),
        "x_proj": dequant_linear(qm, f"{p}.x_proj"),
        "dt_w": (qm.t(f"{p}.dt_proj.q") * s_wdt).astype(np.float32),
        "dt_b": (qm.t(f"{p}.quamba.dt_b") * qa["dt_b"]).astype(np.float32),
        "A_log": (qm.t(f"{p}.quamba.A_log") * qa["A_log"]).astype(np.float32),
        "D": (qm.t(f"{p}.quamba.D") * qa["D"]).astype(np.float32),
        "out_proj": dequant_linear(qm, f"{p}.out_proj"),
        **({"out_smooth": qm.t(f"{p}.out_smooth")} if f"{p}.out_smooth" in qm.tensors else {}),
    }


def dequant_weights(qm: QuantizedModel) -> MambaWeights:
    """Float weights exactly as the artifact's integers represent them, a layer at a time when large."""
    m, cfg = qm.manifest, qm.config
    emb = (qm.t("embedding.q") * m["embedding"]["scale"]).astype(np.float32)
    layers = LazyLayers(cfg.n_layer, lambda i: dequant_layer(qm, i), keep_layers(cfg))
    norm_f = (qm.t("norm_f.g") * m["final_norm"]["g_scale"]).astype(np.float32)
    return MambaWeights(emb, norm_f, dequant_linear(qm, "lm_head"), layers)


def fp16_weights(cfg, w: MambaWeights) -> MambaWeights:
    """The `fp16` preset: every weight rounded to float16 (a layer at a time when large)."""
    h = lambda a: a.astype(np.float16).astype(np.float32)
    emb = h(w.embedding)
    layers = LazyLayers(len(w.layers), lambda i: {k: h(v) for k, v in w.layers[i].items()}, keep_layers(cfg))
    return MambaWeights(emb, h(w.norm_f), emb if w.lm_head is w.embedding else h(w.lm_head), layers)


class QuambaHook:
    """Fake-quantizes at Quamba's points; records what `run` compares and the clamp counts."""

    def __init__(self, qm: QuantizedModel | None, bits: BitsPreset, record: set[str] = frozenset()):
        self.qm = qm
        self.int8 = bits.act_bits == 8
        self.rotate = bool(qm and qm.manifest["hadamard"])
        self.record = record
        self.saturation: dict[str, int] = defaultdict(int)
        self.seen: dict[tuple[int, str], list] = defaultdict(list)

    def _scale(self, layer: int, name: str) -> float:
        if name == "u_f":
            return self.qm.manifest["final_norm"]["out_scale"]
        sc = self.qm.layer(layer)["scales"]
        return sc[{"u": "u", "x_in": "xz", "z": "xz", "xs": "xs", "dtr": "xp", "B": "xp", "C": "xp",
                   "dt_pre": "dt_pre", "y_rot": "yo"}[name]]

    def _fq(self, layer: int, name: str, x: np.ndarray) -> np.ndarray:
        if not self.int8:
            return x.astype(np.float16).astype(np.float32)
        s = self._scale(layer, name)
        q = np.rint(x / s)
        clipped = np.clip(q, -128, 127)
        self.saturation[name] += int(np.count_nonzero(clipped != q))
        return (clipped * s).astype(np.float32)

    def __call__(self, layer: int, name: str, x: np.ndarray):
        out = None
        if name in QUANT_POINTS:
            out = self._fq(layer, name, x)
        elif name == "y":
            y16 = x.astype(np.float16).astype(np.float32)
            self._keep(layer, "scan", y16)
            n = x.shape[-1]
            rot = hadamard.fwht_float(y16) / np.float32(math.sqrt(n)) if self.rotate else y16
            out = self._fq(layer, "y_rot", rot)
            unrot = hadamard.fwht_float_t(out) / np.float32(math.sqrt(n)) if self.rotate else out
            self._keep(layer, "out_proj_in", unrot)
        if name in ("x_in", "z"):
            self._keep(layer, name, out)
        return out

    def _keep(self, layer: int, name: str, x: np.ndarray) -> None:
        if name in self.record:
            self.seen[(layer, name)].append(x)
