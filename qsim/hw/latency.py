"""GPU latency beyond the roofline: the effects that separate a batch-1 pass's roofline from a device.

A pass (one decode step, or the prefill of a prompt) runs the operations of the shape's op list
(qsim.hw.shapes) under the implementation's recipe features, each as GPU kernels, and takes

    time    = sum over operations of max(compute, memory) + kernels * tau[device]
    compute = 2 * MACs / (eps[class] * dense tensor-core peak[class])
              + kappa * int4 weights * tokens / ALU rate
    memory  = bytes / (eta[device] * datasheet bandwidth)

bytes: weights (with the integer datapath's tables), activations at their widths times tokens,
the conv window and the SSM state at the implementation's width (decode reads and writes them,
prefill writes them). class: the int8 tensor cores with 8-bit activations, else fp16; only the
linear layers and lm_head count MACs (the depthwise conv's few MACs per element are far under
its memory time). Prefill runs every operation over the prompt, lm_head over its last token.

Kernels per pass: one per operation, except silu_z (0: Mamba's and Quamba's scan kernels apply
SiLU(z) themselves) and lm_head (2: final norm, projection); one for the embedding; and, with
per-token scales, one reduction kernel per linear layer, which re-reads the layer's input.

Parameters (LatencyParams), each with its unit; their values are fitted or sourced in
qsim.hw.latency_fit:
  eta[device]  fraction of the datasheet bandwidth reached (dimensionless)
  tau[device]  launch and synchronisation time per kernel (seconds)
  eps[class]   fraction of the dense tensor-core peak reached by GEMMs (dimensionless)
  kappa        ALU instructions per int4 weight per token to dequantize it inside a GEMM
"""

from __future__ import annotations

from dataclasses import dataclass

from qsim.bits import BitsPreset
from qsim.hw.devices import Device
from qsim.hw.shapes import SSM_STATE_BYTES, ModelShape, Op, RecipeFeatures

CLASSES = ("fp16", "int8")  # tensor-core precision classes, keys of Device.peak_tops
KERNELS = {"silu_z": 0, "lm_head": 2}  # GPU kernels per operation where not one
LINEAR_ROLES = ("gptq", "linear")


@dataclass(frozen=True)
class Implementation:
    """What a GPU implementation of a recipe runs beyond the model's own operations."""

    online_hadamard: bool = True  # a Hadamard kernel on y before out_proj
    per_token_scales: bool = False  # dynamic per-token activation scales at every linear layer's input
    state_bits: int = 8 * SSM_STATE_BYTES  # the SSM state between decode steps


@dataclass(frozen=True)
class Work:
    """One operation's work in a pass, all its layer instances together."""

    name: str
    tc_class: str | None  # tensor-core class of its GEMM; None without one
    tc_ops: float  # 2 * MACs on the tensor cores
    dequant: float  # int4 weights times tokens
    bytes: float
    kernels: int


@dataclass(frozen=True)
class LatencyParams:
    eta: dict[str, float]  # device -> fraction of datasheet bandwidth
    tau_s: dict[str, float]  # device -> seconds per kernel
    eps: dict[str, float]  # tensor-core class -> fraction of dense peak
    kappa: float  # ALU instructions per int4 weight per token

    def linear(self) -> dict[str, float]:
        """The values time is linear in: 1/eta, tau, 1/eps, kappa, named as term() names them."""
        return ({f"eta:{d}": 1 / v for d, v in self.eta.items()} | {f"tau:{d}": v for d, v in self.tau_s.items()}
                | {f"eps:{c}": 1 / v for c, v in self.eps.items()} | {"kappa": self.kappa})

    @staticmethod
    def from_linear(values: dict[str, float]) -> LatencyParams:
        def pick(kind):
            return {k.split(":", 1)[1]: v for k, v in values.items() if k.startswith(f"{kind}:")}
        return LatencyParams({d: 1 / v for d, v in pick("eta").items()}, pick("tau"),
                             {c: 1 / v for c, v in pick("eps").items()}, values["kappa"])


def _features(impl: Implementation) -> RecipeFeatures:
    return RecipeFeatures(online_hadamard=impl.online_hadamard)


def _state_bytes(op: Op, bits: BitsPreset, impl: Implementation) -> float:
    if op.state_word:
        return op.state * impl.state_bits / 8
    return op.state_bytes(bits)


def _is_linear(op: Op) -> bool:
    return bool(op.macs and op.weights and op.weights[0].role in LINEAR_ROLES)


def pass_work(shape: ModelShape, bits: BitsPreset, impl: Implementation, tokens: int, decode: bool) -> list[Work]:
    """Per operation: tensor-core ops, dequantized weights, bytes and kernels of a pass over `tokens`
    tokens (a decode step reads and writes the state; a prefill writes it)."""
    tc_class = "int8" if bits.act_bits == 8 else "fp16"
    work = [Work("embedding", None, 0.0, 0.0, 0.0, 1)]
    for op, k in shape.ops(bits, _features(impl)):
        t = 1 if op is shape.lm_head else tokens
        act_in, act_out = op.act_bytes(bits)
        linear = _is_linear(op)
        int4 = linear and op.weights[0].bits(bits) == 4
        state = _state_bytes(op, bits, impl) * (2 if decode else 1)
        rescan = act_in * t if linear and impl.per_token_scales else 0
        work.append(Work(
            name=op.name,
            tc_class=tc_class if linear else None,
            tc_ops=2.0 * op.macs * t * k if linear else 0.0,
            dequant=float(op.weights[0].elems * t * k) if int4 else 0.0,
            bytes=float((op.weight_bytes(bits) + (act_in + act_out) * t + rescan + state) * k),
            kernels=(KERNELS.get(op.name, 1) + (1 if linear and impl.per_token_scales else 0)) * k,
        ))
    return work


def terms(work: list[Work], dev: Device, params: LatencyParams) -> dict[str, float]:
    """The pass's time as coefficients of LatencyParams.linear(): each operation counts on its bound
    (compute or memory) under `params`; time = sum(coefficient * value)."""
    values = params.linear()
    bandwidth, alu = dev.datasheet_gb_per_s * 1e9, dev.alu_tops * 1e12
    out: dict[str, float] = {}

    def add(name: str, c: float) -> None:
        if c:
            out[name] = out.get(name, 0.0) + c

    for w in work:
        compute = {"kappa": w.dequant / alu}
        if w.tc_class:
            compute[f"eps:{w.tc_class}"] = w.tc_ops / (dev.peak_tops[w.tc_class] * 1e12)
        memory = {f"eta:{dev.name}": w.bytes / bandwidth}
        side = max(compute, memory, key=lambda t: sum(c * values[n] for n, c in t.items()))
        for name, c in side.items():
            add(name, c)
        add(f"tau:{dev.name}", float(w.kernels))
    return out


def seconds(work: list[Work], dev: Device, params: LatencyParams) -> float:
    values = params.linear()
    return sum(c * values[n] for n, c in terms(work, dev, params).items())


@dataclass(frozen=True)
class LatencyPrediction:
    tpot_ms: float
    ttft_ms: float


def predict(shape: ModelShape, bits: BitsPreset, dev: Device, impl: Implementation, prompt_len: int,
            params: LatencyParams) -> LatencyPrediction:
    """TPOT (one decode step) and TTFT (prefill of prompt_len tokens) on `dev`."""
    return LatencyPrediction(seconds(pass_work(shape, bits, impl, 1, decode=True), dev, params) * 1e3,
                             seconds(pass_work(shape, bits, impl, prompt_len, decode=False), dev, params) * 1e3)
