"""A memory in banks, each bank's read word registered before the addressed bank is selected.

An ECP5 DP16KD's read data leaves the block 5.8 ns after the clock when its output register is unused (nextpnr's
timing model, LFE5U-85F speed grade 6), 1.0 ns when it is used. A memory deeper than one block RAM is several, and
yosys puts the LUT select among their data right behind them: most of a 10 ns cycle is gone before that select
starts. Here every bank is one column of block RAMs (2**bank_bits words), read at the issue stage s: its word is
registered at s + 2 with nothing between the RAM and that register, and the addressed bank's word is selected and
registered at s + 3. Word w of the memory is word w % 2**bank_bits of bank w >> bank_bits (`cell`, `segments` for
testbenches).

Two builds of the same banks. The default is Amaranth memories and a fabric register at s + 2 (what the simulators
run). `primitive=True` (synthesis, `python -m rtl synth --engine`) instantiates the DP16KDs themselves, 1024 x 18
each, with the s + 2 register inside the block (REGMODE_B OUTREG): yosys's ECP5 memory mapping never enables that
register, and the read that left the block 5.8 ns after the clock leaves it 1.0 ns after. Both have the same
latency and the same reset (the s + 2 word is 0 after reset); `tests/rtl/test_rtl_banked.py` runs the primitive
build against a pin-level model of the DP16KD modes it sets.

A read in the cycle that writes the same word returns undefined data in both builds (a DP16KD's ports collide;
the Amaranth memories carry yosys's no_rw_check): no user reads a word in the cycle it is written (the scan reads
a word again SCAN_RECURRENCE_LATENCY cycles after its read, one after its write; the conv unit forwards a row's
window still being written, that cycle included).
"""

from __future__ import annotations

from amaranth.hdl import Array, ClockSignal, Instance, Module, ResetSignal, Signal, unsigned
from amaranth.lib.memory import Memory

from rtl.pipeline import Pipeline
from rtl.table_unit import NO_RW_CHECK

READ_STAGES = 3  # issue to the selected, registered word
COLUMN = (10, 18)  # a primitive bank's block RAMs: 1024 words of 18 bits each (DP16KD DATA_WIDTH 18)


def bank_bits_for(width: int) -> int:
    """Address bits of the deepest bank one column of DP16KDs holds at `width` bits a word: 1024 x 18 for words
    wider than 9 bits (a 512 x 36 column holds as much and needs a bank select input more), 2048 x 9 below."""
    return 10 if width > 9 else 11


def dp16kd_column(waddr, wdata, wen, raddr, rdata) -> Instance:
    """One DP16KD, 1024 x 18 (COLUMN): port A writes `wdata` at `waddr` where `wen` (both byte enables set), port
    B reads `raddr` into its output register (REGMODE_B OUTREG, reset synchronously to 0): `rdata` two clocks after
    its address. In x18 mode a port's address is AD[13:4]; ADA[1:0] are the write's byte enables."""
    abits, dbits = COLUMN
    pins = {"i_CLKA": ClockSignal(), "i_CEA": 1, "i_OCEA": 1, "i_WEA": wen, "i_RSTA": 0,
            "i_CLKB": ClockSignal(), "i_CEB": 1, "i_OCEB": 1, "i_WEB": 0, "i_RSTB": ResetSignal()}
    for port in "AB":
        pins |= {f"i_CS{port}{i}": 0 for i in range(3)}
    pins |= {"i_ADA0": 1, "i_ADA1": 1, "i_ADA2": 0, "i_ADA3": 0} | {f"i_ADB{i}": 0 for i in range(4)}
    pins |= {f"i_ADA{4 + i}": waddr[i] for i in range(abits)} | {f"i_ADB{4 + i}": raddr[i] for i in range(abits)}
    pins |= {f"i_DIA{i}": wdata[i] for i in range(dbits)} | {f"i_DIB{i}": 0 for i in range(dbits)}
    pins |= {f"o_DOB{i}": rdata[i] for i in range(dbits)}
    return Instance("DP16KD", p_DATA_WIDTH_A=dbits, p_DATA_WIDTH_B=dbits, p_REGMODE_A="NOREG",
                    p_REGMODE_B="OUTREG", p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000",
                    p_CSDECODE_B="0b000", p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="DISABLED", **pins)


class BankedMemory:
    """`depth` words of `width` bits in banks of 2**bank_bits words, one read and one write port; `build` adds the
    banks as submodules `{name}0`, `{name}1`, ... (Verilog memories of those names; with `primitive`, DP16KD
    instances `{name}{bank}_{column}`)."""

    def __init__(self, *, width: int, depth: int, bank_bits: int, name: str, primitive: bool = False):
        if width < 1 or depth < 1 or bank_bits < 1:
            raise ValueError(f"banked memory {name}: width {width}, depth {depth}, bank_bits {bank_bits} must be >= 1")
        if primitive and bank_bits > COLUMN[0]:
            raise ValueError(f"banked memory {name}: a DP16KD bank holds at most {1 << COLUMN[0]} words "
                             f"(bank_bits {bank_bits})")
        self.width, self.depth, self.bank_bits, self.name = width, depth, bank_bits, name
        self.primitive = primitive
        size = 1 << bank_bits
        self.banks = [] if primitive else [Memory(shape=unsigned(width), depth=min(size, depth - lo), init=[],
                                                  attrs=NO_RW_CHECK) for lo in range(0, depth, size)]

    def cell(self, word: int):
        """The memory cell holding word `word`, for a simulation to read."""
        if self.primitive:
            raise ValueError(f"banked memory {self.name}: DP16KD primitives have no cells to simulate")
        return self.banks[word >> self.bank_bits].data[word & ((1 << self.bank_bits) - 1)]

    def segments(self, words: range) -> list[tuple[int, range]]:
        """`words` as (bank, words of that bank), in word order."""
        bb = self.bank_bits
        return [(b, range(max(words.start - (b << bb), 0), min(words.stop - (b << bb), 1 << bb)))
                for b in range(words.start >> bb, ((words.stop - 1) >> bb) + 1)]

    def build(self, m: Module) -> None:
        bb, n = self.bank_bits, -(-self.depth >> self.bank_bits)
        abits = COLUMN[0] if self.primitive else bb  # (a primitive bank's address: 10 bits, zero above bank_bits)
        self._raddr, self._waddr = Signal(abits, name=f"{self.name}_ra"), Signal(abits, name=f"{self.name}_wa")
        self._wdata = Signal(self.width, name=f"{self.name}_wd")
        self._wen = [Signal(name=f"{self.name}{b}_we") for b in range(n)]
        self._rdata = [Signal(self.width, name=f"{self.name}{b}_rd") for b in range(n)]
        if self.primitive:
            dbits = COLUMN[1]
            cols = -(-self.width // dbits)
            wdata = Signal(cols * dbits)
            m.d.comb += wdata.eq(self._wdata)
            for b in range(n):
                rdata = Signal(cols * dbits, name=f"{self.name}{b}_do")
                m.d.comb += self._rdata[b].eq(rdata)
                for c in range(cols):
                    m.submodules[f"{self.name}{b}_{c}"] = dp16kd_column(
                        self._waddr, wdata[c * dbits:(c + 1) * dbits], self._wen[b], self._raddr,
                        rdata[c * dbits:(c + 1) * dbits])
            return
        for b, bank in enumerate(self.banks):
            m.submodules[f"{self.name}{b}"] = bank
            r, w = bank.read_port(), bank.write_port()
            m.d.comb += [r.addr.eq(self._raddr), self._rdata[b].eq(r.data),
                         w.addr.eq(self._waddr), w.data.eq(self._wdata), w.en.eq(self._wen[b])]

    def read(self, p: Pipeline, addr, stage: int, name: str):
        """The word at `addr` (a signal `p` places at `stage`, the read's issue), registered at stage + READ_STAGES."""
        bb = self.bank_bits
        p.m.d.comb += self._raddr.eq(addr[:bb])
        if self.primitive:  # the DP16KDs' output registers are the stage + 2 registers
            words = [p.put(d, stage + 2) for d in self._rdata]
        else:
            words = [p.reg(d, stage + 2, f"{name}_bank{b}") for b, d in enumerate(self._rdata)]
        selected = Array(words)[p.at(addr, stage + 2)[bb:]] if len(words) > 1 else words[0]
        return p.reg(selected, stage + READ_STAGES, name, unsigned(self.width))

    def write(self, m: Module, addr, data, en) -> None:
        """Write `data` at `addr` where `en` (combinational: the write lands at the next clock edge)."""
        bb = self.bank_bits
        m.d.comb += [self._waddr.eq(addr[:bb]), self._wdata.eq(data)]
        m.d.comb += [we.eq(en & (addr[bb:] == b)) for b, we in enumerate(self._wen)]
