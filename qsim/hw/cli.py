"""`qsim estimate` and `qsim report`: registered on the main parser by `add_parsers`.

Handlers return an exit status; a QsimError propagates to the main entry point,
which prints it as one line and exits 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qsim.bits import PRESETS, preset
from qsim.errors import QsimError
from qsim.fileio import write_json_atomic
from qsim.hw.measured import REPORTS

DEFAULT_PROMPT_LEN = 1024  # the prompt issue 5's GPU benchmark and Quamba's profiler use
REPORT_MODEL = "mamba-2.8b"


def estimate_command(args: argparse.Namespace) -> int:
    from qsim.hw.cost import estimate
    from qsim.hw.measured import with_synth_clock
    from qsim.hw.render import estimate_dict, estimate_text
    from qsim.hw.shapes import model_shape
    from qsim.hw.target import load_target

    if args.prompt_len < 1:
        raise QsimError(f"--prompt-len must be at least 1, got {args.prompt_len}")
    target = with_synth_clock(load_target(args.target), Path(args.reports))
    if args.engine_projection:
        return projection_command(args, target)
    if not args.model:
        raise QsimError("estimate: --model is required (unless --engine-projection)")
    est = estimate(model_shape(args.model), preset(args.bits), target, args.prompt_len,
                   online_hadamard=not args.no_online_hadamard, scan_out_per_channel=args.scan_out_per_channel)
    print(estimate_text(est))
    if args.json:
        write_json_atomic(Path(args.json), estimate_dict(est))
        print(f"wrote {args.json}")
    return 0


def projection_command(args: argparse.Namespace, target) -> int:
    """`estimate --engine-projection`: a w8a8 decode step of each model on the target's decode engine."""
    from qsim.hw.cost import PROJECTION_MODELS, engine_projection
    from qsim.hw.render import projection_text
    from qsim.hw.shapes import model_shape

    shapes = [model_shape(m) for m in ([args.model] if args.model else PROJECTION_MODELS)]
    print(projection_text(target, shapes, engine_projection(target, shapes)))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from qsim.hw.report import build, provenance

    defaults = {"model": REPORT_MODEL, "bits": "w8a8", "prompt_len": DEFAULT_PROMPT_LEN, "reports": str(REPORTS),
                "out": str(REPORTS / "hw")}
    made = provenance(["report"] + [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, v in defaults.items()
                                    if str(getattr(args, k)) != str(v)])
    for path in build(Path(args.reports), Path(args.out), args.model, args.bits, args.prompt_len, made):
        print(f"wrote {path}")
    return 0


def add_parsers(subparsers) -> None:
    from qsim.hw.shapes import model_names
    from qsim.hw.target import preset_names

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bits", default="w8a8", help=f"bits preset ({', '.join(PRESETS)}; default w8a8)")
    common.add_argument("--prompt-len", type=int, default=DEFAULT_PROMPT_LEN,
                        help=f"prefill length in tokens (default {DEFAULT_PROMPT_LEN})")
    common.add_argument("--reports", default=str(REPORTS),
                        help="folder of measurements: rtl/synth.json sets FPGA clocks (default reports)")

    p = subparsers.add_parser("estimate", parents=[common],
                              help="cycles, time and energy per operation on an accelerator target")
    p.add_argument("--model", help=f"{', '.join(model_names())}, or a folder with a Mamba config.json")
    p.add_argument("--target", default="asic-28nm",
                   help=f"preset ({', '.join(preset_names())}) or a target .toml file (default asic-28nm)")
    p.add_argument("--no-online-hadamard", action="store_true",
                   help="a recipe without the online Hadamard before out_proj (RTN, SmoothQuant)")
    p.add_argument("--scan-out-per-channel", action="store_true",
                   help="a recipe whose scan output multiplier is per channel (smoothing of out_proj's input)")
    p.add_argument("--json", metavar="PATH", help="also write the estimate as JSON")
    p.add_argument("--engine-projection", action="store_true",
                   help="w8a8 decode on the target's decode engine (e.g. --target ecp5-85f) for mamba-tiny, "
                        "mamba-130m and mamba-2.8b (or --model): cycles, tokens/s, J/token")
    p.set_defaults(func=estimate_command)

    r = subparsers.add_parser("report", parents=[common],
                              help="regenerate reports/hw: summary, breakdown, latency, Pareto and RTL plots")
    r.add_argument("--model", default=REPORT_MODEL, help=f"model of the per-operation breakdown (default {REPORT_MODEL})")
    r.add_argument("--out", default=str(REPORTS / "hw"), help="output folder (default reports/hw)")
    r.set_defaults(func=report_command)
