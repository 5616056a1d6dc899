"""The `fixed` model executor: the integer datapath from token to logits.

One orchestration, two op backends: `numpy` (qsim.fixed.ops, the reference)
and `numba` (qsim.fixed.ops_numba, the fast twins). Two modes: `prefill`
runs a whole sequence, `step` one token, both carrying the conv and SSM state,
so prefill(a + b) == prefill(a) then step(b...) to the bit.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from qsim import spec
from qsim.artifact import QuantizedModel
from qsim.errors import QsimError
from qsim.weights import LazyLayers, keep_layers

BACKENDS = {"numpy": "qsim.fixed.ops", "numba": "qsim.fixed.ops_numba"}


def checked_tokens(tokens, vocab_size: int) -> np.ndarray:
    """Token ids as an int64 vector, refused when empty or outside the vocabulary (every executor)."""
    tokens = np.atleast_1d(np.asarray(tokens, dtype=np.int64))
    if tokens.size == 0:
        raise QsimError("no tokens to run")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise QsimError(f"token ids must lie in [0, {vocab_size})")
    return tokens


@dataclass
class Trace:
    """Records intermediate integer tensors (per layer and name) and saturation counts.

    `names` limits which tensors are kept (None keeps all); saturations are always counted.
    """

    names: set | None = None
    tensors: dict = field(default_factory=lambda: defaultdict(list))
    saturation: dict = field(default_factory=lambda: defaultdict(int))

    def rec(self, layer: int, name: str, value: np.ndarray) -> None:
        if self.names is None or name in self.names:
            self.tensors[(layer, name)].append(np.array(value, dtype=np.int64, copy=True))

    def sat(self, name: str, count: int) -> None:
        self.saturation[name] += int(count)

    def get(self, layer: int, name: str) -> np.ndarray:
        return np.concatenate(self.tensors[(layer, name)], axis=0)


@dataclass
class State:
    conv: list  # per layer (d_conv - 1, d_inner) previous conv inputs
    h: list  # per layer (d_inner, d_state) SSM state


class FixedExecutor:
    def __init__(self, qm: QuantizedModel, backend: str = "numpy"):
        if backend not in BACKENDS:
            raise QsimError(f"--backend {backend!r}: unknown; valid: {', '.join(BACKENDS)}")
        if qm.manifest["bits"]["act_bits"] != 8:
            raise QsimError(f"bits {qm.manifest['bits']['name']}: the fixed datapath needs 8-bit activations")
        self.ops = importlib.import_module(BACKENDS[backend])
        self.backend = backend
        self.qm = qm
        self.cfg = qm.config
        m = qm.manifest
        self.exp_tab = np.asarray(m["tables"]["exp2_frac"], dtype=np.int64)
        self.rsqrt_tab = np.asarray(m["tables"]["rsqrt"], dtype=np.int64)
        self.hadamard = m["hadamard"]
        self.state_bits = m["state_bits"]
        self.emb = qm.t("embedding.q")  # int8; rows widened when looked up
        self.emb_rq = (m["embedding"]["m"], m["embedding"]["s"])
        self.layers = LazyLayers(self.cfg.n_layer, self._layer, keep_layers(self.cfg))  # large: prepared per use
        self.final = {"g": qm.t("norm_f.g"), **m["final_norm"]}
        self.lm_head = self.ops.prepare_linear(qm.linear("lm_head"))

    def _layer(self, i: int) -> dict:
        qm, L = self.qm, self.qm.layer(i)
        p = f"layers.{i}"
        sc = L["scan"]

        def rq(name):
            return qm.t(f"{p}.{name}.rq_m").astype(np.int64), qm.t(f"{p}.{name}.rq_s").astype(np.int64)

        return {
            "norm": {"g": qm.t(f"{p}.norm.g"), **L["norm"]},
            "in_proj": self.ops.prepare_linear(qm.linear(f"{p}.in_proj")), "in_rq": rq("in_proj"),
            "conv_w": qm.t(f"{p}.conv.w").astype(np.int64), "conv_b": qm.t(f"{p}.conv.b").astype(np.int64),
            "conv_rq": (L["conv"]["m"], L["conv"]["s"]),
            "x_proj": self.ops.prepare_linear(qm.linear(f"{p}.x_proj")), "xp_rq": rq("x_proj"),
            "dt_proj": self.ops.prepare_linear(qm.linear(f"{p}.dt_proj")),
            "dt_b": qm.t(f"{p}.dt_proj.b").astype(np.int64), "dt_rq": (L["dt_proj"]["m"], L["dt_proj"]["s"]),
            "silu_conv": np.asarray(L["tables"]["silu_conv"], np.int64),
            "softplus_dt": np.asarray(L["tables"]["softplus_dt"], np.int64),
            "silu_z": np.asarray(L["tables"]["silu_z"], np.int64),
            "scan": {
                "a_q": qm.t(f"{p}.A.q").astype(np.int64), "frac": sc["a_frac_bits"],
                "m_h": sc["m_h"], "s_h": sc["s_h"], "Dq": qm.t(f"{p}.D.q").astype(np.int64),
                "m_y": qm.t(f"{p}.scan.m_y").astype(np.int64), "s_y": qm.t(f"{p}.scan.s_y").astype(np.int64),
                "exp_tab": self.exp_tab, "state_bits": self.state_bits,
            },
            "out_in_rq": (L["out_in"]["m"], L["out_in"]["s"]),
            "out_proj": self.ops.prepare_linear(qm.linear(f"{p}.out_proj")), "out_rq": rq("out_proj"),
        }

    def new_state(self) -> State:
        c = self.cfg
        return State(
            [np.zeros((c.d_conv - 1, c.d_inner), np.int64) for _ in range(c.n_layer)],
            [np.zeros((c.d_inner, c.d_state), np.int64) for _ in range(c.n_layer)],
        )

    def _requant(self, trace, name, acc, rq, bits=8):
        q, n = self.ops.requantize(acc, rq[0], rq[1], bits)
        trace.sat(name, n)
        return q

    def _norm(self, trace, r, p):
        u, n = self.ops.rmsnorm(r, p["g"], p["eps_int"], p["m"], p["s"], self.rsqrt_tab)
        trace.sat("u", n)
        return u

    def _mixer(self, i: int, r: np.ndarray, state: State, trace: Trace) -> np.ndarray:
        P, ops, c = self.layers[i], self.ops, self.cfg
        di, n, rk = c.d_inner, c.d_state, c.dt_rank
        u = self._norm(trace, r, P["norm"])
        trace.rec(i, "u", u)
        xz = self._requant(trace, "in_proj", ops.linear(u, P["in_proj"]), P["in_rq"])
        trace.rec(i, "xz", xz)
        x, z = xz[:, :di], xz[:, di:]
        acc, state.conv[i] = ops.conv(x, state.conv[i], P["conv_w"], P["conv_b"])
        pre = self._requant(trace, "conv", acc, P["conv_rq"])
        trace.rec(i, "conv_pre", pre)
        xs = ops.lut(pre, P["silu_conv"])
        trace.rec(i, "xs", xs)
        p = self._requant(trace, "x_proj", ops.linear(xs, P["x_proj"]), P["xp_rq"])
        trace.rec(i, "x_proj", p)
        dtr, B, C = p[:, :rk], p[:, rk : rk + n], p[:, rk + n :]
        dt_pre = self._requant(trace, "dt_proj", ops.linear(dtr, P["dt_proj"]) + P["dt_b"], P["dt_rq"])
        trace.rec(i, "dt_pre", dt_pre)
        dt = ops.lut(dt_pre, P["softplus_dt"])
        trace.rec(i, "dt", dt)
        sz = ops.lut(z, P["silu_z"])
        trace.rec(i, "sz", sz)
        y, state.h[i], sat_h, sat_y = ops.scan(xs, dt, B, C, sz, state.h[i], P["scan"])
        trace.sat("state", sat_h)
        trace.sat("scan_out", sat_y)
        trace.rec(i, "y", y)
        return self._out_proj(i, y, P, trace)

    def _out_proj(self, i: int, y: np.ndarray, P: dict, trace: Trace) -> np.ndarray:
        """The gated output y (int16) -> [Hadamard] -> int8 -> out_proj -> the residual's format (both families)."""
        if self.hadamard:
            y = self.ops.hadamard_rows(y)
            trace.rec(i, "y_had", y)
        yo = self._requant(trace, "out_proj_in", y, P["out_in_rq"])
        trace.rec(i, "yo", yo)
        out = self._requant(trace, "out_proj", self.ops.linear(yo, P["out_proj"]), P["out_rq"], spec.RESIDUAL_BITS)
        trace.rec(i, "out", out)
        return out

    def embed(self, tokens, trace: Trace) -> np.ndarray:
        """The residual stream entering layer 0."""
        tokens = checked_tokens(tokens, self.cfg.vocab_size)
        return self._requant(trace, "residual", self.emb[tokens].astype(np.int64), self.emb_rq, spec.RESIDUAL_BITS)

    def block(self, i: int, r: np.ndarray, state: State, trace: Trace) -> np.ndarray:
        """The residual stream after layer i."""
        trace.rec(i, "residual", r)
        r, n = spec.saturate(r + self._mixer(i, r, state, trace), spec.RESIDUAL_BITS)
        trace.sat("residual", n)
        return r

    def head(self, r: np.ndarray, trace: Trace) -> np.ndarray:
        """Final norm and lm_head: int64 logit accumulators."""
        trace.rec(self.cfg.n_layer, "residual", r)
        uf = self._norm(trace, r, self.final)
        trace.rec(self.cfg.n_layer, "u_f", uf)
        logits = self.ops.linear(uf, self.lm_head)
        trace.rec(self.cfg.n_layer, "logits", logits)
        return logits

    def prefill(self, tokens, state: State | None = None, trace: Trace | None = None):
        """Logits as int64 accumulators (L, vocab), and the state after the last token."""
        state = state or self.new_state()
        trace = trace if trace is not None else Trace(names=set())
        r = self.embed(tokens, trace)
        for i in range(self.cfg.n_layer):
            r = self.block(i, r, state, trace)
        return self.head(r, trace), state

    def step(self, token: int, state: State, trace: Trace | None = None):
        """One decode step: logits (vocab,) and the updated state."""
        logits, state = self.prefill(np.array([token]), state, trace)
        return logits[0], state

    def logit_scale(self) -> np.ndarray:
        """Real value of one logit unit per vocabulary row."""
        return self.final["out_scale"] * self.qm.t("lm_head.scale")
