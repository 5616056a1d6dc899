"""GPU roofline: predicted TTFT and TPOT of a model at a bits preset on a named device.

TPOT = (weight bytes + state read and written) / bandwidth: batch-1 decode
reads every weight once per token. TTFT = max(2 * prefill MACs / peak rate,
(weight bytes + state written) / bandwidth), the peak being the int8 tensor
rate with 8-bit activations and the fp16 rate otherwise. A model that does not
fit device memory (weights, an untied embedding table, state) is predicted out
of memory. The bandwidth is the measured one where the project measured it.
"""

from __future__ import annotations

from dataclasses import dataclass

from qsim.bits import BitsPreset
from qsim.errors import QsimError
from qsim.hw.shapes import ModelShape


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    datasheet_gb_per_s: float
    measured_gb_per_s: float | None
    memory_gb: float
    peak_tops: dict[str, float]  # dense tensor-core rate: "fp16" (TFLOP/s) and "int8" (TOP/s)
    alu_tops: float  # CUDA-core instruction rate, T ops/s: cores x boost clock (datasheet FP32 FLOP/s / 2)
    sources: str

    @property
    def bandwidth_gb_per_s(self) -> float:
        return self.measured_gb_per_s or self.datasheet_gb_per_s

    @property
    def bandwidth_note(self) -> str:
        which = "measured" if self.measured_gb_per_s else "datasheet"
        return f"{self.bandwidth_gb_per_s:g} GB/s ({which})"


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("h100-sxm", "NVIDIA H100 SXM 80GB HBM3", 3350.0, 3040.0, 80.0, {"fp16": 798.0, "int8": 1979.0}, 33.5,
               "bandwidth: NVIDIA H100 Tensor Core GPU datasheet (SXM) 3.35 TB/s, measured read 3.04 TB/s "
               "(torch sum over 2 GiB fp16 on one H100 80GB HBM3, project measurement 2026-11-26); fp16: bf16 "
               "dense matmul 798 TFLOP/s measured by the project on the same kind of H100; int8: datasheet "
               "3958 TOP/s with sparsity, dense 1979 TOP/s; ALU: datasheet FP32 67 TFLOP/s, 33.5 T instructions/s "
               "(qsim/hw/SOURCES.md, h100-sxm)"),
        Device("a5000", "NVIDIA RTX A5000 24GB GDDR6", 768.0, None, 24.0, {"fp16": 111.1, "int8": 222.2}, 13.9,
               "bandwidth 768 GB/s and 24 GB GDDR6 from the NVIDIA RTX A5000 datasheet; tensor rates from the same "
               "datasheet (222.2 TFLOP/s fp16 with sparsity, halved for dense; int8 dense at twice fp16 on Ampere); "
               "ALU: 8192 CUDA cores, FP32 27.8 TFLOP/s, 13.9 T instructions/s (qsim/hw/SOURCES.md, a5000)"),
        Device("orin-nano-8g", "NVIDIA Jetson Orin Nano 8GB", 68.0, None, 8.0, {"fp16": 10.0, "int8": 20.0}, 0.64,
               "NVIDIA Jetson Orin Nano Series data sheet: 128-bit LPDDR5 68 GB/s, 20 INT8 TOPS dense (40 sparse); "
               "~10 TFLOP/s fp16 dense derived as half the int8 rate, not a datasheet figure; 8 GB shared with "
               "the CPU; ALU: 1024 CUDA cores at 625 MHz, 0.64 T instructions/s (qsim/hw/SOURCES.md, orin-nano-8g)"),
    )
}


@dataclass(frozen=True)
class Prediction:
    device: Device
    model: str
    bits: str
    prompt_len: int
    fits: bool
    tpot_ms: float
    ttft_ms: float
    ttft_bound: str  # "compute" or "memory"


def device(name: str) -> Device:
    try:
        return DEVICES[name]
    except KeyError:
        raise QsimError(f"device {name!r}: unknown; known devices are {', '.join(DEVICES)}") from None


def predict(shape: ModelShape, bits: BitsPreset, dev: Device, prompt_len: int) -> Prediction:
    bandwidth = dev.bandwidth_gb_per_s * 1e9
    weights, state = shape.weight_bytes(bits), shape.state_bytes(bits)
    macs = sum(op.macs * k * (1 if op is shape.lm_head else prompt_len) for op, k in shape.ops(bits))
    peak = dev.peak_tops["int8" if bits.act_bits == 8 else "fp16"] * 1e12
    compute_s, memory_s = 2 * macs / peak, (weights + state) / bandwidth
    return Prediction(
        device=dev,
        model=shape.name,
        bits=bits.name,
        prompt_len=prompt_len,
        fits=shape.storage_bytes(bits) + state <= dev.memory_gb * 1e9,
        tpot_ms=(weights + 2 * state) / bandwidth * 1e3,
        ttft_ms=max(compute_s, memory_s) * 1e3,
        ttft_bound="compute" if compute_s >= memory_s else "memory",
    )
