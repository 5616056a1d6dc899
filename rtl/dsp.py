"""A registered product in an ECP5 MULT18X18D's own output register, for the partial products of rtl.pipeline.

yosys's ECP5 mapping uses a MULT18X18D as a combinational 18 x 18 multiplier, so a registered product is a fabric
flip-flop behind it: a path from the operand registers through routing, the block (3.93 ns) and routing again, the
DSP tiles sitting in fixed rows often far from both (the engine's routed critical paths at 4875867, 10.1-10.3 ns).
With its output register in use (REG_OUTPUT_CLK CLK0) the block splits that path in two: nextpnr's timing model
(0.11) counts the multiply as the register's setup (3.49 ns) and the product leaves the block 0.74 ns after the
clock (checked on a one-multiplier design). Both operands go in as 18-bit signed values (an unsigned operand of at
most 17 bits zero-extended), so P holds the exact product; the register resets synchronously to 0 like a fabric
one. tests/rtl/test_rtl_dsp.py runs this build against a pin-level model of the mode it sets.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal, Signal, Value

WIDTH = 18  # a MULT18X18D operand (signed)
MODE = {"REG_INPUTA_CLK": "NONE", "REG_INPUTB_CLK": "NONE", "REG_PIPELINE_CLK": "NONE", "REG_OUTPUT_CLK": "CLK0",
        "REG_OUTPUT_CE": "CE0", "REG_OUTPUT_RST": "RST0", "RESETMODE": "SYNC", "GSR": "DISABLED"}


def fits(v: Value) -> bool:
    """An operand a MULT18X18D takes as an 18-bit signed value: signed up to 18 bits, unsigned up to 17."""
    shape = v.shape()
    return shape.width <= (WIDTH if shape.signed else WIDTH - 1)


def registered_product(m: Module, a: Value, b: Value, name: str) -> Signal:
    """A MULT18X18D added to `m` as submodule `name`: its 36-bit output register, holding a * b one clock after a
    and b (take the product's low bits as its shape)."""
    if not fits(a) or not fits(b):
        raise ValueError(f"{name}: operands of {a.shape()} and {b.shape()} exceed a MULT18X18D's 18-bit signed inputs")
    p = Signal(2 * WIDTH, name=f"{name}_p")
    pins = {}
    for port, v in zip("AB", (a, b), strict=True):
        ext = Signal(WIDTH, name=f"{name}_{port.lower()}")
        m.d.comb += ext.eq(v)  # sign- or zero-extended by its shape
        pins |= {f"i_{port}{i}": ext[i] for i in range(WIDTH)} | {f"i_SIGNED{port}": 1}
    pins |= {"i_CLK0": ClockSignal(), "i_CE0": 1, "i_RST0": ResetSignal(), "i_SOURCEA": 0, "i_SOURCEB": 0}
    pins |= {f"o_P{i}": p[i] for i in range(2 * WIDTH)}
    m.submodules[name] = Instance("MULT18X18D", **{f"p_{k}": v for k, v in MODE.items()}, **pins)
    return p
