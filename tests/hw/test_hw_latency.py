"""The GPU latency model: kernels and bytes of a pass, the closed-form fit, leave-one-out, and the
published fit's physical ranges and issue 15's targets."""

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from qsim.bits import PRESETS
from qsim.errors import QsimError
from qsim.hw.devices import DEVICES
from qsim.hw.latency import (
    Implementation,
    LatencyParams,
    pass_work,
    predict,
    seconds,
    terms,
)
from qsim.hw.latency_fit import TARGETS, Point, complete, fit, leave_one_out, points
from qsim.hw.shapes import RecipeFeatures, model_shape

W8A8, W4A8, W4A16, FP16 = (PRESETS[b] for b in ("w8a8", "w4a8", "w4a16", "fp16"))
SHAPE = model_shape("mamba-130m")
KNOWN = LatencyParams({"a5000": 0.8, "orin-nano-8g": 0.7}, {"a5000": 3e-6, "orin-nano-8g": 2e-5},
                      {"fp16": 0.6, "int8": 0.45}, 0.04)


def test_kernels_per_pass_follow_the_op_list_and_the_recipes_online_work():
    def kernels(bits, impl):
        return sum(w.kernels for w in pass_work(SHAPE, bits, impl, 1, decode=True))

    layers = SHAPE.n_layer
    # embedding + per layer norm, in_proj, conv, x_proj, dt_proj, scan (silu_z fused), hadamard, out_proj
    # + final norm and lm_head
    assert kernels(W8A8, Implementation()) == 1 + 8 * layers + 2
    assert kernels(W8A8, Implementation(online_hadamard=False)) == 1 + 8 * layers + 2  # out_in instead
    assert kernels(FP16, Implementation(online_hadamard=False)) == 1 + 7 * layers + 2
    # per-token scales: one reduction per linear input (in_proj, x_proj, dt_proj, out_proj) and lm_head
    assert kernels(W8A8, Implementation(per_token_scales=True)) == 1 + 12 * layers + 3


def test_decode_bytes_are_weights_activations_and_state_at_the_implementations_width():
    impl = Implementation(state_bits=8)
    work = pass_work(SHAPE, W8A8, impl, 1, decode=True)
    ops = SHAPE.ops(W8A8, RecipeFeatures())
    acts = sum(sum(op.act_bytes(W8A8)) * k for op, k in ops)
    ssm = sum(op.state for op in SHAPE.layer_ops if op.state_word) * SHAPE.n_layer  # one byte each
    conv = sum(op.state for op in SHAPE.layer_ops if not op.state_word) * SHAPE.n_layer
    assert sum(w.bytes for w in work) == SHAPE.weight_bytes(W8A8) + acts + 2 * (ssm + conv)
    wide = pass_work(SHAPE, W8A8, Implementation(), 1, decode=True)
    assert sum(w.bytes for w in wide) - sum(w.bytes for w in work) == 2 * 3 * ssm  # 32-bit words


def test_prefill_counts_gemms_on_the_tensor_cores_and_int4_dequantization():
    work = {w.name: w for w in pass_work(SHAPE, W4A8, Implementation(), 64, decode=False)}
    in_proj = next(op for op in SHAPE.layer_ops if op.name == "in_proj")
    assert work["in_proj"].tc_class == "int8" and work["in_proj"].tc_ops == 2 * in_proj.macs * 64 * SHAPE.n_layer
    assert work["in_proj"].dequant == in_proj.weights[0].elems * 64 * SHAPE.n_layer
    x_proj = next(op for op in SHAPE.layer_ops if op.name == "x_proj")
    assert work["x_proj"].dequant == x_proj.weights[0].elems * 64 * SHAPE.n_layer  # 4-bit, as in Quamba2's W4A8
    assert work["dt_proj"].dequant == 0  # 8-bit weights in w4a8
    assert work["lm_head"].tc_ops == 2 * SHAPE.lm_head.macs  # the last token only
    assert work["conv"].tc_class is None and work["scan"].tc_ops == 0
    assert {w.tc_class for w in pass_work(SHAPE, W4A16, Implementation(), 64, decode=False)} == {None, "fp16"}


def test_time_is_the_sum_of_terms_and_each_op_counts_on_its_bound():
    dev = DEVICES["a5000"]
    work = pass_work(SHAPE, W8A8, Implementation(), 1, decode=True)
    t = terms(work, dev, KNOWN)
    assert set(t) == {"eta:a5000", "tau:a5000"}  # a decode step is memory-bound everywhere
    assert t["eta:a5000"] == pytest.approx(sum(w.bytes for w in work) / 768e9)
    assert seconds(work, dev, KNOWN) == pytest.approx(t["eta:a5000"] / 0.8 + t["tau:a5000"] * 3e-6)
    prefill = terms(pass_work(SHAPE, W4A8, Implementation(), 1024, decode=False), dev, KNOWN)
    assert {"eps:int8", "kappa", "eta:a5000", "tau:a5000"} <= set(prefill)


def _synthetic_points():
    """Published-like points whose figures KNOWN produces exactly."""
    configs = [("a5000", "mamba-2.8b", "fp16", "TPOT"), ("a5000", "mamba-2.8b", "w8a8", "TPOT"),
               ("a5000", "mamba-130m", "w8a8", "TPOT"), ("a5000", "mamba-2.8b", "w4a8", "TTFT"),
               ("a5000", "mamba-2.8b", "fp16", "TTFT"), ("a5000", "mamba-2.8b", "w8a8", "TTFT"),
               ("orin-nano-8g", "mamba-2.8b", "w8a8", "TPOT"), ("orin-nano-8g", "mamba-130m", "fp16", "TPOT"),
               ("orin-nano-8g", "mamba-1.4b", "w4a16", "TTFT"), ("orin-nano-8g", "mamba-2.8b", "w4a8", "TTFT")]
    pts = []
    for dev, model, bits, metric in configs:
        p = Point(dev, model, bits, "synthetic", metric, 1024, 1.0, Implementation(), "test")
        pts.append(replace(p, published_ms=seconds(p.work(), DEVICES[dev], KNOWN) * 1e3))
    return pts


def test_fit_recovers_the_parameters_that_made_the_points_and_leave_one_out_predicts_them():
    pts = _synthetic_points()
    got = fit(pts)
    for name, value in KNOWN.linear().items():
        assert got.linear()[name] == pytest.approx(value, rel=1e-9), name
    assert fit(pts) == got  # deterministic
    for r in leave_one_out(pts):
        assert r.loo_error == pytest.approx(0, abs=1e-9) and r.within_target


def test_fit_refuses_points_that_do_not_determine_the_parameters():
    one_device = [p for p in _synthetic_points() if p.device == "a5000" and p.metric == "TPOT"]
    with pytest.raises(QsimError, match="do not determine"):
        fit(one_device)


def test_published_fit_is_physical_and_meets_issue_15s_targets_leave_one_out():
    pts = points()
    assert {p.metric for p in pts} == {"TPOT", "TTFT"} and len(pts) == 18  # every figure; out-of-memory rows left out
    params = complete(fit(pts))
    assert all(0 < v <= 1 for v in params.eta.values()) and all(0 < v <= 1 for v in params.eps.values())
    assert all(v > 0 for v in params.tau_s.values()) and params.kappa > 0
    assert params.eta["h100-sxm"] == pytest.approx(3040 / 3350)
    assert params.tau_s["h100-sxm"] == params.tau_s["a5000"]
    bad = [f"{r.point.device} {r.point.method} {r.point.metric}: {r.loo_error:+.1%}"
           for r in leave_one_out(pts) if not r.within_target]
    assert not bad, f"outside {TARGETS}: {bad}"


def test_predictions_beat_the_roofline_and_keep_the_formats_order():
    params = complete(fit(points()))
    shape, dev = model_shape("mamba-2.8b"), DEVICES["h100-sxm"]
    got = {b: predict(shape, PRESETS[b], dev, Implementation(), 1024, params) for b in ("fp16", "w8a8", "w4a8")}
    assert got["w4a8"].tpot_ms < got["w8a8"].tpot_ms < got["fp16"].tpot_ms
    from qsim.hw.devices import predict as roofline
    for b, p in got.items():
        r = roofline(shape, PRESETS[b], dev, 1024)
        assert p.tpot_ms > r.tpot_ms and p.ttft_ms > r.ttft_ms


def test_bad_published_entry_names_the_file(tmp_path):
    path = tmp_path / "published.toml"
    path.write_text('[sources]\nq = "x"\n[[gpu]]\nsource = "q"\ndevice = "a5000"\nmodel = "mamba-130m"\n'
                    'bits = "w8a8"\nmethod = "m"\ntpot_ms = 1.0\n')
    with pytest.raises(QsimError, match="published.toml.*online_hadamard"):
        points(path)


def test_fit_is_the_same_under_any_hash_seed():
    code = "from qsim.hw.latency_fit import fit, points; print(repr(fit(points())))"
    runs = {seed: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert runs["1"] == runs["2"] and "eta" in runs["1"]
