"""The `--bits` presets: weight and activation formats of one quantized model."""

from __future__ import annotations

from dataclasses import dataclass

from qsim.errors import QsimError


@dataclass(frozen=True)
class BitsPreset:
    name: str
    weight_bits: int  # 16 means fp16 weights
    act_bits: int  # 16 means fp16 activations
    group_size: int  # int4 weight group along the input dimension; 0 when not grouped

    @property
    def integer_activations(self) -> bool:
        """Whether the `fixed` integer datapath is defined for this preset (8-bit activations)."""
        return self.act_bits == 8


PRESETS: dict[str, BitsPreset] = {
    p.name: p
    for p in (
        BitsPreset("fp16", 16, 16, 0),
        BitsPreset("w8a8", 8, 8, 0),
        BitsPreset("w4a8", 4, 8, 128),
        BitsPreset("w4a16", 4, 16, 128),
    )
}


def preset(name: str) -> BitsPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise QsimError(f"--bits {name!r}: unknown preset; valid presets are {', '.join(PRESETS)}") from None
