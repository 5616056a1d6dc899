"""The GPU package's pure-Python parts, on the CPU: layouts, the Hadamard plan, kernel-source
assembly and argument typing, the synthetic benchmark artifact, the check's comparisons."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu import layout, ops, runtime
from gpu.check import _all_equal, compare, compare_traces
from qsim import hadamard, spec
from qsim.config import MambaConfig
from qsim.fixed.executor import FixedExecutor, Trace
from qsim.qweights import IntLinear, pack_int4


def test_int8_layout_pads_rows_and_columns_with_zeros():
    q = np.random.default_rng(0).integers(-128, 128, (45, 200)).astype(np.int8)
    lay = layout.lay_linear(IntLinear(q), chunk=128)
    assert lay.fmt == "i8" and lay.w.shape == (48, 256) and (lay.n, lay.k, lay.kp) == (45, 200, 256)
    assert np.array_equal(lay.w[:45, :200], q) and not lay.w[45:].any() and not lay.w[:, 200:].any()


def test_int4_layout_packs_whole_vectors_and_splits_exactly():
    rng = np.random.default_rng(1)
    q, gs = rng.integers(-8, 8, (20, 200)).astype(np.int8), rng.integers(1, 256, (20, 2)).astype(np.uint8)
    lin = IntLinear(q, gs, 128)
    lay = layout.lay_linear(lin)
    assert lay.fmt == "i4" and lay.kp == 224 and lay.w.shape == (24, 112) and lay.gs.shape == (24, 2)
    qpad = np.zeros((24, 224), np.int8)
    qpad[:20, :200] = q
    assert np.array_equal(lay.w, pack_int4(qpad))
    eff = (lay.hi.astype(np.int64) << layout.HI_SHIFT) + lay.lo
    assert np.array_equal(eff[:20, :200], lin.effective()) and not eff[20:].any() and not eff[:, 200:].any()
    with pytest.raises(ValueError, match="multiple of 32"):
        layout.lay_linear(IntLinear(q, gs[:, :1].repeat(10, 1), 20))


@pytest.mark.parametrize("n", [64, 192, 320, 512, 1536, 4096, 5120])
@pytest.mark.parametrize("p1_max", [16, layout.P1_MAX, 1 << 20])
def test_hadamard_plan_factors_qsims_matrix(n, p1_max):
    plan = layout.hadamard_plan(n, p1_max)
    m, p = hadamard.factor(n)
    assert plan.p1 == min(p, p1_max) and plan.S * plan.p1 == n and set(np.unique(plan.O)) <= {-1, 1}
    assert np.array_equal(np.kron(plan.O.astype(np.int64), hadamard.matrix(plan.p1)), hadamard.matrix(n))


def test_outproj_chunks_are_one_vector_per_lane():
    assert {f: layout.outproj_chunk(f) for f in layout.VEC_COLS} == {"i8": 512, "i4": 1024, "f16": 256}


def test_kernel_sources_inline_the_common_header_once_and_take_the_spec_from_qsim():
    src = runtime.source(runtime.KERNEL_DIR / "decode.cu")
    assert '#include "' not in src and "#pragma once" not in src
    assert src.count("__device__ __forceinline__ i64 rshift_round") == 1
    assert f"-DQ_RESIDUAL_BITS={spec.RESIDUAL_BITS}" in runtime.options()
    assert f"-DQ_NORM_SHIFT={spec.RSQRT_TABLE_BITS - spec.NORM_FRAC_BITS}" in runtime.options()


def test_gate_width_and_scan_accumulator_shift_reach_the_kernels_from_the_spec(monkeypatch):
    k = runtime.scan_acc_state_bits()
    assert [spec.scan_acc_shift(sb) for sb in (k, k + 1)] == [0, 1]
    assert {f"-DQ_GATE_BITS={spec.GATE_BITS}", f"-DQ_SCAN_ACC_STATE_BITS={k}"} <= set(runtime.options())
    monkeypatch.setattr(spec, "scan_acc_shift", lambda sb: sb // 2)  # a rule scan_output cannot apply
    with pytest.raises(ValueError, match="scan_output"):
        runtime.spec_defines()


def test_kernel_arguments_are_typed_like_the_c_parameters():
    t = torch.zeros(4, dtype=torch.int32)
    assert runtime._arg(t) == np.uint64(t.data_ptr()) and runtime._arg(t).dtype == np.uint64
    assert runtime._arg(None) == 0 and runtime._arg(7).dtype == np.int32 and runtime._arg(0.5).dtype == np.float32
    assert runtime._arg(np.int64(1) << 40).dtype == np.int64
    with pytest.raises(OverflowError, match="np.int64"):
        runtime._arg(1 << 40)
    assert runtime.dims(3) == (3,) and runtime.dims((2, 5)) == (2, 5)


def test_to_device_refuses_values_that_would_wrap():
    assert ops.to_device(np.array([65535, 0]), np.uint16, "cpu").dtype == torch.int16
    with pytest.raises(ValueError, match="int8"):
        ops.to_device(np.array([128]), np.int8, "cpu")


@pytest.mark.parametrize("bits", ["w8a8", "w4a8"])
def test_synthetic_artifact_loads_and_runs_with_few_saturations(tmp_path, bits):
    from gpu.synth import synthetic_artifact
    from qsim import artifact

    cfg = MambaConfig(d_model=128, n_layer=2, vocab_size=256)
    qm = synthetic_artifact(cfg, bits)
    artifact.save(qm, tmp_path / "a")
    qm = artifact.load(tmp_path / "a")
    assert qm.config == cfg and qm.manifest["bits"]["name"] == bits
    tr = Trace(names={"xz"})
    logits, _ = FixedExecutor(qm, "numpy").prefill(np.arange(32), trace=tr)
    assert logits.shape == (32, 256) and logits.any()
    elements = 32 * cfg.n_layer * 2 * cfg.d_inner
    assert sum(tr.saturation.values()) < 0.01 * elements
    assert np.abs(tr.get(0, "xz")).max() > 64  # activations use the int8 range


def test_synthetic_artifact_has_registered_shapes():
    from gpu.synth import synthetic_artifact
    from qsim.config import REGISTRY

    cfg = REGISTRY["mamba-130m"].config
    qm = synthetic_artifact(MambaConfig(**{**cfg.to_dict(), "n_layer": 1}))
    assert qm.linear("layers.0.in_proj").q.shape == (2 * cfg.d_inner, cfg.d_model)
    assert qm.linear("layers.0.x_proj").q.shape == (cfg.dt_rank + 2 * cfg.d_state, cfg.d_inner)
    assert qm.linear("lm_head").q.shape == (cfg.vocab_size, cfg.d_model)


def test_comparisons_report_the_first_difference():
    same = compare(np.arange(6).reshape(2, 3), np.arange(6).reshape(2, 3))
    assert same == {"equal": True, "shape": [2, 3], "mismatches": 0}
    got = np.arange(6).reshape(2, 3)
    got[1, 2] = 9
    res = compare(np.arange(6).reshape(2, 3), got)
    assert not res["equal"] and res["first"] == [1, 2] and (res["ref"], res["got"], res["mismatches"]) == (5, 9, 1)
    assert not compare(np.zeros(3), np.zeros(4))["equal"]
    a, b = Trace(), Trace()
    a.rec(0, "u", np.ones((1, 4)))
    b.rec(0, "u", np.ones((1, 4)))
    a.sat("u", 2)
    res = compare_traces(a, b)
    assert res["0/u"]["equal"] and not res["saturation"]["equal"] and not _all_equal(res)
    b.sat("u", 2)
    b.rec(1, "xz", np.ones(2))
    assert compare_traces(a, b)["1/xz"] == {"equal": False, "unexpected": True}
