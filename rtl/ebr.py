"""A memory read in two registered steps (address to word in two clocks), as Amaranth memories or as ECP5 DP16KDs.

An ECP5 DP16KD's read data leaves the block 5.8 ns after the clock when its output register is unused (nextpnr's
timing model, LFE5U-85F), 1.0 ns when it is used. Every block RAM of the engine whose read word is registered
once more before any logic (the reader's buffers into `q`, rtl.banked's banks) is built here, so that for
synthesis that register is the block's own. Two builds of one behaviour:
- default (what the simulators run): an Amaranth memory with yosys's no_rw_check, its read port and a fabric
  register, both enabled by `en`;
- `primitive=True` (`python -m rtl synth --engine`): DP16KD instances, 1024 x 18 each (2048 x 9 for a memory
  deeper than 1024 words: COLUMNS), port A writing,
  port B reading with CEB = OCEB = `en` and its output register in use (REGMODE_B OUTREG, reset synchronously to 0
  like the fabric register). yosys's ECP5 memory mapping never enables that register. A memory deeper than one
  block (2048 words) keeps the default build.
A read in the cycle that writes the same word is undefined in both builds (a DP16KD's ports collide); no user of
this module reads a word in the cycle it is written (each says why). tests/rtl/test_rtl_ebr.py runs the primitive
build against a pin-level model of the DP16KD modes it sets.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import ClockSignal, Const, Instance, Module, ResetSignal, Signal, unsigned
from amaranth.lib.memory import Memory

# attrs of a memory no port reads in the cycle another port writes the same address with the data then used: the
# units' constants (written by cfg beats only between vectors) and the engine's buffers. yosys then maps the block
# RAM without emulating read-before-write (an address comparator, and a mux behind the RAM's 5.6 ns clock-to-out).
NO_RW_CHECK = {"no_rw_check": 1}

COLUMN = (10, 18)  # a primitive's block RAMs: 1024 words of 18 bits each (DP16KD DATA_WIDTH 18)
COLUMNS = (COLUMN, (11, 9))  # ... or 2048 words of 9 bits (DATA_WIDTH 9), for deeper memories


def column_for(depth: int) -> tuple[int, int] | None:
    """(address bits, data bits) of the shallowest DP16KD mode holding `depth` words, None beyond 2048."""
    return next((c for c in COLUMNS if depth <= 1 << c[0]), None)


def init_params(words) -> dict:
    """The INITVAL_00..3F parameters of a 1024 x 18 DP16KD holding `words` (18 bits each): word w at bit 20 * (w % 16)
    of INITVAL_{w // 16} (how yosys's ECP5 memory mapping lays them out); all-zero ones left out."""
    out = {}
    for k in range(0, len(words), 16):
        v = sum(int(w) << (20 * i) for i, w in enumerate(words[k:k + 16]))
        if v:
            out[f"p_INITVAL_{k // 16:02X}"] = Const(v, 320)
    return out


def dp16kd(a: tuple, b: tuple, init=(), column=COLUMN) -> Instance:
    """One DP16KD, 1024 x 18 (COLUMN) or 2048 x 9. Each port is ("write", addr, data, en): `data` written at `addr` where
    `en` (both byte enables set); or ("read", addr, data, en): the word at `addr` latched where `en` and taken by
    the port's output register where `en` too (REGMODE OUTREG, reset synchronously to 0), `data` two enabled clocks
    after its address. A port's address is AD[13:4] in x18 mode, AD[13:3] in x9; in x18 a writing port's AD[1:0]
    are its byte enables. `init` (x18 only): the words the array starts with."""
    abits, dbits = column
    low = 14 - abits  # the address's lowest pin
    pins, params = {}, {}
    for port, (kind, addr, data, en) in zip("AB", (a, b), strict=True):
        write = kind == "write"
        pins |= {f"i_CLK{port}": ClockSignal(), f"i_CE{port}": 1 if write else en, f"i_OCE{port}": 1 if write else en,
                 f"i_WE{port}": en if write else 0, f"i_RST{port}": 0 if write else ResetSignal()}
        pins |= {f"i_CS{port}{i}": 0 for i in range(3)}
        pins |= {f"i_AD{port}{i}": int(write and i < 2 and dbits == 18) for i in range(low)}
        pins |= {f"i_AD{port}{low + i}": addr[i] for i in range(abits)}
        pins |= {f"i_DI{port}{i}": data[i] if write and i < dbits else 0 for i in range(18)}
        pins |= {} if write else {f"o_DO{port}{i}": data[i] for i in range(dbits)}
        params |= {f"p_REGMODE_{port}": "NOREG" if write else "OUTREG", f"p_WRITEMODE_{port}": "NORMAL",
                   f"p_DATA_WIDTH_{port}": dbits, f"p_CSDECODE_{port}": "0b000"}
    assert not init or column == COLUMN
    return Instance("DP16KD", p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_GSR="DISABLED", **params,
                    **init_params(init), **pins)


class RegisteredMemory:
    """`depth` words of `width` bits, one write port (per `granularity` bits when given) and one read port whose
    word is registered: `build` adds it to a module as submodule `name` (default build: a Verilog memory of that
    name; primitive: DP16KD instances `{name}_{granule}_{column}`), then `read` and `write` drive it."""

    def __init__(self, *, width: int, depth: int, name: str, primitive: bool = False, granularity: int | None = None):
        g = granularity or width
        if width < 1 or depth < 1 or width % g:
            raise ValueError(f"memory {name}: width {width}, depth {depth} >= 1, granularity {g} dividing the width")
        self.width, self.depth, self.name, self.granularity = width, depth, name, g
        self.column = column_for(depth)
        self.primitive = primitive and self.column is not None
        self.memory = None if self.primitive else Memory(shape=unsigned(width), depth=depth, init=[],
                                                         attrs=NO_RW_CHECK)

    def build(self, m: Module) -> None:
        abits = self.column[0] if self.primitive else max((self.depth - 1).bit_length(), 1)
        self.raddr, self.waddr = Signal(abits, name=f"{self.name}_ra"), Signal(abits, name=f"{self.name}_wa")
        self.ren, self.wdata = Signal(name=f"{self.name}_re"), Signal(self.width, name=f"{self.name}_wd")
        self.wen = Signal(self.width // self.granularity, name=f"{self.name}_we")
        self.q = Signal(self.width, name=f"{self.name}_q")
        # the write signals as an Amaranth write port names them, for code that drives one or the other
        self.w = SimpleNamespace(addr=self.waddr, data=self.wdata, en=self.wen)
        if not self.primitive:
            m.submodules[self.name] = self.memory
            r = self.memory.read_port()
            w = self.memory.write_port(granularity=self.granularity if self.granularity < self.width else None)
            m.d.comb += [r.addr.eq(self.raddr), r.en.eq(self.ren),
                         w.addr.eq(self.waddr), w.data.eq(self.wdata), w.en.eq(self.wen)]
            with m.If(self.ren):
                m.d.sync += self.q.eq(r.data)
            return
        g, dbits = self.granularity, self.column[1]
        cols = -(-g // dbits)
        for j in range(self.width // g):
            wdata, rdata = Signal(cols * dbits), Signal(cols * dbits, name=f"{self.name}_{j}_do")
            m.d.comb += [wdata.eq(self.wdata[j * g:(j + 1) * g]), self.q[j * g:(j + 1) * g].eq(rdata)]
            for c in range(cols):
                m.submodules[f"{self.name}_{j}_{c}"] = dp16kd(
                    ("write", self.waddr, wdata[c * dbits:(c + 1) * dbits], self.wen[j]),
                    ("read", self.raddr, rdata[c * dbits:(c + 1) * dbits], self.ren), column=self.column)

    def read(self, m: Module, addr, en=1) -> Signal:
        """The word at `addr` two clocks later (`q`), both steps taken where `en` and held otherwise (set `addr`
        and `en` together, combinationally)."""
        m.d.comb += [self.raddr.eq(addr), self.ren.eq(en)]
        return self.q

    def write(self, m: Module, addr, data, en) -> None:
        """Write `data` at `addr` where `en` (one bit, or one per granule): the write lands at the next clock."""
        m.d.comb += [self.waddr.eq(addr), self.wdata.eq(data), self.wen.eq(en)]

    def cell(self, word: int):
        """The memory cell holding word `word`, for a simulation to read."""
        if self.memory is None:
            raise ValueError(f"memory {self.name}: DP16KD primitives have no cells to simulate")
        return self.memory.data[word]


class RegisteredRom:
    """`init` (words of `width` <= 18 bits, at most 1024) read through `ports` (1 or 2) ports, each word registered
    as in RegisteredMemory: `build`, then `read(m, port, addr, en)`; primitive: one DP16KD `{name}` whose ports
    both read, else a Verilog memory `{name}`."""

    def __init__(self, *, width: int, init, name: str, ports: int = 2, primitive: bool = False):
        if not 1 <= width <= COLUMN[1] or not 1 <= len(init) <= 1 << COLUMN[0] or ports not in (1, 2):
            raise ValueError(f"rom {name}: width {width} in [1, 18], 1 to 1024 words ({len(init)}), 1 or 2 ports")
        self.width, self.init, self.name, self.ports, self.primitive = width, list(init), name, ports, primitive

    def build(self, m: Module) -> None:
        abits = COLUMN[0] if self.primitive else max((len(self.init) - 1).bit_length(), 1)
        self.raddr = [Signal(abits, name=f"{self.name}_ra{i}") for i in range(self.ports)]
        self.ren = [Signal(name=f"{self.name}_re{i}") for i in range(self.ports)]
        self.q = [Signal(self.width, name=f"{self.name}_q{i}") for i in range(self.ports)]
        if self.primitive:
            data = [Signal(COLUMN[1], name=f"{self.name}_do{i}") for i in range(2)]
            ports = [("read", self.raddr[i], data[i], self.ren[i]) if i < self.ports else
                     ("write", Const(0, COLUMN[0]), Const(0, COLUMN[1]), 0) for i in range(2)]
            m.submodules[self.name] = dp16kd(*ports, init=self.init)
            m.d.comb += [q.eq(d) for q, d in zip(self.q, data, strict=False)]
            return
        m.submodules[self.name] = mem = Memory(shape=unsigned(self.width), depth=len(self.init), init=self.init,
                                               attrs={"ram_style": "block"})
        for a, en, q in zip(self.raddr, self.ren, self.q, strict=True):
            r = mem.read_port()
            m.d.comb += [r.addr.eq(a), r.en.eq(en)]
            with m.If(en):
                m.d.sync += q.eq(r.data)

    def read(self, m: Module, port: int, addr, en=1) -> Signal:
        """The word at `addr` two clocks later through port `port`, both steps where `en`, held otherwise."""
        m.d.comb += [self.raddr[port].eq(addr), self.ren[port].eq(en)]
        return self.q[port]
