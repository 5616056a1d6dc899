"""Mamba-1 architecture configuration and the registry of known models.

The registered shapes are exactly those of `state-spaces/mamba-*-hf`; a local
Hugging Face checkpoint folder carries its own `config.json`.
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


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    hf_repo: str | None
    config: MambaConfig


def _hf(d_model: int, n_layer: int) -> MambaConfig:
    return MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=50280)


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
    )
}


def registered(name: str) -> RegisteredModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise QsimError(
            f"--model {name!r}: not a registered model ({', '.join(REGISTRY)}) nor an existing folder"
        ) from None
