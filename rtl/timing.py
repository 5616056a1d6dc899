"""A pre-route timing estimate of a yosys `synth_ecp5 -noflatten` netlist, in seconds instead of nextpnr's 20-60 min.

nextpnr places and routes the engine in 20 to 60 minutes a seed on a 2-core machine; a timing change is ranked
first here, on the netlist yosys writes (`python -m rtl synth --engine` caches it under rtl/build/synth/). The
estimate places nothing: it sees logic depth and fan-out, not the long hops between units that dominate routed
paths (reports/rtl/synth.md), so it ranks candidates and counts endpoints; Fmax comes from nextpnr only.

Delay model (ns; the ECP5's cells as yosys maps them): a flip-flop's clock-to-out 0.5, a DP16KD block RAM's 4.0
(1.0 from a port whose output register is in use, REGMODE OUTREG),
a MULT18X18D's 4.5 through it, or, with its output register in use (REG_OUTPUT_CLK, rtl.dsp), 0.74
out of that register and 3.5 into it (the multiply counted as its setup, as nextpnr's model does), or 1.0 from input
registers only; a LUT4 0.45; a PFUMX or L6MUX21 (a slice's wide
multiplexers) 0.25; a CCU2C carry cell 0.5 into its carry-out or sum, 0.06 along the chain and 0.3 from the
chain into a sum; a net 0.4 + 0.3 log2(fan-out + 1), but 0.05 from a LUT into its slice's wide multiplexer and
0 along a carry chain; setup 0.1. An endpoint is any input of a flip-flop, block RAM, DSP or other cell that is
not combinational (clock pins aside), its setup 0.1 (a DSP's inputs into its output register: 3.5).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

CLK_TO_OUT = {"TRELLIS_FF": 0.5, "DP16KD": 4.0, "MULT18X18D": 1.0, "ALU54B": 1.0}
DSP_OUT_REG = (0.74, 3.5)  # a MULT18X18D with its output register: clock-to-out, and setup through the multiply
COMBINATIONAL = ("LUT4", "PFUMX", "L6MUX21", "CCU2C")
CLOCKS = ("CLK", "CLKA", "CLKB", "WCK")
SETUP = 0.1


@dataclass
class Cell:
    name: str  # hierarchical, dot-separated
    type: str
    params: dict
    conns: dict  # port -> [net id or constant string]
    dirs: dict  # port -> "input" / "output"


def flatten(netlist: dict, top: str | None = None) -> list[Cell]:
    """Every library cell of the netlist's top module, submodules inlined (their nets renamed apart)."""
    mods = netlist["modules"]
    lib = {n for n, m in mods.items() if m.get("attributes", {}).get("blackbox") or not m.get("cells")}
    if top is None:
        tops = [n for n, m in mods.items() if int(str(m.get("attributes", {}).get("top", "0")), 2)]
        if len(tops) != 1:
            raise ValueError(f"netlist: {len(tops)} top modules; name one")
        top = tops[0]
    if top not in mods:
        raise ValueError(f"netlist: no module {top!r}")
    cells: list[Cell] = []
    used = [b for m in mods.values() for c in m.get("cells", {}).values() for bits in c["connections"].values()
            for b in bits] + [b for m in mods.values() for pd in m.get("ports", {}).values() for b in pd["bits"]]
    fresh = [max((b for b in used if isinstance(b, int)), default=0)]  # new net ids start above every one in use

    def walk(mname: str, prefix: str, bitmap: dict) -> None:
        def net(b):
            if isinstance(b, str):
                return b  # a constant "0" / "1" / "x"
            if b not in bitmap:
                fresh[0] += 1
                bitmap[b] = fresh[0]
            return bitmap[b]

        for cname, c in mods[mname]["cells"].items():
            conns = {p: [net(b) for b in bits] for p, bits in c["connections"].items()}
            if c["type"] in mods and c["type"] not in lib:
                inner = {}
                for p, pd in mods[c["type"]]["ports"].items():
                    for i, b in enumerate(pd["bits"]):
                        if p in conns and i < len(conns[p]):
                            inner[b] = conns[p][i]
                walk(c["type"], f"{prefix}{cname}.", inner)
            else:
                cells.append(Cell(prefix + cname, c["type"], c.get("parameters", {}), conns,
                                  c.get("port_directions", {})))

    walk(top, "", {b: b for pd in mods[top]["ports"].values() for b in pd["bits"] if isinstance(b, int)})
    return cells


def _dsp_registered(cell: Cell, kind: str = "REG_") -> bool:
    """Whether the DSP has registers of `kind` (REG_INPUT, REG_OUTPUT; any by default) in use."""
    return any(k.startswith(kind) and k.endswith("_CLK") and str(v).strip() not in ("NONE", "")
               for k, v in cell.params.items())


def _launches(cell: Cell) -> bool:
    """Its outputs start paths at its clock-to-out (a flip-flop, block RAM or registered DSP)."""
    return cell.type in CLK_TO_OUT and (cell.type != "MULT18X18D" or _dsp_registered(cell))


def _clk_to_out(cell: Cell, pin: str) -> float:
    """A launching cell's clock-to-out at output `pin` (a DP16KD's DOA/DOB: its port's output register or not)."""
    if cell.type == "DP16KD" and cell.params.get(f"REGMODE_{pin[2]}", "NOREG").strip() == "OUTREG":
        return 1.0
    if cell.type == "MULT18X18D" and _dsp_registered(cell, "REG_OUTPUT"):
        return DSP_OUT_REG[0]
    return CLK_TO_OUT[cell.type]


def _arcs(cell: Cell, pin: str) -> list[tuple[str, float]]:
    """(output pin prefix, delay) from an input pin through a combinational cell."""
    t = cell.type
    if t == "LUT4":
        return [("Z", 0.45)]
    if t in ("PFUMX", "L6MUX21"):
        return [("Z", 0.25)]
    if t == "CCU2C":
        if pin == "CIN":
            return [("S", 0.3), ("COUT", 0.06)]
        return [("S" + pin[-1], 0.5), ("S1", 0.55), ("COUT", 0.5)]
    if t == "TRELLIS_DPR16X4" and pin.startswith("RAD"):
        return [("DO", 0.9)]
    if t == "MULT18X18D" and not _dsp_registered(cell):
        return [("P", 4.5)]
    return []


def estimate(cells: list[Cell]) -> list[tuple[float, str, list[str]]]:
    """(arrival ns including setup, endpoint 'cell.pin', path of 'cell:type@ns') for every endpoint, worst first."""
    driver, loads = {}, defaultdict(list)
    for i, c in enumerate(cells):
        for p, bits in c.conns.items():
            for b in bits:
                if isinstance(b, str):
                    continue
                if c.dirs.get(p) == "output":
                    driver[b] = (i, p)
                else:
                    loads[b].append((i, p))

    def net_delay(b) -> float:
        ls = loads[b]
        if len(ls) == 1:
            c, p = cells[ls[0][0]], ls[0][1]
            if (c.type == "PFUMX" and p in ("ALUT", "BLUT")) or (c.type == "L6MUX21" and p in ("D0", "D1")):
                return 0.05
        return 0.4 + 0.3 * math.log2(len(ls) + 1)

    arrival: dict = {}  # net -> (ns, (cell, pin, previous net))

    def at(b):  # arrival of net b, depth first without recursion (a combinational loop's nets count from 0)
        stack, visiting = [b], set()
        while stack:
            n = stack[-1]
            if n in arrival:
                stack.pop()
                continue
            if n not in driver:
                arrival[n] = (0.0, None)
                stack.pop()
                continue
            i, p = driver[n]
            c = cells[i]
            arcs = [] if _launches(c) else [  # (source net, delay) into this output
                (src, d) for pin, bits in c.conns.items() if c.dirs.get(pin) != "output"
                for out, d in _arcs(c, pin) if p.startswith(out) for src in bits if not isinstance(src, str)]
            pending = [src for src, _ in arcs if src not in arrival and src not in visiting]
            if pending and n not in visiting:
                visiting.add(n)
                stack.extend(pending)
                continue
            best = (_clk_to_out(c, p), None) if _launches(c) else (0.0, None)
            for src, d in arcs:
                t = arrival.get(src, (0.0, None))[0] + d
                if t > best[0]:
                    best = (t, src)
            hop = 0.0 if p == "COUT" else net_delay(n)
            arrival[n] = (best[0] + hop, (i, p, best[1]))
            stack.pop()
        return arrival[b]

    def path(b) -> list[str]:
        steps = []
        while b is not None and arrival.get(b) and arrival[b][1] is not None:
            i, _p, prev = arrival[b][1]
            steps.append(f"{cells[i].name}:{cells[i].type}@{arrival[b][0]:.2f}")
            b = prev
        return steps[::-1]

    ends = []
    for c in cells:
        if c.type in COMBINATIONAL or (c.type == "MULT18X18D" and not _launches(c)):
            continue
        for pin, bits in c.conns.items():
            if c.dirs.get(pin) != "input" or pin in CLOCKS or (c.type == "TRELLIS_DPR16X4" and pin.startswith("RAD")):
                continue
            for b in bits:
                if not isinstance(b, str):
                    setup = DSP_OUT_REG[1] if c.type == "MULT18X18D" and _dsp_registered(c, "REG_OUTPUT") else SETUP
                    ends.append((at(b)[0] + setup, f"{c.name}.{pin}", b))
    ends.sort(key=lambda e: -e[0])
    return [(t, name, path(b)) for t, name, b in ends]


def group(endpoint: str) -> str:
    """A register's name without its bit index and yosys's suffixes: one row per register in a report."""
    return re.sub(r"_TRELLIS_FF_Q(_\d+)?\.\w+$|\.\w+$", "", endpoint)


def report(ends, top: int = 25, over: tuple[float, ...] = (10.0, 9.0, 8.0)) -> str:
    """Endpoint counts over each bound, then the worst `top` registers with their paths."""
    lines = [f"{len(ends)} endpoints; " + "; ".join(f"over {b:g} ns: {sum(t > b for t, _, _ in ends)}"
                                                     for b in over)]
    seen = set()
    for t, name, steps in ends:
        g = group(name)
        if g in seen:
            continue
        seen.add(g)
        lines.append(f"{t:6.2f} ns  {name}")
        lines += [f"          {s}" for s in steps]
        if len(seen) >= top:
            break
    return "\n".join(lines)
