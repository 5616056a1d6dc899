"""A pin-level Amaranth model of the ECP5 DP16KD in the modes rtl.ebr instantiates, so its primitive builds run in
the Amaranth simulator (tests monkeypatch rtl.ebr.Instance with DP16KDModel)."""

from __future__ import annotations

from amaranth.hdl import (
    Cat,
    ClockSignal,
    Const,
    Elaboratable,
    Module,
    ResetSignal,
    Signal,
    Value,
)
from amaranth.lib.memory import Memory

# the DP16KD configuration rtl.ebr.dp16kd sets besides the ports' REGMODE (OUTREG where a port reads), their
# DATA_WIDTH (18, or 9 both) and INITVAL
MODES = {"RESETMODE": "SYNC", "ASYNC_RESET_RELEASE": "SYNC",
         "CSDECODE_A": "0b000", "CSDECODE_B": "0b000", "WRITEMODE_A": "NORMAL", "WRITEMODE_B": "NORMAL",
         "GSR": "DISABLED"}


class DP16KDModel(Elaboratable):
    """A DP16KD in the modes of MODES, pin by pin (Lattice FPGA-TN-02204, ECP5 memory usage guide): x18 ports
    address AD[13:4], x9 ports AD[13:3]; a port writes DI where WE and CE (in x18 with its byte enables AD[1:0]
    set); a port latches the word
    at its address where CE, and with REGMODE OUTREG its output register takes the latch where OCE, cleared by
    RST (SYNC); the array starts as INITVAL_00..3F give it (word w at bit 20 * (w % 16) of INITVAL_{w // 16})."""

    def __init__(self, kind: str, **kw):
        assert kind == "DP16KD"
        self.params = {k[2:]: v for k, v in kw.items() if k.startswith("p_")}
        self.pins = {k[2:]: v for k, v in kw.items() if not k.startswith("p_")}

    def elaborate(self, platform):
        init = [0] * 1024
        for k, v in self.params.items():
            if k.startswith("INITVAL_"):
                v = Const.cast(v).value
                for i in range(16):
                    init[16 * int(k[8:], 16) + i] = v >> (20 * i) & ((1 << 18) - 1)
        assert {k: v for k, v in self.params.items() if not k.startswith(("INITVAL_", "REGMODE_", "DATA_W"))} == MODES
        width = self.params["DATA_WIDTH_A"]
        assert width == self.params["DATA_WIDTH_B"] and width in (9, 18) and (width == 18 or not any(init))
        low = 4 if width == 18 else 3
        pin = {k: Value.cast(v) for k, v in self.pins.items()}
        m = Module()
        m.submodules.mem = mem = Memory(shape=width, depth=18432 // width, init=init[:18432 // width])
        for port in "AB":
            assert isinstance(self.pins[f"CLK{port}"], ClockSignal) and self.pins[f"CLK{port}"].domain == "sync"
            assert all(self.pins[f"CS{port}{i}"] == 0 for i in range(3))
            addr = Cat(pin[f"AD{port}{i}"] for i in range(low, 14))
            w = mem.write_port()
            byte_enables = pin[f"AD{port}0"] & pin[f"AD{port}1"] if width == 18 else 1
            m.d.comb += [w.addr.eq(addr), w.data.eq(Cat(pin[f"DI{port}{i}"] for i in range(width))),
                         w.en.eq(pin[f"WE{port}"] & pin[f"CE{port}"] & byte_enables)]
            if f"DO{port}0" not in pin:
                continue
            assert self.params[f"REGMODE_{port}"] == "OUTREG"
            rst = self.pins[f"RST{port}"]
            assert isinstance(rst, ResetSignal) and rst.domain == "sync"
            r, out = mem.read_port(), Signal(width)
            m.d.comb += [r.en.eq(pin[f"CE{port}"]), r.addr.eq(addr)]
            with m.If(pin[f"RST{port}"]):
                m.d.sync += out.eq(0)
            with m.Elif(pin[f"OCE{port}"]):
                m.d.sync += out.eq(r.data)
            m.d.comb += [pin[f"DO{port}{i}"].eq(out[i]) for i in range(width)]
        return m
