"""A valid `fixed` artifact for timing, made in seconds for any registered shape (mamba-2.8b too).

Calibrating 2.8 B parameters in NumPy (float weights, observers, Hadamard-rotated out_proj) takes
far longer than a benchmark may. Here the big matrices are drawn directly as random integers
(int8 uniform in [-127, 127]; int4 with uint8 group scales) and every activation range is an
analytic estimate for Mamba's standard initialisation (SYNTHETIC_ABSMAX) instead of an observation.
From those ranges on, everything goes through calibration's own code: multipliers, tables, the
scan constants, the norms. The artifact loads and runs in every executor; its accuracy means
nothing, its shapes and bytes are exact, which is all a latency benchmark needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from calib.calibrate import (RESIDUAL_HEADROOM, CalibSettings, multiplier_params, norm_params, scan_params,
                             set_requant_arrays)
from qsim import spec, tables
from qsim.artifact import FORMAT, QuantizedModel
from qsim.bits import preset
from qsim.config import MambaConfig
from qsim.qweights import IntLinear, quantize_int8

# absmax of each activation for RMSNorm'd inputs (|u| ~ 4) through uniform(+-1/sqrt(fan_in)) weights
SYNTHETIC_ABSMAX = {"residual": 10.0, "emb": 0.1, "u": 4.0, "x": 2.5, "z": 2.5, "conv_pre": 2.0, "xs": 1.5,
                    "dtr": 1.0, "B": 1.0, "C": 1.0, "dt_pre": 8.0, "dt": 0.2, "sz": 2.5, "h": 2.0, "y": 3.0,
                    "yo": 2.0, "u_f": 4.0}


def _random_linear(rng, n: int, k: int, bits) -> tuple[IntLinear, np.ndarray]:
    """Random integer weights and the per-channel real scale of uniform(+-1/sqrt(k)) weights."""
    bound = 1.0 / math.sqrt(k)
    if bits.weight_bits == 4:
        g = bits.group_size
        q = rng.integers(-8, 8, (n, k), dtype=np.int8)
        gs = rng.integers(128, 256, (n, -(-k // g)), dtype=np.uint8)
        return IntLinear(q, gs, g), np.full(n, bound / (7 * 255))
    return IntLinear(rng.integers(-127, 128, (n, k), dtype=np.int8)), np.full(n, bound / 127)


def synthetic_artifact(cfg: MambaConfig, bits: str = "w8a8", seed: int = 0, state_bits: int = 24,
                       hadamard: bool = True) -> QuantizedModel:
    bp = preset(bits)
    rng = np.random.default_rng(seed)
    dm = cfg.d_model
    a = SYNTHETIC_ABSMAX
    s_res = spec.symmetric_scale(RESIDUAL_HEADROOM * a["residual"], spec.RESIDUAL_BITS, "residual")
    settings = CalibSettings(samples=0, seq_len=0, hadamard=hadamard, state_bits=state_bits)
    qm = QuantizedModel({
        "format": FORMAT, "spec_version": spec.SPEC_VERSION,
        "model": {"name": f"synthetic-{dm}x{cfg.n_layer}", "source": "synthetic-artifact", "weights_sha256": None,
                  "config": cfg.to_dict()},
        "bits": asdict(bp),
        "calibration": {**asdict(settings), "observers": "none: gpu.synth.SYNTHETIC_ABSMAX ranges",
                        "weights": "random integers (timing only)"},
        "hadamard": hadamard, "state_bits": state_bits,
        "residual": {"bits": spec.RESIDUAL_BITS, "scale": s_res},
        "tables": {"exp2_frac": tables.exp2_frac_table().tolist(), "rsqrt": tables.rsqrt_table().tolist()},
        "linears": {}, "layers": [],
    }, {})
    eq = rng.integers(-127, 128, (cfg.vocab_size, dm), dtype=np.int8)
    s_emb = a["emb"] / 127
    qm.tensors["embedding.q"] = eq
    qm.manifest["embedding"] = {"scale": s_emb, **multiplier_params(s_emb / s_res, "embedding")}
    sc = {k: a[k] / 127 for k in ("u", "x", "z", "conv_pre", "xs", "dtr", "B", "C", "dt_pre", "yo")}
    sc.update(dt=a["dt"] / spec.DT_MAX, sz=a["sz"] / spec.GATE_MAX, h=a["h"] / ((1 << (state_bits - 1)) - 1),
              y=a["y"] / ((1 << (spec.GATED_BITS - 1)) - 1))
    for i in range(cfg.n_layer):
        qm.manifest["layers"].append(_layer(qm, rng, i, cfg, bp, sc, s_res, settings))
    gq, fnorm = norm_params(np.ones(dm, np.float32), s_res, a["u_f"] / 127, cfg.layer_norm_epsilon, "norm_f")
    qm.tensors["norm_f.g"] = gq
    qm.manifest["final_norm"] = fnorm
    tied = cfg.tie_embeddings and bp.weight_bits == 8
    lin, wsc = (IntLinear(eq), np.full(cfg.vocab_size, s_emb)) if tied else _random_linear(rng, cfg.vocab_size, dm, bp)
    qm.set_linear("lm_head", lin)
    qm.tensors["lm_head.scale"] = wsc.astype(np.float64)
    qm.manifest["lm_head"] = {"tied_to_embedding": tied, "logit_scale": "u_f scale x lm_head.scale per row"}
    return qm


def _layer(qm, rng, i, cfg, bp, sc, s_res, settings) -> dict:
    di, dm, n, rk = cfg.d_inner, cfg.d_model, cfg.d_state, cfg.dt_rank
    p = f"layers.{i}"
    out: dict = {"scales": dict(sc)}
    gq, out["norm"] = norm_params(np.ones(dm, np.float32), s_res, sc["u"], cfg.layer_norm_epsilon, f"{p}.norm")
    qm.tensors[f"{p}.norm.g"] = gq

    def linear(name, n_out, k, s_in, s_out):
        lin, wsc = _random_linear(rng, n_out, k, bp)
        qm.set_linear(f"{p}.{name}", lin)
        qm.tensors[f"{p}.{name}.scale"] = wsc
        set_requant_arrays(qm, f"{p}.{name}", s_in * wsc / s_out)

    linear("in_proj", 2 * di, dm, sc["u"], np.concatenate([np.full(di, sc["x"]), np.full(di, sc["z"])]))
    cw, s_cw = quantize_int8(rng.uniform(-0.5, 0.5, (di, cfg.d_conv)))
    qm.tensors[f"{p}.conv.w"] = cw
    qm.tensors[f"{p}.conv.b"] = spec.round_half_up(rng.uniform(-0.5, 0.5, di) / (sc["x"] * s_cw)).astype(np.int32)
    out["conv"] = {"w_scale": s_cw, **multiplier_params(sc["x"] * s_cw / sc["conv_pre"], f"{p}.conv")}
    linear("x_proj", rk + 2 * n, di, sc["xs"], np.repeat([sc["dtr"], sc["B"], sc["C"]], [rk, n, n]))
    dq, s_wdt = quantize_int8(rng.uniform(-(rk**-0.5), rk**-0.5, (di, rk)))
    qm.set_linear(f"{p}.dt_proj", IntLinear(dq))
    dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), di))
    dt_b = dt + np.log(-np.expm1(-dt))  # inverse softplus, as Mamba initialises it
    qm.tensors[f"{p}.dt_proj.b"] = spec.round_half_up(dt_b / (sc["dtr"] * s_wdt)).astype(np.int32)
    out["dt_proj"] = {"w_scale": s_wdt, **multiplier_params(sc["dtr"] * s_wdt / sc["dt_pre"], f"{p}.dt_proj")}
    out["tables"] = {"silu_conv": tables.silu_table(sc["conv_pre"], sc["xs"]).tolist(),
                     "softplus_dt": tables.softplus_table(sc["dt_pre"], sc["dt"]).tolist(),
                     "silu_z": tables.gate_table(sc["z"], sc["sz"]).tolist()}
    lw = {"A_log": np.log(np.tile(np.arange(1, n + 1, dtype=np.float64), (di, 1))), "D": np.ones(di)}
    out["scan"] = scan_params(qm, p, lw, sc, settings)
    out["out_in"] = multiplier_params(sc["y"] / sc["yo"] / (math.sqrt(di) if settings.hadamard else 1.0), f"{p}.out_in")
    linear("out_proj", dm, di, sc["yo"], s_res)
    return out
