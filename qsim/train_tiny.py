"""Train "mamba-tiny": a small byte-level Mamba-1 on the shipped Shakespeare corpus.

    python -m qsim.train_tiny --out qsim/models/mamba-tiny --device cuda --max-minutes 4

Why it exists: qsim needs a real, trained Mamba-1 that is small enough to ship
(float32 checkpoint <= 10 MB) and to run end to end through every executor,
yet good enough (validation <= 1.75 nats/byte) that quantization damage shows.

The model is a self-contained torch copy of transformers' `MambaForCausalLM`
(RMSNorm -> in_proj -> causal depthwise conv + SiLU -> x_proj -> dt_proj +
softplus -> selective scan -> y*SiLU(z) -> out_proj -> residual; final RMSNorm;
lm_head tied to the embedding) with the same parameter names, so the written
folder loads with `MambaForCausalLM.from_pretrained` and training does not need
transformers at all (its reference scan is a Python loop over time, far too
slow to train through). The scan is a chunked parallel scan with a hand-written
backward (the reverse-time recurrence), checked against a sequential reference
at start.

Stops at --steps or --max-minutes of training, whichever comes first; the
learning-rate schedule runs on the larger of the two progress fractions so the
cosine decay completes either way. With a binding time limit the step count
depends on the device speed; everything else (init, data order) is seeded.
The default 1000 steps is the compute the data supports, not what fits the
time: on an H100 (bf16 autocast, ~240k bytes/s) it takes ~70 s and reached
1.30 nats/byte; 1800 steps gave 1.40 and 3400 steps 1.73 (memorisation: the
model has 9 MB of weights for 2.6 MB of text).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qsim.config import MambaConfig

DATA = Path(__file__).resolve().parent / "data" / "shakespeare"
CONFIG = MambaConfig(d_model=256, n_layer=5, vocab_size=256)  # 2.26 M params, 9.0 MB float32
CHUNK = 16  # scan chunk length: ~sqrt(seq_len) balances in-chunk and cross-chunk sequential steps


# --------------------------------------------------------------------------- scan


def _scan_(a: torch.Tensor, h: torch.Tensor, chunk: int, reverse: bool = False) -> None:
    """In place along dim 1: h[t] += a[t] * h[t-1] (or h[t+1] if reverse); a is destroyed.

    Chunked "scan then propagate": (1) an ordinary recurrence inside every chunk,
    all chunks at once, also turning `a` into in-chunk cumulative products;
    (2) a short recurrence over the chunk boundary states; (3) one broadcast
    update that adds each chunk's incoming state times the cumulative decay.
    Only products of decays <= 1 appear, so it is as stable as the sequential
    loop (no exp of cumulative log-decays that could overflow), and Python runs
    chunk + seq/chunk steps instead of seq. Shapes (b, l, ...), l % chunk == 0.
    """
    b, n = h.shape[0], h.shape[1] // chunk
    a = a.view(b, n, chunk, *a.shape[2:])
    h = h.view(b, n, chunk, *h.shape[2:])
    if reverse:
        for t in range(chunk - 2, -1, -1):
            h[:, :, t].addcmul_(a[:, :, t], h[:, :, t + 1])
            a[:, :, t].mul_(a[:, :, t + 1])
        for c in range(n - 2, -1, -1):
            h[:, c, 0].addcmul_(a[:, c, 0], h[:, c + 1, 0])
        h[:, :-1, 1:].addcmul_(a[:, :-1, 1:], h[:, 1:, :1])
    else:
        for t in range(1, chunk):
            h[:, :, t].addcmul_(a[:, :, t], h[:, :, t - 1])
            a[:, :, t].mul_(a[:, :, t - 1])
        for c in range(1, n):
            h[:, c, -1].addcmul_(a[:, c, -1], h[:, c - 1, -1])
        h[:, 1:, :-1].addcmul_(a[:, 1:, :-1], h[:, :-1, -1:])


class SelectiveScan(torch.autograd.Function):
    """y[t,d] = sum_n C[t,n] h[t,d,n],  h[t] = exp(dt[t] A) h[t-1] + dt[t] x[t] B[t]  (fp32).

    A fused function rather than autograd through elementwise ops: only the
    states h (b, l, d, n) are kept for backward, the decays are recomputed, and
    the backward is the same chunked scan run in reverse time.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # fp32 inside, even under autocast
    def forward(ctx, x, dt, A, B, C, chunk: int):
        length = x.shape[1]
        pad = -length % chunk
        if pad:  # zero dt and input at the tail: decay 1, no input, gradients 0
            x, dt, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (x, dt, B, C))
        a = torch.exp(dt.unsqueeze(-1) * A)
        h = (dt * x).unsqueeze(-1) * B.unsqueeze(2)
        _scan_(a, h, chunk)
        ctx.save_for_backward(x, dt, A, B, C, h)
        ctx.chunk, ctx.length = chunk, length
        return (h @ C.unsqueeze(-1)).squeeze(-1)[:, :length]

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, gy):
        x, dt, A, B, C, h = ctx.saved_tensors
        gy = F.pad(gy.to(h.dtype), (0, 0, 0, h.shape[1] - ctx.length))
        dC = (gy.unsqueeze(-2) @ h).squeeze(-2)
        # g[t] = dL/dh[t] in full: g[t] = C[t] gy[t] + exp(dt[t+1] A) g[t+1]
        a_next = torch.empty_like(h)
        torch.exp(dt[:, 1:].unsqueeze(-1) * A, out=a_next[:, :-1])
        a_next[:, -1] = 0
        g = gy.unsqueeze(-1) * C.unsqueeze(2)
        _scan_(a_next, g, ctx.chunk, reverse=True)
        del a_next
        dtx = dt * x
        dB = (dtx.unsqueeze(-2) @ g).squeeze(-2)
        ddtx = (g @ B.unsqueeze(-1)).squeeze(-1)
        # decay gradient: dL/d(dt[t] A) = g[t] h[t-1] exp(dt[t] A), t >= 1
        dlog = torch.exp(dt[:, 1:].unsqueeze(-1) * A).mul_(g[:, 1:]).mul_(h[:, :-1])
        dA = (dlog * dt[:, 1:].unsqueeze(-1)).sum((0, 1))
        ddt = ddtx * x
        ddt[:, 1:] += dlog.mul_(A).sum(-1)
        n = ctx.length
        return (ddtx * dt)[:, :n], ddt[:, :n], dA, dB[:, :n], dC[:, :n], None


def selective_scan(x, dt, A, B, C, chunk: int = CHUNK):
    """Batched Mamba-1 scan without the D skip: x, dt (b, l, d); A (d, n); B, C (b, l, n)."""
    return SelectiveScan.apply(x, dt, A, B, C, chunk)


def selective_scan_ref(x, dt, A, B, C):
    """The plain sequential recurrence (transformers' slow path), for checks only."""
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h @ C[:, t, :, None]).squeeze(-1))
    return torch.stack(ys, 1)


def check_scan(device: torch.device) -> float:
    """Chunked vs sequential scan, values and gradients, on this device; raises if off."""
    g = torch.Generator().manual_seed(0)
    b, l, d, n = 2, 45, 8, 4
    args = [torch.randn(b, l, d, generator=g), F.softplus(torch.randn(b, l, d, generator=g)) * 0.5,
            -torch.rand(d, n, generator=g) * 4, torch.randn(b, l, n, generator=g), torch.randn(b, l, n, generator=g)]
    args = [t.to(device, torch.float64).requires_grad_() for t in args]
    w = torch.randn(b, l, d, generator=g).to(device, torch.float64)
    outs = []
    for fn in (selective_scan, selective_scan_ref):
        y = fn(*args)
        outs.append([y, *torch.autograd.grad((y * w).sum(), args)])
    err = max(((p - q).abs().max() / q.abs().max()).item() for p, q in zip(*outs))
    if not err < 1e-9:
        raise RuntimeError(f"chunked scan disagrees with the sequential reference on {device}: {err:.2e}")
    return err


# --------------------------------------------------------------------------- model


class RMSNorm(nn.Module):
    """transformers' MambaRMSNorm: normalise in fp32, then scale."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        x = x.float()
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Mixer(nn.Module):
    """MambaMixer with Mamba's standard initialisation (mamba_ssm `Mamba.__init__`)."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        di, r, ns = cfg.d_inner, cfg.dt_rank, cfg.d_state
        self.dt_rank, self.d_state = r, ns
        self.in_proj = nn.Linear(cfg.d_model, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, cfg.d_conv, groups=di, padding=cfg.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, r + 2 * ns, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, ns + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, cfg.d_model, bias=False)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -r**-0.5, r**-0.5)
            dt = torch.exp(torch.rand(di) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.out_proj.weight /= math.sqrt(cfg.n_layer)  # GPT-2 style prenorm-residual rescale

    def forward(self, u):
        length = u.shape[1]
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :length].transpose(1, 2)).float()
        dt_r, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt_r).float())
        y = selective_scan(x, dt, -torch.exp(self.A_log.float()), B.float(), C.float())
        y = (y + x * self.D.float()) * F.silu(z.float())
        return self.out_proj(y)


class Block(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.mixer = Mixer(cfg)

    def forward(self, r):
        return r + self.mixer(self.norm(r)).float()  # residual stream in fp32


class Backbone(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embeddings.weight, std=0.02)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class TinyMamba(nn.Module):
    """MambaForCausalLM's structure and parameter names; lm_head is the embedding."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)

    def forward(self, ids):
        bb = self.backbone
        r = bb.embeddings(ids).float()
        for layer in bb.layers:
            r = layer(r)
        return F.linear(bb.norm_f(r), bb.embeddings.weight)


# --------------------------------------------------------------------------- data, eval, files


def load_split(name: str) -> torch.Tensor:
    return torch.frombuffer(bytearray((DATA / f"{name}.txt").read_bytes()), dtype=torch.uint8)


@torch.no_grad()
def evaluate(model: TinyMamba, data: torch.Tensor, seq_len: int, batch: int) -> float:
    """Mean cross-entropy (nats/byte) over every byte after the first, in
    non-overlapping windows of seq_len that each start from an empty state.
    In float32 (no autocast): the number describes the float32 checkpoint."""
    model.eval()
    dev = next(model.parameters()).device
    data = data.to(dev).long()
    n_win = (len(data) - 1) // seq_len
    total, count = 0.0, 0
    spans = [(i, seq_len) for i in range(0, n_win * seq_len, seq_len)]
    if (tail := len(data) - 1 - n_win * seq_len) > 0:
        spans.append((n_win * seq_len, tail))
    for k in range(0, len(spans), batch):
        group = spans[k : k + batch]
        for width in sorted({w for _, w in group}):
            starts = torch.tensor([s for s, w in group if w == width], device=dev)
            idx = starts[:, None] + torch.arange(width + 1, device=dev)
            seq = data[idx]
            logits = model(seq[:, :-1])
            total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += seq[:, 1:].numel()
    model.train()
    return total / count


def _atomic(path: Path, write) -> None:
    """Write through a temporary name and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_model(model: TinyMamba, out: Path) -> int:
    """config.json + model.safetensors exactly as MambaForCausalLM.save_pretrained
    lays them out (no lm_head.weight: transformers re-ties it on load)."""
    from safetensors.torch import save_file

    cfg = {**model.cfg.to_hf(), "dtype": "float32"}
    _atomic(out / "config.json", lambda p: p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n"))
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(out / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    return (out / "model.safetensors").stat().st_size


def write_reports(rep: Path, log: list[dict], info: dict, name: str = "mamba-tiny") -> None:
    """train_log.jsonl, loss_curve.png and TRAINING.md in the report folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _atomic(rep / "train_log.jsonl", lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in log)))
    fig, ax = plt.subplots(figsize=(6, 4))
    tr = [r for r in log if "loss" in r]
    ax.plot([r["step"] for r in tr], [r["loss"] for r in tr], label="train (mean since last point)")
    va = [r for r in log if "val_loss" in r]
    ax.plot([r["step"] for r in va], [r["val_loss"] for r in va], "o-", label="validation")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/byte)", title=f"{name} on Shakespeare")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _atomic(rep / "loss_curve.png", lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
    lines = [f"# {name} training run", ""] + [f"- {k}: {v}" for k, v in info.items()] + [
        "",
        "Validation: mean cross-entropy over every byte of `qsim/data/shakespeare/valid.txt` after the "
        "first, in non-overlapping windows of the training sequence length, each from an empty state.",
        "Files: `train_log.jsonl` (one line per logging step), `loss_curve.png`.",
        "",
    ]
    _atomic(rep / "TRAINING.md", lambda p: p.write_text("\n".join(lines)))


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Trainee:
    """What the loop trains: a model family's torch copy, its config and its start-up check."""

    name: str
    config: object
    build: Callable[[object], nn.Module]
    check: Callable[[torch.device], float]
    arch: str


MAMBA1 = Trainee("mamba-tiny", CONFIG, TinyMamba, check_scan,
                 f"Mamba-1, d_model {CONFIG.d_model}, n_layer {CONFIG.n_layer}, d_state {CONFIG.d_state}, "
                 f"d_conv {CONFIG.d_conv}, expand {CONFIG.expand}, dt_rank {CONFIG.dt_rank}, byte vocabulary 256")


def save_checkpoint(path: Path, state: dict) -> None:
    """Model, optimizer, generator, step, elapsed time and log: everything a resumed run needs."""
    _atomic(path, lambda p: torch.save(state, p))


def lr_at(step: int, progress: float, peak: float, warmup: int, p_warm: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from peak (at progress p_warm,
    where warmup ended) to 10 % of peak at progress 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    q = min(max((progress - p_warm) / max(1.0 - p_warm, 1e-9), 0.0), 1.0)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * q)))


def parse_args(argv, name: str = "mamba-tiny"):
    ap = argparse.ArgumentParser(description=f"Train the byte-level {name} on the shipped Shakespeare corpus.")
    ap.add_argument("--out", type=Path, required=True, help="model folder (config.json, model.safetensors)")
    ap.add_argument("--steps", type=int, default=1000,
                    help="at most this many optimizer steps (1000 x 64 x 256 bytes is ~6 epochs, about 70 s on an "
                         "H100; longer runs overfit the 2.6 MB corpus: validation rises after ~800-1000 steps)")
    ap.add_argument("--max-minutes", type=float, default=4.0, help="at most this much training time")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-dir", type=Path, default=Path(f"reports/{name}"))
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="training state file, written every --save-every steps and at the end; an existing one "
                         "is resumed (same arguments), so an interrupted run continues where it stopped")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=200, help="validation every N steps (0: only at the end)")
    return ap.parse_args(argv)


def main(argv=None, trainee: Trainee = MAMBA1) -> float:
    args = parse_args(argv, trainee.name)
    cfg = trainee.config
    t_start = time.time()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(args.seed)
    model = trainee.build(cfg).to(dev)  # initialised on the CPU generator: same weights on every device
    n_params = sum(p.numel() for p in model.parameters())
    dev_name = torch.cuda.get_device_name(dev) if cuda else f"cpu ({platform.processor() or platform.machine()})"
    print(f"{trainee.name}: d_model {cfg.d_model}, n_layer {cfg.n_layer}, {n_params:,} parameters, "
          f"checkpoint ~{n_params * 4 / 1e6:.2f} MB float32; device {dev_name}, torch {torch.__version__}", flush=True)
    print(f"scan self-check on {dev}: max relative error {trainee.check(dev):.1e}", flush=True)

    train_data = load_split("train").to(dev).long()
    valid_data = load_split("valid")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.endswith("A_log")]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.endswith("A_log"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), **({"fused": True} if cuda else {}))
    gen = torch.Generator(device=dev).manual_seed(args.seed + 1)  # on the device: no host sync per step
    offsets = torch.arange(args.seq_len + 1, device=dev)
    limit_s = args.max_minutes * 60
    log, step, p_warm, done_s = [], 0, 0.0, 0.0
    if args.checkpoint is not None and args.checkpoint.is_file():
        state = torch.load(args.checkpoint, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"].to(gen.device) if cuda else state["gen"])
        log, step, p_warm, done_s = state["log"], state["step"], state["p_warm"], state["elapsed_s"]
        print(f"resumed from {args.checkpoint}: step {step}, {done_s:.0f} s trained", flush=True)
    pending, last_t, last_step = [], time.perf_counter(), step
    t0 = last_t - done_s  # elapsed training time carries over a resume
    while step < args.steps and time.perf_counter() - t0 < limit_s:
        progress = max(step / args.steps, (time.perf_counter() - t0) / limit_s)
        if step == args.warmup:
            p_warm = progress
        lr = lr_at(step, progress, args.lr, args.warmup, p_warm)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train_data) - args.seq_len - 1, (args.batch_size, 1), generator=gen, device=dev)
        seq = train_data[starts + offsets]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):  # bf16 matmuls; scan in fp32
            logits = model(seq[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        pending.append(loss.detach())
        step += 1
        if step % args.log_every == 0 or step == args.steps:
            now = time.perf_counter()
            rec = {"step": step, "loss": round(torch.stack(pending).mean().item(), 4), "lr": lr,
                   "elapsed_s": round(now - t0, 1)}
            if args.eval_every and step % args.eval_every == 0:
                rec["val_loss"] = round(evaluate(model, valid_data, args.seq_len, args.batch_size), 4)
            tok_s = (step - last_step) * args.batch_size * args.seq_len / (now - last_t)
            print(f"step {step:5d}  loss {rec['loss']:.4f}  lr {lr:.2e}  {tok_s:,.0f} tok/s  {rec['elapsed_s']:.0f} s"
                  + (f"  val {rec['val_loss']:.4f}" if "val_loss" in rec else ""), flush=True)
            log.append(rec)
            pending, last_t, last_step = [], time.perf_counter(), step
        if args.checkpoint is not None and (step % args.save_every == 0 or step == args.steps):
            save_checkpoint(args.checkpoint, {"model": model.state_dict(), "opt": opt.state_dict(),
                                              "gen": gen.get_state(), "log": log, "step": step,
                                              "p_warm": p_warm, "elapsed_s": time.perf_counter() - t0})
    train_s = time.perf_counter() - t0
    val = evaluate(model, valid_data, args.seq_len, args.batch_size)
    log.append({"step": step, "val_loss": round(val, 4), "elapsed_s": round(train_s, 1), "final": True})
    size = save_model(model, args.out)
    print(f"done: {step} steps in {train_s:.0f} s; validation {val:.4f} nats/byte ({val / math.log(2):.3f} bits/byte); "
          f"wrote {args.out} ({size / 1e6:.2f} MB)"
          + (f"; peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB" if cuda else ""), flush=True)
    info = {
        "command": f"python -m {sys.modules[trainee.build.__module__].__spec__.name} " + " ".join(sys.argv[1:] if argv is None else argv),
        "date (UTC)": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "device": f"{dev_name}, torch {torch.__version__}, Python {platform.python_version()}",
        "architecture": trainee.arch,
        "parameters": f"{n_params:,} ({size / 1e6:.2f} MB float32 safetensors)",
        "training": f"{step} steps x {args.batch_size} x {args.seq_len} bytes ({step * args.batch_size * args.seq_len / 1e6:.1f} M), "
                    f"{train_s:.0f} s, AdamW lr {args.lr} warmup {args.warmup} cosine to 10 %, wd 0.1, clip 1.0, "
                    f"seed {args.seed}" + (", bf16 autocast" if cuda else ", float32"),
        "final validation cross-entropy": f"{val:.4f} nats/byte ({val / math.log(2):.3f} bits/byte)",
        "total wall time": f"{time.time() - t_start:.0f} s",
    }
    write_reports(args.report_dir, log, info, trainee.name)
    return val


if __name__ == "__main__":
    main()
