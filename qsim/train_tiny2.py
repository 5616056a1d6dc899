"""Train "mamba2-tiny": a small byte-level Mamba-2 on the shipped Shakespeare corpus.

    python -m qsim.train_tiny2 --out qsim/models/mamba2-tiny --max-minutes 90 --checkpoint /tmp/m2.ckpt

Why it exists: Quamba2's reorder, per-group scales and the Mamba-2 integer
datapath need a real, trained Mamba-2 that ships with qsim (float32 checkpoint
<= 10 MB) and runs through every executor. Its block is mamba2-130m's
(d_state 128, headdim 64, ngroups 1, expand 2, conv 4), smaller: d_model 256,
4 layers, byte vocabulary.

The model is a self-contained torch copy of transformers' `Mamba2ForCausalLM`
with the same parameter names, so the folder loads with
`Mamba2ForCausalLM.from_pretrained`. Training uses the chunked SSD form
(Dao & Gu, arXiv 2405.21060, section 6): inside a chunk the scan is a masked
matmul (C B^T weighted by the segment decays), across chunks a short recurrence
over the chunk states. Everything is matmuls, cumsums and exps, so autograd
gives the backward. It is checked against the sequential recurrence at start.
The training loop, checkpoints and reports are `qsim.train_tiny`'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qsim import train_tiny
from qsim.config import MAMBA2_TINY, Mamba2Config

CHUNK = 64  # SSD chunk for training (the model's own chunk_size, 256, only matters to mamba_ssm's kernels)


def segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[i, j] = a[j+1] + ... + a[i] for i >= j, -inf above the diagonal.

    Summed from a masked copy rather than as a difference of cumsums, so a long
    run of large decays cannot cancel catastrophically."""
    t = a.shape[-1]
    rep = a[..., None, :].expand(*a.shape, t).transpose(-1, -2)  # rep[i, j] = a[i]
    strict = torch.ones(t, t, dtype=torch.bool, device=a.device).tril(-1)
    out = rep.masked_fill(~strict, 0).cumsum(-2)
    return out.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=a.device).tril(), -math.inf)


def ssd(x, dt, A, B, C, chunk: int = CHUNK):
    """y[t,h,p] = sum_n C[t,g,n] h[t,h,p,n], h[t] = exp(dt[t,h] A[h]) h[t-1] + dt[t,h] x[t,h,p] B[t,g,n].

    x (b, l, h, p); dt (b, l, h); A (h,); B, C (b, l, g, n); head h belongs to group h // (h/g).
    No D skip. The tail is zero-padded (dt 0: decay 1, no input)."""
    b, length, nh, p = x.shape
    g, n = B.shape[2], B.shape[3]
    pad = -length % chunk
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c = x.shape[1] // chunk
    hg = nh // g
    x = (x * dt[..., None]).view(b, c, chunk, g, hg, p)
    dA = (dt * A).view(b, c, chunk, g, hg).permute(0, 3, 4, 1, 2)  # (b, g, hg, c, Q)
    B = B.view(b, c, chunk, g, n)
    C = C.view(b, c, chunk, g, n)
    cs = dA.cumsum(-1)
    decay = torch.exp(segsum(dA))  # (b, g, hg, c, Q, Q)
    cb = torch.einsum("bclgn,bcsgn->bgcls", C, B)
    y = torch.einsum("bgcls,bghcls,bcsghp->bclghp", cb, decay, x)
    to_end = torch.exp(cs[..., -1:] - cs)  # (b, g, hg, c, Q)
    states = torch.einsum("bcsgn,bghcs,bcsghp->bcghpn", B, to_end, x)
    chunk_decay = torch.exp(segsum(F.pad(cs[..., -1], (1, 0))))  # (b, g, hg, c+1, c+1)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], 1)
    carried = torch.einsum("bghzc,bcghpn->bzghpn", chunk_decay, states)[:, :-1]  # state entering each chunk
    y = y + torch.einsum("bclgn,bcghpn,bghcl->bclghp", C, carried, torch.exp(cs))
    return y.reshape(b, c * chunk, nh, p)[:, :length]


def ssd_ref(x, dt, A, B, C):
    """The sequential recurrence, for checks only."""
    b, length, nh, p = x.shape
    rep = nh // B.shape[2]
    Bh, Ch = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)
    h = x.new_zeros(b, nh, p, B.shape[3])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None]
        ys.append((h @ Ch[:, t, :, :, None]).squeeze(-1))
    return torch.stack(ys, 1)


def check_ssd(device: torch.device) -> float:
    """Chunked vs sequential, values and gradients, in float64 on this device; raises if off."""
    gen = torch.Generator().manual_seed(0)
    b, length, nh, p, g, n = 2, 45, 4, 3, 2, 5
    args = [torch.randn(b, length, nh, p, generator=gen), F.softplus(torch.randn(b, length, nh, generator=gen)),
            -torch.rand(nh, generator=gen) * 4, torch.randn(b, length, g, n, generator=gen),
            torch.randn(b, length, g, n, generator=gen)]
    args = [t.to(device, torch.float64).requires_grad_() for t in args]
    w = torch.randn(b, length, nh, p, generator=gen).to(device, torch.float64)
    outs = []
    for fn in (lambda *a: ssd(*a, chunk=8), ssd_ref):
        y = fn(*args)
        outs.append([y, *torch.autograd.grad((y * w).sum(), args)])
    err = max(((u - v).abs().max() / v.abs().max()).item() for u, v in zip(*outs))
    if not err < 1e-9:
        raise RuntimeError(f"chunked SSD disagrees with the sequential recurrence on {device}: {err:.2e}")
    return err


class GatedRMSNorm(nn.Module):
    """transformers' MambaRMSNormGated (norm after the gate), normalized per group."""

    def __init__(self, d: int, groups: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.groups, self.eps = groups, eps

    def forward(self, y, z):
        y = (y.float() * F.silu(z.float())).unflatten(-1, (self.groups, -1))
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.flatten(-2)


class Mixer2(nn.Module):
    """Mamba2Mixer with mamba_ssm's initialisation (A in [1, 16], dt in [1e-3, 1e-1])."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(cfg.nheads))
        self.A_log = nn.Parameter(torch.log(torch.empty(cfg.nheads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(cfg.nheads))
        self.norm = GatedRMSNorm(cfg.d_inner, cfg.ngroups, cfg.layer_norm_epsilon)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.proj_bias)
        with torch.no_grad():
            dt = torch.exp(torch.rand(cfg.nheads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.out_proj.weight /= math.sqrt(cfg.n_layer)  # mamba_ssm's prenorm-residual rescale

    def forward(self, u):
        cfg, length = self.cfg, u.shape[1]
        z, xbc, dt = self.in_proj(u).split([cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1)
        xbc = F.silu(self.conv1d(xbc.transpose(1, 2))[..., :length].transpose(1, 2)).float()
        x, B, C = xbc.split([cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias).clamp(cfg.dt_min, cfg.dt_max)
        x = x.unflatten(-1, (cfg.nheads, cfg.headdim))
        y = ssd(x, dt, -torch.exp(self.A_log.float()), B.unflatten(-1, (cfg.ngroups, -1)),
                C.unflatten(-1, (cfg.ngroups, -1)))
        y = (y + x * self.D[:, None]).flatten(-2)
        return self.out_proj(self.norm(y, z))


class Block2(nn.Module):
    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.norm = train_tiny.RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.mixer = Mixer2(cfg)

    def forward(self, r):
        return r + self.mixer(self.norm(r)).float()


class TinyMamba2(train_tiny.TinyMamba):
    """Mamba2ForCausalLM's structure and parameter names; lm_head is the embedding."""

    def __init__(self, cfg: Mamba2Config):
        nn.Module.__init__(self)
        self.cfg = cfg
        self.backbone = nn.Module()
        self.backbone.embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02)
        self.backbone.layers = nn.ModuleList(Block2(cfg) for _ in range(cfg.n_layer))
        self.backbone.norm_f = train_tiny.RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


TRAINEE = train_tiny.Trainee(
    name="mamba2-tiny",
    config=MAMBA2_TINY,
    build=TinyMamba2,
    check=check_ssd,
    arch=(f"Mamba-2, d_model {MAMBA2_TINY.d_model}, n_layer {MAMBA2_TINY.n_layer}, d_state {MAMBA2_TINY.d_state}, "
          f"headdim {MAMBA2_TINY.headdim} ({MAMBA2_TINY.nheads} heads), ngroups {MAMBA2_TINY.ngroups}, "
          f"d_conv {MAMBA2_TINY.d_conv}, expand {MAMBA2_TINY.expand}, SSD chunk {CHUNK}, byte vocabulary 256"),
)


def main(argv=None) -> float:
    return train_tiny.main(argv, TRAINEE)


if __name__ == "__main__":
    main()
