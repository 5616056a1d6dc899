"""The integer constants of the Mamba-2 `fixed` datapath (SPEC.md section 15), from calibrate2's observations.

Added to a Mamba-2 artifact when activations are 8-bit. The quamba scales
(u, z, xBC, dt_raw, x per scale group, B and C per SSD group, out_proj's input)
are the datapath's too; the integer datapath adds the residual stream format,
the conv output's per-channel scales (one per conv group: the scale groups of
x, then B and C per SSD group, so one SiLU table serves a group), the SSD
state scale per channel, the scan output's scale per norm group, and the
gated norm's output scale.
"""

from __future__ import annotations

import math

import numpy as np

from calib.calibrate import (
    RESIDUAL_HEADROOM,
    multiplier_params,
    norm_params,
    set_requant_arrays,
)
from calib.observers import snap_range
from calib.ssd_params import gated_norm_params, silu_z_table, ssd_params
from qsim import artifact_check, spec, tables
from qsim.artifact import QuantizedModel
from qsim.errors import QsimError


def conv_groups(cfg, x_groups: np.ndarray | None) -> np.ndarray:
    """Per conv channel (x, B, C), the group sharing one conv-output scale and one SiLU table."""
    gx = np.zeros(cfg.d_inner, np.int64) if x_groups is None else np.unique(x_groups, return_inverse=True)[1]
    nx = int(gx.max()) + 1
    bc = np.repeat(np.arange(cfg.ngroups), cfg.d_state)
    return np.concatenate([gx, nx + bc, nx + cfg.ngroups + bc])


def _group_max(chan: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per channel, the snapped max over its group (0 stays 0)."""
    out = np.empty(chan.shape[0])
    for g in np.unique(groups):
        out[groups == g] = snap_range(float(chan[groups == g].max()))
    return out


def _positive(v: np.ndarray, div: float) -> np.ndarray:
    return np.where(v > 0, v / div, 1.0)  # an all-zero group: any scale represents it


def residual_scale(hook, n_layer: int) -> float:
    res_abs = max(hook.absmax(i, "residual") for i in range(n_layer + 1))
    return spec.symmetric_scale(RESIDUAL_HEADROOM * res_abs, spec.RESIDUAL_BITS, "residual")


def add_layer(qm: QuantizedModel, i: int, lw: dict, cfg, hook, s_res: float, state_bits: int) -> dict:
    """Layer i's integer constants into qm (tensors) and its manifest entry (returned as a dict)."""
    p, L = f"layers.{i}", qm.layer(i)
    sc, hadamard = L["scales"], qm.manifest["hadamard"]
    di, conv_dim, g, n = cfg.d_inner, cfg.conv_dim, cfg.ngroups, cfg.d_state
    out: dict = {}
    gq, out["norm"] = norm_params(lw["norm"], s_res, sc["u"], cfg.layer_norm_epsilon, f"{p}.norm")
    qm.tensors[f"{p}.norm.g"] = gq
    # in_proj rows -> z, xBC, dt_raw (int8, one scale each)
    rows = np.concatenate([np.full(di, sc["z"]), np.full(conv_dim, sc["xBC"]), np.full(cfg.nheads, sc["dt_raw"])])
    set_requant_arrays(qm, f"{p}.in_proj", sc["u"] * qm.t(f"{p}.in_proj.scale") / rows)
    # conv -> conv_pre per channel (per conv group) -> SiLU table of the group -> x, B, C
    groups = conv_groups(cfg, lw.get("x_groups"))
    s_pre = _positive(_group_max(hook.channel[(i, "conv_pre")], groups), 127)
    s_out = np.concatenate([qm.t(f"{p}.x.scale"), np.repeat(qm.t(f"{p}.B.scale"), n),
                            np.repeat(qm.t(f"{p}.C.scale"), n)])
    set_requant_arrays(qm, f"{p}.conv", sc["xBC"] * L["conv"]["w_scale"] / s_pre)
    first = np.array([np.flatnonzero(groups == k)[0] for k in range(int(groups.max()) + 1)])
    qm.tensors[f"{p}.conv.group"] = groups.astype(np.int32)
    qm.tensors[f"{p}.silu_conv"] = np.stack([tables.silu_table(s_pre[c], s_out[c]) for c in first]).astype(np.int16)
    # SSD: state per channel, ys per norm group
    gn = g if cfg.norm_per_group else 1
    wmax = (1 << (state_bits - 1)) - 1
    s_state = _positive(hook.channel[(i, "h")].copy(), wmax)
    ys_groups = np.repeat(np.arange(gn), di // gn)
    s_ys = _positive(np.array([snap_range(float(hook.channel[(i, "ys")][ys_groups == k].max()))
                               for k in range(gn)]), (1 << (spec.SSD_OUT_BITS - 1)) - 1)
    ssd, _ = ssd_params(s_x=qm.t(f"{p}.x.scale"), s_B=qm.t(f"{p}.B.scale"), s_C=qm.t(f"{p}.C.scale"),
                           s_dt_raw=sc["dt_raw"], dt_bias=lw["dt_bias"], A_log=lw["A_log"], D=lw["D"],
                           s_state=s_state, s_ys=s_ys, d_state=n, state_bits=state_bits, dt_min=cfg.dt_min,
                           dt_max=cfg.dt_max, where=p)
    for k in ("dt_table", "a_q", "m_h", "s_h", "Dq", "m_y", "s_y"):
        qm.tensors[f"{p}.ssd.{k}"] = np.asarray(ssd[k], np.int64)
    out["ssd"] = {"frac": int(ssd["frac"])}
    silu_z, s_sz = silu_z_table(sc["z"], where=p)
    qm.tensors[f"{p}.silu_z"] = silu_z.astype(np.int32)
    s_y = snap_range(hook.absmax(i, "y")) / ((1 << (spec.GATED_BITS - 1)) - 1) or 1.0
    pn, norm_info = gated_norm_params(lw["gnorm"], s_ys=s_ys, s_sz=s_sz, s_y=s_y, eps=cfg.layer_norm_epsilon,
                                      norm_groups=gn, where=f"{p}.gated_norm")
    qm.tensors[f"{p}.gated_norm.w"] = pn["w"].astype(np.int16)
    qm.tensors[f"{p}.gated_norm.eps_int"] = pn["eps_int"]
    out["gated_norm"] = {"m": int(pn["m"]), "s": int(pn["s"]), "w_scale": norm_info["w_scale"]}
    out["fixed_scales"] = {"sz": s_sz, "y": s_y, "residual": s_res}
    qm.tensors[f"{p}.ys.scale"] = s_ys
    # out_proj input: y (int16) -> [Hadamard] -> int8; out_proj -> residual per row
    out["out_in"] = multiplier_params(s_y / sc["y_rot"] / (math.sqrt(di) if hadamard else 1.0), f"{p}.out_in")
    set_requant_arrays(qm, f"{p}.out_proj", sc["y_rot"] * qm.t(f"{p}.out_proj.scale") / s_res)
    return out


def add(qm: QuantizedModel, lm, hook, small: list[dict], state_bits: int) -> None:
    """Every integer constant of the Mamba-2 datapath into the artifact (8-bit activations only)."""
    cfg = lm.config
    if not spec.SSD_STATE_BITS_MIN <= state_bits <= spec.SSD_STATE_BITS_MAX:
        raise QsimError(f"--state-bits {state_bits}: the Mamba-2 SSD takes [{spec.SSD_STATE_BITS_MIN}, "
                        f"{spec.SSD_STATE_BITS_MAX}]")
    s_res = residual_scale(hook, cfg.n_layer)
    m = qm.manifest
    m["residual"] = {"bits": spec.RESIDUAL_BITS, "scale": s_res}
    m["state_bits"] = state_bits
    m["tables"] = {"exp2_frac": tables.exp2_frac_table().tolist(), "rsqrt": tables.rsqrt_table().tolist()}
    m["embedding"].update(multiplier_params(m["embedding"]["scale"] / s_res, "embedding"))
    for i in range(cfg.n_layer):
        m["layers"][i].update(add_layer(qm, i, small[i], cfg, hook, s_res, state_bits))
    gq, fnorm = norm_params(lm.weights.norm_f, s_res, m["final_norm"]["out_scale"], cfg.layer_norm_epsilon,
                            "norm_f")
    qm.tensors["norm_f.g"] = gq
    m["final_norm"].update(fnorm)
    artifact_check.validate(qm)  # as calib.calibrate: a calibration outside the spec's bounds fails here
