"""Each kernel against the qsim op it must equal, on random and edge inputs, and the whole
executor against FixedExecutor(numpy): on a GPU (`cuda`), and on the CPU emulator (`emu`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu import ops
from gpu.layout import P1_MAX, hadamard_plan, lay_linear
from qsim import spec, tables
from qsim.config import MambaConfig
from qsim.fixed import ops as ref
from qsim.qweights import IntLinear

I64 = np.iinfo(np.int64)


def dev(a, dtype, device):
    return ops.to_device(a, dtype, device)


def counters(device, n=2):
    return torch.zeros(n, dtype=torch.int64, device=device)


def grid_sms(device) -> int | None:
    """The GPU's own grids; in emulation grids for one multiprocessor, so every warp loops over
    many rows (each GEMV core's loop beyond its prefetched first group runs)."""
    return None if device.type == "cuda" else 1


def test_requantize_rounds_half_up_saturates_and_counts(device):
    rng = np.random.default_rng(0)
    cols = 70
    m = rng.integers(1 << 14, 1 << 15, cols)
    s = rng.integers(0, 40, cols)
    s[:4] = 0
    acc = rng.integers(-(1 << 31), 1 << 31, (9, cols))
    acc[0] = 0
    acc[1] = np.iinfo(np.int32).max
    acc[2] = np.iinfo(np.int32).min
    for bits, kind in ((8, ops.OUT_I8), (24, ops.OUT_I32)):
        c = counters(device)
        got = ops.requantize(dev(acc, np.int32, device), dev(m, np.int32, device), dev(s, np.int32, device), bits,
                             out_kind=kind, cnt=c[0])
        want, n = spec.requantize(acc, m, s, bits)
        assert np.array_equal(got.cpu().numpy(), want) and int(c[0]) == n and n > 0


def test_requantize_ties_round_up_on_negative_values(device):
    s = np.array([1, 2, 3, 5, 9])
    acc = -np.array([[1, 2, 4, 16, 256], [3, 6, 12, 48, 768]])  # acc * 1 = -(2k+1) * 2**(s-1)
    m = np.ones(5, np.int64)
    got = ops.requantize(dev(acc, np.int32, device), dev(m, np.int32, device), dev(s, np.int32, device), 8,
                         out_kind=ops.OUT_I8)
    assert np.array_equal(got.cpu().numpy(), spec.requantize(acc, m, s, 8)[0])
    assert got.cpu().numpy()[0, 0] == 0 and got.cpu().numpy()[1, 0] == -1  # -0.5 -> 0, -1.5 -> -1


def test_requantize_with_bias_table_and_residual(device):
    rng = np.random.default_rng(1)
    acc, bias = rng.integers(-(1 << 20), 1 << 20, (5, 33)), rng.integers(-(1 << 16), 1 << 16, 33)
    lut = tables.softplus_table(0.05, 0.01)
    c = counters(device, 3)
    pre = torch.empty((5, 33), dtype=torch.int8, device=device)
    m1, s1 = dev([23000], np.int32, device), dev([19], np.int32, device)
    got = ops.requantize(dev(acc, np.int32, device), m1, s1, 8, out_kind=ops.OUT_I16, bias=dev(bias, np.int32, device),
                         lut=dev(lut, np.int16, device), pre=pre, cnt=c[0])
    q, n = spec.requantize(acc + bias, 23000, 19, 8)
    assert np.array_equal(pre.cpu().numpy(), q) and np.array_equal(got.cpu().numpy(), ref.lut(q, lut))
    assert int(c[0]) == n and got.cpu().numpy().max() > 255  # dt wider than a byte survives
    r = rng.integers(-(1 << 23), 1 << 23, (5, 33))
    r[0] = (1 << 23) - 1  # the residual add saturates
    rt = dev(r, np.int32, device)
    out = ops.requantize(dev(acc, np.int32, device), m1, dev([10], np.int32, device), 24, out_kind=ops.OUT_I32,
                         resid=rt, cnt=c[1], cnt_resid=c[2])
    o, n1 = spec.requantize(acc, 23000, 10, 24)
    r2, n2 = spec.saturate(r + o, 24)
    assert np.array_equal(out.cpu().numpy(), o) and np.array_equal(rt.cpu().numpy(), r2)
    assert (int(c[1]), int(c[2])) == (n1, n2) and n2 > 0


def test_rmsnorm_matches_ops(device):
    rng = np.random.default_rng(2)
    d = 96
    r = rng.integers(-(1 << 23), 1 << 23, (6, d))
    r[0] = 0  # only eps
    r[1] = -(1 << 23)  # full scale
    r[2] = rng.integers(-3, 4, d)  # tiny: negative normalisation shift
    g = rng.integers(-32767, 32768, d)
    for eps, m, s in ((1, 20000, 20), (12345678901, 31000, 12)):
        c = counters(device)
        got = ops.rmsnorm(dev(r, np.int32, device), dev(g, np.int16, device), eps, m, s,
                          dev(tables.rsqrt_table(), np.int32, device), c[0])
        want, n = ref.rmsnorm(r, g, eps, m, s, tables.rsqrt_table())
        assert np.array_equal(got.cpu().numpy(), want) and int(c[0]) == n


@pytest.mark.parametrize("rows", [1, 5, 40])
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_linear_then_requantize_matches_ops(device, rows, fmt):
    rng = np.random.default_rng(3)
    n, k = 45, 200  # neither a multiple of the vector widths: padding is exercised
    if fmt == "int8":
        lin = IntLinear(rng.integers(-128, 128, (n, k)).astype(np.int8))
    else:
        lin = IntLinear(rng.integers(-8, 8, (n, k)).astype(np.int8), rng.integers(1, 256, (n, 2)).astype(np.uint8), 128)
    x = rng.integers(-128, 128, (rows, k))
    m, s = rng.integers(1 << 14, 1 << 15, n), rng.integers(8, 24, n)
    c = counters(device)
    got = ops.linear_requant(dev(x, np.int8, device), ops.DeviceLinear.of(lay_linear(lin), device),
                             dev(m, np.int32, device), dev(s, np.int32, device), 8, out_kind=ops.OUT_I8, cnt=c[0])
    want, nsat = spec.requantize(ref.linear(x, lin), m, s, 8)
    assert np.array_equal(got.cpu().numpy(), want) and int(c[0]) == nsat


@pytest.mark.parametrize("L", [1, 3, 37])
def test_conv_matches_ops(device, L):
    rng = np.random.default_rng(4)
    di, K = 300, 4
    x = rng.integers(-128, 128, (L, 2 * di))[:, :di]  # a strided view, as the x half of xz
    state, w = rng.integers(-128, 128, (K - 1, di)), rng.integers(-128, 128, (di, K))
    b = rng.integers(-(1 << 20), 1 << 20, di)
    lut = tables.silu_table(0.05, 0.04)
    xt = dev(rng.integers(-128, 128, (L, 2 * di)), np.int8, device)
    xt[:, :di] = dev(x, np.int8, device)
    st, c = dev(state, np.int8, device), counters(device)
    pre = torch.empty((L, di), dtype=torch.int8, device=device)
    xs = ops.conv(xt[:, :di], st, dev(w, np.int8, device), dev(b, np.int32, device), 24000, 14,
                  dev(lut, np.int16, device), c[0], pre)
    acc, new_state = ref.conv(x, state, w, b)
    q, n = spec.requantize(acc, 24000, 14, 8)
    assert np.array_equal(pre.cpu().numpy(), q) and np.array_equal(xs.cpu().numpy(), ref.lut(q, lut))
    assert np.array_equal(st.cpu().numpy(), new_state) and int(c[0]) == n and n > 0


def _scan_params(rng, di, n, state_bits, frac, s_y):
    wide = state_bits > 24
    return {"a_q": rng.integers(0, 65536, (di, n)), "frac": frac,
            "Dq": rng.integers(-(1 << (state_bits - 2)), 1 << (state_bits - 2), di),  # D x about as large as C.h
            "m_h": int(rng.integers(1 << 30, 1 << 31)) if wide else int(rng.integers(1 << 14, 1 << 15)),
            "s_h": int(rng.integers(30, 40)) if wide else int(rng.integers(6, 16)),
            "m_y": rng.integers(1 << 14, 1 << 15, di), "s_y": s_y + rng.integers(0, 3, di),
            "exp_tab": tables.exp2_frac_table(),
            "state_bits": state_bits}


# Channel 0: dt = DT_MAX, a = 65535 and, every other token, no input, so the decay alone shows; with
# frac >= 26, dt * a plus the rounding half passes 2**31. Gates reach ~32000 (an int8 gate wraps) and
# y's accumulator is shifted by 3, 15 and 0 bits (state_bits 13 is the widest unshifted); m_y and s_y
# differ per channel (s_y up to two above the value given), keeping most outputs unsaturated, so a missing
# or misrounded shift, or one channel's multiplier applied to another, shows.
@pytest.mark.parametrize("n,state_bits,frac,s_y", [(16, 16, 30, 35), (8, 28, 9, 32), (32, 13, 26, 36)])
def test_scan_matches_ops(device, n, state_bits, frac, s_y):
    rng = np.random.default_rng(5 + n)
    L, di = 21, 40
    p = _scan_params(rng, di, n, state_bits, frac, s_y)
    xs, z = rng.integers(-128, 128, (L, di)), rng.integers(-128, 128, (L, di))
    dt = rng.integers(0, spec.DT_MAX + 1, (L, di)) >> rng.integers(0, spec.DT_BITS, (L, di))  # every magnitude
    dt[:, 0], p["a_q"][0], xs[::2, 0] = spec.DT_MAX, 65535, 0
    B, C = rng.integers(-128, 128, (L, n)), rng.integers(-128, 128, (L, n))
    h0 = rng.integers(-(1 << (state_bits - 1)), 1 << (state_bits - 1), (di, n))
    silu_z = tables.gate_table(0.05, 6.5 / spec.GATE_MAX)
    h, c = dev(h0, np.int32, device), counters(device)
    y = ops.scan(dev(xs, np.int8, device), dev(dt, np.int16, device), dev(B, np.int8, device), dev(C, np.int8, device),
                 dev(z, np.int8, device), dev(silu_z, np.int16, device), h, ops.ScanParams.of(p, device), c[0], c[1])
    y_ref, h_ref, sat_h, sat_y = ref.scan(xs, dt, B, C, ref.lut(z, silu_z), h0, p)
    assert np.array_equal(y.cpu().numpy(), y_ref) and np.array_equal(h.cpu().numpy(), h_ref)
    assert (int(c[0]), int(c[1])) == (sat_h, sat_y) and sat_h + sat_y > 0 and sat_y < y_ref.size // 20


@pytest.mark.parametrize("n", [64, 192, 320, 512])
def test_hadamard_matches_ops_in_one_and_two_stages(device, n):
    rng = np.random.default_rng(n)
    lo, hi = spec.int_range(spec.GATED_BITS)
    y = rng.integers(lo, hi + 1, (5, n))
    y[0], y[1] = hi, lo
    m, s = spec.quantize_multiplier(127 / (1 << 15) / n**0.5 * 8)
    want_had = ref.hadamard_rows(y)
    want, nsat = spec.requantize(want_had, m, s, 8)
    for p1_max in (n, P1_MAX, 16):
        plan, c = hadamard_plan(n, p1_max), counters(device)
        y_had, yo = ops.hadamard_rq(dev(y, np.int16, device), plan, dev(plan.O, np.int8, device), m, s, c[0])
        assert np.array_equal(y_had.cpu().numpy(), want_had) and np.array_equal(yo.cpu().numpy(), want)
        assert int(c[0]) == nsat and nsat > 0


def _models(tiny_artifacts):
    from gpu.synth import synthetic_artifact

    return {"tiny-w8a8": tiny_artifacts[1]["w8a8"], "tiny-w4a8": tiny_artifacts[1]["w4a8"],
            # d_inner 384 = 12 * 32: stage 2 of order 12; 512 = 2 * 256 in decode: Sylvester stage 2
            "d192-w8a8": synthetic_artifact(MambaConfig(d_model=192, n_layer=2, vocab_size=256), "w8a8"),
            "d256-w4a8": synthetic_artifact(MambaConfig(d_model=256, n_layer=1, vocab_size=256), "w4a8",
                                            hadamard=False)}


@pytest.mark.parametrize("model", ["tiny-w8a8", "tiny-w4a8", "d192-w8a8", "d256-w4a8"])
def test_executor_prefill_and_steps_equal_the_reference(device, tiny_artifacts, model):
    from gpu.check import compare_model
    from gpu.executor import CudaExecutor
    from qsim.text import read_text
    from qsim.tokenizer import for_model

    qm = _models(tiny_artifacts)[model]
    text, _ = read_text("shakespeare/valid.txt")
    prompt, steps = (24, 3) if device.type == "cpu" else (300, 20)
    tokens = for_model(None, 256).encode(text[2000: 2000 + prompt + steps])
    res = compare_model(qm, tokens, steps, CudaExecutor(qm, device, sms=grid_sms(device)))
    parts = (res["prefill"]["tensors"], res["steps"])
    bad = {k: v for part in parts for k, v in part.items() if not v.get("equal", True)}
    assert res["passed"], bad


@pytest.fixture(scope="module")
def mamba_tiny():
    """The shipped trained checkpoint (d_model 256, d_inner 512, 5 layers), calibrated W8A8."""
    from calib.calibrate import CalibSettings, calibrate
    from qsim.bits import preset
    from qsim.text import read_text
    from qsim.tokenizer import for_model
    from qsim.weights import resolve

    text, _ = read_text("shakespeare/calib.txt")
    tokens = for_model(None, 256).encode(text[:100_000])
    return calibrate(resolve("mamba-tiny", require_weights=True), preset("w8a8"),
                     CalibSettings(samples=2, seq_len=128), tokens, "calib.txt")


@pytest.mark.parametrize("device", ["cuda", "emu-shuffled-2"], indirect=True)
def test_a_256_token_prompt_on_the_devices_grids_equals_the_reference(device, mamba_tiny):
    """The device's own multiprocessor count sizes the decode grids (132 on the emulated H100, as on
    a real one), and the prompt spans many blocks of every prefill kernel: every traced tensor, the
    state and the saturation counts equal FixedExecutor(numpy)'s. A third block and thread order."""
    from gpu.check import compare_model
    from gpu.executor import CudaExecutor
    from qsim.text import read_text
    from qsim.tokenizer import for_model

    ex = CudaExecutor(mamba_tiny, device)
    assert ex.sms == torch.cuda.get_device_properties(device).multi_processor_count
    text, _ = read_text("shakespeare/valid.txt")
    tokens = for_model(None, 256).encode(text[5000: 5000 + 256 + 2])
    res = compare_model(mamba_tiny, tokens, 2, ex)
    parts = (res["prefill"]["tensors"], res["steps"])
    bad = {k: v for part in parts for k, v in part.items() if not v.get("equal", True)}
    assert res["prefill_tokens"] == 256 and res["passed"], bad


def test_last_only_prefill_is_the_last_row_of_the_full_one(device, tiny_artifacts):
    """What gpu.bench times as TTFT: the prompt's last logits only, and the same state."""
    from gpu.executor import CudaExecutor

    qm = tiny_artifacts[1]["w8a8"]
    ex = CudaExecutor(qm, device, sms=grid_sms(device))
    ids = np.arange(5, 45) % 256
    full, s_full = ex.prefill_device(ids)
    last, s_last = ex.prefill_device(ids, last_only=True)
    assert last.shape == (1, qm.config.vocab_size) and torch.equal(last[0], full[-1])
    assert torch.equal(s_full.h, s_last.h) and torch.equal(s_full.conv, s_last.conv)
    # the memory floor's bytes: at least every layer weight and the state, at most the artifact and the state
    c = qm.config
    state = c.n_layer * c.d_inner * (4 * c.d_state + c.d_conv - 1)
    weights = sum(qm.t(f"layers.{i}.{n}.q").nbytes for i in range(c.n_layer)
                  for n in ("in_proj", "x_proj", "dt_proj", "out_proj"))
    assert weights + state < ex.decode_bytes() <= sum(a.nbytes for a in qm.tensors.values()) + state


def test_qsim_run_with_the_cuda_executor_reports_what_numba_does(device, hf_checkpoint, monkeypatch):
    """`python -m qsim run --executor cuda`: the same fixed figures as the CPU executor, to the bit."""
    from calib.calibrate import CalibSettings
    from gpu.executor import CudaExecutor
    from qsim import run as qrun

    if device.type == "cpu":  # emulated kernels on torch CPU tensors
        cpu_executor = qrun.fixed_executor
        monkeypatch.setattr(qrun, "fixed_executor", lambda qm, name: CudaExecutor(qm, device, sms=1)
                            if name == "cuda" else cpu_executor(qm, name))
    opts = dict(model=str(hf_checkpoint[0]), seq_len=48, eval_seqs=2, calib=CalibSettings(samples=2, seq_len=64))
    cpu, gpu = (qrun.run(qrun.RunOptions(executor=e, **opts)) for e in ("numba", "cuda"))
    assert gpu["fixed_executor"] == "cuda" and cpu["fixed_executor"] == "numba"
    assert "fixed" in cpu["nats_per_token"] and sum(cpu["saturation"]["fixed"].values()) > 0
    for key in ("nats_per_token", "perplexity", "agreement_vs_float", "sqnr_db", "saturation"):
        assert gpu[key] == cpu[key], key


def test_decode_graph_replays_the_step(device, tiny_artifacts):
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    from gpu.executor import CudaExecutor, GpuState

    ex = CudaExecutor(tiny_artifacts[1]["w8a8"], device)
    logits, s_graph = ex.prefill_device(np.arange(40) % 256)
    s_eager = GpuState(s_graph.conv.clone(), s_graph.h.clone())
    ws = ex._workspace()
    first = int(torch.argmax(logits[-1]))
    ws.tok.fill_(first)
    graph = ex.decode_graph(s_graph)  # its eager warm-up takes the first step on s_graph
    logits, s_eager = ex.step(first, s_eager)
    for _ in range(4):
        nxt = int(np.argmax(logits))
        ws.tok.fill_(nxt)
        graph.replay()
        g_logits = ws.logits.cpu().numpy()
        assert int(ws.tok) == int(np.argmax(g_logits))  # the graph wrote the next greedy token
        logits, s_eager = ex.step(nxt, s_eager)
        assert np.array_equal(g_logits, logits)
        assert torch.equal(s_graph.h, s_eager.h) and torch.equal(s_graph.conv, s_eager.conv)


def test_fp16_baseline_and_plain_step_follow_the_float_model(device):
    from gpu.baseline_fp16 import Fp16Model, Fp16Weights, TorchStep
    from qsim import float_model, weights

    cfg = MambaConfig(d_model=64, n_layer=2, vocab_size=256)
    w = weights.synthetic_weights(cfg)
    toks = np.random.default_rng(7).integers(0, 256, 12)
    want = float_model.forward(cfg, w, toks)
    fw = Fp16Weights.from_float(cfg, w, device)
    model, plain = Fp16Model(fw, sms=grid_sms(device)), TorchStep(fw)
    st, st2 = model.new_state(), model.new_state()
    got = model.prefill(torch.as_tensor(toks[:8], device=device), st, last_only=False)
    tol = 2e-2 * np.abs(want).max()
    assert np.abs(got.cpu().numpy() - want[:8]).max() < tol
    for j in range(12):
        plain.tok.fill_(int(toks[j]))
        lp = plain.decode(st2)
        if j >= 8:
            model.tok.fill_(int(toks[j]))
            lg = model.decode(st)
            assert np.abs(lg.cpu().numpy() - want[j]).max() < tol
        assert np.abs(lp.cpu().numpy() - want[j]).max() < tol


def test_golden_sets_pass_through_the_kernels(device):
    from gpu.check import GOLDEN, _all_equal, check_golden

    if not GOLDEN.is_dir():
        pytest.skip(f"{GOLDEN} does not exist yet")
    res = check_golden(GOLDEN, device)
    assert res and all(_all_equal(v) for v in res.values()), {k: v for k, v in res.items() if not _all_equal(v)}
