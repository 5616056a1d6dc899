"""Peak-memory estimate of `run` and `calibrate`, checked before any work starts.

The pipeline streams layers (qsim.weights.LazyLayers, layer-major calibration
and evaluation), so its peak is a sum of a few large, predictable terms:
whole-model tables (embedding, lm_head, the artifact's integer weights) plus
one layer's weights and one batch's activations. Each term is named, so a
refusal can say what dominates and which option lowers it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from qsim.bits import BitsPreset
from qsim.calib_settings import CalibSettings
from qsim.config import MambaConfig
from qsim.errors import QsimError

BASE_BYTES = 350 << 20  # interpreter, NumPy, torch, Numba, transformers once imported (measured: 0.30 GB RSS)
GB = 1 << 30
SCAN_TEMPS = 2  # the float scan materializes exp(dt A) and dt B x for all tokens: (L, d_inner, d_state) each
MIXER_TEMPS = 24  # float32 (L, d_inner) intermediates alive in one float mixer call, with hook copies
KL_TEMPS = 6  # float64 (L, vocab) arrays alive while one window's logits are scored


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict[str, int]  # bytes per named term

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def largest(self) -> str:
        return max(self.parts, key=self.parts.get)

    def as_dict(self) -> dict:
        return {"total_bytes": self.total, "parts_bytes": dict(self.parts)}


def _layer_weights(cfg: MambaConfig) -> int:
    from qsim.weights import expected_shapes

    return sum(math.prod(s) for s in expected_shapes(cfg).values())


def _linear_weights(cfg: MambaConfig) -> int:
    di, d = cfg.d_inner, cfg.d_model
    if cfg.family == "mamba2":
        return cfg.d_in_proj * d + d * di
    return 2 * di * d + (cfg.dt_rank + 2 * cfg.d_state) * di + d * di + di * cfg.dt_rank


def estimate(cfg: MambaConfig, bits: BitsPreset, calib: CalibSettings | None, eval_seqs: int = 0,
             seq_len: int = 0, calibrating: bool = True) -> MemoryEstimate:
    """Peak bytes of calibrating (when `calibrating`) and then evaluating eval_seqs windows of seq_len tokens."""
    from qsim.weights import keep_layers

    d, di, n, v = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.vocab_size
    layer = _layer_weights(cfg)
    layers_held = cfg.n_layer if keep_layers(cfg) else 2  # streamed: the layer in use and the one being read
    quantized = bits.weight_bits < 16
    wbyte = bits.weight_bits / 8
    parts = {
        "runtime": BASE_BYTES,
        "float embedding and lm_head": 4 * v * d * (1 if cfg.tie_embeddings else 2),
        "float layers held": 4 * layer * layers_held,
    }
    if quantized:
        ints = cfg.n_layer * _linear_weights(cfg) * wbyte + v * d * (1 + wbyte)  # + dt_proj int8, tables
        parts["integer artifact"] = int(ints + cfg.n_layer * di * (n + 8) * 4)
        parts["dequantized embedding and lm_head"] = 8 * v * d
        if bits.weight_bits == 4:  # int4 weights are expanded (int16, then float64 for the GEMMs and dequantizing)
            parts["prepared int4 layer"] = 16 * _linear_weights(cfg)
            parts["prepared int4 lm_head"] = 8 * v * d  # float64, kept; its int64 expansion is gone before evaluation
    if calibrating and quantized and calib is not None:
        tokens = calib.samples * calib.seq_len
        parts["calibration activations"] = 4 * tokens * d + _mixer_bytes(cfg, calib.seq_len)
        if bits.weight_bits == 4 and calib.gptq:
            parts["GPTQ inputs and Hessian"] = _gptq_bytes(cfg, tokens)
    if eval_seqs:
        tokens = eval_seqs * seq_len
        numerics = 3 if quantized and bits.act_bits == 8 else 2
        parts["evaluation activations"] = numerics * 4 * tokens * d + _mixer_bytes(cfg, seq_len) * numerics
        parts["logits of one window"] = seq_len * v * (4 + 4 + 8 + 8 + 8 * KL_TEMPS)
    return MemoryEstimate(parts)


def _gptq_bytes(cfg: MambaConfig, tokens: int) -> int:
    """GPTQ's peak (calib.gptq, calib.observers): a layer's kept linear inputs (u, xs float32, y_rot float64)
    while its largest Hessian is built (the inputs concatenated and cast, 12 B per value) and factored (four
    n x n float64 arrays: H, its damped copy, the reversed copy, the factor) beside the float64 weight being
    quantized (plus its int8 codes and their transpose); then the same for lm_head, once, after the last layer."""
    d, di = cfg.d_model, cfg.d_inner
    largest_in = max(d, di)
    layer = 4 * tokens * (d + 3 * di) + 12 * tokens * largest_in + 32 * largest_in**2 + 10 * 2 * di * d
    lm_head = 16 * tokens * d + 32 * d * d + 10 * cfg.vocab_size * d
    return max(layer, lm_head)


def _mixer_bytes(cfg: MambaConfig, seq_len: int) -> int:
    return seq_len * cfg.d_inner * 4 * (MIXER_TEMPS + SCAN_TEMPS * cfg.d_state)


def _proc_bytes(path: str, key: str) -> int | None:
    """A "Key:  N kB" line of a /proc file, in bytes; None where there is none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), else physical memory."""
    avail = _proc_bytes("/proc/meminfo", "MemAvailable")
    if avail is not None:
        return avail
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM, which starts afresh at exec.

    ru_maxrss does not: Linux carries the parent's peak at fork into it, so a qsim started by a large
    process (a test runner) would report the parent's size."""
    hwm = _proc_bytes("/proc/self/status", "VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


LOWERED_BY = {
    "calibration activations": "--calib-samples / --calib-len",
    "evaluation activations": "--eval-seqs / --seq-len",
    "logits of one window": "--seq-len",
    "GPTQ inputs and Hessian": "--no-gptq",
}


def check(est: MemoryEstimate, what: str, available: int | None = None) -> None:
    """Refuse, in one line, work whose estimated peak exceeds the memory available."""
    avail = available_bytes() if available is None else available
    if est.total <= avail:
        return
    top = est.largest()
    hint = LOWERED_BY.get(top)
    lower = f"lower it with {hint}" if hint else "no option lowers it: use a machine with more memory"
    raise QsimError(f"{what}: needs about {est.total / GB:.1f} GB of memory, {avail / GB:.1f} GB available; "
                    f"the largest part is {top} ({est.parts[top] / GB:.1f} GB): {lower}")
