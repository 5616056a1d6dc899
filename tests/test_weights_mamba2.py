"""Mamba-2 checkpoints: transformers and mamba_ssm formats, synthetic weights, bad input."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from qsim.config import REGISTRY, Mamba2Config
from qsim.errors import QsimError
from qsim.weights import (
    LAYER_KEYS2,
    expected_shapes,
    keep_layers,
    load_folder,
    resolve,
    synthetic_layer,
    synthetic_weights,
    to_hf_tensors,
    to_mamba_ssm_tensors,
)

# odd sizes: head_dim 12, d_state 10, 8 heads; chunk 16 does not divide the 37-token test sequences
SMALL = Mamba2Config(d_model=48, n_layer=2, vocab_size=96, d_state=10, headdim=12, ngroups=2, chunk_size=16,
                     tie_embeddings=False)


def write_mamba2_checkpoint(folder, cfg: Mamba2Config = SMALL, seed: int = 0, **hf_extra):
    """Save a transformers Mamba2ForCausalLM with random, non-trivial weights; returns the torch model."""
    import torch
    from transformers import Mamba2Config as HFConfig
    from transformers import Mamba2ForCausalLM

    torch.manual_seed(seed)
    hf = {k: v for k, v in cfg.to_hf().items() if k != "architectures"} | hf_extra
    model = Mamba2ForCausalLM(HFConfig(**hf)).eval()
    with torch.no_grad():  # A, D, dt_bias, norms and conv bias off their init values so every path matters
        for layer in model.backbone.layers:
            m = layer.mixer
            m.A_log.add_(torch.randn_like(m.A_log) * 0.5)
            m.D.mul_(torch.rand_like(m.D) + 0.5)
            m.dt_bias.add_(torch.randn_like(m.dt_bias) * 0.5 + 1.5)
            m.norm.weight.mul_(torch.rand_like(m.norm.weight) + 0.5)
            m.conv1d.bias.normal_(0, 0.3)
            layer.norm.weight.mul_(torch.rand_like(layer.norm.weight) + 0.5)
        model.backbone.norm_f.weight.mul_(torch.rand_like(model.backbone.norm_f.weight) + 0.5)
    model.save_pretrained(folder)
    return model


def mamba_ssm_config(cfg: Mamba2Config, vocab_size: int, pad_multiple: int) -> dict:
    """config.json as mamba_ssm writes it for state-spaces/mamba2-* (the vocabulary before padding)."""
    return {
        "d_model": cfg.d_model, "d_intermediate": 0, "n_layer": cfg.n_layer, "vocab_size": vocab_size,
        "ssm_cfg": {"layer": "Mamba2", "d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand,
                    "headdim": cfg.headdim, "ngroups": cfg.ngroups, "chunk_size": cfg.chunk_size},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": pad_multiple, "tie_embeddings": cfg.tie_embeddings,
    }


def write_mamba_ssm_folder(folder, cfg: Mamba2Config, w, vocab_size: int, pad_multiple: int):
    """A state-spaces/mamba2-* style folder: mamba_ssm's config.json and a torch.save'd pytorch_model.bin."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(mamba_ssm_config(cfg, vocab_size, pad_multiple)))
    state = {k: torch.from_numpy(np.array(v)) for k, v in to_mamba_ssm_tensors(cfg, w).items()}
    torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mamba2_ckpt")
    return folder, write_mamba2_checkpoint(folder)


def same_arch(a: Mamba2Config, b: Mamba2Config) -> bool:
    """Equal but for an unlimited dt_max: mamba_ssm's (0, inf) is [0, 1e30] in transformers' config.json."""
    return replace(a, dt_max=min(a.dt_max, 1e30)) == replace(b, dt_max=min(b.dt_max, 1e30))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit(d, fn):
    t = load_file(str(d / "model.safetensors"))
    fn(t)
    save_file(t, str(d / "model.safetensors"))


def test_loads_transformers_checkpoint(ckpt):
    lm = load_folder(ckpt[0])
    cfg = lm.config
    assert cfg.family == "mamba2" and (cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state) == (8, 12, 2, 10)
    assert lm.weights.lm_head is not lm.weights.embedding  # untied: lm_head.weight read
    assert set(lm.weights.layers[0]) == set(LAYER_KEYS2)
    for key, shape in expected_shapes(cfg).items():
        assert lm.weights.layers[1][key].shape == shape and lm.weights.layers[1][key].dtype == np.float32
    state = ckpt[1].state_dict()
    assert np.array_equal(lm.weights.layers[1]["gnorm"], state["backbone.layers.1.mixer.norm.weight"].numpy())
    assert np.array_equal(lm.weights.layers[0]["conv_w"], state["backbone.layers.0.mixer.conv1d.weight"][:, 0].numpy())
    assert keep_layers(cfg) and not keep_layers(REGISTRY["mamba2-2.7b"].config)


def test_round_trip_to_hf_names(ckpt):
    lm = load_folder(ckpt[0])
    t = load_file(str(ckpt[0] / "model.safetensors"))
    back = to_hf_tensors(lm.config, lm.weights)
    assert set(back) == set(t)
    for k, v in back.items():
        assert np.array_equal(t[k], v), k


def test_mamba_ssm_folder_loads_the_same_weights(ckpt, tmp_path):
    """mamba_ssm format: ssm_cfg config, pytorch_model.bin, backbone.embedding.weight, lm_head.weight saved
    even when tied; the vocabulary (90) padded to pad_vocab_size_multiple (16) gives 96 rows."""
    lm = load_folder(ckpt[0])
    folder = write_mamba_ssm_folder(tmp_path / "ssm", lm.config, lm.weights, vocab_size=90, pad_multiple=16)
    ssm = load_folder(folder)
    assert same_arch(ssm.config, lm.config)
    assert ssm.config.vocab_size == 96 and ssm.sha256 != lm.sha256 and len(ssm.sha256) == 64
    assert np.array_equal(ssm.weights.embedding, lm.weights.embedding)
    assert np.array_equal(ssm.weights.lm_head, lm.weights.lm_head) and np.array_equal(ssm.weights.norm_f,
                                                                                      lm.weights.norm_f)
    for a, b in zip(ssm.weights.layers, lm.weights.layers):
        assert all(np.array_equal(a[k], b[k]) for k in LAYER_KEYS2)


def test_mamba_ssm_tied_and_safetensors(ckpt, tmp_path):
    """Tied (state-spaces/mamba2-*'s default): lm_head.weight in the file is the embedding; safetensors works too."""
    lm = load_folder(ckpt[0])
    cfg = replace(lm.config, tie_embeddings=True)
    folder = tmp_path / "ssm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(mamba_ssm_config(cfg, 96, 8)))
    save_file({k: np.ascontiguousarray(v) for k, v in to_mamba_ssm_tensors(cfg, lm.weights).items()},
              str(folder / "model.safetensors"))
    ssm = load_folder(folder)
    assert ssm.config.tie_embeddings and ssm.weights.lm_head is ssm.weights.embedding


def test_corrupt_pytorch_model_bin(ckpt, tmp_path):
    lm = load_folder(ckpt[0])
    folder = write_mamba_ssm_folder(tmp_path / "ssm", lm.config, lm.weights, 96, 16)
    f = folder / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(QsimError, match=r"pytorch_model.bin: corrupt, truncated"):
        load_folder(folder)
    f.unlink()
    with pytest.raises(QsimError, match=r"no model.safetensors, model-\*.safetensors shards or pytorch_model.bin"):
        load_folder(folder)


def test_missing_tensor_is_named(ckpt, tmp_path):
    d = _copy(ckpt[0], tmp_path / "ckpt")
    _edit(d, lambda t: t.pop("backbone.layers.1.mixer.dt_bias"))
    with pytest.raises(QsimError, match=r"ckpt: tensor backbone.layers.1.mixer.dt_bias is missing"):
        load_folder(d)
    _edit(d, lambda t: t.pop("backbone.embeddings.weight"))
    with pytest.raises(QsimError, match=r"backbone.embeddings.weight \(mamba_ssm: backbone.embedding.weight\) "
                                        "is missing"):
        load_folder(d)


def test_wrong_shape_is_named(ckpt, tmp_path):
    d = _copy(ckpt[0], tmp_path / "ckpt")
    _edit(d, lambda t: t.update({"backbone.layers.0.mixer.norm.weight": np.ones(48, np.float32)}))
    with pytest.raises(QsimError, match=r"tensor backbone.layers.0.mixer.norm.weight has shape \(48,\), "
                                        r"config implies \(96,\)"):
        load_folder(d)


def test_config_disagreeing_with_weights(ckpt, tmp_path):
    d = _copy(ckpt[0], tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["state_size"] = 16
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QsimError, match=r"tensor backbone.layers.0.mixer.in_proj.weight has shape \(240, 48\), "
                                        r"config implies \(264, 48\)"):
        load_folder(d)


def test_nan_weight_is_named(ckpt, tmp_path):
    d = _copy(ckpt[0], tmp_path / "ckpt")

    def poison(t):
        t["backbone.layers.1.mixer.in_proj.weight"][7, 3] = np.nan

    _edit(d, poison)
    with pytest.raises(QsimError, match=r"layers.1.mixer.in_proj.weight holds NaN or Inf \(first at index \(7, 3\)\)"):
        load_folder(d)


def test_projection_biases_are_refused(ckpt, tmp_path):
    d = _copy(ckpt[0], tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"use_bias": True}))
    with pytest.raises(QsimError, match=r"ckpt: the config sets use_bias .* not supported") as exc:
        load_folder(d)
    assert "\n" not in str(exc.value)
    (d / "config.json").write_text(json.dumps(cfg))
    _edit(d, lambda t: t.update({"backbone.layers.0.mixer.in_proj.bias": np.zeros(240, np.float32)}))
    with pytest.raises(QsimError, match=r"tensor backbone.layers.0.mixer.in_proj.bias is present"):
        load_folder(d)


def test_synthetic_mamba2_130m_is_lazy_and_order_independent(monkeypatch):
    """Offline, mamba2-130m is seeded synthetic weights; a layer is made when used, each tensor from its own seed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = resolve("mamba2-130m")
    cfg = lm.config
    assert lm.synthetic and cfg.family == "mamba2" and (cfg.d_model, cfg.nheads, cfg.d_state) == (768, 24, 128)
    assert lm.weights.embedding.shape == (50288, 768) and lm.weights.lm_head is lm.weights.embedding
    assert len(lm.weights.layers._cache) == 0  # nothing generated yet
    late = lm.weights.layers[7]
    assert set(lm.weights.layers._cache) == {7}
    alone = synthetic_layer(cfg, 7)
    assert all(np.array_equal(alone[k], late[k]) for k in LAYER_KEYS2)
    other = synthetic_layer(cfg, 3)
    assert not np.array_equal(other["in_proj"], late["in_proj"])
    for key, shape in expected_shapes(cfg).items():
        assert late[key].shape == shape and late[key].dtype == np.float32, key
    # mamba_ssm's init
    assert np.abs(late["in_proj"]).max() <= 1 / np.sqrt(768)
    assert np.abs(late["out_proj"]).max() <= 1 / np.sqrt(1536) / np.sqrt(24)
    assert np.abs(late["conv_w"]).max() <= 0.5 and np.abs(late["conv_b"]).max() <= 0.5
    A = np.exp(late["A_log"])
    assert A.min() >= 1 and A.max() <= 16
    dt = np.log1p(np.exp(late["dt_bias"].astype(np.float64)))
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert np.all(late["D"] == 1) and np.all(late["gnorm"] == 1) and np.all(late["norm"] == 1)
    assert abs(float(lm.weights.embedding[:1000].std()) - 0.02) < 0.001
    with pytest.raises(QsimError, match="--require-weights"):
        resolve("mamba2-130m", require_weights=True)


def test_synthetic_weights_load_into_transformers():
    """A small synthetic Mamba-2 is a valid Mamba2ForCausalLM state dict (names, shapes), and deterministic."""
    import torch
    from transformers import Mamba2Config as HFConfig
    from transformers import Mamba2ForCausalLM

    cfg = Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=8, headdim=16, ngroups=2)
    w = synthetic_weights(cfg)
    assert np.array_equal(w.layers[1]["in_proj"], synthetic_weights(cfg).layers[1]["in_proj"])
    model = Mamba2ForCausalLM(HFConfig(**{k: v for k, v in cfg.to_hf().items() if k != "architectures"}))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_hf_tensors(cfg, w).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}


def test_registered_mamba2_resolves_from_hf_cache_with_pytorch_model_bin(ckpt, tmp_path, monkeypatch):
    """state-spaces/mamba2-* hold config.json + pytorch_model.bin only: found in the cache before synthetic."""
    from qsim.config import RegisteredModel

    lm = load_folder(ckpt[0])
    cache = tmp_path / "hub"
    repo_dir = cache / "models--test-org--tiny-mamba2"
    write_mamba_ssm_folder(repo_dir / "snapshots" / ("0" * 40), lm.config, lm.weights, 96, 16)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setitem(REGISTRY, "mamba2-cached", RegisteredModel("mamba2-cached", "test-org/tiny-mamba2", lm.config))
    got = resolve("mamba2-cached", require_weights=True)
    assert got.source == "hf-cache" and same_arch(got.config, lm.config)
    assert np.array_equal(got.weights.layers[1]["out_proj"], lm.weights.layers[1]["out_proj"])
