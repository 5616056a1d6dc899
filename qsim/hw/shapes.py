"""Model shapes for estimation: per-layer operation lists with their per-token work.

Shapes come from qsim.config: a registered model (Mamba-1 or Mamba-2,
qsim.config.REGISTRY) or a checkpoint folder's config.json (transformers'
format, or mamba_ssm's for Mamba-2). mamba2-8b is an estimation-only entry
(ESTIMATION_ONLY: no checkpoint qsim can load). Every count is per token; one
layer's list is repeated n_layer times, `lm_head` (with the final norm) runs once.

Weight formats per `--bits` preset, following Quamba (arXiv 2410.13229), Quamba2 (arXiv 2503.22879)
and their released code, github.com/enyac-group/Quamba (qsim/hw/SOURCES.md, "Weight formats"):
  role "gptq"   in_proj, x_proj, out_proj, lm_head (and a tied embedding): the
                preset's weight bits; int4 carries one fp16 scale per group of
                128 inputs plus one fp16 scale per output channel (Quamba2's
                Mamba-1 W4A8 and W4A16 make x_proj 4-bit too, as calib does);
  role "linear" dt_proj: 16-bit in fp16, else 8-bit (W8A8 in Quamba2's
                Mamba-1 W4A8; calib keeps it int8 in every preset);
  role "param"  conv weights, biases, A_log, D, norm weights: 8-bit with
                8-bit activations, else 16-bit.
  role "table"  with 8-bit activations only: the integer datapath's per-layer
                256-entry tables (SPEC.md 6.2) at their entry widths and its
                per-layer constants (eps_int, frac, multiplier/shift pairs),
                one 32-bit word each; absent with 16-bit activations.
Every 8-bit tensor carries one fp32 scale. Between tokens the SSM state is
stored as 32-bit words (SSM_STATE_BYTES: the fixed datapath's 24-bit state,
fp32 in Mamba's kernels) and the conv window at the activation width.

Activations crossing between operations carry their width: with 8-bit
activations dt (uint15), the SiLU(z) gate (int16), the scan output y (int16)
and the residual stream (int24) take the widths of qsim.spec, stored in whole
bytes; everything else, and every activation of a 16-bit preset, takes the
preset's activation width.

Two recipe features change the operation list (RecipeFeatures): the online
Hadamard before out_proj (without it, y is requantized to int8 by an `out_in`
operation) and a per-channel scan output multiplier (d_inner words instead
of one per layer).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from qsim import spec
from qsim.bits import BitsPreset
from qsim.config import REGISTRY, Mamba2Config, MambaConfig, config_from_hf
from qsim.errors import QsimError
from qsim.weights import SHIPPED_MODELS

GROUP_SCALE_BYTES = 2  # fp16 per-group and per-channel scales of int4 weights
TENSOR_SCALE_BYTES = 4  # one fp32 scale per 8-bit tensor
# the SSM state between tokens: the fixed datapath's 12-28-bit state (qsim.spec, 24 by default) in a 32-bit
# word, as the GPU executor keeps it; fp32 in Mamba's own kernels
SSM_STATE_BYTES = 4
TABLE_ENTRIES = 256  # a per-layer table is indexed by an int8 code (SPEC.md 6.2)
CONST_WORD_BITS = 32  # a per-layer constant: eps_int, frac, or a 15-bit multiplier with its shift
SCAN_OUT_MULT = "scan.out_mult"  # the scan output's multiplier/shift pair: one word, or one per channel


def _whole_bytes(bits: int) -> int:
    return -(-bits // 8)


@dataclass(frozen=True)
class RecipeFeatures:
    """What a quantization recipe adds to the datapath at run time (the rest is folded offline)."""

    online_hadamard: bool = True  # a Hadamard transform of y before out_proj (Quamba, QuaRot); else out_in requant
    scan_out_per_channel: bool = False  # the scan output multiplier per channel (smoothing recipes), not per layer


@dataclass(frozen=True)
class Weight:
    name: str
    rows: int  # output channels
    cols: int  # inputs per output channel: the int4 grouping axis
    role: str  # "gptq" | "linear" | "param" | "table"
    width: int = 0  # role "table": entry width in bits in the integer datapath

    @property
    def elems(self) -> int:
        return self.rows * self.cols

    def bits(self, bits: BitsPreset) -> int:
        if self.role == "table":
            return self.width if bits.integer_activations else 0
        if self.role == "gptq":
            return bits.weight_bits
        if self.role == "linear":
            return 16 if bits.weight_bits == 16 else 8
        return 8 if bits.act_bits == 8 else 16

    def nbytes(self, bits: BitsPreset) -> int:
        b = self.bits(bits)
        if self.role == "table":
            return self.elems * _whole_bytes(b)
        data = math.ceil(self.elems * b / 8)
        if b == 4:
            groups = self.rows * math.ceil(self.cols / bits.group_size)
            return data + (groups + self.rows) * GROUP_SCALE_BYTES
        return data + (TENSOR_SCALE_BYTES if b == 8 else 0)


def _table(name: str, int_bits: int) -> Weight:
    return Weight(name, TABLE_ENTRIES, 1, "table", int_bits)


def _consts(name: str, words: int) -> Weight:
    return Weight(f"{name}.consts", words, 1, "table", CONST_WORD_BITS)


@dataclass(frozen=True)
class Act:
    """An activation crossing between operations: elements per token and, with 8-bit
    activations, the width qsim.spec gives it (None: the preset's activation width)."""

    name: str
    elems: int
    int_bits: int | None = None

    def nbytes(self, bits: BitsPreset) -> int:
        width = self.int_bits if self.int_bits and bits.integer_activations else bits.act_bits
        return self.elems * _whole_bytes(width)


@dataclass(frozen=True)
class Op:
    """One operation of a layer, with its work per token.

    macs: multiply-accumulates on the MAC array; vector_elems: elements through
    the table units (element-wise lanes); lookups, mults, adds: table reads and
    element-wise arithmetic for energy; act_in/act_out: activations read and
    written; state: recurrent elements kept between tokens, at the activation
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
    act_in: tuple[Act, ...] = ()
    act_out: tuple[Act, ...] = ()
    state: int = 0
    state_word: bool = False
    shared_in: int = 0
    scan: tuple[int, int] | None = None
    hadamard: int | None = None

    def weight_bytes(self, bits: BitsPreset) -> int:
        return sum(w.nbytes(bits) for w in self.weights)

    def weight_elems(self) -> int:
        """Parameters (the integer datapath's tables and constants are not)."""
        return sum(w.elems for w in self.weights if w.role != "table")

    def act_bytes(self, bits: BitsPreset) -> tuple[int, int]:
        """Bytes read and written per token."""
        return sum(a.nbytes(bits) for a in self.act_in), sum(a.nbytes(bits) for a in self.act_out)

    def state_bytes(self, bits: BitsPreset) -> int:
        return self.state * (SSM_STATE_BYTES if self.state_word else bits.act_bits // 8)

    def mac_format(self, bits: BitsPreset) -> str:
        """Operand format on the MAC array, e.g. 'w4a8'; the first weight is the one multiplied."""
        return f"w{self.weights[0].bits(bits)}a{bits.act_bits}"


def _present(op: Op, bits: BitsPreset, features: RecipeFeatures) -> bool:
    """The Hadamard exists only in quantized models with the online Hadamard; without it, 8-bit
    activations requantize y by `out_in`."""
    if op.hadamard:
        return (bits.weight_bits < 16 or bits.act_bits < 16) and features.online_hadamard
    if op.name == "out_in":
        return bits.integer_activations and not features.online_hadamard
    return True


def _featured(op: Op, features: RecipeFeatures) -> Op:
    """The scan with d_inner output multiplier words when the recipe makes it per channel."""
    if not (op.scan and features.scan_out_per_channel):
        return op
    return replace(op, weights=tuple(replace(w, rows=op.scan[0]) if w.name == SCAN_OUT_MULT else w
                                     for w in op.weights))


DEFAULT_FEATURES = RecipeFeatures()


@dataclass(frozen=True)
class ModelShape:
    name: str
    family: str  # "mamba" or "mamba2"
    d_model: int
    n_layer: int
    d_inner: int
    d_state: int
    vocab: int
    layer_ops: tuple[Op, ...]  # every operation any recipe may run; ops() picks a recipe's
    lm_head: Op
    embedding: Weight
    tied: bool
    source: str
    config: MambaConfig | Mamba2Config  # the dimensions the decode engine's cycles need (qsim.hw.engine)

    def ops(self, bits: BitsPreset, features: RecipeFeatures = DEFAULT_FEATURES) -> list[tuple[Op, int]]:
        """(op, instances) in execution order for `bits` under the recipe's features."""
        layer = [(_featured(op, features), self.n_layer) for op in self.layer_ops if _present(op, bits, features)]
        return layer + [(self.lm_head, 1)]

    def weight_bytes(self, bits: BitsPreset, features: RecipeFeatures = DEFAULT_FEATURES) -> int:
        """Bytes of every weight, table and constant a forward pass reads (the embedding row read is
        left out: d_model bytes)."""
        return sum(op.weight_bytes(bits) * k for op, k in self.ops(bits, features))

    def storage_bytes(self, bits: BitsPreset, features: RecipeFeatures = DEFAULT_FEATURES) -> int:
        """Bytes the model occupies in device memory: weights plus an untied embedding table."""
        return self.weight_bytes(bits, features) + (0 if self.tied else self.embedding.nbytes(bits))

    def state_bytes(self, bits: BitsPreset) -> int:
        """SSM state (32-bit words) and conv windows (activation width) of every layer."""
        return sum(op.state_bytes(bits) for op in self.layer_ops) * self.n_layer


RESIDUAL = spec.RESIDUAL_BITS  # the residual stream r and out_proj's output
Y_BITS = spec.GATED_BITS  # the scan output y, the Hadamard's input


def _norm(d: int) -> Op:
    """RMSNorm with the residual add: square, accumulate, add; scale by rstd (table) and gamma."""
    return Op("norm", vector_elems=d, lookups=1, mults=3 * d, adds=2 * d,
              weights=(Weight("norm.weight", d, 1, "param"), _consts("norm", 2)),
              act_in=(Act("r", d, RESIDUAL),), act_out=(Act("u", d),))


def _linear(name: str, n_in: Act, n_out: Act, role: str, bias: bool = False,
            tables: tuple[Weight, ...] = (), **table_work) -> Op:
    """A matmul on the MAC array; its epilogue scales every output once (plus any table-unit work)."""
    weights = (Weight(f"{name}.weight", n_out.elems, n_in.elems, role),)
    if bias:
        weights += (Weight(f"{name}.bias", n_out.elems, 1, "param"),)
    return Op(name, macs=n_in.elems * n_out.elems, mults=n_out.elems, weights=weights + tables,
              act_in=(n_in,), act_out=(n_out,), **table_work)


def _conv(channels: int, d_conv: int) -> Op:
    """Depthwise causal conv on the MAC array; bias, SiLU (table) and requantization on the table units."""
    return Op("conv", macs=channels * d_conv, vector_elems=channels, lookups=channels, adds=channels,
              weights=(Weight("conv.weight", channels, d_conv, "param"), Weight("conv.bias", channels, 1, "param"),
                       _table("silu_conv", 8), _consts("conv", 1)),
              act_in=(Act("x", channels),), act_out=(Act("xs", channels),), state=channels * (d_conv - 1))


def _scan_consts() -> tuple[Weight, ...]:
    """frac and the (m_h, s_h) pair, then the output's (m_y, s_y) pair(s)."""
    return _consts("scan", 2), Weight(SCAN_OUT_MULT, 1, 1, "table", CONST_WORD_BITS)


def _requant_to_out_proj(n: int) -> tuple[Op, Op]:
    """y (int16) to out_proj's int8 input: through the Hadamard unit, or by the out_in requantization alone.

    The Hadamard's add count comes from qsim.hw.units.hadamard_adds when costed, so a size the spec
    cannot transform fails only for the quantized presets that need the transform."""
    y, yo, consts = (Act("y", n, Y_BITS),), (Act("yo", n),), (_consts("out_in", 1),)
    return (Op("hadamard", mults=n, weights=consts, act_in=y, act_out=yo, hadamard=n),
            Op("out_in", vector_elems=n, mults=n, weights=consts, act_in=y, act_out=yo))


def _lm_head(d: int, vocab: int, head: Weight) -> Op:
    """Final norm and the vocabulary projection; prefill needs only the last token's logits
    (mamba_ssm's num_last_tokens=1, as Quamba's profile_mamba.py measures TTFT)."""
    norm = _norm(d)
    return Op("lm_head", macs=d * vocab, vector_elems=d, lookups=1, mults=norm.mults + vocab, adds=norm.adds,
              weights=(head,) + norm.weights, act_in=norm.act_in, act_out=(Act("logits", vocab),))


def _assemble(name: str, family: str, d: int, n_layer: int, d_inner: int, d_state: int, vocab: int,
              tied: bool, ops: tuple[Op, ...], source: str, cfg: MambaConfig | Mamba2Config) -> ModelShape:
    emb = Weight("embedding", vocab, d, "gptq")  # Quamba2 quantizes it "head to toe" in W4 presets
    head = emb if tied else Weight("lm_head.weight", vocab, d, "gptq")
    return ModelShape(name, family, d, n_layer, d_inner, d_state, vocab, ops, _lm_head(d, vocab, head), emb,
                      tied, source, cfg)


def mamba1_shape(name: str, cfg: MambaConfig, source: str) -> ModelShape:
    """The block of SPEC.md section 8: the SiLU(z) gate is looked up (silu_z) and applied inside the scan."""
    d, di, n, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank
    xs, dt = Act("xs", di), Act("dt", di, spec.DT_BITS)
    scan = Op("scan", lookups=di * n, mults=4 * di * n + 3 * di, adds=2 * di * n + di,
              weights=(Weight("A_log", di, n, "param"), Weight("D", di, 1, "param")) + _scan_consts(),
              act_in=(xs, dt, Act("B", n), Act("C", n), Act("sz", di, spec.GATE_BITS)),
              act_out=(Act("y", di, Y_BITS),), state=di * n, state_word=True, shared_in=2 * n, scan=(di, n))
    ops = (
        _norm(d),
        _linear("in_proj", Act("u", d), Act("xz", 2 * di), "gptq"),
        _conv(di, cfg.d_conv),
        _linear("x_proj", xs, Act("p", r + 2 * n), "gptq"),
        _linear("dt_proj", Act("dtr", r), dt, "linear", bias=True,
                tables=(_table("softplus_dt", spec.DT_BITS), _consts("dt_proj", 1)),
                vector_elems=di, lookups=di, adds=di),
        Op("silu_z", vector_elems=di, lookups=di, weights=(_table("silu_z", spec.GATE_BITS),),
           act_in=(Act("z", di),), act_out=(Act("sz", di, spec.GATE_BITS),)),
        scan,
        *_requant_to_out_proj(di),
        _linear("out_proj", Act("yo", di), Act("out", d, RESIDUAL), "gptq"),
    )
    return _assemble(name, "mamba", d, cfg.n_layer, di, n, cfg.vocab_size, cfg.tie_embeddings, ops, source, cfg)


def mamba2_shape(name: str, cfg: Mamba2Config, source: str) -> ModelShape:
    """Mamba-2 block: in_proj -> [z, xBC, dt]; conv over xBC; per-head scalar decay; gated RMSNorm.

    No integer spec exists for Mamba-2: its tensors and tables take the widths of their Mamba-1
    counterparts (dt softplus table, y and the gated norm's output at y's width, SiLU(z) table)."""
    d, n, g = cfg.d_model, cfg.d_state, cfg.ngroups
    di, heads, conv_ch = cfg.d_inner, cfg.nheads, cfg.conv_dim
    scan = Op("scan", lookups=2 * heads, mults=heads + 3 * di * n + 2 * di, adds=2 * di * n + di + heads,
              weights=tuple(Weight(w, heads, 1, "param") for w in ("A_log", "D", "dt_bias"))
              + (_table("softplus_dt", spec.DT_BITS),) + _scan_consts(),
              act_in=(Act("x", di), Act("dt_pre", heads), Act("B", g * n), Act("C", g * n)),
              act_out=(Act("y", di, Y_BITS),), state=di * n, state_word=True, shared_in=2 * g * n, scan=(di, n))
    gating = Op("gating", vector_elems=2 * di, lookups=di + g, mults=4 * di, adds=di,
                weights=(Weight("gated_norm.weight", di, 1, "param"), _table("silu_z", spec.GATE_BITS),
                         _consts("gating", 2)),
                act_in=(Act("y", di, Y_BITS), Act("z", di)), act_out=(Act("y_gated", di, Y_BITS),))
    ops = (
        _norm(d),
        _linear("in_proj", Act("u", d), Act("zxbcdt", 2 * di + 2 * g * n + heads), "gptq"),
        _conv(conv_ch, cfg.d_conv),
        scan,
        gating,
        *_requant_to_out_proj(di),
        _linear("out_proj", Act("yo", di), Act("out", d, RESIDUAL), "gptq"),
    )
    return _assemble(name, "mamba2", d, cfg.n_layer, di, n, cfg.vocab_size, cfg.tie_embeddings, ops, source, cfg)


_MAMBA2_SOURCE = ("{repo} config.json (Dao & Gu, arXiv 2405.21060): d_model, n_layer, "
                  "d_state 128, headdim 64, ngroups 1, expand 2, vocab 50277 padded to a multiple of 16 (50288), "
                  "tied embeddings")
# shapes for estimation only: no checkpoint of these is loadable by qsim (not in qsim.config.REGISTRY)
ESTIMATION_ONLY: dict[str, tuple[Mamba2Config, str]] = {
    "mamba2-8b": (Mamba2Config(d_model=4096, n_layer=56, vocab_size=256000, ngroups=8, tie_embeddings=False),
                  ("NVIDIA Mamba2-8B (Waleffe et al., 'An Empirical Study of Mamba-based Language Models', "
                  "arXiv 2406.07887; model card nvidia/mamba2-8b-3t-4k): d_model 4096, 56 layers, d_state 128, "
                  "headdim 64, ngroups 8, 256k SentencePiece vocabulary (256000); an untied output layer "
                  "(Megatron-LM checkpoint) is assumed")),
}


def model_names() -> list[str]:
    """Registered Mamba-1 models, then the Mamba-2 ones, then the estimation-only entries."""
    by_family = sorted(REGISTRY.values(), key=lambda m: m.config.family != "mamba")  # stable: registry order
    return [m.name for m in by_family] + list(ESTIMATION_ONLY)


def shape_for(name: str, cfg: MambaConfig | Mamba2Config, source: str) -> ModelShape:
    """The shape of any configuration, by its family."""
    if cfg.family == "mamba2":
        return mamba2_shape(name, cfg, source)
    return mamba1_shape(name, cfg, source)


def model_shape(model: str) -> ModelShape:
    """A registered name (Mamba-1 or Mamba-2), an estimation-only entry, a shipped model (qsim/models/NAME) or a
    folder with config.json (either Mamba-2 format)."""
    if model in REGISTRY:
        m = REGISTRY[model]
        if m.config.family == "mamba2" and m.hf_repo:
            return mamba2_shape(model, m.config, _MAMBA2_SOURCE.format(repo=m.hf_repo))
        return shape_for(model, m.config, f"{m.hf_repo} (qsim.config.REGISTRY)")
    if model in ESTIMATION_ONLY:
        cfg, source = ESTIMATION_ONLY[model]
        return mamba2_shape(model, cfg, source)
    folder = Path(model) if Path(model).is_dir() else SHIPPED_MODELS / model
    config = folder / "config.json"
    if config.is_file():
        try:
            hf = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise QsimError(f"{config}: unreadable ({exc})") from None
        if not isinstance(hf, dict):
            raise QsimError(f"{config}: not a JSON object")
        return shape_for(folder.name, config_from_hf(hf, str(config)), str(config))
    raise QsimError(f"--model {model!r}: not a known model ({', '.join(model_names())}) "
                    "nor a folder with config.json")
