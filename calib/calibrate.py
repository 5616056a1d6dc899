"""Static calibration: float observations -> scales -> integer weights, multipliers, tables.

Every number an executor needs is derived here, once, and written to the
artifact; the spec's rules (qsim.spec) decide how reals become integers.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from calib.gptq import gptq_int4
from calib.observers import RANGE_GRID_BITS, ObserverHook
from qsim import artifact_check, float_model, hadamard, spec, tables
from qsim.artifact import FORMAT, QuantizedModel
from qsim.bits import BitsPreset
from qsim.calib_settings import CalibSettings
from qsim.errors import QsimError
from qsim.progress import progress
from qsim.qweights import IntLinear, quantize_int4_grouped, quantize_int8
from qsim.weights import LoadedModel

PROCEDURE = 2  # bumped when the same settings calibrate differently (2: ranges snapped to a grid); in the cache key
LOG2E = 1.0 / math.log(2.0)
RESIDUAL_HEADROOM = 2.0  # the residual format leaves 1 bit above the calibrated range


def sample_windows(tokens: np.ndarray, n: int, length: int, where: str) -> list[np.ndarray]:
    """n windows of `length` tokens at evenly spaced, deterministic offsets."""
    if len(tokens) < length:
        raise QsimError(f"{where}: {len(tokens)} tokens, shorter than one sequence of {length}")
    starts = np.linspace(0, len(tokens) - length, n).astype(np.int64)
    return [tokens[s : s + length] for s in starts]


SMALL_KEYS = ("norm", "conv_w", "conv_b", "dt_w", "dt_b", "A_log", "D", "out_smooth")  # kept for the second phase


def observe(lm: LoadedModel, windows: list[np.ndarray], s: CalibSettings, bits: BitsPreset):
    """Layer by layer over the calibration batch: ranges observed, the large linears quantized.

    The batch's residual streams are carried from layer to layer; a layer's float
    weights and GPTQ Hessians are dropped once its linears are quantized, so
    memory holds one layer, not the model. Returns the hook, per layer the
    quantized linears {name: (IntLinear, scales)} and the small float tensors,
    and lm_head's quantized weight.
    """
    cfg = lm.config
    hook = ObserverHook(cfg.n_layer, s.alpha if s.percentile else None, s.hadamard,
                        hessians=s.gptq and bits.weight_bits == 4)
    rs = [float_model.embed(lm.weights, w) for w in windows]
    linears, small = [], []
    for i in progress(range(cfg.n_layer), desc=f"calibrate ({len(windows)} seq)", unit="layer"):
        lw = lm.weights.layers[i]
        rs = [float_model.block(cfg, lw, r, i, hook) for r in rs]
        linears.append(_layer_linears(lw, i, bits, s, hook))
        small.append({k: lw[k] for k in SMALL_KEYS if k in lw})
        hook.drop(i)
    for r in rs:
        float_model.final_norm(cfg, lm.weights, r, hook)
    tied = cfg.tie_embeddings and bits.weight_bits == 8
    head = None if tied else quant_linear(lm.weights.lm_head, bits, hook, (cfg.n_layer, "u_f"), "lm_head")
    return hook, linears, small, head


def _layer_linears(lw, i, bits, s: CalibSettings, hook) -> dict:
    """in_proj, x_proj and out_proj (Hadamard fused: H^T / sqrt(N)) quantized, with per-channel scales."""
    p = f"layers.{i}"
    wout = lw["out_proj"]
    if s.hadamard:
        wout = (hadamard.fwht_float(wout) / np.float32(math.sqrt(wout.shape[1]))).astype(np.float32)
    return {"in_proj": quant_linear(lw["in_proj"], bits, hook, (i, "u"), f"{p}.in_proj"),
            "x_proj": quant_linear(lw["x_proj"], bits, hook, (i, "xs"), f"{p}.x_proj"),
            "out_proj": quant_linear(wout, bits, hook, (i, "y_rot"), f"{p}.out_proj")}


def quant_linear(w: np.ndarray, bits: BitsPreset, hook: ObserverHook, key: tuple[int, str],
                  where: str) -> tuple[IntLinear, np.ndarray]:
    """Integer weight and its real scale per output channel; int4 by GPTQ when Hessians were collected."""
    if bits.weight_bits == 4:
        if hook.collects_hessians:
            return gptq_int4(w, hook.hessian(key), bits.group_size, where)
        return quantize_int4_grouped(w, bits.group_size)
    q, sc = quantize_int8(w)
    return IntLinear(q), np.full(w.shape[0], sc)


def set_requant_arrays(qm: QuantizedModel, name: str, ratios: np.ndarray) -> None:
    m, s = spec.quantize_multipliers(ratios, name)
    qm.tensors[f"{name}.rq_m"], qm.tensors[f"{name}.rq_s"] = m.astype(np.int32), s.astype(np.int32)


def multiplier_params(real: float, where: str) -> dict:
    m, s = spec.quantize_multiplier(real, where)
    return {"m": m, "s": s}


def norm_params(g: np.ndarray, s_res: float, s_out: float, eps: float, where: str) -> tuple[np.ndarray, dict]:
    d = g.shape[0]
    s_g = spec.symmetric_scale(float(np.abs(g).max()), 16, where)
    gq = np.clip(spec.round_half_up(g / s_g), -32767, 32767).astype(np.int16)
    eps_int = max(1, int(spec.round_half_up(eps * d / s_res**2)))
    real = math.sqrt(d) * s_g * 2.0**-spec.NORM_FRAC_BITS / s_out
    return gq, {"g_scale": s_g, "eps_int": eps_int, "out_scale": s_out, **multiplier_params(real, where)}


def build(lm: LoadedModel, bits: BitsPreset, s: CalibSettings, observed) -> QuantizedModel:
    hook, linears, small, head = observed
    cfg, w = lm.config, lm.weights
    di = cfg.d_inner
    if s.hadamard and not hadamard.supported(di):
        raise QsimError(f"d_inner {di}: no integer Hadamard of that size; use --no-hadamard")
    res_abs = max(hook.absmax(i, "residual") for i in range(cfg.n_layer + 1))
    s_res = spec.symmetric_scale(RESIDUAL_HEADROOM * res_abs, spec.RESIDUAL_BITS, "residual")
    qm = QuantizedModel(
        {
            "format": FORMAT,
            "spec_version": spec.SPEC_VERSION,
            "model": {"name": lm.name, "source": lm.source, "weights_sha256": lm.sha256, "config": cfg.to_dict()},
            "bits": asdict(bits),
            "calibration": {
                **asdict(s),
                "procedure": PROCEDURE,
                "observers": "absmax per tensor; SSM input: "
                + (f"alpha={s.alpha} quantile of |x| per sample, averaged" if s.percentile else "absmax")
                + f"; every range snapped up to {RANGE_GRID_BITS} significant bits",
                "weights": "int8 per tensor, round to nearest (half up); int4 per group of "
                f"{bits.group_size} with uint8 group scales and a per-channel scale, "
                + ("GPTQ on the float calibration inputs (percdamp 0.01)" if hook.collects_hessians
                   else "round to nearest (half up)"),
            },
            "hadamard": s.hadamard,
            "state_bits": s.state_bits,
            "residual": {"bits": spec.RESIDUAL_BITS, "scale": s_res},
            "tables": {"exp2_frac": tables.exp2_frac_table().tolist(), "rsqrt": tables.rsqrt_table().tolist()},
            "linears": {},
            "layers": [],
        },
        {},
    )
    eq, s_emb = quantize_int8(w.embedding)
    qm.tensors["embedding.q"] = eq
    qm.manifest["embedding"] = {"scale": s_emb, **multiplier_params(s_emb / s_res, "embedding")}
    for i in range(cfg.n_layer):
        qm.manifest["layers"].append(_layer(qm, i, small[i], linears[i], cfg, s, hook, s_res))
    s_uf = spec.symmetric_scale(hook.absmax(cfg.n_layer, "u_f"), 8, "u_f")
    gq, fnorm = norm_params(w.norm_f, s_res, s_uf, cfg.layer_norm_epsilon, "norm_f")
    qm.tensors["norm_f.g"] = gq
    qm.manifest["final_norm"] = fnorm
    tied = head is None
    lin, sc = (IntLinear(eq), np.full(cfg.vocab_size, s_emb)) if tied else head
    qm.set_linear("lm_head", lin)
    qm.tensors["lm_head.scale"] = sc.astype(np.float64)
    qm.manifest["lm_head"] = {"tied_to_embedding": tied, "logit_scale": "u_f scale x lm_head.scale per row"}
    return qm


def _layer(qm, i, lw, lin_q, cfg, s: CalibSettings, hook, s_res) -> dict:
    di, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
    p = f"layers.{i}"
    a = lambda name: hook.absmax(i, name)  # noqa: E731
    sc = {
        "u": a("u") / 127, "x": a("x_in") / 127, "z": a("z") / 127, "xz": max(a("x_in"), a("z")) / 127,
        "conv_pre": a("conv_pre") / 127, "xs": hook.ssm_input(i) / 127, "dtr": a("dtr") / 127,
        "B": a("B") / 127, "C": a("C") / 127, "xp": max(a("dtr"), a("B"), a("C")) / 127,
        "dt_pre": a("dt_pre") / 127, "dt": a("dt") / spec.DT_MAX, "sz": a("sz") / spec.GATE_MAX,
        "h": a("h") / ((1 << (s.state_bits - 1)) - 1), "y": a("y") / ((1 << (spec.GATED_BITS - 1)) - 1),
        "yo": a("y_rot") / 127,
    }
    for k, v in sc.items():
        if not (math.isfinite(v) and v > 0):
            sc[k] = 1.0  # an all-zero tensor: any positive scale represents it exactly
    out: dict = {"scales": sc}
    gq, out["norm"] = norm_params(lw["norm"], s_res, sc["u"], cfg.layer_norm_epsilon, f"{p}.norm")
    qm.tensors[f"{p}.norm.g"] = gq
    # in_proj: x and z get their own scales in `fixed` (quamba shares one)
    lin, wsc = lin_q["in_proj"]
    qm.set_linear(f"{p}.in_proj", lin)
    qm.tensors[f"{p}.in_proj.scale"] = wsc
    out_sc = np.concatenate([np.full(di, sc["x"]), np.full(di, sc["z"])])
    set_requant_arrays(qm, f"{p}.in_proj", sc["u"] * wsc / out_sc)
    # conv: int8 weights, int32 bias at the accumulator scale, SiLU by table
    cw, s_cw = quantize_int8(lw["conv_w"])
    qm.tensors[f"{p}.conv.w"] = cw
    qm.tensors[f"{p}.conv.b"] = spec.round_half_up(lw["conv_b"] / (sc["x"] * s_cw)).astype(np.int32)
    out["conv"] = {"w_scale": s_cw, **multiplier_params(sc["x"] * s_cw / sc["conv_pre"], f"{p}.conv")}
    # x_proj -> dt_r, B, C each with its own scale
    lin, wsc = lin_q["x_proj"]
    qm.set_linear(f"{p}.x_proj", lin)
    qm.tensors[f"{p}.x_proj.scale"] = wsc
    seg = np.concatenate([np.full(r, sc["dtr"]), np.full(n, sc["B"]), np.full(n, sc["C"])])
    set_requant_arrays(qm, f"{p}.x_proj", sc["xs"] * wsc / seg)
    # dt_proj stays int8 in every preset (as in Quamba2's W4A8 Mamba-1)
    dq, s_wdt = quantize_int8(lw["dt_w"])
    qm.set_linear(f"{p}.dt_proj", IntLinear(dq))
    qm.tensors[f"{p}.dt_proj.b"] = spec.round_half_up(lw["dt_b"] / (sc["dtr"] * s_wdt)).astype(np.int32)
    out["dt_proj"] = {"w_scale": s_wdt, **multiplier_params(sc["dtr"] * s_wdt / sc["dt_pre"], f"{p}.dt_proj")}
    out["tables"] = {
        "silu_conv": tables.silu_table(sc["conv_pre"], sc["xs"]).tolist(),
        "softplus_dt": tables.softplus_table(sc["dt_pre"], sc["dt"]).tolist(),
        "silu_z": tables.gate_table(sc["z"], sc["sz"]).tolist(),
    }
    out["scan"] = scan_params(qm, p, lw, sc, s)
    # out_proj input: y (int16) -> [Hadamard] -> int8; weights pre-multiplied by H^T / sqrt(N) (observe)
    ratio = sc["y"] / sc["yo"] / (math.sqrt(di) if s.hadamard else 1.0)
    out["out_in"] = multiplier_params(ratio, f"{p}.out_in")
    lin, wsc = lin_q["out_proj"]
    qm.set_linear(f"{p}.out_proj", lin)
    qm.tensors[f"{p}.out_proj.scale"] = wsc
    set_requant_arrays(qm, f"{p}.out_proj", sc["yo"] * wsc / s_res)
    # Quamba stores A_log, D and dt_bias as int8 with one scale each
    out["quamba"] = {}
    for key in ("A_log", "D", "dt_b"):
        q, qs = quantize_int8(lw[key])
        qm.tensors[f"{p}.quamba.{key}"] = q
        out["quamba"][key] = qs
    return out


def scan_params(qm, p, lw, sc, s: CalibSettings) -> dict:
    """Integer decay exponent a = |A| log2(e) s_dt 2**F (uint16), the state multiplier and the output
    multiplier per channel: a recipe's out_smooth (the gated output divided by it, out_proj's columns
    multiplied) is folded into channel d's m_y, s_y; it is also stored, informative, as P.out_smooth."""
    a_real = np.exp(lw["A_log"].astype(np.float64)) * LOG2E * sc["dt"]
    amax = float(a_real.max())
    frac = int(np.clip(math.floor(math.log2(65535.0 / amax)), 9, 30)) if amax > 0 else 30
    a_q = np.clip(spec.round_half_up(a_real * 2.0**frac), 0, 65535)
    qm.tensors[f"{p}.A.q"] = a_q.astype(np.int32)
    d_state = a_real.shape[1]
    d_limit = spec.scan_dq_limit(d_state, s.state_bits)
    if d_limit < 0:
        raise QsimError(f"{p}: d_state {d_state} with state_bits {s.state_bits}: C.h alone can exceed the "
                        f"{spec.SCAN_ACC_BITS}-bit scan accumulator of spec {spec.SPEC_VERSION}")
    dq = spec.round_half_up(lw["D"] * sc["xs"] / (sc["C"] * sc["h"]))
    qm.tensors[f"{p}.D.q"] = np.clip(dq, -d_limit, d_limit).astype(np.int64)  # keeps C.h + D*x in 25 bits
    h = spec.quantize_multiplier(sc["dt"] * sc["B"] * sc["xs"] / sc["h"], f"{p}.scan.dBx")
    acc_unit = sc["C"] * sc["h"] * 2.0 ** spec.scan_acc_shift(s.state_bits)
    smooth = lw.get("out_smooth")
    if smooth is not None:
        qm.tensors[f"{p}.out_smooth"] = np.asarray(smooth, np.float32)
    smooth = np.ones(a_real.shape[0]) if smooth is None else np.asarray(smooth, np.float64)
    m_y, s_y = spec.quantize_multipliers(acc_unit * sc["sz"] / (sc["y"] * smooth), f"{p}.scan.y")
    qm.tensors[f"{p}.scan.m_y"], qm.tensors[f"{p}.scan.s_y"] = m_y.astype(np.int32), s_y.astype(np.int32)
    return {
        "a_frac_bits": frac,
        "a_saturated": int(np.count_nonzero(a_real * 2.0**frac > 65535)),
        "d_clamped": int(np.count_nonzero(np.abs(dq) > d_limit)),
        "m_h": h[0], "s_h": h[1],
    }


def calibrate(lm: LoadedModel, bits: BitsPreset, s: CalibSettings, tokens: np.ndarray, where: str) -> QuantizedModel:
    s.validate()
    qm = build(lm, bits, s, observe(lm, sample_windows(tokens, s.samples, s.seq_len, where), s, bits))
    artifact_check.validate(qm)  # a calibration outside the spec's bounds fails here, not in an executor
    return qm
