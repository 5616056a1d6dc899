"""python -m gpu.check --out DIR: the GPU executor against qsim's NumPy reference, bit for bit.

1. A whole model (mamba-tiny when shipped, else a synthetic one of its shape), calibrated here:
   prefill of 512 tokens, then 64 decode steps; every traced integer tensor, the logits, the
   states and the saturation counts equal FixedExecutor(qm, "numpy") element by element.
2. Every golden set under golden/sets (scan and Hadamard kinds) through the kernels.
Writes DIR/check.json (per-tensor results) and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from qsim.fixed.executor import FixedExecutor, Trace

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "sets"
SYNTHETIC_SHAPE = dict(d_model=256, n_layer=2, vocab_size=256)  # mamba-tiny's width, fewer layers


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    """Element-by-element verdict of one tensor."""
    ref, got = np.asarray(ref, np.int64), np.asarray(got, np.int64)
    if ref.shape != got.shape:
        return {"equal": False, "shape": list(ref.shape), "got_shape": list(got.shape)}
    bad = np.argwhere(ref != got)
    out = {"equal": not len(bad), "shape": list(ref.shape), "mismatches": len(bad)}
    if len(bad):
        i = tuple(int(v) for v in bad[0])
        out.update(first=list(i), ref=int(ref[i]), got=int(got[i]), max_abs_diff=int(np.abs(ref - got).max()))
    return out


def compare_traces(ref: Trace, got: Trace) -> dict:
    """Per-tensor verdicts keyed 'layer/name', plus the saturation counts."""
    missing = {"equal": False, "missing": True}
    res = {f"{k[0]}/{k[1]}": compare(ref.get(*k), got.get(*k)) if k in got.tensors else missing
           for k in sorted(ref.tensors)}
    for k in sorted(set(got.tensors) - set(ref.tensors)):
        res[f"{k[0]}/{k[1]}"] = {"equal": False, "unexpected": True}
    res["saturation"] = {"equal": dict(ref.saturation) == dict(got.saturation), "ref": dict(ref.saturation),
                         "got": dict(got.saturation)}
    return res


def _all_equal(d) -> bool:
    if isinstance(d, dict):
        return d.get("equal", True) and all(_all_equal(v) for v in d.values() if isinstance(v, (dict, list)))
    return all(_all_equal(v) for v in d) if isinstance(d, list) else True


def compare_model(qm, tokens: np.ndarray, steps: int, gpu_ex) -> dict:
    """Prefill of tokens[:-steps], then `steps` decode steps, reference against gpu_ex."""
    ref = FixedExecutor(qm, "numpy")
    head, tail = tokens[: len(tokens) - steps], tokens[len(tokens) - steps:]
    t0 = time.perf_counter()
    tr_ref, tr_gpu = Trace(), Trace()
    l_ref, s_ref = ref.prefill(head, trace=tr_ref)
    t_ref = time.perf_counter() - t0
    l_gpu, s_gpu = gpu_ex.prefill(head, trace=tr_gpu)
    out = {"prefill_tokens": len(head), "decode_steps": steps, "reference_prefill_s": round(t_ref, 2),
           "prefill": {"logits": compare(l_ref, l_gpu), "tensors": compare_traces(tr_ref, tr_gpu),
                       "state": _states(s_ref, s_gpu.to_numpy())}}
    step_res: dict = {}
    for j, tok in enumerate(tail):
        tr_ref, tr_gpu = Trace(), Trace()
        l_ref, s_ref = ref.step(int(tok), s_ref, tr_ref)
        l_gpu, s_gpu = gpu_ex.step(int(tok), s_gpu, tr_gpu)
        res = {"logits": compare(l_ref, l_gpu), **compare_traces(tr_ref, tr_gpu),
               "state": _states(s_ref, s_gpu.to_numpy())}
        for name, v in res.items():  # keep the first failing step of each tensor, else the last verdict
            if name not in step_res or (step_res[name].get("equal", True) and not _all_equal(v)):
                step_res[name] = dict(v, step=j)
    out["steps"] = step_res
    out["passed"] = _all_equal(out["prefill"]) and _all_equal(step_res)
    return out


def _states(ref, got) -> dict:
    return {f"{kind}/{i}": compare(a, b) for kind in ("conv", "h")
            for i, (a, b) in enumerate(zip(getattr(ref, kind), getattr(got, kind)))}


# ------------------------------------------------------------------ golden sets
def load_set(folder: Path) -> tuple[dict, dict]:
    """(manifest, arrays) of a golden set, checking each file's sha256 when the manifest has one."""
    manifest = json.loads((folder / "manifest.json").read_text())
    arrays = {}
    for f, info in manifest.get("files", {}).items():
        data = (folder / f).read_bytes()
        if "sha256" in info and hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise ValueError(f"{folder.name}/{f}: sha256 differs from the manifest")
        arrays[Path(f).stem] = np.load(folder / f, allow_pickle=False)
    return manifest, arrays


def golden_scan(man: dict, a: dict, device) -> dict:
    """The prefill scan kernel over each sequence of the set (h = 0 where start); per token when the
    set stores every state."""
    import torch

    from gpu import ops

    c = man["constants"]
    p = ops.ScanParams.of({**{k: a[k] for k in ("a_q", "Dq", "m_y", "s_y", "exp_tab")}, **c}, device)
    dev = lambda x, dt: ops.to_device(x, dt, device)  # noqa: E731
    xs, B, C, z = (dev(a[k], np.int8) for k in ("xs", "B", "C", "z"))
    dt, silu_z = dev(a["dt"], np.int16), dev(a["silu_z"], np.int16)
    T, di, N = xs.shape[0], xs.shape[1], B.shape[1]
    cnt = torch.zeros(2, dtype=torch.int64, device=device)
    start = np.asarray(a["start"]).astype(bool)
    start[0] = True
    per_token = "h" in a
    bounds = list(range(T + 1)) if per_token else [*np.flatnonzero(start), T]
    ys, hs, h = [], [], None
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        if start[t0]:
            h = torch.zeros((di, N), dtype=torch.int32, device=device)
        ys.append(ops.scan(xs[t0:t1], dt[t0:t1], B[t0:t1], C[t0:t1], z[t0:t1], silu_z, h, p, cnt[0], cnt[1]).cpu())
        hs.append(h.cpu().numpy().copy())
    y = torch.cat(ys).numpy()
    res = {"y": compare(a["y"], y), "h_final": compare(a["h_final"], hs[-1])}
    if per_token:
        res["h"] = compare(a["h"], np.stack(hs))
    sat = man.get("saturations", {})
    got = {"state": int(cnt[0]), "output": int(cnt[1])}
    res["saturation"] = {"equal": all(got[k] == v for k, v in sat.items()), "ref": sat, "got": got}
    return res


def golden_hadamard(man: dict, a: dict, device) -> dict:
    """The Hadamard kernel with the prefill plan (whole power-of-two stage) and with small segments
    (the two-stage path of the decode kernels)."""
    import torch

    from gpu import ops
    from gpu.layout import hadamard_plan

    y = ops.to_device(a["y"], np.int16, device)
    m, s = man["constants"]["m"], man["constants"]["s"]
    res = {}
    for p1_max in (y.shape[1], 16):
        plan = hadamard_plan(y.shape[1], p1_max)
        cnt = torch.zeros(1, dtype=torch.int64, device=device)
        y_had, yo = ops.hadamard_rq(y, plan, ops.to_device(plan.O, np.int8, device), m, s, cnt[0])
        sat = man.get("saturations", {}).get("output")
        res[f"p1={plan.p1}"] = {
            "y_had": compare(a["y_had"], y_had.cpu().numpy()), "yo": compare(a["yo"], yo.cpu().numpy()),
            "saturation": {"equal": sat is None or sat == int(cnt[0]), "ref": sat, "got": int(cnt[0])}}
    return res


def check_golden(root: Path, device) -> dict:
    if not root.is_dir():
        return {"skipped": f"{root} does not exist"}
    out = {}
    for folder in sorted(p for p in root.iterdir() if (p / "manifest.json").is_file()):
        try:
            man, arrays = load_set(folder)
            kind = man.get("kind")
            fn = {"scan": golden_scan, "hadamard": golden_hadamard}.get(kind)
            out[folder.name] = {"kind": kind, **fn(man, arrays, device)} if fn else \
                {"kind": kind, "skipped": "no kernel of this kind (tables are data the kernels read)"}
        except (KeyError, ValueError, OSError) as exc:  # a set of another layout: report, don't stop
            out[folder.name] = {"equal": False, "error": f"{type(exc).__name__}: {exc}"}
    return out


# ------------------------------------------------------------------ whole model
def model_and_tokens(name: str):
    from qsim import tokenizer, weights
    from qsim.config import MambaConfig
    from qsim.text import read_text

    if (weights.SHIPPED_MODELS / name).is_dir():
        lm = weights.resolve(name, require_weights=True)
    else:
        cfg = MambaConfig(**SYNTHETIC_SHAPE)
        lm = weights.LoadedModel(f"synthetic-{name}-shape", cfg, weights.synthetic_weights(cfg), "synthetic",
                                 "seeded synthetic weights", f"synthetic:{weights.SYNTHETIC_SEED}", None)
    calib_text, _ = read_text("shakespeare/calib.txt")
    eval_text, _ = read_text("shakespeare/valid.txt")
    tok = tokenizer.for_model(lm.folder, lm.config.vocab_size)
    return lm, tok.encode(calib_text), tok.encode(eval_text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu.check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="mamba-tiny")
    ap.add_argument("--bits", default="w8a8,w4a8")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--steps", type=int, default=64)
    a = ap.parse_args(argv)

    import torch

    from calib.calibrate import CalibSettings, calibrate
    from gpu.executor import CudaExecutor
    from qsim.bits import preset

    a.out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": [], "golden": {}}

    def save():
        report["passed"] = all(r.get("passed") for r in report["runs"]) and _all_equal(report["golden"])
        (a.out / "check.json").write_text(json.dumps(report, indent=1) + "\n")

    lm, calib_ids, eval_ids = model_and_tokens(a.model)
    report["model"] = {"name": lm.name, "source": lm.source, "config": lm.config.to_dict()}
    ids = eval_ids[1000: 1000 + a.tokens + a.steps]
    for bits in a.bits.split(","):
        t0 = time.perf_counter()
        qm = calibrate(lm, preset(bits), CalibSettings(samples=4, seq_len=256), calib_ids, "shakespeare/calib.txt")
        t1 = time.perf_counter()
        run = {"bits": bits, "calibration_s": round(t1 - t0, 1), **compare_model(qm, ids, a.steps, CudaExecutor(qm))}
        run["seconds"] = round(time.perf_counter() - t1, 1)
        report["runs"].append(run)
        print(f"check {lm.name} {bits}: {'bit-exact' if run['passed'] else 'DIFFERS'} "
              f"({run['prefill_tokens']} prefill + {run['decode_steps']} steps, {run['seconds']} s)", flush=True)
        save()
    report["golden"] = check_golden(GOLDEN, torch.device("cuda"))
    save()
    for name, res in report["golden"].items():
        print(f"golden {name}: {'equal' if _all_equal(res) else 'DIFFERS'}"
              f"{' (' + res['skipped'] + ')' if 'skipped' in res else ''}", flush=True)
    print(f"check: {'PASSED' if report['passed'] else 'FAILED'} -> {a.out / 'check.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
