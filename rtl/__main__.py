"""`python -m rtl build|synth|timing|image`: Verilog of a unit for a configuration (its constants load at run time),
ECP5 synthesis figures, a pre-route timing estimate of the engine's netlist, or the decode engine's memory image of
an artifact (rtl/IMAGE.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rtl")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write a unit's Verilog under rtl/build/")
    b.add_argument("--unit", choices=("scan", "hadamard"), required=True)
    b.add_argument("--lanes", type=int, default=8)
    b.add_argument("--set", help="golden set whose dimensions to build for (default: layer 0 of the model); "
                   "ignored where the dimensions are given")
    b.add_argument("--channels", type=int, help="scan: only the first CHANNELS channels of the layer")
    b.add_argument("--d-inner", type=int, help="scan: d_inner (with --d-state, --state-bits)")
    b.add_argument("--d-state", type=int, help="scan: d_state")
    b.add_argument("--state-bits", type=int, help="scan: state width W")
    b.add_argument("--n", type=int, help="Hadamard: vector length")
    b.add_argument("--out", type=Path, help="folder (default rtl/build/<unit>_<configuration>_l<lanes>)")
    s = sub.add_parser("synth", help="yosys + nextpnr-ecp5 on each unit; figures to reports/rtl/")
    s.add_argument("--freq", type=float, default=150.0, help="nextpnr target clock in MHz")
    s.add_argument("--lanes", type=int, help="build every unit with this many lanes instead")
    s.add_argument("--seeds", type=int, default=3, help="place-and-route seeds 1..SEEDS; Fmax is the lowest")
    s.add_argument("--engine", action="store_true", help="the whole decode engine (mamba-tiny's configuration: "
                   "bus 16, scan and Hadamard 4 lanes) instead of the units; unit rows of the report are kept")
    s.add_argument("--artifact", type=Path, help="--engine: artifact whose image header configures the engine")
    s.add_argument("--jobs", type=int, default=2, help="--engine: seeds placed and routed side by side")
    t = sub.add_parser("timing", help="pre-route timing estimate of the engine's yosys netlist (rtl/timing.py)")
    t.add_argument("--netlist", type=Path, help="a `synth_ecp5 -noflatten` JSON netlist (default: the engine's, "
                   "which `python -m rtl synth --engine` writes under rtl/build/synth/)")
    t.add_argument("--top", type=int, default=25, help="registers to list, worst first")
    im = sub.add_parser("image", help="an artifact's decode-engine memory image (rtl/IMAGE.md) and its layout")
    im.add_argument("--artifact", type=Path, required=True, help="quantized Mamba-1 artifact folder")
    im.add_argument("--out", type=Path, help="image file (default rtl/build/image/<artifact>_bus<N>.bin); "
                    "the layout goes to OUT.json")
    im.add_argument("--bus-bytes", type=int, default=8, help="alignment of every field: 1, 2, 4, ..., 64")
    a = ap.parse_args(argv)
    if a.cmd == "image":
        from qsim.errors import QsimError
        from rtl.image import write_image

        try:
            out, meta = write_image(a.artifact, a.out, a.bus_bytes)
        except QsimError as exc:
            print(f"rtl image: {exc}", file=sys.stderr)
            return 2
        print(f"{out}\n{meta['bytes']} bytes, sha256 {meta['sha256']}")
        return 0
    if a.cmd == "timing":
        return _timing(a.netlist, a.top)
    if a.cmd == "build":
        from rtl.build import (
            BUILD,
            build_unit,
            make_unit,
            properties,
            tag,
            write_verilog,
        )

        dims = {"d_inner": a.d_inner, "d_state": a.d_state, "state_bits": a.state_bits} if a.unit == "scan" \
            else {"n": a.n}
        try:
            if all(v is not None for v in dims.values()):
                comp = build_unit(a.unit, a.lanes, **dims)
            elif any(v is not None for v in dims.values()):
                raise ValueError(f"give all of {', '.join('--' + k.replace('_', '-') for k in dims)} or none")
            else:
                comp, _, _ = make_unit(a.unit, a.lanes, a.set, a.channels)
        except (ValueError, FileNotFoundError) as exc:
            print(f"rtl build: {exc}", file=sys.stderr)
            return 2
        top = tag(comp)
        path = write_verilog(comp, a.out or BUILD / top, top)
        print(f"{path}\n{json.dumps(properties(comp))}")
        return 0
    from rtl import synth

    if a.seeds < 1:
        print(f"rtl synth: --seeds {a.seeds}: need at least one seed", file=sys.stderr)
        return 2
    if a.engine:
        return synth.main_engine(a.freq, tuple(range(1, a.seeds + 1)), a.jobs, a.artifact or synth.ENGINE_ARTIFACT)
    units = [(u, a.lanes or n, s) for u, n, s in synth.DEFAULT_UNITS]
    return synth.main(units, a.freq, tuple(range(1, a.seeds + 1)))


def _timing(path: Path | None, top: int) -> int:
    from rtl import timing

    if path is None:
        from rtl.build import BUILD
        from rtl.synth import engine_tag, make_engine

        tag = engine_tag(make_engine())
        path = BUILD / "synth" / tag / f"{tag}.json"
    if not path.is_file():
        print(f"rtl timing: {path}: no such netlist (`python -m rtl synth --engine` writes the engine's in its "
              "yosys step)", file=sys.stderr)
        return 2
    try:
        cells = timing.flatten(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        print(f"rtl timing: {path}: not a yosys JSON netlist ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    print(f"{path}\n{timing.report(timing.estimate(cells), top)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
