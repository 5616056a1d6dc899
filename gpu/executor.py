"""CudaExecutor: the `fixed` datapath on the GPU, reading the same artifact as qsim's executors.

Beside qsim.fixed.executor.FixedExecutor, with the same interface (prefill, step, new_state,
logit_scale) and the same Trace: every intermediate integer tensor can be compared element by
element with the NumPy reference, and saturation counts are the reference's.

Two paths. `prefill` runs whole rows (gpu.ops: torch._int_mm plus one kernel per op). `step`
runs the fused decode kernels of gpu/kernels/decode.cu, four per layer, on preallocated
buffers and without a host sync, so `decode_graph` can capture it in a CUDA graph; the token
is read from, and (in the graph) the greedy next token written to, a device buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpu import ops, runtime
from gpu.layout import HI_SHIFT, P1_MAX, XPROJ_CHUNK, hadamard_plan, lay_linear, outproj_chunk, roundup
from gpu.ops import OUT_I8, OUT_I16, OUT_I32, DeviceLinear, ScanParams, to_device
from qsim import spec
from qsim.artifact import QuantizedModel
from qsim.errors import QsimError
from qsim.fixed.executor import State, Trace, checked_tokens

SAT_NAMES = ("residual", "u", "in_proj", "conv", "x_proj", "dt_proj", "state", "scan_out", "out_proj_in", "out_proj")
DECODE_D_STATE = 16  # SCAN_N in decode.cu
NORM_THREADS, OUTPROJ_THREADS, BLOCK = 1024, 512, 256


@dataclass(frozen=True)
class Rq:
    """One scalar requantization: (m, s) as kernel ints, and as 1-element tensors for requant_rows."""

    m: int
    s: int
    t: tuple


@dataclass
class GpuState:
    conv: torch.Tensor  # int8 (n_layer, d_conv - 1, d_inner)
    h: torch.Tensor  # int32 (n_layer, d_inner, d_state)

    def to_numpy(self) -> State:
        conv, h = self.conv.cpu().numpy().astype(np.int64), self.h.cpu().numpy().astype(np.int64)
        return State(list(conv), list(h))


class _Workspace:
    """Per-layer decode buffers: what the fused kernels write doubles as the step's trace."""

    def __init__(self, cfg, R: int, device):
        nl, dm, di = cfg.n_layer, cfg.d_model, cfg.d_inner
        e = lambda *shape, dtype: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        self.r, self.out = e(nl + 1, dm, dtype=torch.int32), e(nl, dm, dtype=torch.int32)
        self.u, self.xz = e(nl + 1, dm, dtype=torch.int8), e(nl, 2 * di, dtype=torch.int8)
        self.xs, self.p, self.dt = e(nl, di, dtype=torch.int8), e(nl, R, dtype=torch.int8), e(nl, di, dtype=torch.int16)
        self.y, self.v = e(nl, di, dtype=torch.int16), e(nl, di, dtype=torch.int32)
        self.yhad = e(nl, di, dtype=torch.int32)
        self.yo, self.conv_pre = e(nl, di, dtype=torch.int8), e(nl, di, dtype=torch.int8)
        self.dt_pre, self.sz = e(nl, di, dtype=torch.int8), e(nl, di, dtype=torch.int16)
        self.acc = e(nl, R + dm, dtype=torch.int32)  # x_proj then out_proj split-K sums, zeroed every step
        self.logits, self.tok = e(cfg.vocab_size, dtype=torch.int32), e(1, dtype=torch.int32)


class CudaExecutor:
    def __init__(self, qm: QuantizedModel, device: str | torch.device = "cuda", sms: int | None = None):
        """sms: multiprocessors to size the decode grids for (default: the device's)."""
        m = qm.manifest
        if m["bits"]["act_bits"] != 8:
            raise QsimError(f"bits {m['bits']['name']}: the fixed datapath needs 8-bit activations")
        self.qm, self.cfg, self.dev = qm, qm.config, torch.device(device)
        c = self.cfg
        if c.d_state != DECODE_D_STATE:
            raise QsimError(f"d_state {c.d_state}: the fused decode kernels hold {DECODE_D_STATE} states per channel")
        self.k = runtime.kernels()
        self.sms = sms or torch.cuda.get_device_properties(self.dev).multi_processor_count
        self.counters = torch.zeros(len(SAT_NAMES), dtype=torch.int64, device=self.dev)
        self.rsqrt = to_device(m["tables"]["rsqrt"], np.int32, self.dev)
        self.hadamard = bool(m["hadamard"])
        di = c.d_inner
        self.R = c.dt_rank + 2 * c.d_state
        if self.hadamard:
            self.plan_prefill, self.plan = hadamard_plan(di, di), hadamard_plan(di, P1_MAX)
            self.O_prefill, self.O = (to_device(p.O, np.int8, self.dev) for p in (self.plan_prefill, self.plan))
            if self.plan.S > 32:
                raise QsimError(f"d_inner {di}: Hadamard stage 2 of order {self.plan.S} exceeds the kernel's 32")
            self.p1 = self.plan.p1
        else:
            self.p1 = min(P1_MAX, di & -di)  # any power-of-two segment: the block of scan_step
            self.O = None
        if self.p1 < 32:
            raise QsimError(f"d_inner {di}: scan_step needs blocks of >= 32 channels (segment {self.p1})")
        self.emb = to_device(qm.t("embedding.q"), np.int8, self.dev)
        self.emb_rq = self._rq(m["embedding"])
        self.layers = [self._layer(i) for i in range(c.n_layer)]
        self.final = {"g": to_device(qm.t("norm_f.g"), np.int16, self.dev), **m["final_norm"]}
        lm = lay_linear(qm.linear("lm_head"))
        if lm.w.shape == self.emb.shape and np.array_equal(lm.w, qm.t("embedding.q")):  # tied: one copy on the device
            self.lm_head = DeviceLinear(lm, self.emb, None, None, None)
        else:
            self.lm_head = DeviceLinear.of(lm, self.dev)
        self._ws: _Workspace | None = None

    # ------------------------------------------------------------------ artifact -> device
    def _rq(self, d: dict) -> Rq:
        m, s = int(d["m"]), int(d["s"])
        return Rq(m, s, tuple(torch.tensor([v], dtype=torch.int32, device=self.dev) for v in (m, s)))

    def _layer(self, i: int) -> dict:
        qm, L, dev = self.qm, self.qm.layer(i), self.dev
        p = f"layers.{i}"
        t = lambda name, dtype: to_device(qm.t(f"{p}.{name}"), dtype, dev)  # noqa: E731
        tab = lambda name: to_device(L["tables"][name], np.int16, dev)  # noqa: E731
        lin = lambda name, chunk=1: DeviceLinear.of(lay_linear(qm.linear(f"{p}.{name}"), chunk), dev)  # noqa: E731
        dt = lin("dt_proj")
        if dt.lay.fmt != "i8":
            raise QsimError(f"{p}.dt_proj: the scan kernels read int8 dt_proj weights (every preset keeps them int8)")
        sc = L["scan"]
        scan = {"a_q": qm.t(f"{p}.A.q"), "Dq": qm.t(f"{p}.D.q"), "m_y": qm.t(f"{p}.scan.m_y"),
                "s_y": qm.t(f"{p}.scan.s_y"), "exp_tab": qm.manifest["tables"]["exp2_frac"],
                "frac": sc["a_frac_bits"], "m_h": sc["m_h"], "s_h": sc["s_h"], "state_bits": qm.manifest["state_bits"]}
        fmt = "i8" if qm.manifest["linears"][f"{p}.out_proj"]["format"] == "int8" else "i4"
        return {
            "norm": {"g": t("norm.g", np.int16), **L["norm"]},
            "in_proj": lin("in_proj"), "in_rq": (t("in_proj.rq_m", np.int32), t("in_proj.rq_s", np.int32)),
            "conv_w": t("conv.w", np.int8), "conv_b": t("conv.b", np.int32), "conv_rq": self._rq(L["conv"]),
            "x_proj": lin("x_proj", XPROJ_CHUNK), "xp_rq": (t("x_proj.rq_m", np.int32), t("x_proj.rq_s", np.int32)),
            "dt_proj": dt, "dt_b": t("dt_proj.b", np.int32), "dt_rq": self._rq(L["dt_proj"]),
            "silu_conv": tab("silu_conv"), "softplus_dt": tab("softplus_dt"), "silu_z": tab("silu_z"),
            "scan": ScanParams.of(scan, dev), "out_in_rq": self._rq(L["out_in"]),
            "out_proj": lin("out_proj", outproj_chunk(fmt)),
            "out_rq": (t("out_proj.rq_m", np.int32), t("out_proj.rq_s", np.int32)),
        }

    def new_state(self) -> GpuState:
        c = self.cfg
        return GpuState(torch.zeros((c.n_layer, c.d_conv - 1, c.d_inner), dtype=torch.int8, device=self.dev),
                        torch.zeros((c.n_layer, c.d_inner, c.d_state), dtype=torch.int32, device=self.dev))

    def logit_scale(self) -> np.ndarray:
        """Real value of one logit unit per vocabulary row (as FixedExecutor.logit_scale)."""
        return self.final["out_scale"] * self.qm.t("lm_head.scale")

    def _cnt(self, name: str) -> torch.Tensor:
        return self.counters[SAT_NAMES.index(name)]

    def saturation(self) -> dict[str, int]:
        """Saturation counts since construction (one device read)."""
        return dict(zip(SAT_NAMES, self.counters.tolist()))

    # ------------------------------------------------------------------ tracing
    @staticmethod
    def _wants(trace: Trace | None, name: str) -> bool:
        return trace is not None and (trace.names is None or name in trace.names)

    def _rec(self, trace: Trace | None, layer: int, name: str, t: torch.Tensor | None) -> None:
        if self._wants(trace, name):
            trace.rec(layer, name, t.cpu().numpy())

    def _counted(self, trace: Trace | None, run):
        """run(); with a trace, add the saturation counts it produced to the trace."""
        before = self.counters.clone() if trace is not None else None
        result = run()
        if trace is not None:
            for name, n in zip(SAT_NAMES, (self.counters - before).tolist()):
                trace.sat(name, n)
        return result

    def _tokens(self, tokens) -> np.ndarray:
        return checked_tokens(tokens, self.cfg.vocab_size)

    # ------------------------------------------------------------------ prefill: whole rows
    def prefill(self, tokens, state: GpuState | None = None, trace: Trace | None = None):
        """Logits as int64 accumulators (L, vocab) on the host, and the state (as FixedExecutor.prefill)."""
        logits, state = self.prefill_device(tokens, state, trace)
        return logits.cpu().numpy().astype(np.int64), state

    def prefill_device(self, tokens, state: GpuState | None = None, trace: Trace | None = None,
                       last_only: bool = False):
        """int32 logits on the device ((L, or 1 with last_only), vocab) and the state; no host sync
        unless a trace is given."""
        tokens = self._tokens(tokens)
        state = state if state is not None else self.new_state()
        return self._counted(trace, lambda: self._prefill(tokens, state, trace, last_only)), state

    def _prefill(self, tokens: np.ndarray, state: GpuState, trace, last_only: bool) -> torch.Tensor:
        r = self._embed(tokens)
        for i in range(self.cfg.n_layer):
            r = self._block(i, r, state, trace)
        return self._head(r, trace, last_only)

    # ------------------------------------------------------------------ layer by layer (run's layer-major order)
    def embed(self, tokens, trace: Trace | None = None) -> torch.Tensor:
        """The residual stream entering layer 0, int32 rows on the device (as FixedExecutor.embed)."""
        tokens = self._tokens(tokens)
        return self._counted(trace, lambda: self._embed(tokens))

    def block(self, i: int, r: torch.Tensor, state: GpuState, trace: Trace | None = None) -> torch.Tensor:
        """The residual stream after layer i, updated in place (as FixedExecutor.block)."""
        return self._counted(trace, lambda: self._block(i, r, state, trace))

    def head(self, r: torch.Tensor, trace: Trace | None = None) -> np.ndarray:
        """Final norm and lm_head: int64 logit accumulators on the host (as FixedExecutor.head)."""
        return self._counted(trace, lambda: self._head(r, trace, False)).cpu().numpy().astype(np.int64)

    def _embed(self, tokens: np.ndarray) -> torch.Tensor:
        r = torch.empty((len(tokens), self.cfg.d_model), dtype=torch.int32, device=self.dev)
        emb = self.emb[torch.from_numpy(tokens).to(self.dev)].to(torch.int32)
        ops.requantize(emb, *self.emb_rq.t, spec.RESIDUAL_BITS, out_kind=OUT_I32, out=r, cnt=self._cnt("residual"))
        return r

    def _block(self, i: int, r: torch.Tensor, state: GpuState, trace) -> torch.Tensor:
        c, rec, cnt, P = self.cfg, self._rec, self._cnt, self.layers[i]
        di, n, rk = c.d_inner, c.d_state, c.dt_rank
        L = r.shape[0]

        def extra(name):  # int8 (L, di) for a tensor only the trace wants
            return torch.empty((L, di), dtype=torch.int8, device=self.dev) if self._wants(trace, name) else None

        rec(trace, i, "residual", r)
        u = self._norm(r, P["norm"])
        rec(trace, i, "u", u)
        xz = ops.linear_requant(u, P["in_proj"], *P["in_rq"], 8, out_kind=OUT_I8, cnt=cnt("in_proj"))
        rec(trace, i, "xz", xz)
        conv_pre, dt_pre = extra("conv_pre"), extra("dt_pre")
        xs = ops.conv(xz[:, :di], state.conv[i], P["conv_w"], P["conv_b"], P["conv_rq"].m, P["conv_rq"].s,
                      P["silu_conv"], cnt("conv"), conv_pre)
        rec(trace, i, "conv_pre", conv_pre)
        rec(trace, i, "xs", xs)
        p = ops.linear_requant(xs, P["x_proj"], *P["xp_rq"], 8, out_kind=OUT_I8, cnt=cnt("x_proj"))
        rec(trace, i, "x_proj", p)
        dt = ops.linear_requant(p[:, :rk].contiguous(), P["dt_proj"], *P["dt_rq"].t, 8, out_kind=OUT_I16,
                                bias=P["dt_b"], lut=P["softplus_dt"], pre=dt_pre, cnt=cnt("dt_proj"))
        rec(trace, i, "dt_pre", dt_pre)
        rec(trace, i, "dt", dt)
        if self._wants(trace, "sz"):  # the scan kernel looks SiLU(z) up itself
            rec(trace, i, "sz", P["silu_z"][xz[:, di:].to(torch.int64) + 128])
        y = ops.scan(xs, dt, p[:, rk: rk + n], p[:, rk + n:], xz[:, di:], P["silu_z"], state.h[i], P["scan"],
                     cnt("state"), cnt("scan_out"))
        rec(trace, i, "y", y)
        oi = P["out_in_rq"]
        if self.hadamard:
            y_had, yo = ops.hadamard_rq(y, self.plan_prefill, self.O_prefill, oi.m, oi.s, cnt("out_proj_in"))
            rec(trace, i, "y_had", y_had)
        else:
            yo = ops.requantize(y.to(torch.int32), *oi.t, 8, out_kind=OUT_I8, cnt=cnt("out_proj_in"))
        rec(trace, i, "yo", yo)
        out = ops.linear_requant(yo, P["out_proj"], *P["out_rq"], spec.RESIDUAL_BITS, out_kind=OUT_I32, resid=r,
                                 cnt=cnt("out_proj"), cnt_resid=cnt("residual"))
        rec(trace, i, "out", out)
        return r

    def _head(self, r: torch.Tensor, trace, last_only: bool) -> torch.Tensor:
        c, rec = self.cfg, self._rec
        rec(trace, c.n_layer, "residual", r)
        uf = self._norm(r[-1:] if last_only else r, self.final)
        rec(trace, c.n_layer, "u_f", uf)
        acc, hi = ops.linear(uf, self.lm_head)
        logits = acc[:, : c.vocab_size] if hi is None else acc[:, : c.vocab_size] + (hi[:, : c.vocab_size] << HI_SHIFT)
        rec(trace, c.n_layer, "logits", logits)
        return logits

    def _norm(self, r: torch.Tensor, P: dict) -> torch.Tensor:
        return ops.rmsnorm(r, P["g"], P["eps_int"], P["m"], P["s"], self.rsqrt, self._cnt("u"))

    # ------------------------------------------------------------------ decode: fused kernels
    def step(self, token: int, state: GpuState, trace: Trace | None = None):
        """One decode step: logits (vocab,) as int64 on the host, and the state (as FixedExecutor.step)."""
        tok = int(self._tokens([token])[0])
        ws = self._workspace()
        ws.tok.fill_(tok)
        self._counted(trace, lambda: self.decode(state))
        if trace is not None:
            self._trace_step(trace)
        return ws.logits.cpu().numpy().astype(np.int64), state

    def _workspace(self) -> _Workspace:
        if self._ws is None:
            self._ws = _Workspace(self.cfg, self.R, self.dev)
        return self._ws

    def decode(self, state: GpuState) -> torch.Tensor:
        """The decode step of the token in the workspace's device buffer: int32 logits on the device.
        Only kernel launches on torch's current stream: capturable in a CUDA graph."""
        ws, c = self._workspace(), self.cfg
        ws.acc.zero_()
        for i in range(c.n_layer):
            self._norm_gemv(i)
            self._conv_xproj(i, state)
            self._scan_step(i, state)
            self._had_outproj(i)
        self._norm_gemv(c.n_layer)
        return ws.logits

    def decode_graph(self, state: GpuState) -> torch.cuda.CUDAGraph:
        """A CUDA graph of one greedy decode step: replay() runs decode(state) and writes the argmax
        token into the workspace's token buffer, ready for the next replay."""
        return runtime.greedy_graph(self.decode, self._workspace().tok, state)

    def decode_bytes(self) -> int:
        """Bytes one decode step must read from memory: weights, per-layer constants, state, embedding row."""
        c = self.cfg
        nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
        total = c.d_model + self.lm_head.decode_bytes() + c.n_layer * (c.d_conv - 1) * c.d_inner
        total += c.n_layer * c.d_inner * c.d_state * 4
        for P in self.layers:
            total += sum(P[k].decode_bytes() for k in ("in_proj", "x_proj", "dt_proj", "out_proj"))
            total += sum(nbytes(P[k]) for k in ("conv_w", "conv_b", "dt_b")) + nbytes(P["norm"]["g"])
            total += sum(nbytes(t) for k in ("in_rq", "xp_rq", "out_rq") for t in P[k])
            total += sum(nbytes(getattr(P["scan"], k)) for k in ("a_q", "Dq", "m_y", "s_y"))
        return total

    def _trace_step(self, trace: Trace) -> None:
        ws, nl, rec = self._ws, self.cfg.n_layer, self._rec
        for i in range(nl):
            for name, buf in (("residual", ws.r), ("u", ws.u), ("xz", ws.xz), ("conv_pre", ws.conv_pre), ("xs", ws.xs),
                              ("x_proj", ws.p), ("dt_pre", ws.dt_pre), ("dt", ws.dt), ("sz", ws.sz), ("y", ws.y),
                              ("y_had", ws.yhad), ("yo", ws.yo), ("out", ws.out)):
                if name != "y_had" or self.hadamard:
                    rec(trace, i, name, buf[i: i + 1])
        rec(trace, nl, "residual", ws.r[nl: nl + 1])
        rec(trace, nl, "u_f", ws.u[nl: nl + 1])
        rec(trace, nl, "logits", ws.logits[None])

    def _norm_gemv(self, i: int) -> None:
        """Layer i's residual add (or the embedding), RMSNorm and in_proj; i == n_layer: norm_f and lm_head."""
        ws, c, cnt = self._ws, self.cfg, self._cnt
        last = i == c.n_layer
        P = None if last else self.layers[i]
        norm = self.final if last else P["norm"]
        lin = self.lm_head if last else P["in_proj"]
        m, s = (None, None) if last else P["in_rq"]
        prev = self.layers[i - 1] if i > 0 else None
        args = (0, ws.tok, self.emb, self.emb_rq.m, self.emb_rq.s, None, None, None, None) if prev is None else \
            (1, None, None, 0, 0, ws.r[i - 1], ws.acc[i - 1, self.R:], *prev["out_rq"])
        out_trace = None if prev is None else ws.out[i - 1]
        blocks = max(1, min(self.sms, roundup(lin.lay.n, NORM_THREADS // 32) // (NORM_THREADS // 32)))
        shared = 4 * roundup(c.d_model, 4) + lin.lay.kp + 256
        self.k[f"decode.norm_gemv_{_suffix(lin)}"](
            blocks, NORM_THREADS, *args, ws.r[i], out_trace, norm["g"], np.int64(norm["eps_int"]), norm["m"], norm["s"],
            self.rsqrt, ws.u[i], c.d_model, lin.w, lin.gs, lin.lay.n, lin.lay.kp, _groups(lin), lin.lay.group, m, s,
            ws.logits if last else ws.xz[i], int(last), cnt("residual"), cnt("out_proj"), cnt("u"),
            None if last else cnt("in_proj"), shared=shared)

    def _conv_xproj(self, i: int, state: GpuState) -> None:
        ws, c, P = self._ws, self.cfg, self.layers[i]
        lin = P["x_proj"]
        self.k[f"decode.conv_xproj_{_suffix(lin)}"](
            (c.d_inner + XPROJ_CHUNK - 1) // XPROJ_CHUNK, BLOCK, ws.xz[i], state.conv[i], P["conv_w"], P["conv_b"],
            c.d_conv, P["conv_rq"].m, P["conv_rq"].s, P["silu_conv"], ws.conv_pre[i], ws.xs[i], c.d_inner, lin.w,
            lin.gs, self.R, lin.lay.kp, _groups(lin), lin.lay.group, ws.acc[i, : self.R], self._cnt("conv"))

    def _scan_step(self, i: int, state: GpuState) -> None:
        ws, c, P, cnt = self._ws, self.cfg, self.layers[i], self._cnt
        sp, dt = P["scan"], P["dt_proj"]
        self.k["decode.scan_step"](
            c.d_inner // self.p1, self.p1, ws.acc[i, : self.R], *P["xp_rq"], self.R, c.dt_rank, dt.lay.kp, ws.p[i],
            dt.w, P["dt_b"], P["dt_rq"].m, P["dt_rq"].s, P["softplus_dt"], ws.dt_pre[i], ws.dt[i], ws.xs[i], ws.xz[i],
            P["silu_z"], ws.sz[i], state.h[i], sp.a_q, sp.frac, sp.m_h, sp.s_h, sp.Dq, sp.m_y, sp.s_y, sp.exp_tab,
            sp.state_bits, ws.y[i], ws.v[i], c.d_inner, int(self.hadamard), cnt("x_proj"), cnt("dt_proj"),
            cnt("state"), cnt("scan_out"), shared=dt.lay.kp + 2 * c.d_state + 4 * self.p1)

    def _had_outproj(self, i: int) -> None:
        ws, c, P = self._ws, self.cfg, self.layers[i]
        lin, oi = P["out_proj"], P["out_in_rq"]
        chunks = lin.lay.kp // outproj_chunk(lin.lay.fmt)
        rows = -(-c.d_model // max(1, round(self.sms / chunks)))  # about one block per multiprocessor
        plan_p1, S = (self.plan.p1, self.plan.S) if self.hadamard else (1, 0)
        self.k[f"decode.had_outproj_{_suffix(lin)}"](
            (chunks, -(-c.d_model // rows)), OUTPROJ_THREADS, ws.v[i], ws.y[i], self.O, S, plan_p1,
            int(self.hadamard), oi.m, oi.s, ws.yhad[i], ws.yo[i], c.d_inner, lin.w, lin.gs, c.d_model, lin.lay.kp,
            _groups(lin), lin.lay.group, rows, ws.acc[i, self.R:], self._cnt("out_proj_in"))


def _suffix(lin: DeviceLinear) -> str:
    return {"i8": "w8", "i4": "w4"}[lin.lay.fmt]


def _groups(lin: DeviceLinear) -> int:
    return 0 if lin.gs is None else lin.gs.shape[1]
