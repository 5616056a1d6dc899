"""Cycles and energy per layer and per operation, for a prefill of L tokens and one decode step.

The rules are listed in RULES (written by `estimate --json` and `report`), so
the numbers can be checked by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qsim.bits import BitsPreset
from qsim.errors import QsimError
from qsim.hw.engine import (
    LABELS,
    PER_LAYER,
    EngineModel,
    check,
    decode_step_cycles,
    decode_step_dram,
)
from qsim.hw.shapes import ModelShape, Op, RecipeFeatures
from qsim.hw.target import Target
from qsim.hw.units import hadamard_adds, hadamard_unit_cycles, scan_unit_cycles

RULES = (
    "layers and operations run one after another; one layer's operation list repeats n_layer times",
    ("compute cycles of an op = the slowest of its engines, which run as one pipeline: "
    "ceil(MACs / (rows*cols*rate[format])) on the MAC array, ceil(elements / table_units) on the table units, "
    "scan_unit_cycles and hadamard_unit_cycles (qsim/hw/units.py)"),
    "memory cycles = off-chip bytes * clock / off-chip bandwidth",
    ("overlap: off-chip data streams in tiles of half the weight buffer, double-buffered; "
    "cycles = max(compute, memory) + min(compute, memory) / tiles (the first tile's load, or the last tile's "
    "compute, is not overlapped); tiles = max(1, ceil(off-chip bytes / (weight buffer / 2)))"),
    ("weights: read from off-chip once per pass when an op's weights fit half the weight buffer; otherwise the "
    "cheaper of two loop orders: token chunks outside (weights re-read once per chunk of tokens whose input and "
    "output activations fit the activation buffer) or weight tiles outside (inputs re-read from off-chip once "
    "per tile of half the weight buffer); if the whole model fits the weight buffer it stays resident and "
    "decode reads no weights off-chip"),
    ("activations: kept on chip when an op's input and output for all tokens fit the activation buffer, "
    "else read and written off-chip once (plus the re-reads of the weight-tiles-outside order); each tensor at "
    "its own width (with 8-bit activations: dt 15-bit in 16, the SiLU(z) gate and y 16-bit, the residual "
    "24-bit in 3 bytes, as qsim.spec gives them; otherwise the preset's activation width)"),
    ("weights include the integer datapath's per-layer tables (silu_conv, softplus_dt, silu_z: 256 entries at "
    "their entry widths) and constants (one 32-bit word each: eps_int, frac, every multiplier/shift pair; the "
    "scan output's pair once per layer, or once per channel with scan_out_per_channel), so decode streams and "
    "reads them like weights"),
    ("recipe features: online_hadamard runs the Hadamard unit before out_proj, else an out_in requantization on "
    "the table units (8-bit activations) or nothing (16-bit)"),
    ("state: resident when every layer's state fits the state buffer; otherwise decode reads and writes each "
    "layer's state, and prefill writes the final state and runs the scan in channel groups that fit the "
    "state buffer, each extra group re-reading B and C"),
    "prefill computes the final norm and lm_head for the last token only",
    ("energy = MACs x MAC energy of the op's format (w8a8: int8 mult + int32 add; w4a8: int4x8 mult + int32 add; "
    "16-bit activations: fp16 mult + fp32 add) + element-wise mults/adds (int32 with 8-bit activations, "
    "fp32 with 16-bit) + table lookups + on-chip buffer bytes (weights per read, activations, state read and "
    "written per token) + off-chip bytes; int4 weights with 16-bit activations add one fp16 dequantizing "
    "multiply per weight read; every entry scaled from its named table by the rule of qsim/hw/energy.py"),
    ("a target with a decode engine ([engine], e.g. ecp5-85f) runs a Mamba-1 w8a8 decode step with the online "
    "Hadamard on the engine (qsim/hw/engine.py, equal to rtl/engine.py's simulated cycles): cycles per engine "
    "step label at the engine clock (the target clock, at most [engine] clock_mhz, where bus_bytes a cycle is "
    "the off-chip bandwidth); memory cycles = each DRAM burst's latency + beats, compute cycles = the rest; "
    "off-chip bytes = the image bytes the step reads (every weight and constant, the embedding row); energy = "
    "the rules above for the same operation's arithmetic and activation and state buffer bytes (weights stream "
    "into the GEMV unit, not through a buffer; silu_z is the engine's `tables` step; norm counts the residual "
    "add and lm_head the final norm, so embed, residual, final_norm and load add off-chip energy only) + the "
    "off-chip bytes; prefill and every other decode use the MAC-array rules above"),
)


@dataclass(frozen=True)
class OpCost:
    name: str
    instances: int
    compute_cycles: int  # all instances
    memory_cycles: float
    cycles: int  # all instances, after the overlap rule
    offchip_bytes: int
    onchip_bytes: int
    compute_pj: float
    onchip_pj: float
    offchip_pj: float

    @property
    def energy_pj(self) -> float:
        return self.compute_pj + self.onchip_pj + self.offchip_pj

    @property
    def bound(self) -> str:
        return "compute" if self.compute_cycles >= self.memory_cycles else "memory"


@dataclass(frozen=True)
class PhaseCost:
    phase: str  # "prefill" or "decode"
    tokens: int
    clock_hz: float
    ops: tuple[OpCost, ...]

    @property
    def cycles(self) -> int:
        return sum(o.cycles for o in self.ops)

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def energy_j(self) -> float:
        return sum(o.energy_pj for o in self.ops) * 1e-12

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def tokens_per_j(self) -> float:
        return self.tokens / self.energy_j

    @property
    def j_per_token(self) -> float:
        return self.energy_j / self.tokens


@dataclass(frozen=True)
class Estimate:
    model: ModelShape
    bits: BitsPreset
    target: Target
    prompt_len: int
    features: RecipeFeatures
    weights_resident: bool
    state_resident: bool
    prefill: PhaseCost
    decode: PhaseCost
    decode_source: str  # which model gave the decode step, and why


def overlapped_cycles(compute: float, memory: float, tiles: int) -> float:
    """Double buffering over `tiles` equal tiles: all but one tile's shorter part is hidden."""
    return max(compute, memory) + min(compute, memory) / tiles


def compute_cycles(op: Op, bits: BitsPreset, target: Target, tokens: int) -> int:
    engines = []
    if op.macs:
        engines.append(math.ceil(op.macs * tokens / target.macs_per_cycle(op.mac_format(bits))))
    if op.vector_elems:
        engines.append(math.ceil(op.vector_elems * tokens / target.table_units))
    if op.scan:
        engines.append(scan_unit_cycles(target.scan_lanes, *op.scan, tokens))
    if op.hadamard:
        engines.append(hadamard_unit_cycles(target.hadamard_lanes, op.hadamard, tokens))
    return max(engines, default=0)


def stream(op: Op, bits: BitsPreset, target: Target, tokens: int, decode: bool,
           weights_resident: bool) -> tuple[int, int]:
    """(off-chip bytes of weights and activations, weight reads into the MAC array) for one instance.

    An op whose weights exceed half the weight buffer takes the cheaper of two loop orders:
    token chunks outside (weights re-read once per chunk of tokens whose activations fit the
    activation buffer) or weight tiles outside (inputs re-read once per tile of half the buffer).
    """
    w = op.weight_bytes(bits)
    in_b, out_b = op.act_bytes(bits)
    a_in, a_out = in_b * tokens, out_b * tokens
    spill = a_in + a_out if a_in + a_out > target.act_buffer_bytes else 0
    if decode and weights_resident:
        return spill, 1
    half = target.weight_buffer_bytes // 2
    if w <= half:
        return w + spill, 1
    per_token = in_b + out_b
    chunks = math.ceil(tokens / max(1, target.act_buffer_bytes // per_token)) if per_token else 1
    token_outer = w * chunks + spill
    weight_outer = w + a_in * math.ceil(w / half) + a_out
    return (token_outer, chunks) if token_outer <= weight_outer else (weight_outer, 1)


def state_bytes(op: Op, bits: BitsPreset, target: Target, tokens: int, decode: bool, state_resident: bool) -> int:
    """Off-chip state bytes of one instance."""
    state = op.state_bytes(bits)
    if state == 0 or state_resident:
        return 0
    if decode:
        return 2 * state
    groups = math.ceil(state / target.state_buffer_bytes)
    return state + (groups - 1) * tokens * op.shared_in * (bits.act_bits // 8)


def compute_pj(op: Op, bits: BitsPreset, target: Target, tokens: int, reads: int) -> float:
    e = target.energy
    elementwise = "int32" if bits.act_bits == 8 else "fp32"
    adds = op.adds + (hadamard_adds(op.hadamard) if op.hadamard else 0)
    total = (op.mults * e[f"{elementwise}_mult"] + adds * e[f"{elementwise}_add"]
             + op.lookups * e["table_lookup"]) * tokens
    if op.macs:
        fmt = op.mac_format(bits)
        mac = {"w8a8": e["int8_mult"] + e["int32_add"], "w4a8": e["int4x8_mult"] + e["int32_add"]}.get(
            fmt, e["fp16_mult"] + e["fp32_add"])
        total += op.macs * tokens * mac
        if fmt == "w4a16":
            total += op.weights[0].elems * reads * e["fp16_mult"]
    return total


def buffer_bytes(op: Op, bits: BitsPreset, tokens: int) -> int:
    """On-chip bytes of one instance besides its weights: activations in and out, the state read and written."""
    return (sum(op.act_bytes(bits)) + 2 * op.state_bytes(bits)) * tokens


def op_cost(op: Op, instances: int, bits: BitsPreset, target: Target, tokens: int, decode: bool,
            weights_resident: bool, state_resident: bool) -> OpCost:
    off, reads = stream(op, bits, target, tokens, decode, weights_resident)
    off += state_bytes(op, bits, target, tokens, decode, state_resident)
    on = op.weight_bytes(bits) * reads + buffer_bytes(op, bits, tokens)
    c = compute_cycles(op, bits, target, tokens)
    m = off * target.clock_mhz * 1e6 / target.offchip_bytes_per_s
    tiles = max(1, math.ceil(off / (target.weight_buffer_bytes // 2)))
    e = target.energy
    return OpCost(
        name=op.name,
        instances=instances,
        compute_cycles=c * instances,
        memory_cycles=m * instances,
        cycles=math.ceil(overlapped_cycles(c, m, tiles)) * instances,
        offchip_bytes=off * instances,
        onchip_bytes=on * instances,
        compute_pj=compute_pj(op, bits, target, tokens, reads) * instances,
        onchip_pj=on * e.per_byte(target.buffer_access) * instances,
        offchip_pj=off * e.per_byte(target.offchip_access) * instances,
    )


ENGINE_LABEL = {"silu_z": "tables"}  # a MAC-array-model operation's engine step label, where the names differ


def engine_refusal(shape: ModelShape, bits: BitsPreset, target: Target, features: RecipeFeatures) -> str | None:
    """Why the target's decode engine cannot run this decode step, or None when it can."""
    if target.engine is None:
        return f"{target.name} has no decode engine"
    if shape.family != "mamba":
        return "the decode engine runs Mamba-1 only"
    if (bits.weight_bits, bits.act_bits) != (8, 8):
        return "the decode engine runs w8a8 only (int8 linears, 8-bit activations)"
    if not features.online_hadamard:
        return "the decode engine needs the online Hadamard before out_proj"
    try:
        check(EngineModel.of(shape.config), target.engine)
    except QsimError as exc:
        return str(exc)
    return None


def engine_clock_hz(target: Target) -> float:
    """The target's clock (a synthesis Fmax, perhaps), but no faster than the engine's bus may run."""
    return min(target.engine.clock_mhz, target.clock_mhz) * 1e6


def engine_decode(shape: ModelShape, bits: BitsPreset, target: Target, features: RecipeFeatures) -> PhaseCost:
    """One decode step on the target's decode engine, per engine step label (RULES, the engine's rule)."""
    m = EngineModel.of(shape.config)
    cycles, dram = decode_step_cycles(m, target.engine), decode_step_dram(m, target.engine)
    work = {ENGINE_LABEL.get(op.name, op.name): op for op, _ in shape.ops(bits, features)}
    e = target.energy
    ops = []
    for label in LABELS:
        k = shape.n_layer if label in PER_LAYER else 1
        offchip, memory = dram[label]
        op = work.get(label)
        on = buffer_bytes(op, bits, 1) * k if op else 0
        ops.append(OpCost(
            name=label, instances=k, compute_cycles=cycles[label] - memory, memory_cycles=memory,
            cycles=cycles[label], offchip_bytes=offchip, onchip_bytes=on,
            compute_pj=compute_pj(op, bits, target, 1, 1) * k if op else 0.0,
            onchip_pj=on * e.per_byte(target.buffer_access), offchip_pj=offchip * e.per_byte(target.offchip_access),
        ))
    return PhaseCost("decode", 1, engine_clock_hz(target), tuple(ops))


def estimate(shape: ModelShape, bits: BitsPreset, target: Target, prompt_len: int, *,
             online_hadamard: bool = True, scan_out_per_channel: bool = False) -> Estimate:
    """Prefill of prompt_len tokens and one decode step of `shape` at `bits` on `target`.

    online_hadamard: the recipe transforms y by a Hadamard before out_proj (Quamba, QuaRot; not RTN or
    SmoothQuant); scan_out_per_channel: its scan output multiplier is per channel (d_inner words)."""
    features = RecipeFeatures(online_hadamard, scan_out_per_channel)
    weights_resident = shape.weight_bytes(bits, features) <= target.weight_buffer_bytes
    state_resident = shape.state_bytes(bits) <= target.state_buffer_bytes
    clock_hz = target.clock_mhz * 1e6

    def phase(name: str, tokens: int) -> PhaseCost:
        decode = name == "decode"
        costs = tuple(
            op_cost(op, k, bits, target, 1 if op is shape.lm_head else tokens, decode,
                    weights_resident, state_resident)
            for op, k in shape.ops(bits, features)
        )
        return PhaseCost(name, tokens, clock_hz, costs)

    refusal = engine_refusal(shape, bits, target, features)
    if refusal is None:
        e = target.engine
        decode = engine_decode(shape, bits, target, features)
        source = (f"the decode engine (qsim/hw/engine.py, rtl/engine.py): bus {e.bus_bytes} B, GEMV {e.gemv_lanes} "
                  f"lanes, scan {e.scan_lanes}, Hadamard {e.hadamard_lanes}, DRAM latency {e.dram_latency} cycles, "
                  f"clock {decode.clock_hz / 1e6:g} MHz; every weight and constant read from DRAM each token, the "
                  "conv and SSM state kept in the per-layer units")
    else:
        decode, source = phase("decode", 1), f"the MAC-array model; {refusal}"
    return Estimate(shape, bits, target, prompt_len, features, weights_resident, state_resident,
                    phase("prefill", prompt_len), decode, source)


PROJECTION_MODELS = ("mamba-tiny", "mamba-130m", "mamba-2.8b")


def engine_projection(target: Target, shapes: list[ModelShape]) -> list[PhaseCost]:
    """One w8a8 decode step of each model on the target's decode engine; a QsimError when the engine cannot run
    one (no engine, or a model it refuses)."""
    from qsim.bits import preset

    bits, features = preset("w8a8"), RecipeFeatures()
    out = []
    for shape in shapes:
        refusal = engine_refusal(shape, bits, target, features)
        if refusal:
            raise QsimError(f"--engine-projection {shape.name} on {target.name}: {refusal}")
        out.append(engine_decode(shape, bits, target, features))
    return out
