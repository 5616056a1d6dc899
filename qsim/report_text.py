"""Human-readable tables for `qsim run`."""

from __future__ import annotations

SYNTHETIC_BANNER = (
    "!! SYNTHETIC WEIGHTS: no checkpoint could be loaded (offline?). Seeded random weights of the exact\n"
    "!! architecture were used; perplexity, agreement and KL below are NOT meaningful."
)


def _fmt(v, nd=3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1e6 else f"{v:.3e}"
    return str(v)


def run_table(r: dict) -> str:
    lines = []
    banner = r["weights"] == "synthetic"
    if banner:
        lines += [SYNTHETIC_BANNER, ""]
    lines.append(f"model {r['model']}  weights {r['weights']} ({r['weights_source']}: {r['weights_location']})")
    lines.append(f"bits {r['bits']}  spec {r['spec_version']}  tokenizer {r['tokenizer']}  "
                 f"tokens evaluated {r['eval']['tokens_evaluated']} ({r['eval']['sequences']} x {r['eval']['seq_len']})")
    if r["artifact"]:
        lines.append(f"artifact {r['artifact']} ({'cached' if r['artifact_cached'] else 'calibrated now'})")
    mark = " (not meaningful)" if banner else ""
    lines.append("")
    lines.append(f"{'numerics':<9} {'ppl':>10} {'nats/tok':>9} {'top1 vs float':>14} {'KL vs float':>12} {'tok/s':>9}")
    for k, ppl in r["perplexity"].items():
        ag = r["agreement_vs_float"].get(k, {})
        lines.append(f"{k:<9} {_fmt(ppl):>10} {_fmt(r['nats_per_token'][k]):>9} {_fmt(ag.get('top1')):>14} "
                     f"{_fmt(ag.get('mean_kl'), 4):>12} {_fmt(r['tokens_per_s'].get(k), 1):>9}")
    if r["fixed_unavailable"]:
        lines.append(f"fixed     n/a: {r['fixed_unavailable']}")
    lines.append(f"accuracy figures{mark}")
    if r["sqnr_db"]:
        lines.append("")
        lines.append("SQNR vs float, dB per layer (in_proj out / scan out / out_proj in)")
        names = list(r["sqnr_db"])
        lines.append("layer " + "  ".join(f"{n:>26}" for n in names))
        n_layer = len(next(iter(r["sqnr_db"].values()))["in_proj"])
        for i in range(n_layer):
            cells = []
            for n in names:
                s = r["sqnr_db"][n]
                cells.append(f"{s['in_proj'][i]:>8.2f} {s['scan'][i]:>8.2f} {s['out_proj_in'][i]:>8.2f}")
            lines.append(f"{i:>5} " + "  ".join(f"{c:>26}" for c in cells))
    sat = {k: v for k, v in r["saturation"]["fixed"].items()}
    if sat:
        lines.append("")
        lines.append("fixed saturation counts: " + ", ".join(f"{k} {v}" for k, v in sat.items()))
    if r["saturation"]["quamba"]:
        lines.append("quamba clamp counts: " + ", ".join(f"{k} {v}" for k, v in r["saturation"]["quamba"].items()))
    lines.append(f"wall time {r['wall_time_s']:.1f} s")
    if banner:
        lines += ["", SYNTHETIC_BANNER]
    return "\n".join(lines)
