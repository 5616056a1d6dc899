"""The `fixed` executor of Mamba-2 (SPEC.md section 15): the integer datapath from token to logits.

The same orchestration as Mamba-1's FixedExecutor (embedding, RMSNorm,
linears, residual, lm_head and the two backends are shared); the mixer is
Mamba-2's: in_proj -> z, xBC, dt_raw; the causal conv over xBC with a
per-channel requantization and one SiLU table per conv group; the SSD with
one decay per head; SiLU(z); the gated RMSNorm per norm group; the Hadamard
and out_proj as in Mamba-1. State per layer: the conv window (K-1, conv_dim)
and the SSD state (H, P, N).
"""

from __future__ import annotations

import importlib

import numpy as np

from qsim.fixed.executor import FixedExecutor, State, Trace

SSD_BACKENDS = {"numpy": "qsim.fixed.ssd", "numba": "qsim.fixed.ssd_numba"}
SSD_KEYS = ("dt_table", "a_q", "m_h", "s_h", "Dq", "m_y", "s_y")


class FixedExecutor2(FixedExecutor):
    def __init__(self, qm, backend: str = "numpy"):
        super().__init__(qm, backend)
        self.ssd = importlib.import_module(SSD_BACKENDS[backend])

    def _layer(self, i: int) -> dict:
        qm, L, p = self.qm, self.qm.layer(i), f"layers.{i}"
        i64 = lambda name: qm.t(name).astype(np.int64)
        return {
            "norm": {"g": qm.t(f"{p}.norm.g"), **L["norm"]},
            "in_proj": self.ops.prepare_linear(qm.linear(f"{p}.in_proj")),
            "in_rq": (i64(f"{p}.in_proj.rq_m"), i64(f"{p}.in_proj.rq_s")),
            "conv_w": i64(f"{p}.conv.w"), "conv_b": i64(f"{p}.conv.b"),
            "conv_rq": (i64(f"{p}.conv.rq_m"), i64(f"{p}.conv.rq_s")),
            "conv_group": i64(f"{p}.conv.group"), "silu_conv": i64(f"{p}.silu_conv"),
            "ssd": {**{k: i64(f"{p}.ssd.{k}") for k in SSD_KEYS}, "frac": L["ssd"]["frac"],
                    "exp_tab": self.exp_tab, "state_bits": self.state_bits},
            "silu_z": i64(f"{p}.silu_z"),
            "gnorm": (i64(f"{p}.gated_norm.w"), i64(f"{p}.gated_norm.eps_int"), L["gated_norm"]["m"],
                      L["gated_norm"]["s"]),
            "out_in_rq": (L["out_in"]["m"], L["out_in"]["s"]),
            "out_proj": self.ops.prepare_linear(qm.linear(f"{p}.out_proj")),
            "out_rq": (i64(f"{p}.out_proj.rq_m"), i64(f"{p}.out_proj.rq_s")),
        }

    def new_state(self) -> State:
        c = self.cfg
        return State([np.zeros((c.d_conv - 1, c.conv_dim), np.int64) for _ in range(c.n_layer)],
                     [self.ssd.new_state(c.nheads, c.headdim, c.d_state) for _ in range(c.n_layer)])

    def _mixer(self, i: int, r: np.ndarray, state: State, trace: Trace) -> np.ndarray:
        P, ops, c = self.layers[i], self.ops, self.cfg
        di, gn = c.d_inner, c.ngroups * c.d_state
        u = self._norm(trace, r, P["norm"])
        trace.rec(i, "u", u)
        zxd = self._requant(trace, "in_proj", ops.linear(u, P["in_proj"]), P["in_rq"])
        trace.rec(i, "in_proj", zxd)
        z, xbc, dt_raw = zxd[:, :di], zxd[:, di : di + c.conv_dim], zxd[:, di + c.conv_dim :]
        acc, state.conv[i] = ops.conv(xbc, state.conv[i], P["conv_w"], P["conv_b"])
        pre = self._requant(trace, "conv", acc, P["conv_rq"])
        trace.rec(i, "conv_pre", pre)
        xbc = P["silu_conv"][P["conv_group"], pre + 128]  # each channel reads its conv group's table (7.4)
        trace.rec(i, "xBC", xbc)
        length = xbc.shape[0]
        x = xbc[:, :di]
        B = xbc[:, di : di + gn].reshape(length, c.ngroups, c.d_state)
        C = xbc[:, di + gn :].reshape(length, c.ngroups, c.d_state)
        ys, state.h[i], sat = self.ssd.ssd_prefill(x, B, C, dt_raw, state.h[i], P["ssd"])
        for name, n in sat.items():
            trace.sat(name, n)
        trace.rec(i, "ys", ys)
        sz = ops.lut(z, P["silu_z"])
        trace.rec(i, "sz", sz)
        y, n = self.ssd.gated_rmsnorm(ys, sz, *P["gnorm"], self.rsqrt_tab)
        trace.sat("gated_norm", n)
        trace.rec(i, "y", y)
        return self._out_proj(i, y, P, trace)
