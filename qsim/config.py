"""Mamba-1 and Mamba-2 architecture configurations and the registry of known models.

The registered shapes are exactly those of `state-spaces/mamba-*-hf` and
`state-spaces/mamba2-*`; a local checkpoint folder carries its own `config.json`
(transformers' format, or mamba_ssm's for Mamba-2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from qsim.errors import QsimError


@dataclass(frozen=True)
class MambaConfig:
    family: ClassVar[str] = "mamba"  # the architecture; recipes name the families they apply to

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 means ceil(d_model / 16), Mamba's "auto"
    layer_norm_epsilon: float = 1e-5
    conv_bias: bool = True
    proj_bias: bool = False
    tie_embeddings: bool = True
    extra_hf: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.dt_rank == 0:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "dt_rank"):
            if int(getattr(self, name)) <= 0:
                raise QsimError(f"config: {name} must be positive, got {getattr(self, name)}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra_hf")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MambaConfig:
        return cls(**{k: d[k] for k in d if k in cls.__dataclass_fields__ and k != "extra_hf"})

    @classmethod
    def from_hf(cls, hf: dict, where: str = "config.json") -> MambaConfig:
        """Read a transformers `MambaConfig` dictionary."""
        if hf.get("model_type", "mamba") != "mamba":
            raise QsimError(f"{where}: model_type is {hf.get('model_type')!r}, qsim runs Mamba-1 ('mamba')")
        try:
            d_model = int(hf["hidden_size"])
            return cls(
                d_model=d_model,
                n_layer=int(hf["num_hidden_layers"]),
                vocab_size=int(hf["vocab_size"]),
                d_state=int(hf.get("state_size", 16)),
                d_conv=int(hf.get("conv_kernel", 4)),
                expand=int(hf.get("expand", 2)),
                dt_rank=int(hf["time_step_rank"]) if hf.get("time_step_rank", "auto") != "auto"
                else math.ceil(d_model / 16),
                layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
                conv_bias=bool(hf.get("use_conv_bias", True)),
                proj_bias=bool(hf.get("use_bias", False)),
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise QsimError(f"{where}: not a usable Mamba config ({type(exc).__name__}: {exc})") from None

    def to_hf(self) -> dict:
        """A transformers-compatible `config.json` dictionary for this architecture."""
        return {
            "architectures": ["MambaForCausalLM"],
            "model_type": "mamba",
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "vocab_size": self.vocab_size,
            "state_size": self.d_state,
            "conv_kernel": self.d_conv,
            "expand": self.expand,
            "intermediate_size": self.d_inner,
            "time_step_rank": self.dt_rank,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "use_conv_bias": self.conv_bias,
            "use_bias": self.proj_bias,
            "tie_word_embeddings": self.tie_embeddings,
            "residual_in_fp32": True,
            "hidden_act": "silu",
            "pad_token_id": 0,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "time_step_min": 0.001,
            "time_step_max": 0.1,
            "time_step_floor": 1e-4,
            "time_step_scale": 1.0,
            "time_step_init_scheme": "random",
            "initializer_range": 0.1,
            "rescale_prenorm_residual": False,
            "use_mambapy": False,
        }


NO_LIMIT = 1e30  # an unlimited dt_max in config.json (JSON has no infinity); read back as inf


@dataclass(frozen=True)
class Mamba2Config:
    """The Mamba-2 block (mamba_ssm `Mamba2`, transformers `Mamba2Mixer`): per-head scalar decay,
    B and C shared by the heads of an SSD group, a gated RMSNorm per group before out_proj.

    The gated norm normalizes each group of d_inner / ngroups channels, as mamba_ssm and
    transformers >= 5 do; older transformers normalized over the whole d_inner, which
    differs only when ngroups > 1 (`norm_per_group=False` follows it).
    """

    family: ClassVar[str] = "mamba2"

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    layer_norm_epsilon: float = 1e-5
    conv_bias: bool = True
    proj_bias: bool = False
    tie_embeddings: bool = True
    dt_min: float = 0.0  # time_step_limit / dt_limit: dt is clamped to [dt_min, dt_max]
    dt_max: float = math.inf
    norm_per_group: bool = True

    def __post_init__(self):
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "headdim", "ngroups",
                     "chunk_size"):
            if int(getattr(self, name)) <= 0:
                raise QsimError(f"config: {name} must be positive, got {getattr(self, name)}")
        if self.d_inner % self.headdim:
            raise QsimError(f"config: d_inner {self.d_inner} is not a multiple of headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise QsimError(f"config: {self.nheads} heads do not split into {self.ngroups} groups")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: x, then B and C of every group."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        """in_proj's output rows: z, xBC, dt."""
        return self.d_inner + self.conv_dim + self.nheads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Mamba2Config:
        return cls(**{k: d[k] for k in d if k in cls.__dataclass_fields__})

    @classmethod
    def from_hf(cls, hf: dict, where: str = "config.json") -> Mamba2Config:
        """Read transformers' `Mamba2Config` or mamba_ssm's `MambaConfig` (with `ssm_cfg`) dictionary."""
        try:
            if "ssm_cfg" in hf or "d_model" in hf:  # mamba_ssm (state-spaces/mamba2-*)
                ssm = hf.get("ssm_cfg") or {}
                if ssm.get("layer", "Mamba2") != "Mamba2":
                    raise QsimError(f"{where}: ssm_cfg.layer is {ssm.get('layer')!r}, not 'Mamba2'")
                if int(hf.get("d_intermediate") or 0) or hf.get("attn_layer_idx"):
                    raise QsimError(f"{where}: an MLP (d_intermediate) or attention layers (attn_layer_idx) in the "
                                    "blocks: qsim runs pure Mamba-2 stacks only")
                if ssm.get("norm_before_gate", False) or not ssm.get("rmsnorm", True):
                    raise QsimError(f"{where}: only the gated RMSNorm after the gate (rmsnorm, "
                                    "norm_before_gate false) is supported")
                mult = int(hf.get("pad_vocab_size_multiple", 1))
                vocab = int(hf["vocab_size"])
                lo, hi = ssm.get("dt_limit", (0.0, math.inf))
                return cls(
                    d_model=int(hf["d_model"]), n_layer=int(hf["n_layer"]),
                    vocab_size=vocab + (-vocab) % mult,
                    d_state=int(ssm.get("d_state", 128)), d_conv=int(ssm.get("d_conv", 4)),
                    expand=int(ssm.get("expand", 2)), headdim=int(ssm.get("headdim", 64)),
                    ngroups=int(ssm.get("ngroups", 1)), chunk_size=int(ssm.get("chunk_size", 256)),
                    conv_bias=bool(ssm.get("conv_bias", True)), proj_bias=bool(ssm.get("bias", False)),
                    tie_embeddings=bool(hf.get("tie_embeddings", True)), dt_min=float(lo), dt_max=float(hi),
                    layer_norm_epsilon=float(hf.get("norm_epsilon", 1e-5)),
                )
            d_model, expand = int(hf["hidden_size"]), int(hf.get("expand", 2))
            headdim = int(hf.get("head_dim", 64))
            if int(hf.get("num_heads", expand * d_model // headdim)) * headdim != expand * d_model:
                raise QsimError(f"{where}: num_heads x head_dim != expand x hidden_size")
            lo, hi = hf.get("time_step_limit", (0.0, math.inf))
            hi = math.inf if float(hi) >= NO_LIMIT else hi
            return cls(
                d_model=d_model, n_layer=int(hf["num_hidden_layers"]), vocab_size=int(hf["vocab_size"]),
                d_state=int(hf.get("state_size", 128)), d_conv=int(hf.get("conv_kernel", 4)), expand=expand,
                headdim=headdim, ngroups=int(hf.get("n_groups", 8)), chunk_size=int(hf.get("chunk_size", 256)),
                layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
                conv_bias=bool(hf.get("use_conv_bias", True)), proj_bias=bool(hf.get("use_bias", False)),
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dt_min=float(lo), dt_max=float(hi),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise QsimError(f"{where}: not a usable Mamba-2 config ({type(exc).__name__}: {exc})") from None

    def to_hf(self) -> dict:
        """A transformers `Mamba2ForCausalLM` config.json dictionary for this architecture."""
        return {
            "architectures": ["Mamba2ForCausalLM"],
            "model_type": "mamba2",
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "vocab_size": self.vocab_size,
            "state_size": self.d_state,
            "conv_kernel": self.d_conv,
            "expand": self.expand,
            "head_dim": self.headdim,
            "num_heads": self.nheads,
            "n_groups": self.ngroups,
            "chunk_size": self.chunk_size,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "use_conv_bias": self.conv_bias,
            "use_bias": self.proj_bias,
            "tie_word_embeddings": self.tie_embeddings,
            "time_step_limit": [self.dt_min, self.dt_max if math.isfinite(self.dt_max) else NO_LIMIT],
            "residual_in_fp32": True,
            "hidden_act": "silu",
            "pad_token_id": 0,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "rescale_prenorm_residual": False,
        }


def config_from_hf(hf: dict, where: str = "config.json") -> MambaConfig | Mamba2Config:
    """The architecture a checkpoint's config.json describes (Mamba-1 or Mamba-2, either format)."""
    kind = hf.get("model_type") or ("mamba2" if (hf.get("ssm_cfg") or {}).get("layer") == "Mamba2" else None)
    if kind == "mamba2":
        return Mamba2Config.from_hf(hf, where)
    if kind in (None, "mamba") and "ssm_cfg" not in hf:
        return MambaConfig.from_hf(hf, where)
    raise QsimError(f"{where}: model_type is {hf.get('model_type')!r} (ssm_cfg {hf.get('ssm_cfg')!r}); "
                    "qsim runs Mamba-1 ('mamba') and Mamba-2 ('mamba2')")


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    hf_repo: str | None
    config: MambaConfig | Mamba2Config


def _hf(d_model: int, n_layer: int) -> MambaConfig:
    return MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=50280)


MAMBA2_TINY = Mamba2Config(d_model=256, n_layer=4, vocab_size=256)

REGISTRY: dict[str, RegisteredModel] = {
    m.name: m
    for m in (
        # shipped with qsim (qsim/models/mamba-tiny), trained by `python -m qsim.train_tiny`
        RegisteredModel("mamba-tiny", None, MambaConfig(d_model=256, n_layer=5, vocab_size=256)),
        RegisteredModel("mamba-130m", "state-spaces/mamba-130m-hf", _hf(768, 24)),
        RegisteredModel("mamba-370m", "state-spaces/mamba-370m-hf", _hf(1024, 48)),
        RegisteredModel("mamba-790m", "state-spaces/mamba-790m-hf", _hf(1536, 48)),
        RegisteredModel("mamba-1.4b", "state-spaces/mamba-1.4b-hf", _hf(2048, 48)),
        RegisteredModel("mamba-2.8b", "state-spaces/mamba-2.8b-hf", _hf(2560, 64)),
        # shipped (qsim/models/mamba2-tiny), trained by `python -m qsim.train_tiny2`: mamba2-130m's block, smaller
        RegisteredModel("mamba2-tiny", None, MAMBA2_TINY),
        # state-spaces/mamba2-* (mamba_ssm format): d_state 128, headdim 64, ngroups 1, vocab 50277 padded to 50288
        *(RegisteredModel(f"mamba2-{size}", f"state-spaces/mamba2-{size}", Mamba2Config(d, layers, 50288))
          for size, d, layers in (("130m", 768, 24), ("370m", 1024, 48), ("780m", 1536, 48),
                                  ("1.3b", 2048, 48), ("2.7b", 2560, 64))),
    )
}


def registered(name: str) -> RegisteredModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise QsimError(
            f"--model {name!r}: not a registered model ({', '.join(REGISTRY)}) nor an existing folder"
        ) from None
