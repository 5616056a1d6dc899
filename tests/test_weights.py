import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from qsim.config import MambaConfig
from qsim.errors import QsimError
from qsim.weights import load_folder, resolve, synthetic_weights, to_hf_tensors


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_loads_checkpoint_written_by_transformers(hf_checkpoint):
    lm = load_folder(hf_checkpoint[0])
    assert lm.config.d_model == 64 and lm.config.n_layer == 2
    assert lm.weights.lm_head is lm.weights.embedding
    assert len(lm.sha256) == 64


def test_round_trip_to_hf_names(hf_checkpoint):
    lm = load_folder(hf_checkpoint[0])
    t = load_file(str(hf_checkpoint[0] / "model.safetensors"))
    back = to_hf_tensors(lm.config, lm.weights)
    for k, v in back.items():
        assert np.array_equal(np.asarray(t[k], np.float32), v), k


def test_offline_registered_model_falls_back_to_synthetic(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = resolve("mamba-130m")
    assert lm.synthetic and lm.config.d_model == 768
    with pytest.raises(QsimError, match="--require-weights"):
        resolve("mamba-130m", require_weights=True)


def test_synthetic_weights_are_deterministic():
    small = MambaConfig(d_model=32, n_layer=1, vocab_size=300)
    a, b = synthetic_weights(small), synthetic_weights(small)
    assert np.array_equal(a.layers[0]["in_proj"], b.layers[0]["in_proj"])
    assert np.allclose(-np.exp(a.layers[0]["A_log"][0]), -np.arange(1, 17))  # S4D-real init


@pytest.mark.parametrize("model,match", [
    ("no/such/folder", "no such folder"),
    ("mamba-999m", "not a registered model"),
])
def test_bad_model_names(model, match):
    with pytest.raises(QsimError, match=match):
        resolve(model)


def test_truncated_safetensors(hf_checkpoint, tmp_path):
    d = _copy(hf_checkpoint[0], tmp_path / "ckpt")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(QsimError, match="corrupt or truncated"):
        load_folder(d)


def test_missing_config(hf_checkpoint, tmp_path):
    d = _copy(hf_checkpoint[0], tmp_path / "ckpt")
    (d / "config.json").unlink()
    with pytest.raises(QsimError, match="no config.json"):
        load_folder(d)


def test_config_disagreeing_with_weights(hf_checkpoint, tmp_path):
    d = _copy(hf_checkpoint[0], tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QsimError, match=r"backbone.embeddings.weight has shape \(256, 64\), config implies \(256, 96\)"):
        load_folder(d)


def test_nan_weight_is_named(hf_checkpoint, tmp_path):
    d = _copy(hf_checkpoint[0], tmp_path / "ckpt")
    t = load_file(str(d / "model.safetensors"))
    t["backbone.layers.1.mixer.x_proj.weight"][3, 5] = np.nan
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(QsimError, match=r"layers.1.mixer.x_proj.weight holds NaN or Inf \(first at index \(3, 5\)\)"):
        load_folder(d)


def test_missing_tensor_is_named(hf_checkpoint, tmp_path):
    d = _copy(hf_checkpoint[0], tmp_path / "ckpt")
    t = load_file(str(d / "model.safetensors"))
    del t["backbone.layers.0.mixer.D"]
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(QsimError, match="backbone.layers.0.mixer.D is missing"):
        load_folder(d)


def test_registered_model_resolves_from_local_hf_cache(hf_checkpoint, tmp_path, monkeypatch):
    """Resolution order: a registered model found in the Hugging Face cache is used before synthetic."""
    from qsim.config import REGISTRY, RegisteredModel

    repo = "test-org/tiny-mamba-hf"
    cache = tmp_path / "hub"
    snap = cache / "models--test-org--tiny-mamba-hf" / "snapshots" / ("0" * 40)
    shutil.copytree(hf_checkpoint[0], snap)
    (cache / "models--test-org--tiny-mamba-hf" / "refs").mkdir()
    (cache / "models--test-org--tiny-mamba-hf" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setitem(REGISTRY, "mamba-cached", RegisteredModel("mamba-cached", repo, load_folder(snap).config))
    lm = resolve("mamba-cached", require_weights=True)
    assert lm.source == "hf-cache" and lm.name == "mamba-cached"
    assert lm.sha256 == load_folder(hf_checkpoint[0]).sha256


def test_sha256_is_the_files_hash(hf_checkpoint):
    import hashlib

    data = (hf_checkpoint[0] / "model.safetensors").read_bytes()
    assert load_folder(hf_checkpoint[0]).sha256 == hashlib.sha256(data).hexdigest()


def test_large_model_streams_its_layers(hf_checkpoint, monkeypatch):
    """Above KEEP_BYTES only the layer in use is held; another layer is re-read, with the same values."""
    kept = load_folder(hf_checkpoint[0])
    monkeypatch.setattr("qsim.weights.KEEP_BYTES", 0)
    lazy = load_folder(hf_checkpoint[0])
    a = lazy.weights.layers[1]
    assert lazy.weights.layers[1] is a  # the layer in use is held (every window of a batch uses it)
    lazy.weights.layers[0]
    b = lazy.weights.layers[1]
    assert a is not b and kept.weights.layers[1] is kept.weights.layers[1]  # re-read after another layer
    for k in a:
        assert np.array_equal(a[k], b[k]) and np.array_equal(a[k], kept.weights.layers[1][k])
    assert [lw["D"][0] for lw in lazy.weights.layers] == [lw["D"][0] for lw in kept.weights.layers]
    with pytest.raises(IndexError):
        lazy.weights.layers[2]


def test_nan_in_a_streamed_layer_is_found_at_load(hf_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("qsim.weights.KEEP_BYTES", 0)
    d = _copy(hf_checkpoint[0], tmp_path / "ckpt")
    t = load_file(str(d / "model.safetensors"))
    t["backbone.layers.1.mixer.out_proj.weight"][0, 2] = np.inf
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(QsimError, match=r"layers.1.mixer.out_proj.weight holds NaN or Inf"):
        load_folder(d)


def test_synthetic_tensors_do_not_depend_on_order(monkeypatch):
    """Each tensor has its own seed: layer 2 made alone equals layer 2 made after 0 and 1."""
    from qsim.weights import synthetic_layer

    cfg = MambaConfig(d_model=32, n_layer=3, vocab_size=300)
    monkeypatch.setattr("qsim.weights.KEEP_BYTES", 0)
    w = synthetic_weights(cfg)
    alone = synthetic_layer(cfg, 2)
    after = [w.layers[i] for i in range(3)][2]
    assert all(np.array_equal(alone[k], after[k]) for k in alone)
    assert not np.array_equal(w.layers[0]["in_proj"], w.layers[1]["in_proj"])
