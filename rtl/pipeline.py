"""Pipeline plumbing and the spec's integer operators as hardware.

`Pipeline` places every signal at a stage (a cycle count after issue) and
builds delay lines on demand, so a unit is written as "this value at stage k"
and the alignment registers are never hand-counted. `mul` splits products into
ECP5-DSP-sized (18x18 signed) pieces with registered operands and partial products: a fixed
three-cycle latency whatever the widths (four when retimed), so a unit's depth does not depend on
its constants (the cycle contract in qsim.hw.units has one latency per unit).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Shape, Signal, signed, unsigned

from rtl.dsp import WIDTH, fits, registered_product

DSP_BITS = WIDTH  # ECP5 MULT18X18D operand width (signed)
PIECE = DSP_BITS - 1  # unsigned low pieces, so that a piece is an 18-bit signed operand
MUL_LATENCY = 3  # operands registered, partial products, their sum


def bits_for(lo: int, hi: int) -> Shape:
    """Smallest signed shape holding [lo, hi]."""
    return signed(max(lo.bit_length(), (-hi - 1).bit_length(), hi.bit_length(), (-lo - 1).bit_length()) + 1)


def rshift_round(v, s: int):
    """qsim.spec.rshift_round for a constant shift: (v + 2**(s-1)) >> s, arithmetic."""
    return v if s == 0 else (v + (1 << (s - 1))) >> s


def shape_range(shape: Shape) -> tuple[int, int]:
    """(lo, hi) of the values `shape` holds."""
    w = shape.width
    return (-(1 << (w - 1)), (1 << (w - 1)) - 1) if shape.signed else (0, (1 << w) - 1)


def saturate(v, shape: Shape):
    """Clamp to the range of `shape` (qsim.spec.saturate). A signed value into a signed shape fits iff its bits from
    the shape's sign bit up are all equal: AND/OR trees, not the two wide compares (carry chains) of the general
    case (the scan's 66-bit state sum through them was a routed critical path)."""
    w = shape.width
    lo, hi = shape_range(shape)
    low = v[:w].as_signed() if shape.signed else v[:w]
    if shape.signed and v.shape().signed and len(v) > w:
        top = v[w - 1:]
        return Mux(top.all() | ~top.any(), low, Mux(v[-1], Const(lo, shape), Const(hi, shape)))
    return Mux(v > hi, Const(hi, shape), Mux(v < lo, Const(lo, shape), low))


def pieces(v) -> list[tuple[int, object]]:
    """(bit offset, piece) with every piece at most 18 bits signed: low pieces unsigned, the top one signed."""
    shape = v.shape()
    if shape.width <= (DSP_BITS if shape.signed else PIECE):
        return [(0, v)]
    out, off = [], 0
    while shape.width - off > (DSP_BITS if shape.signed else PIECE):
        out.append((off, v[off: off + PIECE]))
        off += PIECE
    top = v[off:]
    out.append((off, top.as_signed() if shape.signed else top))
    return out


class Pipeline:
    """Signals tagged with the stage they are valid at; `at` delays them to a later stage.

    Delay lines are built on first use, so call `at` outside `m.If` blocks (a
    line built inside one would only shift when the condition holds).
    """

    def __init__(self, m: Module, name: str = "p", primitive: bool = False):
        self.m, self.name = m, name
        self.primitive = primitive  # partial products in MULT18X18D output registers (synthesis; rtl.dsp)
        self.stage: dict[int, int] = {}
        self._lines: dict[int, list[Signal]] = {}

    def put(self, sig: Signal, stage: int) -> Signal:
        self.stage[id(sig)] = stage
        self._lines[id(sig)] = [sig]
        return sig

    def reg(self, value, stage: int, name: str, shape=None) -> Signal:
        """A register holding `value` at `stage`: its operands must be at stage - 1 (take them with `at`)."""
        sig = Signal(shape if shape is not None else value.shape(), name=f"{name}_s{stage}")
        self.m.d.sync += sig.eq(value)
        return self.put(sig, stage)

    def at(self, sig, stage: int):
        """`sig` delayed to `stage` (registers are shared between users)."""
        if isinstance(sig, (int, Const)):
            return sig
        src = self.stage[id(sig)]
        if stage < src:
            raise ValueError(f"{sig.name} lives at stage {src}, asked at {stage}")
        line = self._lines[id(sig)]
        while len(line) <= stage - src:
            d = Signal.like(line[0], name=f"{line[0].name}_d{len(line)}")
            self.m.d.sync += d.eq(line[-1])
            line.append(d)
        return line[stage - src]

    def mul_fabric(self, a, b, stage: int, name: str) -> Signal:
        """a * b for narrow operands (an int8 GEMV lane) in LUTs and carry chains, not a DSP: its shift-and-add
        rows summed in two registered halves (stage + 1), then added (stage + 2). A DSP tile sits in a fixed row,
        often far from the logic; routing to one and back cost two long hops (the engine's critical path)."""
        width = len(a) + len(b)
        top = len(b) - 1
        rows = [(Mux(b[k], a, 0) << k) for k in range(len(b))]
        if b.shape().signed:  # two's complement: the sign bit weighs -2**top
            rows[top] = -rows[top]
        h = len(rows) // 2
        lo = self.reg(sum(rows[:h]), stage + 1, f"{name}_lo", signed(width))
        hi = self.reg(sum(rows[h:]), stage + 1, f"{name}_hi", signed(width))
        return self.reg(lo + hi, stage + 2, name, signed(width))

    def product(self, a, b, stage: int, name: str, dsp: bool = True) -> Signal:
        """a * b registered at `stage` (a and b at stage - 1): in a MULT18X18D's own output register (rtl.dsp) where
        the pipeline builds primitives and yosys would give the product a DSP (`dsp`: no constant operand; both 2
        to 18 bits wide), else in a fabric register behind the multiplier."""
        if not (self.primitive and dsp and all(fits(v) and len(v) >= 2 for v in (a, b))):
            return self.reg(a * b, stage, name)
        shape = (a * b).shape()
        sig = Signal(shape, name=f"{name}_s{stage}")
        self.m.d.comb += sig.eq(registered_product(self.m, a, b, f"{name}_dsp")[:shape.width])
        return self.put(sig, stage)

    def partial_products(self, a, b, stage: int, name: str, retime: bool = False):
        """(a, b as registered at stage + 1, [(bit offset, partial product at stage + 2 + retime)]): the operands
        (signals taken at `stage`, or integer constants) registered, then split into DSP-sized pieces whose
        pairwise products are registered (`product`); mul and loadable.mul_add sum them."""
        dsp = not isinstance(a, int) and not isinstance(b, int)
        a, b = (Const(x) if isinstance(x, int) else self.reg(self.at(x, stage), stage + 1, f"{name}_in{i}")
                for i, x in enumerate((a, b)))  # input registers: the DSPs' inputs come straight from flip-flops
        parts = [(oa + ob, self.at(self.product(pa, pb, stage + 2, f"{name}_pp{oa}_{ob}", dsp), stage + 2 + retime))
                 for oa, pa in pieces(a) for ob, pb in pieces(b)]
        return a, b, parts

    def mul(self, a, b, stage: int, name: str, retime: bool = False) -> Signal:
        """a * b (operands taken at `stage`), valid at stage + MUL_LATENCY, in registered DSP-sized pieces.

        retime: each partial product is registered twice, so placement can put one register beside its DSP and
        the other beside the adder (a DSP sits in a fixed row, often far from the logic); one cycle more.
        """
        a, b, parts = self.partial_products(a, b, stage, name, retime)
        total = sum((pp << off) if off else pp for off, pp in parts)
        width = a.shape().width + b.shape().width + (a.shape().signed != b.shape().signed)
        shape = signed(width) if (a.shape().signed or b.shape().signed) else unsigned(width)
        return self.reg(total, stage + MUL_LATENCY + retime, name, shape)
