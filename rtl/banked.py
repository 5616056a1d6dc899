"""A memory in banks, each bank's read word registered before the addressed bank is selected.

A memory deeper than one block RAM is several, and yosys puts the LUT select among their data right behind them;
an ECP5 DP16KD's read data leaves the block 5.8 ns after the clock (its output register unused), so most of a
10 ns cycle is gone before that select starts. Here every bank is one column of block RAMs (2**bank_bits words),
an rtl.ebr.RegisteredMemory read at the issue stage s: its word is registered at s + 2 with nothing between the
RAM and that register (for synthesis, `primitive=True`, the DP16KD's own output register: 1.0 ns), and the
addressed bank's word is selected and registered at s + 3. Word w of the memory is word w % 2**bank_bits of bank
w >> bank_bits (`cell`, `segments` for testbenches).

A read in the cycle that writes the same word is undefined (rtl.ebr); no user reads one: the scan reads a word
again SCAN_RECURRENCE_LATENCY cycles after its read, one after its write; the conv unit forwards a row's window
still being written, that cycle included.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, unsigned

from rtl.ebr import RegisteredMemory
from rtl.pipeline import Pipeline

READ_STAGES = 3  # issue to the selected, registered word


def bank_bits_for(width: int) -> int:
    """Address bits of the deepest bank one column of DP16KDs holds at `width` bits a word: 1024 x 18 for words
    wider than 9 bits (a 512 x 36 column holds as much and needs a bank select input more), 2048 x 9 below."""
    return 10 if width > 9 else 11


class BankedMemory:
    """`depth` words of `width` bits in banks of 2**bank_bits words, one read and one write port; `build` adds the
    banks as submodules `{name}0`, `{name}1`, ... (rtl.ebr memories of those names)."""

    def __init__(self, *, width: int, depth: int, bank_bits: int, name: str, primitive: bool = False):
        if width < 1 or depth < 1 or bank_bits < 1:
            raise ValueError(f"banked memory {name}: width {width}, depth {depth}, bank_bits {bank_bits} must be >= 1")
        self.width, self.depth, self.bank_bits, self.name = width, depth, bank_bits, name
        size = 1 << bank_bits
        self.banks = [RegisteredMemory(width=width, depth=min(size, depth - lo), name=f"{name}{b}",
                                       primitive=primitive) for b, lo in enumerate(range(0, depth, size))]

    def cell(self, word: int):
        """The memory cell holding word `word`, for a simulation to read."""
        return self.banks[word >> self.bank_bits].cell(word & ((1 << self.bank_bits) - 1))

    def segments(self, words: range) -> list[tuple[int, range]]:
        """`words` as (bank, words of that bank), in word order."""
        bb = self.bank_bits
        return [(b, range(max(words.start - (b << bb), 0), min(words.stop - (b << bb), 1 << bb)))
                for b in range(words.start >> bb, ((words.stop - 1) >> bb) + 1)]

    def build(self, m: Module) -> None:
        for bank in self.banks:
            bank.build(m)

    def read(self, p: Pipeline, addr, stage: int, name: str):
        """The word at `addr` (a signal `p` places at `stage`, the read's issue), registered at stage + READ_STAGES."""
        bb = self.bank_bits
        words = [p.put(bank.read(p.m, addr[:bb]), stage + 2) for bank in self.banks]
        selected = Array(words)[p.at(addr, stage + 2)[bb:]] if len(words) > 1 else words[0]
        return p.reg(selected, stage + READ_STAGES, name, unsigned(self.width))

    def write(self, m: Module, addr, data, en) -> None:
        """Write `data` at `addr` where `en` (combinational: the write lands at the next clock edge)."""
        bb = self.bank_bits
        for b, bank in enumerate(self.banks):
            bank.write(m, addr[:bb], data, en & (addr[bb:] == b))
