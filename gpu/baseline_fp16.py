"""FP16 baselines of the same Mamba-1 forward (qsim.float_model), for the latency comparison.

`Fp16Model`: fp16 weights, fp32 residual and SSM state. Decode: the fused kernels of
gpu/kernels/fp16.cu, four per layer with the same GEMV cores and structure as the W8A8 decode,
so the comparison isolates the numerics. Prompt: cuBLAS GEMMs through torch plus our FP16 scan.
`TorchStep`: the plain PyTorch decode step (one op per line, as anyone would first write it),
which the FP16 baseline must beat when both run from a CUDA graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpu import runtime
from gpu.layout import VEC_COLS, XPROJ_CHUNK, outproj_chunk, roundup
from qsim.config import MambaConfig

NORM_THREADS, OUTPROJ_THREADS, BLOCK = 1024, 512, 256


@dataclass
class Fp16Layer:
    norm: torch.Tensor  # (dm,) fp16
    in_proj: torch.Tensor  # (2 di, dm)
    conv_w: torch.Tensor  # (di, K)
    conv_b: torch.Tensor  # (di,)
    x_proj: torch.Tensor  # (R, di)
    dt_w: torch.Tensor  # (di, rk)
    dt_b: torch.Tensor  # (di,) fp32
    A_neg: torch.Tensor  # (di, N) fp32, -exp(A_log)
    D: torch.Tensor  # (di,) fp32
    out_proj: torch.Tensor  # (dm, di)


@dataclass
class Fp16Weights:
    cfg: MambaConfig
    emb: torch.Tensor  # (V, dm) fp16, tied lm_head
    norm_f: torch.Tensor
    layers: list

    @classmethod
    def random(cls, cfg: MambaConfig, device, seed: int = 0) -> Fp16Weights:
        """Mamba's initialisation (as qsim.weights.synthetic_weights), drawn on the device: 2.8 B
        parameters in a second."""
        g = torch.Generator(device).manual_seed(seed)
        di, dm, n, rk = cfg.d_inner, cfg.d_model, cfg.d_state, cfg.dt_rank
        h = dict(device=device, dtype=torch.float16)

        def uni(shape, bound, dtype=torch.float16):
            return (torch.rand(shape, generator=g, device=device, dtype=torch.float32) * 2 - 1).mul_(bound).to(dtype)

        layers = []
        for _ in range(cfg.n_layer):
            u = torch.rand(di, generator=g, device=device)
            dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            layers.append(Fp16Layer(
                torch.ones(dm, **h), uni((2 * di, dm), dm**-0.5), uni((di, cfg.d_conv), 0.5), uni((di,), 0.5),
                uni((rk + 2 * n, di), di**-0.5), uni((di, rk), rk**-0.5), dt + torch.log(-torch.expm1(-dt)),
                -torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(di, 1),
                torch.ones(di, device=device), uni((dm, di), di**-0.5)))
        emb = (torch.randn((cfg.vocab_size, dm), generator=g, device=device) * 0.02).to(torch.float16)
        return cls(cfg, emb, torch.ones(dm, **h), layers)

    @classmethod
    def from_float(cls, cfg: MambaConfig, w, device) -> Fp16Weights:
        """qsim.weights.MambaWeights (fp32 NumPy) in fp16 on the device."""
        t = lambda a, dtype=torch.float16: torch.as_tensor(a).to(device=device, dtype=dtype)  # noqa: E731
        layers = [Fp16Layer(t(L["norm"]), t(L["in_proj"]), t(L["conv_w"]), t(L["conv_b"]), t(L["x_proj"]),
                            t(L["dt_w"]), t(L["dt_b"], torch.float32), -torch.exp(t(L["A_log"], torch.float32)),
                            t(L["D"], torch.float32), t(L["out_proj"])) for L in w.layers]
        return cls(cfg, t(w.embedding), t(w.norm_f), layers)

    def nbytes(self) -> int:
        """Weights plus the fp32 SSM and fp16 conv state: what one decode step reads."""
        c = self.cfg
        ts = [self.emb, self.norm_f] + [t for L in self.layers for t in vars(L).values()]
        state = c.n_layer * (c.d_inner * c.d_state * 4 + (c.d_conv - 1) * c.d_inner * 2)
        return sum(t.numel() * t.element_size() for t in ts) + state


def _pad_cols(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """t itself when its columns are already whole chunks (no copy), else a zero-padded copy."""
    k = t.shape[1]
    return t if k % multiple == 0 else F.pad(t, (0, roundup(k, multiple) - k)).contiguous()


def rmsnorm(r: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    return r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * g.float()


class Fp16State:
    def __init__(self, cfg: MambaConfig, device):
        self.conv = torch.zeros((cfg.n_layer, cfg.d_conv - 1, cfg.d_inner), dtype=torch.float16, device=device)
        self.h = torch.zeros((cfg.n_layer, cfg.d_inner, cfg.d_state), dtype=torch.float32, device=device)


class Fp16Model:
    """The FP16 baseline: prefill(tokens, state) and a graph-capturable fused decode()."""

    def __init__(self, w: Fp16Weights, sms: int | None = None):
        self.w, self.cfg = w, w.cfg
        self.dev = w.emb.device
        self.sms = sms or torch.cuda.get_device_properties(self.dev).multi_processor_count
        self.k = runtime.kernels()
        f = VEC_COLS["f16"]
        self.kin = [_pad_cols(L.in_proj, f) for L in w.layers]
        self.kx = [_pad_cols(L.x_proj, XPROJ_CHUNK) for L in w.layers]
        self.kdt = [_pad_cols(L.dt_w, f) for L in w.layers]
        self.kout = [_pad_cols(L.out_proj, outproj_chunk("f16")) for L in w.layers]
        self.klm = _pad_cols(w.emb, f)
        c = self.cfg
        self.R = c.dt_rank + 2 * c.d_state
        e = lambda *shape, dtype: torch.zeros(shape, dtype=dtype, device=self.dev)  # noqa: E731
        self.r = e(c.n_layer + 1, c.d_model, dtype=torch.float32)
        self.xz = e(c.n_layer, 2 * c.d_inner, dtype=torch.float16)
        self.xs, self.y = e(c.n_layer, c.d_inner, dtype=torch.float16), e(c.n_layer, c.d_inner, dtype=torch.float16)
        self.acc = e(c.n_layer, self.R + c.d_model, dtype=torch.float32)
        self.logits, self.tok = e(c.vocab_size, dtype=torch.float32), e(1, dtype=torch.int32)

    def new_state(self) -> Fp16State:
        return Fp16State(self.cfg, self.dev)

    def prefill(self, tokens: torch.Tensor, state: Fp16State, last_only: bool = True) -> torch.Tensor:
        """fp32 logits of the prompt (the last row only by default); updates state."""
        c, w = self.cfg, self.w
        di, n, rk, K = c.d_inner, c.d_state, c.dt_rank, c.d_conv
        L = tokens.shape[0]
        r = w.emb[tokens].float()
        for i, P in enumerate(w.layers):
            xz = rmsnorm(r, P.norm, c.layer_norm_epsilon).half() @ P.in_proj.t()
            xp = torch.cat([state.conv[i], xz[:, :di]])
            state.conv[i].copy_(xp[L:])
            pre = sum(xp[j: j + L].float() * P.conv_w[:, j].float() for j in range(K)) + P.conv_b.float()
            xs = F.silu(pre).half()
            xdbl = xs @ P.x_proj.t()
            dt = F.softplus((xdbl[:, :rk] @ P.dt_w.t()).float() + P.dt_b).contiguous()
            y = torch.empty((L, di), dtype=torch.float16, device=self.dev)
            self.k["fp16.f16_scan_prefill"](
                (di * n + BLOCK - 1) // BLOCK, BLOCK, xs, xs.stride(0), dt, dt.stride(0), xdbl[:, rk:],
                xdbl[:, rk + n:], xdbl.stride(0), xz[:, di:], xz.stride(0), state.h[i], P.A_neg, P.D, y, y.stride(0),
                L, di, n)
            r = r + (y @ P.out_proj.t()).float()
        uf = rmsnorm(r[-1:] if last_only else r, w.norm_f, c.layer_norm_epsilon).half()
        return (uf @ w.emb.t()).float()

    def decode(self, state: Fp16State) -> torch.Tensor:
        """One step of the token in self.tok (device): fp32 logits; kernel launches only."""
        c, w = self.cfg, self.w
        self.acc.zero_()
        for i in range(c.n_layer):
            self._norm_gemv(i)
            P = w.layers[i]
            self.k["fp16.f16_conv_xproj"](
                (c.d_inner + XPROJ_CHUNK - 1) // XPROJ_CHUNK, BLOCK, self.xz[i], state.conv[i], P.conv_w, P.conv_b,
                c.d_conv, self.xs[i], c.d_inner, self.kx[i], self.R, self.kx[i].shape[1], self.acc[i, : self.R])
            rkp = self.kdt[i].shape[1]
            self.k["fp16.f16_scan_step"](
                (c.d_inner + BLOCK - 1) // BLOCK, BLOCK, self.acc[i, : self.R], c.dt_rank, rkp, self.kdt[i], P.dt_b,
                self.xs[i], self.xz[i], state.h[i], P.A_neg, P.D, self.y[i], c.d_inner,
                shared=8 * c.d_state + 2 * rkp)
            kp = self.kout[i].shape[1]
            chunks = kp // outproj_chunk("f16")
            rows = -(-c.d_model // max(1, round(self.sms / chunks)))  # about one block per multiprocessor
            self.k["fp16.f16_outproj"]((chunks, -(-c.d_model // rows)), OUTPROJ_THREADS, self.y[i], c.d_inner,
                                       self.kout[i], c.d_model, kp, rows, self.acc[i, self.R:])
        self._norm_gemv(c.n_layer)
        return self.logits

    def _norm_gemv(self, i: int) -> None:
        c, w = self.cfg, self.w
        last = i == c.n_layer
        W = self.klm if last else self.kin[i]
        N = c.vocab_size if last else 2 * c.d_inner
        g = w.norm_f if last else w.layers[i].norm
        prev = (0, self.tok, w.emb, None, None) if i == 0 else (1, None, None, self.r[i - 1], self.acc[i - 1, self.R:])
        self.k["fp16.f16_norm_gemv"](
            max(1, min(self.sms, -(-N // (NORM_THREADS // 32)))), NORM_THREADS, *prev, self.r[i], g,
            float(c.layer_norm_epsilon), c.d_model, W, N, W.shape[1], self.logits if last else self.xz[i], int(last),
            shared=4 * roundup(c.d_model, 4) + 2 * W.shape[1] + 128)

    def decode_bytes(self) -> int:
        return self.w.nbytes()


class TorchStep:
    """The plain PyTorch FP16 decode step: one torch op per line of the Mamba-1 block."""

    def __init__(self, w: Fp16Weights):
        self.w, self.cfg = w, w.cfg
        self.tok = torch.zeros(1, dtype=torch.long, device=w.emb.device)

    def decode(self, state: Fp16State) -> torch.Tensor:
        c, w = self.cfg, self.w
        di, n, rk = c.d_inner, c.d_state, c.dt_rank
        r = w.emb[self.tok].float()
        for i, P in enumerate(w.layers):
            xz = F.linear(rmsnorm(r, P.norm, c.layer_norm_epsilon).half(), P.in_proj)
            x, z = xz[:, :di], xz[:, di:]
            xp = torch.cat([state.conv[i], x])
            state.conv[i].copy_(xp[1:])
            xs = F.silu((xp.float() * P.conv_w.t().float()).sum(0, keepdim=True) + P.conv_b.float()).half()
            xdbl = F.linear(xs, P.x_proj)
            dt = F.softplus(F.linear(xdbl[:, :rk], P.dt_w).float() + P.dt_b)
            B, C = xdbl[:, rk: rk + n].float(), xdbl[:, rk + n:].float()
            h = state.h[i]
            h.mul_(torch.exp(dt.t() * P.A_neg)).add_((dt * xs.float()).t() * B)
            y = (h @ C.t()).t() + P.D * xs.float()
            r = r + F.linear((y * F.silu(z.float())).half(), P.out_proj).float()
        return F.linear(rmsnorm(r, w.norm_f, c.layer_norm_epsilon).half(), w.emb).float()[0]
