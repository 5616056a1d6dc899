"""cocotb plumbing shared by the unit benches: clock/reset, stream driver and monitor, scoreboard, cycle record.

Inputs change on the falling clock edge and transfers are decided in the
read-only phase just after it (valid and ready as the next rising edge will
sample them), which gives the same cycle numbers on Icarus and Verilator.
A cycle is numbered by the rising edge that performs the transfer.
"""

from __future__ import annotations

import json
import os
import random

from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

PERIOD_NS = 10


class TB:
    """Owns the clock, the reset and the random source of one run (parameters come from the environment)."""

    def __init__(self, dut):
        self.dut = dut
        self.env = json.loads(os.environ["RTL_BENCH"])
        self.rng = random.Random(self.env.get("seed", 1))
        Clock(dut.clk, PERIOD_NS, unit="ns").start()

    async def reset(self):
        self.dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    def next_edge(self) -> int:
        return int(get_sim_time("ns")) // PERIOD_NS + 1

    def record(self, **record) -> None:
        """The run's cycle record, read back by the pytest side (which checks and merges it)."""
        with open(self.env["result"], "w") as f:
            json.dump(record, f)


class Source:
    """Driver of one valid/ready input stream; `gap` is the chance of an idle cycle before a beat."""

    def __init__(self, tb: TB, name: str):
        self.tb = tb
        self.valid, self.ready, self.payload = (getattr(tb.dut, f"{name}__{s}") for s in ("valid", "ready", "payload"))
        self.valid.value = 0
        self.first = self.last = None  # cycles of the first and the latest transfer

    async def send(self, words, gap: float = 0.0):
        for w in words:
            raised = False  # once raised, valid stays high until the beat transfers
            while True:
                await FallingEdge(self.tb.dut.clk)
                raised = raised or self.tb.rng.random() >= gap
                self.valid.value = int(raised)
                self.payload.value = w
                await ReadOnly()
                if raised and self.ready.value:
                    break
            self.last = self.tb.next_edge()
            self.first = self.first or self.last
        await FallingEdge(self.tb.dut.clk)
        self.valid.value = 0


class Sink:
    """Monitor of one output stream with random back-pressure (`stall` is the chance of ready low)."""

    def __init__(self, tb: TB, name: str, decode):
        self.tb, self.decode = tb, decode
        self.valid, self.ready, self.payload = (getattr(tb.dut, f"{name}__{s}") for s in ("valid", "ready", "payload"))
        self.ready.value = 0
        self.last = None  # cycle of the last transfer

    async def receive(self, count: int, stall: float = 0.0) -> list:
        got = []
        while len(got) < count:
            await FallingEdge(self.tb.dut.clk)
            ready = self.tb.rng.random() >= stall
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and self.valid.value:
                got.append(self.decode(self.payload.value))
                self.last = self.tb.next_edge()
        await FallingEdge(self.tb.dut.clk)
        self.ready.value = 0
        return got


def scoreboard(got, expected, describe, limit: int = 5) -> None:
    """Fail naming the first mismatches; describe(index) says which token/vector, lane and field."""
    bad = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    if len(got) != len(expected):
        raise AssertionError(f"{len(got)} outputs, expected {len(expected)}")
    if bad:
        lines = [f"{describe(i)}: got {got[i]}, expected {expected[i]}" for i in bad[:limit]]
        raise AssertionError(f"{len(bad)} mismatches:\n  " + "\n  ".join(lines))


def pack(layout, value) -> int:
    """A payload (dict or list, per the Amaranth data layout) as the integer on the Verilog port."""
    return layout.const(value).as_value().value


def signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value
