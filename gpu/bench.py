"""python -m gpu.bench --out DIR: batch-1 latency on this GPU, W8A8 `fixed` against FP16.

For mamba-130m and mamba-2.8b shapes (synthetic weights; timing does not depend on their
values): TTFT (prompt of 1024 tokens) and TPOT (128 greedy tokens, each decode step one CUDA
graph replay), timed with CUDA events after warm-up, for
  fp16         our FP16 baseline (fused decode kernels, cuBLAS + our scan for the prompt)
  torch-graph  the plain PyTorch FP16 decode step in a CUDA graph (decode only)
  w8a8         the bit-exact `fixed` executor on a synthetic artifact (gpu.synth, no calibration)
  transformers MambaForCausalLM in fp16 as it runs here (its reference path without mamba-ssm;
               fewer tokens, named in the row, so it finishes in ~20 s)
Each row has the configuration's memory floor (bytes one decode step must read / the read
bandwidth measured in this run), TPOT / floor and peak GPU memory. Writes DIR/bench.json and
DIR/bench.md after every row, so a time-out still leaves what was measured.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from qsim.config import REGISTRY

# measured by the project team on 2026-11-26, one H100 80GB HBM3, random weights, batch 1
# (qsim/hw/SOURCES.md, "H100 plain PyTorch CUDA-graph decode step")
PLAIN_TORCH_GRAPH_MS = {"mamba-130m": 2.26, "mamba-2.8b": 7.94}
HF_TOKENS = {"mamba-130m": (1024, 16), "mamba-2.8b": (256, 8)}  # (prompt, generated) for transformers


def read_bandwidth(gib: int = 2, iters: int = 10) -> float:
    """Bytes/s of torch's sum over a `gib` GiB fp16 tensor (how the H100's 3.04 TB/s was measured)."""
    x = torch.ones(gib << 29, dtype=torch.float16, device="cuda")
    for _ in range(3):
        x.sum()
    return (gib << 30) / (_events(x.sum, iters) / 1e3)


def _events(fn, iters: int) -> float:
    """Mean ms per call of fn over iters calls, by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def ttft_ms(prefill, reps: int = 3) -> float:
    prefill()
    torch.cuda.synchronize()
    return float(np.median([_events(prefill, 1) for _ in range(reps)]))


def tpot_ms(graph: torch.cuda.CUDAGraph, tokens: int, warm: int = 8) -> float:
    for _ in range(warm):
        graph.replay()
    return _events(graph.replay, tokens)


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def bench_fp16(name, cfg, prompt, gen: int) -> list[dict]:
    from gpu.baseline_fp16 import Fp16Weights

    w = Fp16Weights.random(cfg, "cuda")
    rows = [_fp16_model(w, prompt, gen), _plain_torch_step(w, gen)]
    rows[1]["notes"] = f"the project measured {PLAIN_TORCH_GRAPH_MS.get(name)} ms on an H100 80GB HBM3, 2026-11-26"
    for r in rows:
        r["decode_bytes"] = w.nbytes()
    return rows


def _fp16_model(w, prompt, gen: int) -> dict:
    from gpu.baseline_fp16 import Fp16Model
    from gpu.runtime import greedy_graph

    _free()
    m = Fp16Model(w)
    row = {"config": "fp16", "ttft_ms": ttft_ms(lambda: m.prefill(prompt, m.new_state()))}
    st = m.new_state()
    m.prefill(prompt[:16], st)
    row["tpot_ms"] = tpot_ms(greedy_graph(m.decode, m.tok, st), gen)
    row["peak_gib"] = _peak_gib()
    return row


def _plain_torch_step(w, gen: int) -> dict:
    from gpu.baseline_fp16 import Fp16State, TorchStep
    from gpu.runtime import greedy_graph

    _free()
    ts = TorchStep(w)
    tpot = tpot_ms(greedy_graph(ts.decode, ts.tok, Fp16State(w.cfg, "cuda")), gen)
    return {"config": "torch-graph", "ttft_ms": None, "tpot_ms": tpot, "peak_gib": _peak_gib()}


def bench_w8a8(name, cfg, prompt, gen: int) -> list[dict]:
    from gpu.executor import CudaExecutor
    from gpu.synth import synthetic_artifact

    t0 = time.perf_counter()
    qm = synthetic_artifact(cfg, "w8a8")
    made = time.perf_counter() - t0
    _free()
    ex = CudaExecutor(qm)
    ids = prompt.cpu().numpy()
    row = {"config": "w8a8", "ttft_ms": ttft_ms(lambda: ex.prefill_device(ids, last_only=True))}
    st = ex.new_state()
    ex.prefill_device(ids[:16], st)
    row["tpot_ms"] = tpot_ms(ex.decode_graph(st), gen)
    sat = sum(ex.saturation().values())
    row.update(peak_gib=_peak_gib(), decode_bytes=ex.decode_bytes(),
               notes=f"synthetic artifact (gpu.synth) built in {made:.1f} s; {sat} saturations")
    return [row]


def bench_transformers(name, cfg, prompt, gen: int) -> list[dict]:
    import transformers
    from transformers import MambaConfig as HFConfig
    from transformers import MambaForCausalLM

    n_prompt, n_gen = HF_TOKENS.get(name, (64, 4))
    hc = HFConfig(**{k: v for k, v in cfg.to_hf().items() if k != "architectures"})
    with torch.device("cuda"):
        model = MambaForCausalLM(hc)
    model = model.half().eval()
    _free()
    ids = prompt[:n_prompt][None]
    short = prompt[:8][None]

    def gen_(k):
        return model.generate(short, max_new_tokens=k, min_new_tokens=k, do_sample=False)

    with torch.no_grad():
        gen_(2)
        ttft = ttft_ms(lambda: model(ids, use_cache=False), reps=1)
        t1 = _events(lambda: gen_(1), 1)
        tn = _events(lambda: gen_(1 + n_gen), 1)
    fused = all(importlib.util.find_spec(m) for m in ("mamba_ssm", "causal_conv1d"))
    path = "mamba-ssm fused kernels" if fused else "reference path (mamba-ssm / causal-conv1d absent)"
    return [{"config": "transformers", "ttft_ms": ttft, "tpot_ms": (tn - t1) / n_gen, "peak_gib": _peak_gib(),
             "decode_bytes": sum(p.numel() * p.element_size() for p in model.parameters())
             + cfg.n_layer * cfg.d_inner * (cfg.d_state * 2 + (cfg.d_conv - 1) * 2),
             "notes": f"transformers {transformers.__version__}, {path}; TTFT over {n_prompt} tokens, "
                      f"TPOT over {n_gen} generate() tokens"}]


def _try(fn):
    """A version string that may not be available here: None instead of an error."""
    try:
        return fn()
    except Exception:
        return None


def environment() -> dict:
    import cupy
    from cupy_backends.cuda.libs import nvrtc

    def smi():
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()

    def hf():
        import transformers
        return transformers.__version__

    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
                "cupy": cupy.__version__, "nvrtc": _try(lambda: ".".join(map(str, nvrtc.getVersion()))),
                "numpy": np.__version__, "transformers": _try(hf)}
    return {"device": torch.cuda.get_device_name(0), "driver": _try(smi),
            "cuda_driver_api": _try(cupy.cuda.runtime.driverGetVersion),
            "sms": torch.cuda.get_device_properties(0).multi_processor_count, "versions": versions}


def finish_row(r: dict, model: str, bandwidth_GBps: float) -> dict:
    """The row with its model and, where it has both, its memory floor and TPOT / floor."""
    r["model"] = model
    if r.get("decode_bytes") and r.get("tpot_ms"):
        r["floor_ms"] = r["decode_bytes"] / (bandwidth_GBps * 1e9) * 1e3
        r["tpot_over_floor"] = r["tpot_ms"] / r["floor_ms"]
    return r


def evaluate(rows: list[dict]) -> dict:
    """The issue's targets on mamba-2.8b."""
    big = {r["config"]: r for r in rows if r["model"] == "mamba-2.8b" and r.get("tpot_ms")}
    fp, tg, q, hf = (big.get(c) for c in ("fp16", "torch-graph", "w8a8", "transformers"))
    out = {}
    if fp and tg:
        out["fp16_beats_torch_graph"] = fp["tpot_ms"] < tg["tpot_ms"]
    if fp:
        out["fp16_within_2x_floor"] = fp["tpot_over_floor"] <= 2
    if fp and q:
        out["w8a8_speedup_vs_fp16"] = round(fp["tpot_ms"] / q["tpot_ms"], 3)
        out["w8a8_at_least_1.5x"] = out["w8a8_speedup_vs_fp16"] >= 1.5
    if q:
        out["w8a8_within_2x_floor"] = q["tpot_over_floor"] <= 2
    if hf and q and fp:
        out["transformers_tpot_over_w8a8"] = round(hf["tpot_ms"] / q["tpot_ms"], 1)
    return out


def markdown(report: dict) -> str:
    lines = [f"GPU latency at batch 1 on {report['device']} (driver {report['driver']}), read bandwidth "
             f"{report['read_bandwidth_GBps']:.0f} GB/s (torch sum over 2 GiB fp16), {report['date']}.", "",
             "| model | configuration | TTFT ms (1024) | TPOT ms | floor ms | TPOT/floor | peak GiB | notes |",
             "|---|---|---|---|---|---|---|---|"]
    f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in report["results"]:
        lines.append(f"| {r['model']} | {r['config']} | {f(r.get('ttft_ms'))} | {f(r.get('tpot_ms'), 3)} | "
                     f"{f(r.get('floor_ms'), 3)} | {f(r.get('tpot_over_floor'))} | {f(r.get('peak_gib'))} | "
                     f"{r.get('notes', r.get('error', ''))} |")
    if report.get("targets"):
        lines += ["", "Targets (mamba-2.8b): " + ", ".join(f"{k}: {v}" for k, v in report["targets"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="mamba-130m,mamba-2.8b")
    ap.add_argument("--configs", default="fp16,w8a8,transformers")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--gen", type=int, default=128)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    report = {**environment(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": {"prompt": a.prompt, "generated": a.gen, "batch": 1}, "results": []}
    report["read_bandwidth_GBps"] = read_bandwidth() / 1e9
    print(f"bench on {report['device']}: read bandwidth {report['read_bandwidth_GBps']:.0f} GB/s", flush=True)
    benches = {"fp16": bench_fp16, "w8a8": bench_w8a8, "transformers": bench_transformers}
    for name in a.models.split(","):
        cfg = REGISTRY[name].config
        prompt = torch.randint(0, cfg.vocab_size, (a.prompt,), generator=torch.Generator().manual_seed(0)).cuda()
        for conf in a.configs.split(","):
            t0 = time.perf_counter()
            try:
                rows = benches[conf](name, cfg, prompt, a.gen)
            except Exception as exc:  # one configuration failing must not lose the others
                rows = [{"config": conf, "error": f"{type(exc).__name__}: {exc}"[:500]}]
            for r in rows:
                report["results"].append(finish_row(r, name, report["read_bandwidth_GBps"]))
                what = r["error"] if "error" in r else (
                    f"TTFT {r['ttft_ms'] or 0:8.2f} ms  TPOT {r['tpot_ms']:.3f} ms  "
                    f"floor {r.get('floor_ms', 0):.3f} ms  peak {r.get('peak_gib')} GiB")
                print(f"  {name:11s} {r['config']:12s} {what}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            _free()
            report["targets"] = evaluate(report["results"])
            (a.out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
            (a.out / "bench.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
