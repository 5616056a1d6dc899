"""`python -m qsim`: run, compare, sweep, calibrate, bench, stats, golden, estimate, report.

Every failure caused by input becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qsim.errors import QsimError

DEFAULT_MODEL = "mamba-tiny"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other bad input
        raise QsimError(f"{self.prog}: {message}")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="registered name (mamba-tiny, mamba-130m ... mamba-2.8b, mamba2-tiny, mamba2-130m ... mamba2-2.7b) "
                        "or a checkpoint folder (transformers format, or mamba_ssm format for Mamba-2)")
    p.add_argument("--require-weights", action="store_true", help="fail instead of using synthetic weights")


def _calib_args(p: argparse.ArgumentParser, one_method: bool = True) -> None:
    from qsim.calib_settings import CalibSettings

    d = CalibSettings()
    p.add_argument("--bits", default="w8a8",
                   help="fp16, w8a8, w4a8 or w4a16" + ("" if one_method else " (or a comma-separated list)"))
    p.add_argument("--calib-samples", type=int, default=d.samples)
    p.add_argument("--calib-len", type=int, default=d.seq_len)
    p.add_argument("--calib-text", default=d.text, help="shipped split or a UTF-8 text file")
    p.add_argument("--alpha", type=float, default=d.alpha, help="percentile of |x| for the SSM input scale")
    p.add_argument("--no-percentile", action="store_true", help="absmax instead of the percentile observer")
    p.add_argument("--no-hadamard", action="store_true", help="no rotation before out_proj")
    p.add_argument("--state-bits", type=int, default=d.state_bits, help="fixed-point SSM state width")
    p.add_argument("--no-gptq", action="store_true", help="int4 weights by round-to-nearest instead of GPTQ")
    p.add_argument("--no-group-heads", action="store_true",
                   help="Mamba-2: no head/channel reorder, one x scale per tensor (Quamba1-style; quamba2 ablation)")
    if one_method:
        p.add_argument("--method", default=d.method,
                       help="quantization recipe: " + ", ".join(_recipe_names()) + f" (default {d.method})")
    p.add_argument("--smooth-alpha", type=float, default=d.smooth_alpha,
                   help="migration strength of smoothquant and mambaquant (default %(default)s)")


def _recipe_names() -> list[str]:
    from calib.recipes import registry

    return list(registry())


def _calib_options(a):
    from qsim.calib_settings import CalibSettings

    d = CalibSettings()
    return CalibSettings(samples=a.calib_samples, seq_len=a.calib_len, percentile=not a.no_percentile,
                         alpha=a.alpha, hadamard=not a.no_hadamard, state_bits=a.state_bits,
                         gptq=not a.no_gptq, group_heads=not a.no_group_heads, text=a.calib_text, method=getattr(a, "method", d.method),
                         smooth_alpha=a.smooth_alpha)


def _run_options(a):
    from qsim.run import RunOptions

    return RunOptions(model=a.model, bits=a.bits, seq_len=a.seq_len, eval_seqs=a.eval_seqs,
                      eval_text=a.eval_text, executor=a.executor, require_weights=a.require_weights,
                      artifact=getattr(a, "artifact", None), cache=not a.no_cache, calib=_calib_options(a))


def cmd_run(a) -> int:
    from qsim.fileio import write_json_atomic
    from qsim.report_text import run_table
    from qsim.run import run

    if a.ray:
        from qsim.distributed import run_on_ray

        report = run_on_ray(_run_options(a), a.ray)
    else:
        report = run(_run_options(a))
    report["command"] = "python -m qsim " + " ".join(a.argv)
    print(run_table(report))
    if a.json:
        write_json_atomic(Path(a.json), report)
    return 0


def cmd_compare(a) -> int:
    from qsim.compare import CompareOptions, compare, parse_alphas, table
    from qsim.fileio import write_json_atomic

    opts = CompareOptions(run=_run_options(a), bits=tuple(a.bits.split(",")),
                          methods=tuple(m for m in a.methods.split(",") if m), alphas=parse_alphas(a.alphas),
                          target=a.target, prompt_len=a.prompt_len)
    result = compare(opts)
    result["command"] = "python -m qsim " + " ".join(a.argv)
    print(table(result))
    if a.json:
        write_json_atomic(Path(a.json), result)
    if a.plot:
        from qsim.compare_plot import plot

        plot(result, Path(a.plot))
    return 0


def cmd_sweep(a) -> int:
    from qsim.sweep import sweep

    s = sweep(Path(a.grid), Path(a.out) if a.out else None, a.ray)
    print((Path(s["out"]) / "summary.md").read_text())
    print(f"{len(s['lines'])} points ({s['computed']} computed now) in {s['out']}: results.jsonl, summary.md, pareto.png")
    return 0


def cmd_calibrate(a) -> int:
    from qsim import memory
    from qsim.bits import preset
    from qsim.run import build_artifact
    from qsim.weights import resolve

    bits = preset(a.bits)
    if bits.weight_bits == 16:
        raise QsimError("--bits fp16: nothing to quantize, no artifact is written")
    lm = resolve(a.model, a.require_weights)
    calib = _calib_options(a)
    memory.check(memory.estimate(lm.config, bits, calib), f"calibrate {lm.name} {bits.name}")
    build_artifact(lm, bits, calib, Path(a.out))
    print(f"wrote {a.out} ({lm.name}, {bits.name}, weights {lm.source})")
    return 0


def cmd_bench(a) -> int:
    from qsim.bench import bench

    bench(a.model, a.prefill, a.decode, a.require_weights, a.json)
    return 0


def cmd_stats(a) -> int:
    from qsim.stats import stats

    stats(a.model, a.require_weights, a.seq_len, a.eval_text, a.layer, a.json, a.plot)
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-seqs", type=int, default=4)
    p.add_argument("--eval-text", default="shakespeare/valid.txt")
    p.add_argument("--executor", default="numba", choices=["numba", "numpy", "cuda"],
                   help="what runs the fixed numerics: Numba, the NumPy reference, or the CUDA kernels")
    p.add_argument("--no-cache", action="store_true", help="recalibrate even when a cached artifact exists")


def _ray_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help=f"{what}: a local Ray on this machine's cores, or the cluster at ADDRESS "
                        "(HOST:PORT, ray://HOST:PORT, auto; needs the [scale] extra)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qsim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="float vs quamba vs fixed on one model")
    _model_args(r)
    _calib_args(r)
    _eval_args(r)
    r.add_argument("--artifact", help="use this quantized-model folder instead of calibrating")
    r.add_argument("--json", help="write the machine-readable report here")
    _ray_arg(r, "shard the evaluation windows over Ray workers")
    r.set_defaults(func=cmd_run)

    from qsim.compare import DEFAULT_METHODS

    k = sub.add_parser("compare", help="quantization recipes side by side: accuracy and hardware cost")
    _model_args(k)
    _calib_args(k, one_method=False)
    _eval_args(k)
    k.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated recipes (" + ", ".join(_recipe_names()) + ")")
    k.add_argument("--alphas", help="comma-separated SSM-input percentiles in (0, 1] for the clipping recipes")
    k.add_argument("--target", default="asic-28nm", help="cost-model preset or target .toml (default asic-28nm)")
    k.add_argument("--prompt-len", type=int, default=1024, help="prefill length for the cost model")
    k.add_argument("--json", help="write the comparison here")
    k.add_argument("--plot", help="PNG: KL against decode energy per token, Pareto front marked")
    k.set_defaults(func=cmd_compare)

    w = sub.add_parser("sweep", help="a grid of (model, bits, method, state_bits, alpha, target) points, resumable")
    w.add_argument("--grid", required=True, help="TOML grid file (format: qsim/sweep.py, README)")
    w.add_argument("--out", help="results folder (default reports/sweeps/GRID-FILE-NAME)")
    _ray_arg(w, "run each point as a Ray task")
    w.set_defaults(func=cmd_sweep)

    c = sub.add_parser("calibrate", help="write a quantized-model artifact")
    _model_args(c)
    _calib_args(c)
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_calibrate)

    b = sub.add_parser("bench", help="Numba fixed executor vs transformers' fp32 forward")
    _model_args(b)
    b.add_argument("--prefill", type=int, default=256)
    b.add_argument("--decode", type=int, default=64)
    b.add_argument("--json")
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("stats", help="activation statistics that matter for quantization")
    _model_args(s)
    s.add_argument("--seq-len", type=int, default=512)
    s.add_argument("--eval-text", default="shakespeare/valid.txt")
    s.add_argument("--layer", type=int, default=0, help="layer whose per-channel magnitudes are plotted")
    s.add_argument("--json")
    s.add_argument("--plot", help="PNG path for the per-channel plot")
    s.set_defaults(func=cmd_stats)

    sub.add_parser("golden", help="cut golden vectors (options: python -m qsim golden --help)")

    from qsim.hw.cli import add_parsers

    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        if argv[:1] == ["golden"]:  # its options belong to golden's own parser
            from golden.generate import main as golden_main

            return golden_main(argv[1:])
        args = build_parser().parse_args(argv)
        args.argv = argv
        return int(args.func(args) or 0)
    except QsimError as exc:
        print(f"qsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qsim: interrupted", file=sys.stderr)
        return 130
