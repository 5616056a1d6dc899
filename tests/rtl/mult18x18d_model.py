"""A pin-level Amaranth model of the ECP5 MULT18X18D in the mode rtl.dsp instantiates, so its primitive builds run in
the Amaranth simulator (tests monkeypatch rtl.dsp.Instance with MULT18X18DModel)."""

from __future__ import annotations

from amaranth.hdl import (
    Cat,
    ClockSignal,
    Elaboratable,
    Module,
    ResetSignal,
    Signal,
    Value,
    signed,
)

# the mode rtl.dsp.registered_product sets: no input or pipeline registers, the output register on CLK0 / CE0 / RST0
MODE = {"REG_INPUTA_CLK": "NONE", "REG_INPUTB_CLK": "NONE", "REG_PIPELINE_CLK": "NONE", "REG_OUTPUT_CLK": "CLK0",
        "REG_OUTPUT_CE": "CE0", "REG_OUTPUT_RST": "RST0", "RESETMODE": "SYNC", "GSR": "DISABLED"}


class MULT18X18DModel(Elaboratable):
    """A MULT18X18D in MODE, pin by pin (Lattice FPGA-TN-02205, ECP5 sysDSP usage guide): A[17:0] and B[17:0]
    signed where SIGNEDA / SIGNEDB, their 36-bit product taken by the output register where CE0, cleared by RST0
    (SYNC), on P[35:0]."""

    def __init__(self, kind: str, **kw):
        assert kind == "MULT18X18D"
        self.params = {k[2:]: v for k, v in kw.items() if k.startswith("p_")}
        self.pins = {k[2:]: v for k, v in kw.items() if not k.startswith("p_")}

    def elaborate(self, platform):
        assert self.params == MODE
        assert isinstance(self.pins["CLK0"], ClockSignal) and self.pins["CLK0"].domain == "sync"
        assert isinstance(self.pins["RST0"], ResetSignal) and self.pins["RST0"].domain == "sync"
        assert self.pins["SOURCEA"] == 0 and self.pins["SOURCEB"] == 0
        pin = {k: Value.cast(v) for k, v in self.pins.items()}
        m = Module()
        ops = []
        for port in "AB":
            v = Signal(signed(19), name=f"op_{port.lower()}")  # the 18 bits, signed or not by SIGNED{port}
            bits = Cat(pin[f"{port}{i}"] for i in range(18))
            m.d.comb += v.eq(Cat(bits, pin[f"SIGNED{port}"] & bits[17]).as_signed())
            ops.append(v)
        out = Signal(36)
        with m.If(pin["RST0"]):
            m.d.sync += out.eq(0)
        with m.Elif(pin["CE0"]):
            m.d.sync += out.eq(ops[0] * ops[1])
        m.d.comb += [pin[f"P{i}"].eq(out[i]) for i in range(36)]
        return m
