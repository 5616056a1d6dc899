"""Model shapes for estimation: per-layer operation lists with their per-token work.

Mamba-1 shapes come from qsim.config (any MambaConfig, registered or read from
a checkpoint folder's config.json). Mamba-2 shapes exist here only for
estimation, before Mamba-2 numerics do. Every count is per token; one layer's
list is repeated n_layer times, `lm_head` (with the final norm) runs once.

Weight formats per `--bits` preset, following Quamba (arXiv 2410.13229), Quamba2 (arXiv 2503.22879)
and their released code, github.com/enyac-group/Quamba (qsim/hw/SOURCES.md, "Weight formats"):
  role "gptq"   in_proj, out_proj, lm_head (and a tied embedding): the preset's
                weight bits; int4 carries one fp16 scale per group of 128 inputs
                plus one fp16 scale per output channel;
  role "linear" x_proj, dt_proj: 16-bit in fp16, else 8-bit (dt_proj stays
                W8A8 in Quamba2's Mamba-1 W4A8);
  role "param"  conv weights, biases, A_log, D, norm weights: 8-bit with
                8-bit activations, else 16-bit.
Every 8-bit tensor carries one fp32 scale. Between tokens the SSM state is
stored as 32-bit words (SSM_STATE_BYTES: the fixed datapath's 24-bit state,
fp32 in Mamba's kernels) and the conv window at the activation width.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from qsim.bits import BitsPreset
from qsim.config import REGISTRY, MambaConfig
from qsim.errors import QsimError
from qsim.weights import SHIPPED_MODELS

GROUP_SCALE_BYTES = 2  # fp16 per-group and per-channel scales of int4 weights
TENSOR_SCALE_BYTES = 4  # one fp32 scale per 8-bit tensor
# the SSM state between tokens: the fixed datapath's 12-28-bit state (qsim.spec, 24 by default) in a 32-bit
# word, as the GPU executor keeps it; fp32 in Mamba's own kernels
SSM_STATE_BYTES = 4


@dataclass(frozen=True)
class Weight:
    name: str
    rows: int  # output channels
    cols: int  # inputs per output channel: the int4 grouping axis
    role: str  # "gptq" | "linear" | "param"

    @property
    def elems(self) -> int:
        return self.rows * self.cols

    def bits(self, bits: BitsPreset) -> int:
        if self.role == "gptq":
            return bits.weight_bits
        if self.role == "linear":
            return 16 if bits.weight_bits == 16 else 8
        return 8 if bits.act_bits == 8 else 16

    def nbytes(self, bits: BitsPreset) -> int:
        b = self.bits(bits)
        data = math.ceil(self.elems * b / 8)
        if b == 4:
            groups = self.rows * math.ceil(self.cols / bits.group_size)
            return data + (groups + self.rows) * GROUP_SCALE_BYTES
        return data + (TENSOR_SCALE_BYTES if b == 8 else 0)


@dataclass(frozen=True)
class Op:
    """One operation of a layer, with its work per token.

    macs: multiply-accumulates on the MAC array; vector_elems: elements through
    the table units (element-wise lanes); lookups, mults, adds: table reads and
    element-wise arithmetic for energy; act_in/act_out: activation elements read
    and written; state: recurrent elements kept between tokens, at the activation
    width unless state_word (the SSM state: SSM_STATE_BYTES each); shared_in: the
    scan inputs every channel group reads (B, C); scan: (d_inner, d_state) on the
    scan unit; hadamard: vector size on the Hadamard unit (its adds come from
    qsim.hw.units.hadamard_adds when costed).
    """

    name: str
    macs: int = 0
    vector_elems: int = 0
    lookups: int = 0
    mults: int = 0
    adds: int = 0
    weights: tuple[Weight, ...] = ()
    act_in: int = 0
    act_out: int = 0
    state: int = 0
    state_word: bool = False
    shared_in: int = 0
    scan: tuple[int, int] | None = None
    hadamard: int | None = None

    def weight_bytes(self, bits: BitsPreset) -> int:
        return sum(w.nbytes(bits) for w in self.weights)

    def weight_elems(self) -> int:
        return sum(w.elems for w in self.weights)

    def state_bytes(self, bits: BitsPreset) -> int:
        return self.state * (SSM_STATE_BYTES if self.state_word else bits.act_bits // 8)

    def mac_format(self, bits: BitsPreset) -> str:
        """Operand format on the MAC array, e.g. 'w4a8'; the first weight is the one multiplied."""
        return f"w{self.weights[0].bits(bits)}a{bits.act_bits}"


@dataclass(frozen=True)
class ModelShape:
    name: str
    family: str  # "mamba" or "mamba2"
    d_model: int
    n_layer: int
    d_inner: int
    d_state: int
    vocab: int
    layer_ops: tuple[Op, ...]
    lm_head: Op
    embedding: Weight
    tied: bool
    source: str

    def ops(self, bits: BitsPreset) -> list[tuple[Op, int]]:
        """(op, instances) in execution order; the Hadamard exists only in quantized models."""
        quantized = bits.weight_bits < 16 or bits.act_bits < 16
        layer = [(op, self.n_layer) for op in self.layer_ops if op.hadamard is None or quantized]
        return layer + [(self.lm_head, 1)]

    def weight_bytes(self, bits: BitsPreset) -> int:
        """Bytes of every weight a forward pass reads (the embedding row read is left out: d_model bytes)."""
        return sum(op.weight_bytes(bits) * k for op, k in self.ops(bits))

    def storage_bytes(self, bits: BitsPreset) -> int:
        """Bytes the model occupies in device memory: weights plus an untied embedding table."""
        return self.weight_bytes(bits) + (0 if self.tied else self.embedding.nbytes(bits))

    def state_bytes(self, bits: BitsPreset) -> int:
        """SSM state (32-bit words) and conv windows (activation width) of every layer."""
        return sum(op.state_bytes(bits) for op in self.layer_ops) * self.n_layer


def _norm(d: int) -> Op:
    """RMSNorm with the residual add: square, accumulate, add; scale by rstd (table) and gamma."""
    return Op("norm", vector_elems=d, lookups=1, mults=3 * d, adds=2 * d,
              weights=(Weight("norm.weight", d, 1, "param"),), act_in=d, act_out=d)


def _linear(name: str, n_in: int, n_out: int, role: str, bias: bool = False, **table_work) -> Op:
    """A matmul on the MAC array; its epilogue scales every output once (plus any table-unit work)."""
    weights = (Weight(f"{name}.weight", n_out, n_in, role),)
    if bias:
        weights += (Weight(f"{name}.bias", n_out, 1, "param"),)
    return Op(name, macs=n_in * n_out, mults=n_out, weights=weights, act_in=n_in, act_out=n_out, **table_work)


def _conv(channels: int, d_conv: int) -> Op:
    """Depthwise causal conv on the MAC array; bias, SiLU (table) and requantization on the table units."""
    return Op("conv", macs=channels * d_conv, vector_elems=channels, lookups=channels, adds=channels,
              weights=(Weight("conv.weight", channels, d_conv, "param"), Weight("conv.bias", channels, 1, "param")),
              act_in=channels, act_out=channels, state=channels * (d_conv - 1))


def _hadamard(n: int) -> Op:
    """Integer Hadamard of y before out_proj, then one requantizing multiply per element.

    Its add count comes from qsim.hw.units.hadamard_adds when costed, so a size the spec
    cannot transform fails only for the quantized presets that need the transform."""
    return Op("hadamard", mults=n, act_in=n, act_out=n, hadamard=n)


def _lm_head(d: int, vocab: int, head: Weight) -> Op:
    """Final norm and the vocabulary projection; prefill needs only the last token's logits
    (mamba_ssm's num_last_tokens=1, as Quamba's profile_mamba.py measures TTFT)."""
    norm = _norm(d)
    return Op("lm_head", macs=d * vocab, vector_elems=d, lookups=1, mults=norm.mults + vocab, adds=norm.adds,
              weights=(head,) + norm.weights, act_in=d, act_out=vocab)


def _assemble(name: str, family: str, d: int, n_layer: int, d_inner: int, d_state: int, vocab: int,
              tied: bool, ops: tuple[Op, ...], source: str) -> ModelShape:
    emb = Weight("embedding", vocab, d, "gptq")  # Quamba2 quantizes it "head to toe" in W4 presets
    head = emb if tied else Weight("lm_head.weight", vocab, d, "gptq")
    return ModelShape(name, family, d, n_layer, d_inner, d_state, vocab, ops, _lm_head(d, vocab, head), emb,
                      tied, source)


def mamba1_shape(name: str, cfg: MambaConfig, source: str) -> ModelShape:
    d, di, n, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank
    scan = Op("scan", lookups=di * n, mults=4 * di * n + 2 * di, adds=2 * di * n + di,
              weights=(Weight("A_log", di, n, "param"), Weight("D", di, 1, "param")),
              act_in=2 * di + 2 * n, act_out=di, state=di * n, state_word=True, shared_in=2 * n, scan=(di, n))
    ops = (
        _norm(d),
        _linear("in_proj", d, 2 * di, "gptq"),
        _conv(di, cfg.d_conv),
        _linear("x_proj", di, r + 2 * n, "linear"),
        _linear("dt_proj", r, di, "linear", bias=True, vector_elems=di, lookups=di, adds=di),
        scan,
        Op("gating", vector_elems=di, lookups=di, mults=di, act_in=2 * di, act_out=di),
        _hadamard(di),
        _linear("out_proj", di, d, "gptq"),
    )
    return _assemble(name, "mamba", d, cfg.n_layer, di, n, cfg.vocab_size, cfg.tie_embeddings, ops, source)


@dataclass(frozen=True)
class Mamba2Config:
    d_model: int
    n_layer: int
    vocab_size: int
    ngroups: int = 1
    tie_embeddings: bool = True
    d_state: int = 128
    headdim: int = 64
    expand: int = 2
    d_conv: int = 4


def mamba2_shape(name: str, cfg: Mamba2Config, source: str) -> ModelShape:
    """Mamba-2 block: in_proj -> [z, xBC, dt]; conv over xBC; per-head scalar decay; gated RMSNorm."""
    d, n, g = cfg.d_model, cfg.d_state, cfg.ngroups
    di = cfg.expand * d
    heads = di // cfg.headdim
    conv_ch = di + 2 * g * n
    scan = Op("scan", lookups=2 * heads, mults=heads + 3 * di * n + 2 * di, adds=2 * di * n + di + heads,
              weights=tuple(Weight(w, heads, 1, "param") for w in ("A_log", "D", "dt_bias")),
              act_in=di + heads + 2 * g * n, act_out=di, state=di * n, state_word=True, shared_in=2 * g * n,
              scan=(di, n))
    gating = Op("gating", vector_elems=2 * di, lookups=di + g, mults=4 * di, adds=di,
                weights=(Weight("gated_norm.weight", di, 1, "param"),), act_in=2 * di, act_out=di)
    ops = (
        _norm(d),
        _linear("in_proj", d, 2 * di + 2 * g * n + heads, "gptq"),
        _conv(conv_ch, cfg.d_conv),
        scan,
        gating,
        _hadamard(di),
        _linear("out_proj", di, d, "gptq"),
    )
    return _assemble(name, "mamba2", d, cfg.n_layer, di, n, cfg.vocab_size, cfg.tie_embeddings, ops, source)


_MAMBA2_SMALL = ("state-spaces/mamba2-{} config.json (Dao & Gu, arXiv 2405.21060): d_model, n_layer, "
                 "d_state 128, headdim 64, ngroups 1, expand 2, vocab 50277 padded to a multiple of 16 (50288), "
                 "tied embeddings")
MAMBA2: dict[str, tuple[Mamba2Config, str]] = {
    **{f"mamba2-{size}": (Mamba2Config(d, layers, 50288), _MAMBA2_SMALL.format(size))
       for size, d, layers in (("130m", 768, 24), ("370m", 1024, 48), ("780m", 1536, 48),
                               ("1.3b", 2048, 48), ("2.7b", 2560, 64))},
    "mamba2-8b": (Mamba2Config(4096, 56, 256000, ngroups=8, tie_embeddings=False),
                  "NVIDIA Mamba2-8B (Waleffe et al., 'An Empirical Study of Mamba-based Language Models', "
                  "arXiv 2406.07887; model card nvidia/mamba2-8b-3t-4k): d_model 4096, 56 layers, d_state 128, "
                  "headdim 64, ngroups 8, 256k SentencePiece vocabulary (256000); an untied output layer "
                  "(Megatron-LM checkpoint) is assumed"),
}


def model_names() -> list[str]:
    return list(REGISTRY) + list(MAMBA2)


def model_shape(model: str) -> ModelShape:
    """A registered Mamba-1 name, a Mamba-2 name, a shipped model (qsim/models/NAME) or a folder with config.json."""
    if model in REGISTRY:
        m = REGISTRY[model]
        return mamba1_shape(model, m.config, f"{m.hf_repo} (qsim.config.REGISTRY)")
    if model in MAMBA2:
        cfg, source = MAMBA2[model]
        return mamba2_shape(model, cfg, source)
    folder = Path(model) if Path(model).is_dir() else SHIPPED_MODELS / model
    config = folder / "config.json"
    if config.is_file():
        try:
            hf = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise QsimError(f"{config}: unreadable ({exc})") from None
        return mamba1_shape(folder.name, MambaConfig.from_hf(hf, str(config)), str(config))
    raise QsimError(f"--model {model!r}: not a known model ({', '.join(model_names())}) "
                    "nor a folder with config.json")
