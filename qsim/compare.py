"""`qsim compare`: quantization recipes side by side, on accuracy and on hardware cost.

Each (bits, recipe, alpha) is one `qsim run` on the same model, calibration
text and evaluation windows (its artifact cached like run's, so a second
compare only evaluates), plus the cost model's decode step on a target preset
with the recipe's run-time features (online Hadamard, per-channel scan output
multipliers). The alpha sweep applies to recipes that clip the SSM input.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from qsim import spec
from qsim.errors import QsimError
from qsim.run import SQNR_TENSORS, RunOptions, run

DEFAULT_METHODS = ("rtn", "smoothquant", "quarot", "quamba", "mambaquant")


@dataclass
class CompareOptions:
    run: RunOptions = field(default_factory=RunOptions)  # model, evaluation and base calibration settings
    bits: tuple[str, ...] = ("w8a8",)
    methods: tuple[str, ...] = DEFAULT_METHODS
    alphas: tuple[float, ...] | None = None  # None: each recipe's own alpha (the base settings')
    target: str = "asic-28nm"
    prompt_len: int = 1024


def parse_alphas(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        alphas = tuple(float(a) for a in text.split(","))
    except ValueError:
        raise QsimError(f"--alphas {text}: not a comma-separated list of numbers") from None
    for a in alphas:
        if not 0.0 < a <= 1.0:
            raise QsimError(f"--alphas {text}: {a} is outside (0, 1]")
    return alphas


def check(opts: CompareOptions) -> None:
    """Fail before any work on a method, alpha or target that cannot run."""
    from calib.recipes import get
    from qsim.bits import preset
    from qsim.hw.target import load_target

    if not opts.methods:
        raise QsimError("--methods: empty list")
    for m in opts.methods:
        get(m)
    for b in opts.bits:
        if preset(b).weight_bits == 16:
            raise QsimError(f"--bits {b}: nothing to quantize; compare needs a quantized preset")
    if opts.alphas is not None and not any(get(m).percentile for m in opts.methods):
        raise QsimError("--alphas: none of the methods clips the SSM input by a percentile (quamba, quamba-rot do)")
    load_target(opts.target)


def hardware_cost(model: str, bits: str, features: dict, target: str, prompt_len: int) -> dict:
    """Decode energy and cycles per token from the cost model, with the recipe's run-time work."""
    from qsim.bits import preset
    from qsim.hw.cost import estimate
    from qsim.hw.shapes import model_shape
    from qsim.hw.target import load_target

    est = estimate(model_shape(model), preset(bits), load_target(target), prompt_len, **features)
    return {"target": target, "decode_nj_per_token": est.decode.j_per_token * 1e9,
            "decode_cycles_per_token": est.decode.cycles, "prefill_cycles": est.prefill.cycles}


def _worst(sqnr: dict | None, numerics: str) -> dict | None:
    if not sqnr or numerics not in sqnr:
        return None
    return {t: min(sqnr[numerics][t]) for t in SQNR_TENSORS}


def summarize(r: dict, method: str, alpha: float | None, cost: dict) -> dict:
    """One row of the comparison from one run report."""
    ag = r["agreement_vs_float"]
    return {
        "method": method, "alpha": alpha, "bits": r["bits"],
        "perplexity": r["perplexity"],
        "top1": {k: v["top1"] for k, v in ag.items()},
        "mean_kl": {k: v["mean_kl"] for k, v in ag.items()},
        "worst_sqnr_db": {k: _worst(r["sqnr_db"], k) for k in ("quamba", "fixed")},
        "saturations": {k: sum(v.values()) for k, v in r["saturation"].items()},
        "fixed_unavailable": r["fixed_unavailable"],
        "datapath_features": r["datapath_features"],
        "recipe": r["recipe"],
        "artifact": r["artifact"], "artifact_cached": r["artifact_cached"],
        "hardware": cost,
    }


def pareto(rows: list[dict]) -> list[int]:
    """Indices of the rows no other row beats on both KL (fixed, else quamba) and decode energy."""
    pts = [(accuracy_loss(r), r["hardware"]["decode_nj_per_token"]) for r in rows]
    return [i for i, (a, e) in enumerate(pts)
            if not any((a2 <= a and e2 <= e) and (a2 < a or e2 < e) for a2, e2 in pts)]


def accuracy_loss(row: dict) -> float:
    """The KL against float of the integer datapath, or of `quamba` where fixed does not apply."""
    kl = row["mean_kl"]
    return kl.get("fixed", kl["quamba"])


def compare(opts: CompareOptions) -> dict:
    from calib.recipes import get

    check(opts)
    rows, reports = [], []
    for bits in opts.bits:
        for m in opts.methods:
            recipe = get(m)
            alphas = opts.alphas if (opts.alphas and recipe.percentile) else (None,)
            for a in alphas:
                calib = replace(opts.run.calib, method=m, alpha=opts.run.calib.alpha if a is None else a)
                r = run(replace(opts.run, bits=bits, calib=calib))
                cost = hardware_cost(opts.run.model, bits, r["datapath_features"], opts.target, opts.prompt_len)
                rows.append(summarize(r, m, r["calibration"]["alpha"] if recipe.percentile else None, cost))
                reports.append(r)
    first = reports[0]
    front = set(pareto(rows))
    for i, row in enumerate(rows):
        row["pareto"] = i in front
    return {
        "qsim_spec_version": spec.SPEC_VERSION,
        "model": first["model"], "weights": first["weights"], "accuracy_meaningful": first["accuracy_meaningful"],
        "eval": first["eval"], "calibration_text": opts.run.calib.text,
        "calibration": {"samples": opts.run.calib.samples, "seq_len": opts.run.calib.seq_len,
                        "smooth_alpha": opts.run.calib.smooth_alpha, "state_bits": opts.run.calib.state_bits},
        "target": opts.target, "rows": rows,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }


def _f(v, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def table(c: dict) -> str:
    """The comparison as text: one line per (bits, recipe, alpha)."""
    head = (f"{'bits':<5} {'method':<11} {'alpha':>7} {'ppl float':>9} {'quamba':>7} {'fixed':>7} "
            f"{'top1 q':>6} {'top1 f':>6} {'KL quamba':>9} {'KL fixed':>9} {'worst SQNR fixed dB':>20} "
            f"{'sat q':>5} {'sat f':>5} {'nJ/tok':>8} {'cyc/tok':>9}")
    lines = [(f"model {c['model']} ({c['weights']} weights)  eval {c['eval']['tokens_evaluated']} tokens of "
             f"{c['eval']['text']}  calibration {c['calibration_text']}  target {c['target']}  spec "
             f"{c['qsim_spec_version']}"), "", head]
    for r in c["rows"]:
        p, t1, kl, hw = r["perplexity"], r["top1"], r["mean_kl"], r["hardware"]
        w = r["worst_sqnr_db"]["fixed"]
        sq = "/".join(_f(w[t], ".1f") for t in SQNR_TENSORS) if w else "n/a"
        alpha = _f(r["alpha"], "g") if r["alpha"] is not None else "-"
        lines.append(
            f"{r['bits']:<5} {r['method']:<11} {alpha:>7} {_f(p['float'], '.4f'):>9} {_f(p['quamba'], '.4f'):>7} "
            f"{_f(p.get('fixed'), '.4f'):>7} {_f(t1.get('quamba'), '.3f'):>6} {_f(t1.get('fixed'), '.3f'):>6} "
            f"{_f(kl.get('quamba'), '.5f'):>9} {_f(kl.get('fixed'), '.5f'):>9} {sq:>20} "
            f"{r['saturations'].get('quamba', 0):>5} {r['saturations'].get('fixed', 0):>5} "
            f"{hw['decode_nj_per_token']:>8.1f} {hw['decode_cycles_per_token']:>9}" + ("  *" if r["pareto"] else ""))
        if r["fixed_unavailable"]:
            lines.append(f"      fixed n/a: {r['fixed_unavailable']}")
    lines += ["", ("worst SQNR: lowest layer of in_proj out / scan out / out_proj in; sat: clamps (quamba) and "
              "saturations (fixed) over the evaluation; nJ/tok and cyc/tok: one decode step in the cost model "
              "with the recipe's run-time work; * on the Pareto front of KL (fixed) against decode energy")]
    if not c["accuracy_meaningful"]:
        lines.append("!! SYNTHETIC WEIGHTS: accuracy figures are not meaningful")
    return "\n".join(lines)
