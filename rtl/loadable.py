"""Run-time constants of the units: the configuration stream, and exact arithmetic on loaded shifts.

A unit is built once per configuration (its dimensions); a layer's constants
reach it as `cfg` stream beats of (addr, data), one a cycle, written into
on-chip memories and registers while the unit is idle. A loaded shift `s`
(spec 5.1: 0 <= s <= 62) costs no adder after the product: its rounding half
2**(s-1) is decoded when the constant is written (or a few stages early) and
joins the sum of the product's partial products (`mul_add`); what remains is
a barrel shifter beside a masked sign test (`shift_saturate`, two stages), exact:
saturate(floor((v + half) / 2**s)) == saturate(rshift_round(v, s)).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, signed, unsigned
from amaranth.lib import data

from rtl.pipeline import MUL_LATENCY

SHIFT_MAX = 62  # spec 5.1: 0 <= S <= 62
SHIFT_BITS = SHIFT_MAX.bit_length()
MULT_BITS = 31  # spec 5.1: 1 <= M < 2**31


def cfg_layout(addr_bits: int, data_bits: int) -> data.StructLayout:
    """One configuration beat: `data` (two's complement where the field is signed) written at `addr`."""
    return data.StructLayout({"addr": unsigned(addr_bits), "data": unsigned(data_bits)})


def half_of(s, width: int):
    """2**(s-1) (0 when s == 0) as a `width`-bit value: the rounding half of a right shift by s. Bit by bit, a
    compare with a constant each (two LUT levels), not an adder in front of a shifter."""
    return Cat(*(s == i + 1 for i in range(width)))


def sat_mask(s, out_bits: int, width: int):
    """Ones at bit positions >= out_bits - 1 + s of a `width`-bit value: those that must all equal its sign
    for v >> s to fit `out_bits` signed bits. Bit by bit, a compare with a constant each (as half_of)."""
    return Cat(*(s <= i - (out_bits - 1) if i >= out_bits - 1 else Const(0) for i in range(width)))


def shift_saturate(p, v, s, mask, shape, stage: int, name: str):
    """saturate(v >> s, shape) (arithmetic shift, signed `shape`) for a run-time shift s, over two pipeline stages
    (`p`, a Pipeline): v, s and `mask` (sat_mask(s, shape.width, len(v)), constant or registered beforehand) are
    taken at stage - 1; at `stage` v shifted by whole bytes of s and the fit test are registered, at stage + 1 the
    rest of the shift (s % 8) and the clamp: a wide barrel shifter and the test beside it in one cycle do not
    meet 100 MHz on an ECP5. v >> s fits iff v's bits under the mask all equal its sign."""
    assert shape.signed and len(mask) >= len(v)
    w = shape.width
    sign = v[-1]
    coarse = p.reg(v >> Cat(Const(0, 3), s[3:]), stage, f"{name}_bytes")
    fits = p.reg((Mux(sign, ~v, v) & mask[:len(v)]) == 0, stage, f"{name}_fits")
    neg, rest = p.reg(sign, stage, f"{name}_sign"), p.reg(s[:3], stage, f"{name}_rest")
    low = (coarse >> rest)[:w].as_signed()
    clamp = Mux(fits, low, Mux(neg, Const(-(1 << (w - 1)), shape), Const((1 << (w - 1)) - 1, shape)))
    return p.reg(clamp, stage + 1, name, shape)


def mul_add(p, a, b, c, stage: int, name: str, retime: bool = False, split: bool = False):
    """a * b + c, as Pipeline.mul (operands taken at `stage`, valid at stage + MUL_LATENCY + retime + split, the
    same registered DSP-sized pieces), with c (a signal, taken at stage + 2 + retime) one more term of the sum of
    partial products: a rounding half rides in with the product, no adder after it. split: the terms summed in
    two registered halves, then added (one cycle more; for products of many pieces, whose sum is a deep tree)."""
    a, b, parts = p.partial_products(a, b, stage, name, retime)
    terms = [(pp << off) if off else pp for off, pp in parts] + [p.at(c, stage + 2 + retime)]
    sa, sb = a.shape(), b.shape()
    width = max(sa.width + sb.width + (sa.signed != sb.signed), len(c)) + 1
    shape = signed(width) if (sa.signed or sb.signed) else unsigned(width)
    if split:
        h = len(terms) // 2
        terms = [p.reg(sum(terms[:h]), stage + 3 + retime, f"{name}_sa", shape),
                 p.reg(sum(terms[h:]), stage + 3 + retime, f"{name}_sb", shape)]
    return p.reg(sum(terms), stage + MUL_LATENCY + retime + split, name, shape)
