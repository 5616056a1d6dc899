"""The `quamba` numerics of Mamba-2, following Quamba2: fake quantization at its points, fp32 compute between.

Points: the norm output u, in_proj's z, xBC and dt rows (per tensor), the SSM
input x after conv and SiLU (per scale group of the reorder, or per tensor),
B and C (per SSD group), the gated norm's output after the online Hadamard
(out_proj's input, per tensor) and the final norm's output. The scan output
is cast to float16 (Quamba2's SSD kernels compute in fp16). Rounding half to
even and clamping, counted, as qsim.quamba for Mamba-1; a 16-bit-activation
preset casts to float16 instead.
"""

from __future__ import annotations

import math

import numpy as np

from qsim import hadamard
from qsim.artifact import QuantizedModel
from qsim.quamba import QuambaHook, dequant_linear
from qsim.weights import LazyLayers, MambaWeights, keep_layers

PER_TENSOR = {"u": "u", "z": "z", "xBC": "xBC", "dt_raw": "dt_raw", "y_rot": "y_rot"}


def dequant_layer(qm: QuantizedModel, i: int) -> dict[str, np.ndarray]:
    """Layer i's float weights exactly as the artifact stores them."""
    L, p = qm.layer(i), f"layers.{i}"
    s_cw = L["conv"]["w_scale"]
    f32 = lambda name: qm.t(name).astype(np.float32)
    return {
        "norm": f32(f"{p}.norm"),
        "in_proj": dequant_linear(qm, f"{p}.in_proj"),
        "conv_w": (qm.t(f"{p}.conv.w") * s_cw).astype(np.float32),
        "conv_b": (qm.t(f"{p}.conv.b") * (L["scales"]["xBC"] * s_cw)).astype(np.float32),
        "dt_bias": f32(f"{p}.dt_bias"),
        "A_log": (qm.t(f"{p}.quamba.A_log") * L["quamba"]["A_log"]).astype(np.float32),
        "D": (qm.t(f"{p}.quamba.D") * L["quamba"]["D"]).astype(np.float32),
        "gnorm": f32(f"{p}.gnorm"),
        "out_proj": dequant_linear(qm, f"{p}.out_proj"),
    }


def dequant_weights(qm: QuantizedModel) -> MambaWeights:
    cfg, m = qm.config, qm.manifest
    emb = (qm.t("embedding.q") * m["embedding"]["scale"]).astype(np.float32)
    layers = LazyLayers(cfg.n_layer, lambda i: dequant_layer(qm, i), keep_layers(cfg))
    return MambaWeights(emb, qm.t("norm_f").astype(np.float32), dequant_linear(qm, "lm_head"), layers)


class Quamba2Hook(QuambaHook):
    """Quamba2's points on the Mamba-2 float model; records in_proj (z | xBC), scan (ys) and out_proj_in."""

    def _scale(self, layer: int, name: str) -> float | np.ndarray:
        if name == "u_f":
            return self.qm.manifest["final_norm"]["out_scale"]
        if name in PER_TENSOR:
            return self.qm.layer(layer)["scales"][PER_TENSOR[name]]
        p = f"layers.{layer}"
        if name == "x":
            return self.qm.t(f"{p}.x.scale")
        return np.repeat(self.qm.t(f"{p}.{name}.scale"), self.qm.config.d_state)  # B, C: per SSD group

    def __call__(self, layer: int, name: str, x: np.ndarray):
        out = None
        if name in ("u", "z", "xBC", "dt_raw", "x", "B", "C", "u_f"):
            out = self._fq(layer, name, x)
        elif name == "ys":
            out = x.astype(np.float16).astype(np.float32)
            self._keep(layer, "scan", out)
        elif name == "y":
            n = x.shape[-1]
            rot = hadamard.fwht_float(x) / np.float32(math.sqrt(n)) if self.rotate else x
            out = self._fq(layer, "y_rot", rot)
            self._keep(layer, "out_proj_in",
                       hadamard.fwht_float_t(out) / np.float32(math.sqrt(n)) if self.rotate else out)
        if name in ("z", "xBC"):
            self._keep(layer, name, out)
        return out

