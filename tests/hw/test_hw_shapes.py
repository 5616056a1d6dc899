"""Operation lists, MAC counts, weight and state bytes of the estimation shapes."""

import json
import math

import pytest

from qsim.bits import PRESETS
from qsim.config import REGISTRY, Mamba2Config, MambaConfig
from qsim.errors import QsimError
from qsim.hw import shapes
from qsim.hw.shapes import RecipeFeatures, Weight, model_names, model_shape

W8A8, W4A8, W4A16, FP16 = (PRESETS[b] for b in ("w8a8", "w4a8", "w4a16", "fp16"))


def test_weight_bytes_per_format_count_their_scales():
    w = Weight("w", rows=256, cols=300, role="gptq")
    assert w.nbytes(FP16) == 2 * 256 * 300
    assert w.nbytes(W8A8) == 256 * 300 + 4  # one fp32 scale
    groups = 256 * math.ceil(300 / 128)
    assert w.nbytes(W4A8) == 256 * 300 // 2 + (groups + 256) * 2  # fp16 group and channel scales


def test_roles_follow_the_quamba_formats():
    linear, param = Weight("dt_proj", 8, 8, "linear"), Weight("A_log", 8, 1, "param")
    assert (linear.bits(W4A8), linear.bits(W4A16), linear.bits(FP16)) == (8, 8, 16)
    assert (param.bits(W4A8), param.bits(W4A16)) == (8, 16)
    roles = {op.name: op.weights[0].role for op in model_shape("mamba-130m").layer_ops if op.weights}
    assert roles["x_proj"] == "gptq" and roles["dt_proj"] == "linear"  # Quamba2's W4A8QMamba: 4-bit x_proj


def test_mamba1_macs_per_token_match_the_block_equations():
    cfg = REGISTRY["mamba-130m"].config
    d, di, n, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank
    ops = {op.name: op for op in model_shape("mamba-130m").layer_ops}
    assert ops["in_proj"].macs == d * 2 * di
    assert ops["conv"].macs == di * cfg.d_conv
    assert ops["x_proj"].macs == di * (r + 2 * n)
    assert ops["dt_proj"].macs == r * di
    assert ops["out_proj"].macs == di * d
    assert ops["scan"].scan == (di, n) and ops["hadamard"].hadamard == di
    assert model_shape("mamba-130m").lm_head.macs == d * cfg.vocab_size


def test_mamba1_parameters_and_state():
    cfg = REGISTRY["mamba-2.8b"].config
    d, di, n, r, k = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
    per_layer = (d * 2 * di + di * k + di + di * (r + 2 * n) + r * di + di + di * n + di + di * d + d)
    shape = model_shape("mamba-2.8b")
    assert sum(op.weight_elems() for op in shape.layer_ops) == per_layer
    # the SSM state in 32-bit words whatever the preset; the conv window at the activation width
    assert shape.state_bytes(W8A8) == cfg.n_layer * (4 * di * n + di * (k - 1))
    assert shape.state_bytes(FP16) == cfg.n_layer * (4 * di * n + 2 * di * (k - 1))
    assert shape.tied and shape.storage_bytes(W8A8) == shape.weight_bytes(W8A8)


def test_mamba2_8b_shapes():
    shape = model_shape("mamba2-8b")
    d, di, n, g, heads = 4096, 8192, 128, 8, 8192 // 64
    ops = {op.name: op for op in shape.layer_ops}
    assert shape.n_layer == 56 and set(ops) == {"norm", "in_proj", "conv", "scan", "gating", "hadamard", "out_in",
                                                "out_proj"}
    assert ops["in_proj"].macs == d * (2 * di + 2 * g * n + heads)
    assert ops["conv"].macs == (di + 2 * g * n) * 4
    assert ops["scan"].state == di * n
    assert not shape.tied
    assert shape.storage_bytes(FP16) == shape.weight_bytes(FP16) + 2 * 256000 * d


def test_every_named_model_has_a_shape_and_the_mamba2_sizes():
    assert set(REGISTRY) <= set(model_names())
    sizes = {n: (model_shape(n).d_model, model_shape(n).n_layer) for n in model_names() if n.startswith("mamba2-")}
    assert sizes == {"mamba2-tiny": (256, 4), "mamba2-130m": (768, 24), "mamba2-370m": (1024, 48), "mamba2-780m": (1536, 48),
                     "mamba2-1.3b": (2048, 48), "mamba2-2.7b": (2560, 64), "mamba2-8b": (4096, 56)}


def test_mamba2_shapes_read_the_registered_config():
    """One Mamba-2 config class for the simulator and the cost model: the registered sizes, mamba2-tiny included."""
    assert not hasattr(shapes, "Mamba2Config") or shapes.Mamba2Config is Mamba2Config
    names = model_names()
    assert len(names) == len(set(names)) and names[-1] == "mamba2-8b"
    assert names.index("mamba-2.8b") < names.index("mamba2-tiny") < names.index("mamba2-130m")
    for name, m in REGISTRY.items():
        shape = model_shape(name)
        assert shape.family == m.config.family
        assert (shape.d_model, shape.n_layer, shape.vocab, shape.tied) == (
            m.config.d_model, m.config.n_layer, m.config.vocab_size, m.config.tie_embeddings)
    cfg = REGISTRY["mamba2-130m"].config
    d, di, n, g, k, heads = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.ngroups, cfg.d_conv, cfg.nheads
    ops = {op.name: op for op in model_shape("mamba2-130m").layer_ops}
    assert ops["in_proj"].macs == d * cfg.d_in_proj == d * (2 * di + 2 * g * n + heads)
    assert ops["conv"].macs == cfg.conv_dim * k and ops["scan"].scan == (di, n)
    # norm, in_proj, conv weight and bias, A_log/D/dt_bias per head, the gated norm, out_proj
    per_layer = d + d * cfg.d_in_proj + cfg.conv_dim * (k + 1) + 3 * heads + di + di * d
    assert sum(op.weight_elems() for op in model_shape("mamba2-130m").layer_ops) == per_layer
    tiny = model_shape("mamba2-tiny")
    assert (tiny.family, tiny.d_model, tiny.n_layer, tiny.vocab) == ("mamba2", 256, 4, 256)


def test_mamba2_figures_are_pinned():
    """mamba2-130m's figures as before the cost model read qsim.config (MACs and bytes per token, w8a8)."""
    shape = model_shape("mamba2-130m")
    assert sum(op.macs * k for op, k in shape.ops(PRESETS["w8a8"])) == 128_888_832
    assert shape.weight_bytes(PRESETS["w8a8"]) == 129_022_096
    assert shape.state_bytes(PRESETS["w8a8"]) == 19_003_392


MAMBA2_FOLDER = Mamba2Config(d_model=96, n_layer=3, vocab_size=512, d_state=16, headdim=32, ngroups=2)


@pytest.mark.parametrize("fmt", ["transformers", "mamba_ssm"])
def test_mamba2_checkpoint_folder_with_config(tmp_path, fmt):
    cfg = MAMBA2_FOLDER
    hf = cfg.to_hf() if fmt == "transformers" else {
        "d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": 500, "pad_vocab_size_multiple": 16,
        "d_intermediate": 0, "tie_embeddings": True,
        "ssm_cfg": {"layer": "Mamba2", "d_state": cfg.d_state, "headdim": cfg.headdim, "ngroups": cfg.ngroups}}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    shape = model_shape(str(tmp_path))
    assert (shape.family, shape.d_model, shape.n_layer, shape.vocab, shape.d_state) == ("mamba2", 96, 3, 512, 16)
    ops = {op.name: op for op in shape.layer_ops}
    heads, gn = 192 // 32, 2 * 16
    assert ops["in_proj"].macs == 96 * (2 * 192 + 2 * gn + heads)
    assert ops["scan"].shared_in == 2 * gn


def test_bad_mamba2_config_folder_is_one_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba2", "hidden_size": 64}))
    with pytest.raises(QsimError, match="config.json"):
        model_shape(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(QsimError, match="JSON object"):
        model_shape(str(tmp_path))


def test_checkpoint_folder_with_config(tmp_path):
    cfg = MambaConfig(d_model=64, n_layer=3, vocab_size=256)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf()))
    shape = model_shape(str(tmp_path))
    assert (shape.d_model, shape.n_layer, shape.vocab) == (64, 3, 256)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(QsimError, match="mamba2-8b"):
        model_shape("mamba-9b")


def test_tensors_between_ops_take_the_spec_widths_with_8_bit_activations():
    cfg = REGISTRY["mamba-130m"].config
    d, di, n, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank
    ops = {op.name: op for op in model_shape("mamba-130m").layer_ops}
    # qsim.spec: dt uint15 and the gate SiLU(z) int16 (2 bytes each), y int16, the residual int24 (3 bytes)
    assert ops["dt_proj"].act_bytes(W8A8) == (r, 2 * di)
    assert ops["silu_z"].act_bytes(W8A8) == (di, 2 * di)
    assert ops["scan"].act_bytes(W8A8) == (di + 2 * di + 2 * n + 2 * di, 2 * di)
    assert ops["hadamard"].act_bytes(W8A8) == ops["out_in"].act_bytes(W8A8) == (2 * di, di)
    assert ops["norm"].act_bytes(W8A8) == (3 * d, d)
    assert ops["out_proj"].act_bytes(W4A8) == (di, 3 * d)
    assert ops["in_proj"].act_bytes(W8A8) == (d, 2 * di)
    # 16-bit activations: every tensor two bytes
    assert ops["scan"].act_bytes(FP16) == (2 * (3 * di + 2 * n), 2 * di)
    assert ops["norm"].act_bytes(W4A16) == (2 * d, 2 * d)


def test_per_layer_tables_and_constants_count_as_weight_bytes_with_8_bit_activations():
    shape = model_shape("mamba-130m")
    # silu_conv 256 x 1 byte, softplus_dt and silu_z 256 x 2 bytes; 32-bit constants: norm eps and (m, s),
    # conv, dt_proj and out_in (m, s), scan frac, (m_h, s_h) and (m_y, s_y)
    per_layer = 256 + 2 * 256 + 2 * 256 + 4 * (2 + 1 + 1 + 3 + 1)
    final_norm = 4 * 2

    def params(b):
        return sum(w.nbytes(b) * k for op, k in shape.ops(b) for w in op.weights if w.role != "table")

    assert shape.weight_bytes(W8A8) == params(W8A8) + per_layer * shape.n_layer + final_norm
    assert shape.weight_bytes(FP16) == params(FP16)  # no integer datapath, no tables
    tables = {w.name: w.nbytes(W8A8) for op in shape.layer_ops for w in op.weights if w.role == "table"}
    assert (tables["silu_conv"], tables["softplus_dt"], tables["silu_z"], tables["scan.out_mult"]) == (256, 512, 512, 4)


def test_recipe_features_pick_the_ops():
    shape = model_shape("mamba-130m")
    di = shape.d_inner

    def names(b, **f):
        return [op.name for op, _ in shape.ops(b, RecipeFeatures(**f))]

    assert "hadamard" in names(W8A8) and "out_in" not in names(W8A8)
    assert "out_in" in names(W8A8, online_hadamard=False) and "hadamard" not in names(W8A8, online_hadamard=False)
    assert not {"hadamard", "out_in"} & set(names(W4A16, online_hadamard=False))  # fp16 y goes straight in
    assert not {"hadamard", "out_in"} & set(names(FP16))
    per_channel = RecipeFeatures(scan_out_per_channel=True)
    assert shape.weight_bytes(W8A8, per_channel) - shape.weight_bytes(W8A8) == (di - 1) * 4 * shape.n_layer
    assert shape.weight_bytes(FP16, per_channel) == shape.weight_bytes(FP16)
