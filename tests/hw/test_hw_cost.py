"""Bound, overlap, tiling and energy rules of qsim/hw/cost.py on hand-checkable cases.

The toy target runs at 1 GHz with 1 GB/s off-chip, so one off-chip byte costs one cycle.
"""

import math
from dataclasses import replace

import pytest

from qsim.bits import PRESETS
from qsim.config import MambaConfig
from qsim.errors import QsimError
from qsim.hw.cost import (
    compute_cycles,
    estimate,
    op_cost,
    overlapped_cycles,
    state_bytes,
    stream,
)
from qsim.hw.shapes import (
    Act,
    Op,
    RecipeFeatures,
    Weight,
    mamba1_shape,
    model_names,
    model_shape,
)
from qsim.hw.target import load_target
from qsim.hw.units import scan_unit_cycles

W8A8, W4A8, FP16 = PRESETS["w8a8"], PRESETS["w4a8"], PRESETS["fp16"]


def toy_target(**changes):
    base = {"clock_mhz": 1000.0, "offchip_bytes_per_s": 1e9, "mac_rows": 4, "mac_cols": 4,
                "mac_rate": {"w16a16": 0.5, "w8a16": 0.5, "w4a16": 0.5, "w8a8": 1.0, "w4a8": 2.0},
                "scan_lanes": 4, "hadamard_lanes": 4, "table_units": 2,
                "weight_buffer_bytes": 16384, "act_buffer_bytes": 65536, "state_buffer_bytes": 4096}
    return replace(load_target("asic-28nm"), **(base | changes))


# a 64 -> 64 matmul: 4096 int8 weights + one fp32 scale = 4100 bytes
TOY = Op("toy", macs=64 * 64, mults=64, weights=(Weight("w", 64, 64, "gptq"),), act_in=(Act("a", 64),),
         act_out=(Act("b", 64),))
TOY_BYTES = 64 * 64 + 4


def test_overlap_rule_hides_all_but_one_tile_of_the_shorter_side():
    assert overlapped_cycles(100, 40, 1) == 140  # one tile: load, then compute
    assert overlapped_cycles(100, 40, 4) == 110
    assert overlapped_cycles(40, 100, 4) == 110
    assert overlapped_cycles(100, 0, 1) == 100


def test_compute_cycles_use_the_rate_of_the_ops_format():
    t = toy_target()
    assert compute_cycles(TOY, W8A8, t, 256) == 64 * 64 * 256 // 16
    assert compute_cycles(TOY, W4A8, t, 256) == 64 * 64 * 256 // 32  # w4a8 rate 2
    assert compute_cycles(TOY, FP16, t, 3) == math.ceil(64 * 64 * 3 / 8)  # w16a16 rate 0.5


def test_slowest_engine_sets_the_pace():
    t = toy_target()
    op = replace(TOY, vector_elems=64 * 100)  # 6400 elements per token on 2 table units
    assert compute_cycles(op, W8A8, t, 1) == 3200
    scan = Op("scan", scan=(8, 4), vector_elems=1)
    assert compute_cycles(scan, W8A8, t, 10) == scan_unit_cycles(4, 8, 4, 10)


def test_compute_bound_prefill_with_weights_read_once():
    t = toy_target()
    c = op_cost(TOY, 1, W8A8, t, 256, decode=False, weights_resident=False, state_resident=True)
    compute = 64 * 64 * 256 // 16  # 65536
    # weights fit half the buffer (8192 >= 4100): read once; 256 x 128 activation bytes fit 64 KiB
    assert c.offchip_bytes == TOY_BYTES
    assert c.memory_cycles == pytest.approx(TOY_BYTES)
    assert c.cycles == compute + TOY_BYTES  # a single tile: nothing to overlap
    assert c.bound == "compute"


def test_memory_bound_decode_overlaps_over_tiles():
    t = toy_target(weight_buffer_bytes=2048)  # tiles of 1024 bytes
    c = op_cost(TOY, 3, W8A8, t, 1, decode=True, weights_resident=False, state_resident=True)
    tiles = math.ceil(TOY_BYTES / 1024)  # 5
    compute = 64 * 64 // 16  # 256
    assert c.bound == "memory"
    assert c.cycles == 3 * math.ceil(TOY_BYTES + compute / tiles)
    assert c.offchip_bytes == 3 * TOY_BYTES


def test_weights_reread_per_token_chunk_when_that_order_is_cheaper():
    t = toy_target(weight_buffer_bytes=2048, act_buffer_bytes=4096)
    # a token needs 128 activation bytes: chunks of 32 tokens, 8 chunks for 256 tokens
    spill = 128 * 256  # 32768 > 4096: activations spill off-chip
    token_outer = TOY_BYTES * 8 + spill
    weight_outer = TOY_BYTES + 64 * 256 * math.ceil(TOY_BYTES / 1024) + 64 * 256
    assert token_outer < weight_outer
    assert stream(TOY, W8A8, t, 256, decode=False, weights_resident=False) == (token_outer, 8)


def test_weight_tiles_outside_when_chunks_are_tiny():
    t = toy_target(weight_buffer_bytes=2048, act_buffer_bytes=256)  # 2-token chunks: 128 chunks
    weight_outer = TOY_BYTES + 64 * 256 * 5 + 64 * 256
    assert weight_outer < TOY_BYTES * 128 + 128 * 256
    assert stream(TOY, W8A8, t, 256, decode=False, weights_resident=False) == (weight_outer, 1)


def test_resident_weights_cost_no_offchip_traffic_in_decode():
    t = toy_target()
    assert stream(TOY, W8A8, t, 1, decode=True, weights_resident=True) == (0, 1)


def test_state_rule():
    t = toy_target(state_buffer_bytes=300)
    op = Op("scan", state=1000, shared_in=6)
    assert state_bytes(op, W8A8, t, 1, decode=True, state_resident=True) == 0
    assert state_bytes(op, W8A8, t, 1, decode=True, state_resident=False) == 2 * 1000
    # prefill: write the final state; 4 channel groups, 3 extra groups re-read B and C for 50 tokens
    assert state_bytes(op, W8A8, t, 50, decode=False, state_resident=False) == 1000 + 3 * 50 * 6
    assert state_bytes(op, FP16, t, 1, decode=True, state_resident=False) == 2 * 2000
    word = Op("scan", state=1000, state_word=True, shared_in=6)  # the SSM state: 4 bytes whatever the preset
    assert state_bytes(word, W8A8, t, 1, decode=True, state_resident=False) == 2 * 4000
    assert state_bytes(word, FP16, t, 1, decode=True, state_resident=False) == 2 * 4000
    assert state_bytes(word, W8A8, t, 50, decode=False, state_resident=False) == 4000 + 13 * 50 * 6


def test_energy_is_counts_times_named_per_op_energies():
    t = toy_target()
    e = t.energy
    c = op_cost(TOY, 1, W8A8, t, 256, decode=False, weights_resident=False, state_resident=True)
    macs = 64 * 64 * 256 * (e["int8_mult"] + e["int32_add"])
    epilogue = 64 * 256 * e["int32_mult"]
    assert c.compute_pj == pytest.approx(macs + epilogue)
    onchip = TOY_BYTES + 128 * 256
    assert c.onchip_pj == pytest.approx(onchip * e["sram_1mb_64b"] / 8)
    assert c.offchip_pj == pytest.approx(TOY_BYTES * 1300 / 8)


def test_w4a16_pays_one_dequantizing_multiply_per_weight_read():
    t = toy_target()
    e = t.energy
    w4a16 = PRESETS["w4a16"]
    c = op_cost(TOY, 1, w4a16, t, 2, decode=False, weights_resident=False, state_resident=True)
    expected = 64 * 64 * 2 * (e["fp16_mult"] + e["fp32_add"]) + 64 * 2 * e["fp32_mult"] + 64 * 64 * e["fp16_mult"]
    assert c.compute_pj == pytest.approx(expected)


TINY = MambaConfig(d_model=64, n_layer=2, vocab_size=256)


def test_tiny_model_keeps_weights_resident_and_decode_reads_nothing_off_chip():
    shape = mamba1_shape("tiny", TINY, "test")
    t = toy_target(weight_buffer_bytes=1 << 24, act_buffer_bytes=1 << 24, state_buffer_bytes=1 << 24)
    est = estimate(shape, W8A8, t, 16)
    assert est.weights_resident and est.state_resident
    assert sum(o.offchip_bytes for o in est.decode.ops) == 0
    assert sum(o.offchip_bytes for o in est.prefill.ops) == shape.weight_bytes(W8A8)


def test_phase_totals_and_last_token_lm_head():
    shape = mamba1_shape("tiny", TINY, "test")
    t = toy_target()
    est = estimate(shape, W8A8, t, 16)
    p = est.prefill
    assert p.cycles == sum(o.cycles for o in p.ops)
    assert p.seconds == pytest.approx(p.cycles / 1e9)
    assert p.tokens_per_s == pytest.approx(16 / p.seconds)
    assert p.j_per_token == pytest.approx(sum(o.energy_pj for o in p.ops) * 1e-12 / 16)
    assert p.tokens_per_j == pytest.approx(1 / p.j_per_token)
    head = p.ops[-1]
    assert head.name == "lm_head" and head.instances == 1
    assert head.compute_cycles == compute_cycles(shape.lm_head, W8A8, t, 1)
    layer_ops = [o for o in p.ops if o.name != "lm_head"]
    assert all(o.instances == TINY.n_layer for o in layer_ops)


def test_hadamard_only_in_quantized_presets():
    shape = mamba1_shape("tiny", TINY, "test")
    names = {b: [o.name for o in estimate(shape, PRESETS[b], toy_target(), 4).decode.ops] for b in PRESETS}
    assert "hadamard" not in names["fp16"]
    assert all("hadamard" in names[b] for b in ("w8a8", "w4a8", "w4a16"))
    assert names["w8a8"] == ["norm", "in_proj", "conv", "x_proj", "dt_proj", "silu_z", "scan", "hadamard",
                             "out_proj", "lm_head"]


def test_hadamard_energy_counts_the_units_adds_and_odd_sizes_fail_only_when_quantized():
    t = toy_target()
    op = next(o for o in mamba1_shape("tiny", TINY, "test").layer_ops if o.name == "hadamard")
    c = op_cost(op, 1, W8A8, t, 3, decode=False, weights_resident=True, state_resident=True)
    n = TINY.d_inner  # 128: seven radix-2 passes of 128 adds
    assert c.compute_pj == pytest.approx(3 * (7 * n * t.energy["int32_add"] + n * t.energy["int32_mult"]))
    odd = mamba1_shape("odd", MambaConfig(d_model=56, n_layer=1, vocab_size=64), "test")  # d_inner 112 = 7 * 16
    assert estimate(odd, FP16, t, 4).decode.cycles > 0
    with pytest.raises(QsimError, match="112"):
        estimate(odd, W8A8, t, 4)


def _decode_ops(est):
    return {o.name: o for o in est.decode.ops}


def test_onchip_traffic_counts_each_tensor_at_its_width():
    shape = mamba1_shape("tiny", TINY, "test")
    di, n = TINY.d_inner, TINY.d_state
    big = toy_target(weight_buffer_bytes=1 << 24, act_buffer_bytes=1 << 24, state_buffer_bytes=1 << 24)
    scan = _decode_ops(estimate(shape, W8A8, big, 4))["scan"]
    weights = di * n + 4 + di + 4 + 3 * 4  # A_log, D: int8 + an fp32 scale each; frac, (m_h, s_h), (m_y, s_y)
    acts = di + 2 * di + 2 * n + 2 * di + 2 * di  # xs, dt (16-bit), B, C, sz (16-bit); y out (16-bit)
    state = 2 * 4 * di * n  # read and written, 32-bit words
    assert scan.onchip_bytes == TINY.n_layer * (weights + acts + state)
    silu_z = _decode_ops(estimate(shape, W8A8, big, 4))["silu_z"]
    assert silu_z.onchip_bytes == TINY.n_layer * (2 * 256 + di + 2 * di)


def test_tables_stream_with_the_weights_in_decode():
    shape = mamba1_shape("tiny", TINY, "test")
    t = toy_target(weight_buffer_bytes=2048, act_buffer_bytes=1 << 24, state_buffer_bytes=1 << 24)
    est = estimate(shape, W8A8, t, 4)
    assert not est.weights_resident and est.state_resident
    assert sum(o.offchip_bytes for o in est.decode.ops) == shape.weight_bytes(W8A8)
    silu_z = _decode_ops(est)["silu_z"]
    assert silu_z.offchip_bytes == TINY.n_layer * 2 * 256  # its table is all the op reads from off-chip


def test_no_online_hadamard_requantizes_y_on_the_table_units():
    shape = mamba1_shape("tiny", TINY, "test")
    t = toy_target()
    with_h = estimate(shape, W8A8, t, 8)
    without = estimate(shape, W8A8, t, 8, online_hadamard=False)
    assert not with_h.features.scan_out_per_channel and not without.features.online_hadamard
    out_in = _decode_ops(without)["out_in"]
    di = TINY.d_inner
    assert "hadamard" not in _decode_ops(without) and "out_in" not in _decode_ops(with_h)
    assert out_in.compute_cycles == TINY.n_layer * math.ceil(di / t.table_units)
    assert out_in.compute_pj == pytest.approx(TINY.n_layer * di * t.energy["int32_mult"])  # no Hadamard adds
    assert out_in.onchip_bytes == TINY.n_layer * (4 + 2 * di + di)
    assert without.decode.energy_j < with_h.decode.energy_j
    fp16 = estimate(shape, FP16, t, 8, online_hadamard=False)
    assert [o.name for o in fp16.decode.ops] == [o.name for o in estimate(shape, FP16, t, 8).decode.ops]


def test_per_channel_scan_output_multiplier_costs_memory_not_compute():
    shape = mamba1_shape("tiny", TINY, "test")
    t = toy_target(weight_buffer_bytes=2048)
    base = _decode_ops(estimate(shape, W8A8, t, 8))["scan"]
    per_channel = _decode_ops(estimate(shape, W8A8, t, 8, scan_out_per_channel=True))["scan"]
    extra = TINY.n_layer * (TINY.d_inner - 1) * 4  # d_inner 32-bit words instead of one, read once per token
    assert per_channel.onchip_bytes - base.onchip_bytes == extra
    assert per_channel.offchip_bytes - base.offchip_bytes == extra  # streamed weights: the words come with them
    assert (per_channel.compute_cycles, per_channel.compute_pj) == (base.compute_cycles, base.compute_pj)


@pytest.mark.parametrize("name", model_names())
def test_every_model_takes_both_recipe_features(name):
    shape, t = model_shape(name), load_target("asic-28nm")
    base = estimate(shape, W8A8, t, 16)
    est = estimate(shape, W8A8, t, 16, online_hadamard=False, scan_out_per_channel=True)
    names = [o.name for o in est.decode.ops]
    assert "out_in" in names and "hadamard" not in names and est.features == RecipeFeatures(False, True)
    words = (shape.d_inner - 1) * 4 * shape.n_layer
    scan = {e: next(o for o in x.decode.ops if o.name == "scan") for e, x in (("base", base), ("est", est))}
    assert scan["est"].onchip_bytes - scan["base"].onchip_bytes == words
