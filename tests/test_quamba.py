"""`quamba` numerics against an independent torch reference written from the README's description.

The reference reads only the artifact (integer tensors, scales) and implements
Quamba's W8A8 Mamba-1 forward in float64: int8 fake quantization by
round-half-to-even with clamp to [-128, 127] at u, x/z (one shared scale), the
SSM input (percentile scale), dt_r/B/C (one shared scale), dt_pre, the
Hadamard-rotated gated scan output (cast to fp16 first; the rotation's 1/sqrt(N)
and H^T are fused into out_proj's weights) and the final norm output; conv,
scan, SiLU and softplus in float.

Bounds (derived, per element; u = 2**-24 is fp32's unit roundoff). The
implementation runs in fp32, the reference in fp64 on the implementation's own
inputs to each stage (teacher forcing: every stage starts from the
implementation's recorded tensors, so an error cannot propagate and each
stage's bound is local):
- a dot product / conv of K terms (weights dequantized to fp32: one more
  rounding each) differs by at most gamma(K + 2) * sum|terms|, with
  gamma(k) = k u / (1 - k u) (Higham, Thm 3.1: any summation order);
- RMSNorm (mean of d squares, sqrt, divide, gain): relative (d + 8) u;
- SiLU and softplus: relative 16 u (NumPy's float32 exp/log1p are within
  4 ulp; each adds at most 4 more roundings) plus 1e-37 absolute (subnormals);
- the scan: a running first-order bound carried alongside the fp64 recurrence
  (see `_scan_ref`);
- the quantizer itself is checked exactly: the implementation's int8 value must
  equal round_half_even(fp32(x / s)) clamped, times s, for its own input x.
The gated scan output's pre-quantization value is internal to the hook, so its
int8 codes are compared with the reference's codes: a code may differ only by
one and only where the reference's x/s lies within the rotation's rounding
bound (4 u |x/s|) of a rounding tie, so the flips are at most the elements in that
band (measured: 0 flips; uniform fractional parts would predict 2.5 in the band).
With teacher forcing a flip cannot propagate, so the logits bound stays local.
Exact ties (rare in float data) are tested separately with crafted inputs.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from calib.calibrate import CalibSettings, calibrate
from qsim import float_model
from qsim.artifact import QuantizedModel
from qsim.bits import preset
from qsim.quamba import QUANT_POINTS, QuambaHook, dequant_weights
from qsim.text import read_text
from qsim.tokenizer import for_model
from qsim.weights import resolve

U = 2.0**-24
ELEM = 16 * U
SCALE_KEY = {"u": "u", "x_in": "xz", "z": "xz", "xs": "xs", "dtr": "xp", "B": "xp", "C": "xp",
             "dt_pre": "dt_pre"}


def gamma(k: int) -> float:
    return k * U / (1 - k * U)


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def sylvester(n: int) -> torch.Tensor:
    """Natural-order Sylvester Hadamard matrix, H_2n = [[H, H], [H, -H]] (symmetric, H H^T = n I)."""
    assert n & (n - 1) == 0, f"reference Hadamard covers powers of two only, got {n}"
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def quant32(x32: np.ndarray, s: float) -> torch.Tensor:
    """Quamba's fake quantizer in fp32: round(x / s) half to even, clamp to int8, times s."""
    s32 = torch.tensor(s, dtype=torch.float32)
    return torch.round(torch.from_numpy(np.ascontiguousarray(x32, np.float32)) / s32).clamp(-128, 127) * s32


def rmsnorm64(x: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def silu64(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def softplus64(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 20, x, torch.log1p(torch.exp(torch.clamp(x, max=20))))


def matmul_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return gamma(w.shape[1] + 2) * (x.abs() @ w.abs().T)


def ref_weights(qm: QuantizedModel) -> dict:
    """Float64 weights from the artifact's integers and scales (w8a8: int8 per tensor)."""
    m, t = qm.manifest, lambda name: t64(qm.t(name))
    lin = lambda name: t(f"{name}.q") * t(f"{name}.scale")[:, None]  # noqa: E731
    w = {"emb": t("embedding.q") * m["embedding"]["scale"], "norm_f": t("norm_f.g") * m["final_norm"]["g_scale"],
         "lm_head": lin("lm_head"), "layers": []}
    for i, L in enumerate(m["layers"]):
        p, qa = f"layers.{i}", L["quamba"]
        w["layers"].append({
            "norm": t(f"{p}.norm.g") * L["norm"]["g_scale"], "in_proj": lin(f"{p}.in_proj"),
            "conv_w": t(f"{p}.conv.w") * L["conv"]["w_scale"],
            "conv_b": t(f"{p}.conv.b") * (L["scales"]["x"] * L["conv"]["w_scale"]),  # stored at fixed's x scale
            "x_proj": lin(f"{p}.x_proj"), "dt_w": t(f"{p}.dt_proj.q") * L["dt_proj"]["w_scale"],
            "dt_b": t(f"{p}.quamba.dt_b") * qa["dt_b"], "A_log": t(f"{p}.quamba.A_log") * qa["A_log"],
            "D": t(f"{p}.quamba.D") * qa["D"], "out_proj": lin(f"{p}.out_proj"),
        })
    return w


class Tap:
    """Wraps the hook under test; records each named tensor it sees and what it returned."""

    def __init__(self, inner):
        self.inner = inner
        self.rec: dict[tuple[int, str], tuple[np.ndarray, np.ndarray | None]] = {}

    def __call__(self, layer, name, x):
        out = self.inner(layer, name, x)
        self.rec[(layer, name)] = (np.array(x), None if out is None else np.array(out))
        return out

    def value(self, layer, name) -> np.ndarray:
        """The tensor the forward went on with (the hook's replacement, else its input)."""
        x, out = self.rec[(layer, name)]
        return x if out is None else out


def _scan_ref(xs, dt, A, B, C, D, A_log):
    """fp64 selective scan with a first-order bound on the fp32 implementation's error.

    fp32: A = -exp(A_log) (exp 4 ulp, A_log rounded to fp32: |A_log| u), dt*A one
    rounding, so dA = exp(dt A) has relative error rho = |dt A| (6 + |A_log|) u + 4 u;
    dBx = dt x B two roundings. h_t = dA h_{t-1} + dBx:
    E_t <= dA E_{t-1} + dA |h_{t-1}| (rho + 2u) + 3u |dBx|; y_t = h_t . C_t + x D:
    err <= sum_n E_t |C| + gamma(N + 2) sum_n |h C| + 4u |x D|.
    """
    length, d = xs.shape
    dA = torch.exp(dt[:, :, None] * A[None])
    dBx = (dt * xs)[:, :, None] * B[:, None, :]
    rho = (dt[:, :, None] * A[None]).abs() * (6 + A_log.abs()[None]) * U + 4 * U
    h = torch.zeros(d, A.shape[1], dtype=torch.float64)
    e = torch.zeros_like(h)
    y, ey = torch.empty(length, d, dtype=torch.float64), torch.empty(length, d, dtype=torch.float64)
    for t in range(length):
        e = dA[t] * e + dA[t] * h.abs() * (rho[t] + 2 * U) + 3 * U * dBx[t].abs()
        h = dA[t] * h + dBx[t]
        y[t] = h @ C[t] + xs[t] * D
        ey[t] = e @ C[t].abs() + gamma(A.shape[1] + 2) * (h.abs() @ C[t].abs()) + 4 * U * (xs[t] * D).abs()
    return y, ey


def _close(name, got, ref, bound):
    got = t64(got)
    err = (got - ref).abs()
    bad = err > bound
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {bad.numel()} elements outside the bound; "
                           f"worst |diff| {float(err[bad].max()):.3g}")


def _quantized(tap, layer, name, s):
    """The hook's int8 output for its own input must be exactly Quamba's quantizer."""
    x, out = tap.rec[(layer, name)]
    assert out is not None and out.dtype == np.float32, name
    want = quant32(x, s)
    assert torch.equal(torch.from_numpy(out), want), (
        f"layer {layer} {name}: {int((torch.from_numpy(out) != want).sum())} values differ from "
        f"round-half-even(x / s) clamped to int8 with s = {s:.6g}")


@pytest.fixture(scope="module")
def traced():
    """The shipped trained mamba-tiny (d_inner 512), calibrated w8a8 with Hadamard and percentile, run on 128 bytes."""
    lm = resolve("mamba-tiny", require_weights=True)
    text, _ = read_text("shakespeare/calib.txt")
    tok = for_model(lm.folder, lm.config.vocab_size)
    qm = calibrate(lm, preset("w8a8"), CalibSettings(samples=4, seq_len=128), tok.encode(text[:200_000]), "calib")
    tokens = np.asarray(tok.encode(text[-3000:])[:128], np.int64)  # away from the calibration windows
    hook = QuambaHook(qm, preset("w8a8"), record={"x_in", "z", "scan", "out_proj_in"})
    tap = Tap(hook)
    logits = float_model.forward(qm.config, dequant_weights(qm), tokens, tap)
    return qm, tokens, hook, tap, logits


def test_shared_scales_are_the_ones_that_matter(traced):
    """x/z share max(|x|, |z|)/127 and dt_r/B/C share their max; the data must tell shared from own."""
    qm = traced[0]
    assert qm.manifest["hadamard"] and qm.manifest["bits"]["act_bits"] == 8
    sc = [L["scales"] for L in qm.manifest["layers"]]
    for s in sc:
        assert s["xz"] == max(s["x"], s["z"]) and s["xp"] == max(s["dtr"], s["B"], s["C"])
    for own, shared in (("x", "xz"), ("z", "xz"), ("dtr", "xp"), ("B", "xp"), ("C", "xp")):
        assert any(s[own] < s[shared] for s in sc), f"no layer where {own}'s own scale differs from {shared}"


def test_quamba_forward_matches_reference_stage_by_stage(traced):
    qm, tokens, hook, tap, logits = traced
    cfg = qm.config
    w = ref_weights(qm)
    eps = cfg.layer_norm_epsilon
    di, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
    H = sylvester(di)
    v = lambda i, name: t64(tap.value(i, name))  # noqa: E731
    x_of = lambda i, name: tap.rec[(i, name)][0]  # noqa: E731

    emb = w["emb"][torch.from_numpy(tokens)]
    _close("embedding", x_of(0, "residual"), emb, U * emb.abs())
    clipped_xs = 0
    for i, lw in enumerate(w["layers"]):
        sc = qm.layer(i)["scales"]
        for name in SCALE_KEY:
            _quantized(tap, i, name, sc[SCALE_KEY[name]])
        res = v(i, "residual")
        uref = rmsnorm64(res, lw["norm"], eps)
        _close(f"{i} u", x_of(i, "u"), uref, (cfg.d_model + 8) * U * uref.abs())

        uq = v(i, "u")
        xz = uq @ lw["in_proj"].T
        b = matmul_bound(uq, lw["in_proj"])
        _close(f"{i} x_in", x_of(i, "x_in"), xz[:, :di], b[:, :di])
        _close(f"{i} z", x_of(i, "z"), xz[:, di:], b[:, di:])
        assert np.array_equal(hook.seen[(i, "x_in")][0], tap.value(i, "x_in"))
        assert np.array_equal(hook.seen[(i, "z")][0], tap.value(i, "z"))

        xq, k = v(i, "x_in"), cfg.d_conv
        xp = torch.cat([torch.zeros(k - 1, di, dtype=torch.float64), xq])
        terms = torch.stack([xp[j : j + len(xq)] * lw["conv_w"][:, j] for j in range(k)])
        pre = lw["conv_b"] + terms.sum(0)
        _close(f"{i} conv", x_of(i, "conv_pre"), pre, gamma(k + 3) * (lw["conv_b"].abs() + terms.abs().sum(0)))

        xs_ref = silu64(v(i, "conv_pre"))
        _close(f"{i} xs", x_of(i, "xs"), xs_ref, ELEM * xs_ref.abs() + 1e-37)
        clipped_xs += int((xs_ref.abs() / sc["xs"] > 127.5).sum())

        xsq = v(i, "xs")
        p, b = xsq @ lw["x_proj"].T, matmul_bound(xsq, lw["x_proj"])
        for name, sl in (("dtr", slice(0, r)), ("B", slice(r, r + n)), ("C", slice(r + n, None))):
            _close(f"{i} {name}", x_of(i, name), p[:, sl], b[:, sl])

        dtrq = v(i, "dtr")
        dt_pre = dtrq @ lw["dt_w"].T + lw["dt_b"]
        _close(f"{i} dt_pre", x_of(i, "dt_pre"), dt_pre,
               gamma(r + 3) * (dtrq.abs() @ lw["dt_w"].abs().T + lw["dt_b"].abs()))
        dt_ref = softplus64(v(i, "dt_pre"))
        _close(f"{i} dt", x_of(i, "dt"), dt_ref, ELEM * dt_ref.abs() + 1e-37)
        sz_ref = silu64(v(i, "z"))
        _close(f"{i} silu(z)", x_of(i, "sz"), sz_ref, ELEM * sz_ref.abs() + 1e-37)

        A = -torch.exp(lw["A_log"])
        y, ey = _scan_ref(xsq, v(i, "dt"), A, v(i, "B"), v(i, "C"), lw["D"], lw["A_log"])
        sz = v(i, "sz")
        yg = y * sz
        _close(f"{i} gated scan", x_of(i, "y"), yg, ey * sz.abs() + U * yg.abs())

        # fp16 scan output: the cast of the implementation's own fp32 value, exactly
        y16 = torch.from_numpy(x_of(i, "y")).to(torch.float16).to(torch.float64)
        assert torch.equal(t64(hook.seen[(i, "scan")][0]), y16), f"{i}: scan output is not its fp16 cast"
        rot = y16 @ H.T / math.sqrt(di)
        s = sc["yo"]
        code = torch.round(v(i, "y") / s)
        # int8 code x fp32(s), rounded to fp32: |s32 - s| <= u s, then one product rounding
        assert (v(i, "y") - code * s).abs().max() <= 2 * 128 * U * s, f"{i}: out_proj input is not int8 x scale"
        want = torch.round(rot / s).clamp(-128, 127)
        band = 4 * U * (rot / s).abs()
        near_tie = ((rot / s - torch.floor(rot / s) - 0.5).abs() <= band) & ((rot / s).abs() < 127.5)
        diff = code != want
        assert not (diff & ~near_tie).any() and (code - want).abs().max() <= 1, (
            f"{i}: {int((diff & ~near_tie).sum())} out_proj input codes differ away from a rounding tie")
        unrot = v(i, "y") @ H / math.sqrt(di)
        _close(f"{i} out_proj_in record", hook.seen[(i, "out_proj_in")][0], unrot,
               3 * U * (v(i, "y").abs() @ H.abs() / math.sqrt(di)))

        yq = v(i, "y")
        out = yq @ lw["out_proj"].T
        _close(f"{i} out_proj", x_of(i, "out"), out, matmul_bound(yq, lw["out_proj"]))
        nxt = res + v(i, "out")
        _close(f"{i} residual", x_of(i + 1, "residual"), nxt, U * nxt.abs())

    L = cfg.n_layer
    _quantized(tap, L, "u_f", qm.manifest["final_norm"]["out_scale"])
    uf = rmsnorm64(v(L, "residual"), w["norm_f"], eps)
    _close("u_f", x_of(L, "u_f"), uf, (cfg.d_model + 8) * U * uf.abs())
    ufq = v(L, "u_f")
    _close("logits", logits, ufq @ w["lm_head"].T, matmul_bound(ufq, w["lm_head"]))
    # the percentile scale clips: the clamp is exercised, and counted as the reference counts it
    assert hook.saturation["xs"] == clipped_xs > 0


def test_rounding_ties_go_to_even_at_every_point(traced):
    """x/s exactly k + 1/2 (power-of-two scales, no rotation): ties to even, clamp to [-128, 127]."""
    qm = traced[0]
    m = copy.deepcopy(qm.manifest)
    m["hadamard"] = False
    s = 2.0**-3
    for L in m["layers"]:
        L["scales"] = {k: s for k in L["scales"]}
    m["final_norm"]["out_scale"] = s
    hook = QuambaHook(QuantizedModel(m, qm.tensors), preset("w8a8"))
    halves = np.arange(-131, 131, dtype=np.float32) + np.float32(0.5)
    x = (halves * np.float32(s))[None, :]
    want = (torch.round(torch.from_numpy(halves)).clamp(-128, 127) * s)[None]
    assert want[0, 131].item() == 0.0 and want[0, 132].item() == 2 * s  # 0.5 -> 0, 1.5 -> 2
    for name in (*QUANT_POINTS, "y"):
        layer = qm.config.n_layer if name == "u_f" else 0
        got = hook(layer, name, x)
        assert torch.equal(torch.from_numpy(got), want), name
