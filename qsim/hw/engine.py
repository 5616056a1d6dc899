"""The Mamba-1 decode engine's cycles and memory traffic per token (rtl/engine.py, issue 14), from the model's
dimensions and the engine's configuration alone: the cost model's side of the engine's cycle contract, so that
`qsim estimate` predicts the engine without Amaranth. rtl.engine.Engine.token_cycles is this function for its
build; the Amaranth and cocotb simulations (tests/rtl/test_rtl_engine*.py) meet it exactly, label by label, and
tests/hw/test_hw_engine.py checks every load below against the engine's program and the image layout
(rtl.image.layout_of), so neither can drift.

The engine runs one step after another (a load or an op); per token:

  once       load embedding.m, embedding.s (`load`); the embedding row, requantized (`embed`)
  per layer  load norm.g (dm), norm.eps_int, norm.m, norm.s;                op norm
             load in_proj.rq_m (2D), in_proj.rq_s (2D);                     op in_proj (GEMV 2D x dm)
             load conv.w (D*K), conv.b (D), conv.m, conv.s, tables.silu_conv (256);  op conv
             load x_proj.rq_m (R+2N), x_proj.rq_s (R+2N);                   op x_proj (GEMV R+2N x D)
             load dt_proj.b (D), dt_proj.m, dt_proj.s, tables.softplus_dt (256);  op dt_proj (GEMV D x R)
             load tables.silu_z (256);                                      op silu_z (label `tables`)
             load scan.a_frac_bits, scan.m_h, scan.s_h, A.q (D*N), D.q (D), scan.m_y (D), scan.s_y (D);  op scan
             load out_in.m, out_in.s;                                       op hadamard
             load out_proj.rq_m (dm), out_proj.rq_s (dm);                   op out_proj (GEMV dm x D)
             op residual
  once       load norm_f.g (dm), final_norm.eps_int, final_norm.m, final_norm.s;  op final_norm;
             op lm_head (GEMV V x dm, int32 logits)

(dm = d_model, D = d_inner, N = d_state, R = dt_rank, K = d_conv, V = vocab; every load but the embedding row
is under the label `load`.) Cycles of a step, with a DRAM of fixed `dram_latency` and one bus beat a cycle:

  load   dram_latency + count + 2: the request, the first beat dram_latency cycles later, one element a cycle,
         and the cycle the last one sits in the loader's one-beat register (the step ends on a register)
  embed  dram_latency + d_model + 1 + REQUANT_LATENCY + 2 (the row's elements through the loader's one-beat
         register into the requantizer, requantized to the residual width, then written)
  op     the unit's contract (qsim.hw.units) + OP_OVERHEAD; a GEMV op: gemv_unit_cycles + 1, its x from the
         read pipeline two cycles late (x_delay = OP_OVERHEAD - 2: the unit's contract has x from cycle 1), plus the
         requantization's latency (and for dt_proj the softplus table's) its outputs pass through; lm_head
         has no requantization

The units run one element a cycle, except the GEMV (gemv_lanes MACs, one bus beat of a row a cycle when
gemv_lanes == bus_bytes), the scan (scan_lanes) and the Hadamard (hadamard_lanes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from qsim.errors import QsimError
from qsim.hw import units

LABELS = ("embed", "norm", "in_proj", "conv", "x_proj", "dt_proj", "tables", "scan", "hadamard", "out_proj",
          "residual", "final_norm", "lm_head", "load")
PER_LAYER = ("norm", "in_proj", "conv", "x_proj", "dt_proj", "tables", "scan", "hadamard", "out_proj", "residual")
OP_OVERHEAD = 4  # an op's three cycles filling its read pipeline (two reading, one in the skid) and the one
# seeing its last write (rtl.engine)


@dataclass(frozen=True)
class EngineModel:
    """A Mamba-1 model's dimensions, named as the image header names them."""

    d_model: int
    d_inner: int
    d_state: int
    dt_rank: int
    d_conv: int
    n_layer: int
    vocab: int

    @classmethod
    def of(cls, cfg) -> EngineModel:
        """From a qsim.config.MambaConfig; the engine runs Mamba-1 only."""
        if getattr(cfg, "family", "mamba") != "mamba":
            raise QsimError(f"decode engine: model family {cfg.family}; the engine runs Mamba-1 only")
        return cls(cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv, cfg.n_layer, cfg.vocab_size)


@dataclass(frozen=True)
class EngineConfig:
    """What the engine is built with: the DRAM bus (bus_bytes a beat, one beat a cycle at clock_mhz, the first
    beat of a burst dram_latency cycles after the request) and the lanes of its GEMV, scan and Hadamard units."""

    bus_bytes: int
    gemv_lanes: int
    scan_lanes: int
    hadamard_lanes: int
    dram_latency: int
    clock_mhz: float | None = None  # None: a build whose cycles alone are asked for (no cycle count depends on it)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "engine") -> EngineConfig:
        """Every key required; an unknown or missing key, or a value that is not a positive integer (a positive
        number for clock_mhz), is a QsimError naming it."""
        keys = [f.name for f in fields(cls)]
        unknown = sorted(set(raw) - set(keys))
        if unknown:
            raise QsimError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(keys)})")
        for k in keys:
            v = raw.get(k)
            ok = isinstance(v, (int, float)) if k == "clock_mhz" else isinstance(v, int)
            if v is None or isinstance(v, bool) or not ok or v <= 0:
                raise QsimError(f"{where}: {k} must be a positive {'number' if k == 'clock_mhz' else 'integer'}, "
                                f"got {v!r}")
        return cls(**{k: raw[k] for k in keys if k != "clock_mhz"}, clock_mhz=float(raw["clock_mhz"]))

    @property
    def bytes_per_s(self) -> float:
        return self.bus_bytes * self.clock_mhz * 1e6


@dataclass(frozen=True)
class Load:
    field: str  # the image field (rtl/IMAGE.md), relative to the layer record for per-layer loads
    dtype: str
    count: int  # elements, one a cycle


def token_loads(m: EngineModel) -> tuple[Load, ...]:
    """The embedding's multiplier and shift, loaded at the start of every token."""
    return Load("embedding.m", "int32", 1), Load("embedding.s", "uint8", 1)


def layer_loads(m: EngineModel) -> tuple[Load, ...]:
    """Every constant a layer loads, in program order (the module docstring)."""
    dm, D, N, R, K, T = m.d_model, m.d_inner, m.d_state, m.dt_rank, m.d_conv, units.TABLE_ENTRIES
    return (
        Load("norm.g", "int16", dm), Load("norm.eps_int", "int64", 1), Load("norm.m", "int32", 1),
        Load("norm.s", "uint8", 1),
        Load("in_proj.rq_m", "int32", 2 * D), Load("in_proj.rq_s", "uint8", 2 * D),
        Load("conv.w", "int8", D * K), Load("conv.b", "int32", D), Load("conv.m", "int32", 1),
        Load("conv.s", "uint8", 1), Load("tables.silu_conv", "int8", T),
        Load("x_proj.rq_m", "int32", R + 2 * N), Load("x_proj.rq_s", "uint8", R + 2 * N),
        Load("dt_proj.b", "int32", D), Load("dt_proj.m", "int32", 1), Load("dt_proj.s", "uint8", 1),
        Load("tables.softplus_dt", "uint16", T),
        Load("tables.silu_z", "int16", T),
        Load("scan.a_frac_bits", "uint8", 1), Load("scan.m_h", "int32", 1), Load("scan.s_h", "uint8", 1),
        Load("A.q", "uint16", D * N), Load("D.q", "int64", D), Load("scan.m_y", "int32", D),
        Load("scan.s_y", "uint8", D),
        Load("out_in.m", "int32", 1), Load("out_in.s", "uint8", 1),
        Load("out_proj.rq_m", "int32", dm), Load("out_proj.rq_s", "uint8", dm),
    )


def final_loads(m: EngineModel) -> tuple[Load, ...]:
    """The final norm's constants."""
    return (Load("norm_f.g", "int16", m.d_model), Load("final_norm.eps_int", "int64", 1),
            Load("final_norm.m", "int32", 1), Load("final_norm.s", "uint8", 1))


def gemvs(m: EngineModel) -> dict[str, tuple[int, int]]:
    """(n, k) of each GEMV op: n output rows of k int8 weights, read from the image row by row."""
    dm, D, N, R = m.d_model, m.d_inner, m.d_state, m.dt_rank
    return {"in_proj": (2 * D, dm), "x_proj": (R + 2 * N, D), "dt_proj": (D, R), "out_proj": (dm, D),
            "lm_head": (m.vocab, dm)}


def check(m: EngineModel, e: EngineConfig) -> None:
    """The configurations rtl.engine.Engine builds (its constructor's checks, and the units')."""
    B = e.bus_bytes
    if B < 8 or B & (B - 1) or m.d_model % B or m.d_inner % B or m.dt_rank % B:
        raise QsimError(f"decode engine: bus_bytes {B} must be a power of two, at least 8, dividing d_model "
                        f"{m.d_model}, d_inner {m.d_inner} and dt_rank {m.dt_rank} (GEMV rows are bus-aligned)")
    if B % e.gemv_lanes:
        raise QsimError(f"decode engine: gemv_lanes {e.gemv_lanes} must divide bus_bytes {B}")
    if m.d_conv & (m.d_conv - 1):
        raise QsimError(f"decode engine: d_conv {m.d_conv} must be a power of two")
    if e.hadamard_lanes & (e.hadamard_lanes - 1) or m.d_inner % e.hadamard_lanes:
        raise QsimError(f"decode engine: hadamard_lanes {e.hadamard_lanes} must be a power of two dividing "
                        f"d_inner {m.d_inner}")


def decode_step_cycles(m: EngineModel, e: EngineConfig) -> dict[str, int]:
    """Cycles of one decode step per label (LABELS): the engine's `cyc_<label>` counters (rtl/engine.py) meet it exactly."""
    check(m, e)
    lat, rq = e.dram_latency, units.REQUANT_LATENCY

    def load(count: int) -> int:
        return lat + count + 2

    def gemv(name: str) -> int:
        n, k = gemvs(m)[name]
        return units.gemv_unit_cycles(rows=1, lanes=e.gemv_lanes, bus_bytes=e.bus_bytes, latency=lat, n=n, k=k,
                                      x_delay=OP_OVERHEAD - 2) + 1

    dm, D, N = m.d_model, m.d_inner, m.d_state
    layer = {"norm": units.rmsnorm_unit_cycles(dm, 1) + OP_OVERHEAD,
             "in_proj": gemv("in_proj") + rq,
             "conv": units.conv_unit_cycles(D, 1) + OP_OVERHEAD,
             "x_proj": gemv("x_proj") + rq,
             "dt_proj": gemv("dt_proj") + rq + units.TABLE_LATENCY,
             "tables": units.table_unit_cycles(D, 1) + OP_OVERHEAD,
             "scan": units.scan_unit_cycles(e.scan_lanes, D, N, 1) + OP_OVERHEAD,
             "hadamard": units.hadamard_unit_cycles(e.hadamard_lanes, D, 1) + OP_OVERHEAD,
             "out_proj": gemv("out_proj") + rq,
             "residual": units.residual_unit_cycles(dm, 1) + OP_OVERHEAD}
    out = {label: m.n_layer * c for label, c in layer.items()}
    out["embed"] = lat + dm + 1 + rq + 2
    out["final_norm"] = layer["norm"]
    out["lm_head"] = gemv("lm_head")
    out["load"] = (sum(load(x.count) for x in token_loads(m) + final_loads(m))
                   + m.n_layer * sum(load(x.count) for x in layer_loads(m)))
    return {label: out[label] for label in LABELS}


def decode_step_dram(m: EngineModel, e: EngineConfig) -> dict[str, tuple[int, int]]:
    """(bytes read, DRAM cycles: each burst's latency plus its beats) per label for one decode step. A load reads
    ceil(count * itemsize / bus_bytes) beats, the embedding row d_model / bus_bytes, a GEMV n rows of
    ceil(k / bus_bytes) beats. A step's other cycles are its units' (a load unpacks one element a cycle)."""
    check(m, e)
    B, lat = e.bus_bytes, e.dram_latency
    out = dict.fromkeys(LABELS, (0, 0))

    def add(label: str, times: int, bursts: int, beats: int) -> None:
        out[label] = (out[label][0] + times * beats * B, out[label][1] + times * (bursts * lat + beats))

    def load_beats(loads) -> int:
        return sum(math.ceil(x.count * np.dtype(x.dtype).itemsize / B) for x in loads)

    for name, (n, k) in gemvs(m).items():
        add(name, 1 if name == "lm_head" else m.n_layer, 1, n * math.ceil(k / B))
    add("embed", 1, 1, m.d_model // B)
    once = token_loads(m) + final_loads(m)
    add("load", 1, len(once), load_beats(once))
    add("load", m.n_layer, len(layer_loads(m)), load_beats(layer_loads(m)))
    return out
