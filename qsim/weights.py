"""Float weights of a Mamba-1 model: Hugging Face checkpoint loading and synthetic init.

Resolution order for `--model`: a local folder, the local Hugging Face cache,
a hub download; when none can be had, seeded synthetic weights of the exact
architecture (clearly marked, unless `require_weights`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qsim.config import MambaConfig, REGISTRY, registered
from qsim.errors import QsimError

SHIPPED_MODELS = Path(__file__).parent / "models"
SYNTHETIC_SEED = 0
LAYER_KEYS = ("norm", "in_proj", "conv_w", "conv_b", "x_proj", "dt_w", "dt_b", "A_log", "D", "out_proj")
_HF_LAYER = {
    "norm": "norm.weight",
    "in_proj": "mixer.in_proj.weight",
    "conv_w": "mixer.conv1d.weight",
    "conv_b": "mixer.conv1d.bias",
    "x_proj": "mixer.x_proj.weight",
    "dt_w": "mixer.dt_proj.weight",
    "dt_b": "mixer.dt_proj.bias",
    "A_log": "mixer.A_log",
    "D": "mixer.D",
    "out_proj": "mixer.out_proj.weight",
}


@dataclass
class MambaWeights:
    """fp32 weights; `lm_head is embedding` when the embeddings are tied."""

    embedding: np.ndarray
    norm_f: np.ndarray
    lm_head: np.ndarray
    layers: list[dict[str, np.ndarray]] = field(default_factory=list)


@dataclass
class LoadedModel:
    name: str
    config: MambaConfig
    weights: MambaWeights
    source: str  # "local", "hf-cache", "hub" or "synthetic"
    location: str  # folder the weights came from, or a description
    sha256: str
    folder: Path | None  # where a tokenizer may be found

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"


def expected_shapes(cfg: MambaConfig) -> dict[str, tuple[int, ...]]:
    di, dm, n, r = cfg.d_inner, cfg.d_model, cfg.d_state, cfg.dt_rank
    return {
        "norm": (dm,),
        "in_proj": (2 * di, dm),
        "conv_w": (di, cfg.d_conv),
        "conv_b": (di,),
        "x_proj": (r + 2 * n, di),
        "dt_w": (di, r),
        "dt_b": (di,),
        "A_log": (di, n),
        "D": (di,),
        "out_proj": (dm, di),
    }


def _checked(arr, name: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape != shape:
        raise QsimError(f"{where}: tensor {name} has shape {tuple(arr.shape)}, config implies {shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise QsimError(f"{where}: tensor {name} holds NaN or Inf (first at index {idx})")
    return arr


def _read_safetensors(folder: Path) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a (possibly sharded) checkpoint, and the sha256 of its files."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise QsimError(f"{folder}: no model.safetensors (or model-*.safetensors shards) in the folder")
    tensors: dict[str, np.ndarray] = {}
    digest = hashlib.sha256()
    for f in files:
        try:
            data = f.read_bytes()
            digest.update(data)
            tensors.update(_load_any_dtype(f, load_file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise QsimError(f"{f}: corrupt or truncated safetensors file ({exc})") from None
    return tensors, digest.hexdigest()


def _load_any_dtype(path: Path, load_file) -> dict[str, np.ndarray]:
    """safetensors' NumPy loader lacks bfloat16; fall back to torch for such files."""
    try:
        return load_file(str(path))
    except (TypeError, ValueError) as exc:
        if "bf16" not in str(exc).lower() and "bfloat16" not in str(exc).lower():
            raise
    from safetensors.torch import load_file as load_torch

    return {k: v.float().numpy() for k, v in load_torch(str(path)).items()}


def _hf_config(folder: Path) -> MambaConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise QsimError(f"{folder}: no config.json in the checkpoint folder")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QsimError(f"{path}: not valid JSON ({exc})") from None
    return MambaConfig.from_hf(hf, str(path))


def weights_from_hf_tensors(cfg: MambaConfig, t: dict[str, np.ndarray], where: str) -> MambaWeights:
    """Map transformers' MambaForCausalLM tensor names onto MambaWeights, checking shapes and values."""

    def take(name: str, shape):
        if name not in t:
            raise QsimError(f"{where}: tensor {name} is missing")
        return _checked(t[name], name, shape, where)

    shapes = expected_shapes(cfg)
    emb = take("backbone.embeddings.weight", (cfg.vocab_size, cfg.d_model))
    layers = []
    for i in range(cfg.n_layer):
        layer = {}
        for key, hf_name in _HF_LAYER.items():
            name = f"backbone.layers.{i}.{hf_name}"
            raw = t.get(name)
            if key == "conv_w" and raw is not None and raw.ndim == 3:
                raw = raw[:, 0, :]
            if key == "conv_b" and raw is None and not cfg.conv_bias:
                raw = np.zeros(shapes[key], np.float32)
            if raw is None:
                raise QsimError(f"{where}: tensor {name} is missing")
            layer[key] = _checked(raw, name, shapes[key], where)
        layers.append(layer)
    norm_f = take("backbone.norm_f.weight", (cfg.d_model,))
    lm_head = emb
    if "lm_head.weight" in t and not cfg.tie_embeddings:
        lm_head = take("lm_head.weight", (cfg.vocab_size, cfg.d_model))
    return MambaWeights(emb, norm_f, lm_head, layers)


def load_folder(folder: Path, name: str | None = None, source: str = "local") -> LoadedModel:
    cfg = _hf_config(folder)
    tensors, sha = _read_safetensors(folder)
    weights = weights_from_hf_tensors(cfg, tensors, str(folder))
    return LoadedModel(name or folder.name, cfg, weights, source, str(folder), sha, folder)


def synthetic_weights(cfg: MambaConfig, seed: int = SYNTHETIC_SEED) -> MambaWeights:
    """Mamba's standard initialisation (as in mamba_ssm / transformers), seeded."""
    rng = np.random.default_rng(seed)
    di, dm, n, r = cfg.d_inner, cfg.d_model, cfg.d_state, cfg.dt_rank

    def linear(out_f: int, in_f: int) -> np.ndarray:
        bound = 1.0 / math.sqrt(in_f)
        return rng.uniform(-bound, bound, (out_f, in_f)).astype(np.float32)

    emb = (rng.standard_normal((cfg.vocab_size, dm)) * 0.02).astype(np.float32)
    layers = []
    for _ in range(cfg.n_layer):
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), di)).clip(min=1e-4)
        layers.append({
            "norm": np.ones(dm, np.float32),
            "in_proj": linear(2 * di, dm),
            "conv_w": rng.uniform(-0.5, 0.5, (di, cfg.d_conv)).astype(np.float32),  # fan_in = d_conv
            "conv_b": rng.uniform(-0.5, 0.5, di).astype(np.float32),
            "x_proj": linear(r + 2 * n, di),
            "dt_w": rng.uniform(-(r**-0.5), r**-0.5, (di, r)).astype(np.float32),
            "dt_b": (dt + np.log(-np.expm1(-dt))).astype(np.float32),  # inverse softplus
            "A_log": np.log(np.tile(np.arange(1, n + 1, dtype=np.float32), (di, 1))),
            "D": np.ones(di, np.float32),
            "out_proj": linear(dm, di),
        })
    return MambaWeights(emb, np.ones(dm, np.float32), emb, layers)


def _hf_snapshot(repo: str, local_only: bool) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            repo, local_files_only=local_only, allow_patterns=["*.json", "*.safetensors", "*.txt"]
        )
    except Exception:  # offline, not cached, or hub unreachable: the caller falls back
        return None
    p = Path(path)
    return p if list(p.glob("model*.safetensors")) else None


def resolve(model: str, require_weights: bool = False) -> LoadedModel:
    """Load `model` (registered name, shipped name or folder) in the documented order."""
    path = Path(model)
    if path.is_dir():
        return load_folder(path)
    shipped = SHIPPED_MODELS / model
    if shipped.is_dir():
        return load_folder(shipped, model, source="shipped")
    if model not in REGISTRY:
        if os.sep in model or path.suffix:
            raise QsimError(f"--model {model}: no such folder")
        registered(model)  # raises with the list of names
    reg = REGISTRY[model]
    for local_only, source in ((True, "hf-cache"), (False, "hub")):
        if not local_only and os.environ.get("HF_HUB_OFFLINE") == "1":
            break
        snap = _hf_snapshot(reg.hf_repo, local_only)
        if snap is not None:
            return load_folder(snap, model, source=source)
    if require_weights:
        raise QsimError(
            f"--model {model}: weights of {reg.hf_repo} not found locally or in the Hugging Face cache, "
            "and the hub is unreachable (--require-weights)"
        )
    cfg = reg.config
    sha = hashlib.sha256(f"synthetic:{json.dumps(cfg.to_dict(), sort_keys=True)}:{SYNTHETIC_SEED}".encode())
    return LoadedModel(model, cfg, synthetic_weights(cfg), "synthetic",
                       f"seeded synthetic weights (seed {SYNTHETIC_SEED})", sha.hexdigest(), None)


def to_hf_tensors(cfg: MambaConfig, w: MambaWeights) -> dict[str, np.ndarray]:
    """The inverse of weights_from_hf_tensors: transformers' MambaForCausalLM state dict."""
    t = {"backbone.embeddings.weight": w.embedding, "backbone.norm_f.weight": w.norm_f}
    for i, layer in enumerate(w.layers):
        for key, hf_name in _HF_LAYER.items():
            v = layer[key][:, None, :] if key == "conv_w" else layer[key]
            t[f"backbone.layers.{i}.{hf_name}"] = v
    if w.lm_head is not w.embedding:
        t["lm_head.weight"] = w.lm_head
    return t
