"""Float weights of a Mamba-1 or Mamba-2 model: checkpoint loading and synthetic init.

Resolution order for `--model`: a local folder, the local Hugging Face cache,
a hub download; when none can be had, seeded synthetic weights of the exact
architecture (clearly marked, unless `require_weights`).

Checkpoints: transformers' MambaForCausalLM / Mamba2ForCausalLM folders
(config.json + model*.safetensors), and for Mamba-2 also mamba_ssm's
(config.json with ssm_cfg; pytorch_model.bin or safetensors, the embedding
named `backbone.embedding.weight`). A layer is a dict keyed by LAYER_KEYS
(Mamba-1) or LAYER_KEYS2 (Mamba-2).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qsim.config import REGISTRY, Mamba2Config, MambaConfig, config_from_hf, registered
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
LAYER_KEYS2 = ("norm", "in_proj", "conv_w", "conv_b", "dt_bias", "A_log", "D", "gnorm", "out_proj")
_HF_LAYER2 = {  # transformers' Mamba2ForCausalLM; mamba_ssm's MambaLMHeadModel uses the same layer names
    "norm": "norm.weight",
    "in_proj": "mixer.in_proj.weight",
    "conv_w": "mixer.conv1d.weight",
    "conv_b": "mixer.conv1d.bias",
    "dt_bias": "mixer.dt_bias",
    "A_log": "mixer.A_log",
    "D": "mixer.D",
    "gnorm": "mixer.norm.weight",
    "out_proj": "mixer.out_proj.weight",
}
_EMBEDDING = "backbone.embeddings.weight"  # transformers
_EMBEDDING_SSM = "backbone.embedding.weight"  # mamba_ssm
AnyConfig = MambaConfig | Mamba2Config


KEEP_BYTES = 1 << 30  # a model whose layers take at most this in fp32 keeps them in memory once read


class LazyLayers(Sequence):
    """Per-layer fp32 weight dicts, read or generated when a layer is used.

    A large model (mamba-2.8b: 11 GB in fp32) never holds more than the layers
    its caller keeps; a small one (`keep`) caches every layer it has built.
    A rewrite that depends on the activations entering a layer (Quamba2's reorder) sets `feed`: a
    calibration pass hands it the windows it carries, feed(i, residuals), before it uses layer i.
    """

    def __init__(self, n: int, build: Callable[[int], dict[str, np.ndarray]], keep: bool,
                 feed: Callable[[int, list[np.ndarray]], None] | None = None):
        self._n, self._build, self.feed = n, build, feed
        self._cache: dict[int, dict] | None = {} if keep else None
        self._last: tuple[int, dict] | None = None  # streamed: the layer in use, for every window of a batch

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(f"layer {i} of {self._n}")
        i %= self._n
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        if self._last is not None and self._last[0] == i:
            return self._last[1]
        self._last = None  # the previous layer is released before the next one is built
        layer = self._build(i)
        if self._cache is not None:
            self._cache[i] = layer
        else:
            self._last = (i, layer)
        return layer


def keep_layers(cfg: AnyConfig) -> bool:
    return 4 * cfg.n_layer * sum(math.prod(s) for s in expected_shapes(cfg).values()) <= KEEP_BYTES


@dataclass
class MambaWeights:
    """fp32 weights; `lm_head is embedding` when the embeddings are tied; layers may be lazy."""

    embedding: np.ndarray
    norm_f: np.ndarray
    lm_head: np.ndarray
    layers: Sequence[dict[str, np.ndarray]] = field(default_factory=list)


@dataclass
class LoadedModel:
    name: str
    config: AnyConfig
    weights: MambaWeights
    source: str  # "local", "hf-cache", "hub" or "synthetic"
    location: str  # folder the weights came from, or a description
    sha256: str
    folder: Path | None  # where a tokenizer may be found

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"


def expected_shapes(cfg: AnyConfig) -> dict[str, tuple[int, ...]]:
    if cfg.family == "mamba2":
        return _expected_shapes2(cfg)
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


def _expected_shapes2(cfg: Mamba2Config) -> dict[str, tuple[int, ...]]:
    di, dm, cd, nh = cfg.d_inner, cfg.d_model, cfg.conv_dim, cfg.nheads
    return {
        "norm": (dm,),
        "in_proj": (cfg.d_in_proj, dm),
        "conv_w": (cd, cfg.d_conv),
        "conv_b": (cd,),
        "dt_bias": (nh,),
        "A_log": (nh,),
        "D": (nh,),
        "gnorm": (di,),
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


class SafetensorsFiles:
    """The tensors of a (possibly sharded) checkpoint, read one at a time from the memory-mapped files."""

    def __init__(self, folder: Path):
        from safetensors import SafetensorError, safe_open

        self.files = sorted(folder.glob("model*.safetensors"))
        if not self.files:
            raise QsimError(f"{folder}: no model.safetensors (or model-*.safetensors shards) in the folder")
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for f in self.files:
            try:
                with safe_open(str(f), framework="numpy") as h:
                    for k in h.keys():  # noqa: SIM118 (safe_open is not iterable)
                        self.where[k] = f
                        self.shapes[k] = tuple(h.get_slice(k).get_shape())
            except (SafetensorError, OSError, ValueError) as exc:
                raise QsimError(f"{f}: corrupt or truncated safetensors file ({exc})") from None

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (bfloat16, which NumPy lacks, goes through torch)."""
        from safetensors import SafetensorError, safe_open

        f = self.where[name]
        try:
            with safe_open(str(f), framework="numpy") as h:
                return np.asarray(h.get_tensor(name), dtype=np.float32)
        except (TypeError, ValueError) as exc:
            if "bf16" not in str(exc).lower() and "bfloat16" not in str(exc).lower():
                raise QsimError(f"{f}: tensor {name} cannot be read ({exc})") from None
        except (SafetensorError, OSError) as exc:
            raise QsimError(f"{f}: corrupt or truncated safetensors file ({exc})") from None
        with safe_open(str(f), framework="pt") as h:
            return h.get_tensor(name).float().numpy()

    def sha256(self) -> str:
        return _files_sha256(self.files)


def _files_sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()  # of all shards' bytes in order


class TorchBinFiles:
    """The tensors of mamba_ssm's `pytorch_model*.bin`, loaded weights-only and memory-mapped.

    Same interface as SafetensorsFiles (`in`, get, sha256, files, shapes)."""

    def __init__(self, files: list[Path]):
        import pickle
        import zipfile

        import torch

        self.files = files
        self._tensors: dict[str, torch.Tensor] = {}
        for f in files:
            try:  # mmap needs torch.save's zip format; a legacy file is read whole
                sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(f))
            except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, KeyError) as exc:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise QsimError(f"{f}: corrupt, truncated or not a weights-only torch checkpoint ({msg})") from None
            if not isinstance(sd, dict):
                raise QsimError(f"{f}: holds a {type(sd).__name__}, not a state dict of tensors")
            self._tensors.update({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)})
        self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (a float32 tensor stays a view of the mapped file)."""
        return self._tensors[name].float().numpy()

    def sha256(self) -> str:
        return _files_sha256(self.files)


def tensor_files(folder: Path, cfg: AnyConfig) -> SafetensorsFiles | TorchBinFiles:
    """A checkpoint folder's tensors: safetensors; for Mamba-2 also mamba_ssm's pytorch_model.bin."""
    if cfg.family == "mamba2" and not list(folder.glob("model*.safetensors")):
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if not bins:
            raise QsimError(f"{folder}: no model.safetensors, model-*.safetensors shards or pytorch_model.bin "
                            "in the folder")
        return TorchBinFiles(bins)
    return SafetensorsFiles(folder)


def _hf_config(folder: Path) -> AnyConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise QsimError(f"{folder}: no config.json in the checkpoint folder")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QsimError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise QsimError(f"{path}: not a JSON object")
    return config_from_hf(hf, str(path))


def _layer_tensor_names(cfg: AnyConfig, i: int) -> dict[str, str]:
    names = _HF_LAYER2 if cfg.family == "mamba2" else _HF_LAYER
    return {key: f"backbone.layers.{i}.{hf_name}" for key, hf_name in names.items()}


def _refuse_proj_bias(cfg: Mamba2Config, t, where: str) -> None:
    biases = [f"backbone.layers.0.mixer.{p}.bias" for p in ("in_proj", "out_proj")]
    found = [b for b in biases if b in t]
    if cfg.proj_bias or found:
        what = f"tensor {found[0]} is present" if found else "the config sets use_bias (ssm_cfg bias)"
        raise QsimError(f"{where}: {what}: Mamba-2 with in_proj/out_proj biases is not supported "
                        "(no public Mamba-2 uses them)")


def weights_from_hf_tensors(cfg: AnyConfig, t, where: str) -> MambaWeights:
    """Map transformers' (or, for Mamba-2, mamba_ssm's) tensor names onto MambaWeights, checking shapes and values.

    `t` is a dict of arrays, a SafetensorsFiles or a TorchBinFiles; every tensor is
    checked here, one at a time, and the layers are re-read when used unless the model is small.
    """
    get = t.get if isinstance(t, SafetensorsFiles | TorchBinFiles) else t.__getitem__
    shapes = expected_shapes(cfg)
    emb_name = _EMBEDDING
    if cfg.family == "mamba2":
        _refuse_proj_bias(cfg, t, where)
        if _EMBEDDING not in t and _EMBEDDING_SSM in t:
            emb_name = _EMBEDDING_SSM
        elif _EMBEDDING not in t:
            raise QsimError(f"{where}: tensor {_EMBEDDING} (mamba_ssm: {_EMBEDDING_SSM}) is missing")

    def take(name: str, shape):
        if name not in t:
            raise QsimError(f"{where}: tensor {name} is missing")
        return _checked(get(name), name, shape, where)

    def layer(i: int) -> dict[str, np.ndarray]:
        out = {}
        for key, name in _layer_tensor_names(cfg, i).items():
            if name not in t:
                if key == "conv_b" and not cfg.conv_bias:
                    out[key] = np.zeros(shapes[key], np.float32)
                    continue
                raise QsimError(f"{where}: tensor {name} is missing")
            raw = get(name)
            if key == "conv_w" and raw.ndim == 3:
                raw = raw[:, 0, :]
            out[key] = _checked(raw, name, shapes[key], where)
        return out

    emb = take(emb_name, (cfg.vocab_size, cfg.d_model))
    keep = keep_layers(cfg)
    layers = LazyLayers(cfg.n_layer, layer, keep)
    check = layers.__getitem__ if keep else layer  # kept when small; read, checked and dropped when large
    for i in range(cfg.n_layer):  # every tensor checked now, not minutes into a run
        check(i)
    norm_f = take("backbone.norm_f.weight", (cfg.d_model,))
    lm_head = emb
    if "lm_head.weight" in t and not cfg.tie_embeddings:
        lm_head = take("lm_head.weight", (cfg.vocab_size, cfg.d_model))
    return MambaWeights(emb, norm_f, lm_head, layers)


def load_folder(folder: Path, name: str | None = None, source: str = "local") -> LoadedModel:
    cfg = _hf_config(folder)
    files = tensor_files(folder, cfg)
    weights = weights_from_hf_tensors(cfg, files, str(folder))
    return LoadedModel(name or folder.name, cfg, weights, source, str(folder), files.sha256(), folder)


def _tensor_rng(seed: int, name: str) -> np.random.Generator:
    """One generator per tensor: its values do not depend on which tensors were made before."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def synthetic_layer(cfg: AnyConfig, i: int, seed: int = SYNTHETIC_SEED) -> dict[str, np.ndarray]:
    """Layer i under Mamba's standard initialisation (as in mamba_ssm / transformers), seeded per tensor."""
    if cfg.family == "mamba2":
        return _synthetic_layer2(cfg, i, seed)
    di, dm, n, r = cfg.d_inner, cfg.d_model, cfg.d_state, cfg.dt_rank
    rng = lambda key: _tensor_rng(seed, f"layers.{i}.{key}")

    def linear(key: str, out_f: int, in_f: int) -> np.ndarray:
        bound = 1.0 / math.sqrt(in_f)
        return rng(key).uniform(-bound, bound, (out_f, in_f)).astype(np.float32)

    dt = np.exp(rng("dt_b").uniform(math.log(1e-3), math.log(1e-1), di)).clip(min=1e-4)
    return {
        "norm": np.ones(dm, np.float32),
        "in_proj": linear("in_proj", 2 * di, dm),
        "conv_w": rng("conv_w").uniform(-0.5, 0.5, (di, cfg.d_conv)).astype(np.float32),  # fan_in = d_conv
        "conv_b": rng("conv_b").uniform(-0.5, 0.5, di).astype(np.float32),
        "x_proj": linear("x_proj", r + 2 * n, di),
        "dt_w": rng("dt_w").uniform(-(r**-0.5), r**-0.5, (di, r)).astype(np.float32),
        "dt_b": (dt + np.log(-np.expm1(-dt))).astype(np.float32),  # inverse softplus
        "A_log": np.log(np.tile(np.arange(1, n + 1, dtype=np.float32), (di, 1))),
        "D": np.ones(di, np.float32),
        "out_proj": linear("out_proj", dm, di),
    }


def _synthetic_layer2(cfg: Mamba2Config, i: int, seed: int) -> dict[str, np.ndarray]:
    """A Mamba-2 layer under mamba_ssm's initialisation, seeded per tensor: projections uniform
    +-1/sqrt(fan_in) (out_proj also / sqrt(n_layer), the prenorm-residual rescale), conv weight and
    bias uniform +-1/sqrt(d_conv), A uniform in [1, 16], dt log-uniform in [1e-3, 1e-1]."""
    di, dm, cd, nh = cfg.d_inner, cfg.d_model, cfg.conv_dim, cfg.nheads
    rng = lambda key: _tensor_rng(seed, f"layers.{i}.{key}")

    def uniform(key: str, bound: float, shape) -> np.ndarray:
        return rng(key).uniform(-bound, bound, shape).astype(np.float32)

    conv = 1.0 / math.sqrt(cfg.d_conv)
    dt = np.exp(rng("dt_bias").uniform(math.log(1e-3), math.log(1e-1), nh)).clip(min=1e-4)
    return {
        "norm": np.ones(dm, np.float32),
        "in_proj": uniform("in_proj", 1.0 / math.sqrt(dm), (cfg.d_in_proj, dm)),
        "conv_w": uniform("conv_w", conv, (cd, cfg.d_conv)),
        "conv_b": uniform("conv_b", conv, cd) if cfg.conv_bias else np.zeros(cd, np.float32),
        "dt_bias": (dt + np.log(-np.expm1(-dt))).astype(np.float32),  # inverse softplus
        "A_log": np.log(rng("A_log").uniform(1, 16, nh)).astype(np.float32),
        "D": np.ones(nh, np.float32),
        "gnorm": np.ones(di, np.float32),
        "out_proj": uniform("out_proj", 1.0 / math.sqrt(di) / math.sqrt(cfg.n_layer), (dm, di)),
    }


def synthetic_weights(cfg: AnyConfig, seed: int = SYNTHETIC_SEED) -> MambaWeights:
    """Seeded synthetic weights; a large model's layers are generated when used."""
    emb = (_tensor_rng(seed, "embedding").standard_normal((cfg.vocab_size, cfg.d_model)) * 0.02).astype(np.float32)
    layers = LazyLayers(cfg.n_layer, lambda i: synthetic_layer(cfg, i, seed), keep_layers(cfg))
    return MambaWeights(emb, np.ones(cfg.d_model, np.float32), emb, layers)


def _hf_snapshot(repo: str, local_only: bool, family: str = "mamba") -> Path | None:
    """A hub snapshot with weights; state-spaces/mamba2-* (mamba_ssm format) ship pytorch_model.bin."""
    patterns = ["*.json", "*.safetensors", "*.txt"] + (["pytorch_model*.bin"] if family == "mamba2" else [])
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo, local_files_only=local_only, allow_patterns=patterns)
    except Exception:  # noqa: BLE001 (offline, not cached, or hub unreachable: the caller falls back)
        return None
    p = Path(path)
    if list(p.glob("model*.safetensors")) or (family == "mamba2" and list(p.glob("pytorch_model*.bin"))):
        return p
    return None


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
        snap = _hf_snapshot(reg.hf_repo, local_only, reg.config.family)
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


def to_hf_tensors(cfg: AnyConfig, w: MambaWeights) -> dict[str, np.ndarray]:
    """The inverse of weights_from_hf_tensors: transformers' MambaForCausalLM / Mamba2ForCausalLM state dict."""
    t = {"backbone.embeddings.weight": w.embedding, "backbone.norm_f.weight": w.norm_f}
    for i, layer in enumerate(w.layers):
        for key, name in _layer_tensor_names(cfg, i).items():
            t[name] = layer[key][:, None, :] if key == "conv_w" else layer[key]
    if w.lm_head is not w.embedding:
        t["lm_head.weight"] = w.lm_head
    return t


def to_mamba_ssm_tensors(cfg: Mamba2Config, w: MambaWeights) -> dict[str, np.ndarray]:
    """mamba_ssm's MambaLMHeadModel state dict of a Mamba-2 (as in state-spaces/mamba2-*'s pytorch_model.bin):
    the embedding is `backbone.embedding.weight` and `lm_head.weight` is always there (tied: the embedding)."""
    if cfg.family != "mamba2":
        raise QsimError("to_mamba_ssm_tensors: only Mamba-2 is read in mamba_ssm's format")
    t = to_hf_tensors(cfg, w)
    t = {(_EMBEDDING_SSM if k == _EMBEDDING else k): v for k, v in t.items()}
    t.setdefault("lm_head.weight", w.lm_head)
    return t
