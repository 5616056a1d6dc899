"""`qsim run`: float, quamba and fixed numerics on one model, in one run, side by side."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from qsim import artifact, float_model2, hadamard, memory, metrics, quamba2, spec
from qsim.bits import BitsPreset, preset
from qsim.calib_settings import CalibSettings
from qsim.errors import QsimError
from qsim.progress import progress
from qsim.quamba import QuambaHook, dequant_weights, fp16_weights
from qsim.text import read_text
from qsim.tokenizer import for_model
from qsim.weights import LoadedModel, resolve

SQNR_TENSORS = ("in_proj", "scan", "out_proj_in")


@dataclass
class RunOptions:
    model: str = "mamba-tiny"
    bits: str = "w8a8"
    seq_len: int = 256
    eval_seqs: int = 4
    eval_text: str = "shakespeare/valid.txt"
    executor: str = "numba"  # numba, numpy (the reference) or cuda (gpu/, needs CuPy and a GPU)
    require_weights: bool = False
    artifact: str | None = None
    cache: bool = True
    calib: CalibSettings = field(default_factory=CalibSettings)


def cache_root() -> Path:
    return Path(os.environ.get("QSIM_CACHE", Path.home() / ".cache" / "qsim")) / "qmodels"


def artifact_key(lm: LoadedModel, bits: BitsPreset, calib: CalibSettings, calib_sha: str) -> str:
    from calib.calibrate import PROCEDURE

    blob = json.dumps({"model": lm.name, "weights": lm.sha256, "bits": bits.name, "calib": asdict(calib),
                       "calib_text": calib_sha, "spec": spec.SPEC_VERSION, "procedure": PROCEDURE}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def settings_for(lm: LoadedModel, bits: BitsPreset, calib: CalibSettings) -> CalibSettings:
    """The calibration settings for this model and preset, after its recipe has set its features.

    On a Mamba-2 model, `quamba` (the default) means its authors' recipe for Mamba-2, `quamba2`;
    the head/channel reorder applies to 8-bit activations only (w4a16 keeps x in float16)."""
    from calib.recipes import effective

    if lm.config.family == "mamba2":
        calib = replace(calib, method="quamba2" if calib.method == "quamba" else calib.method,
                        group_heads=calib.group_heads and bits.act_bits == 8)
    return effective(calib)


def build_artifact(lm: LoadedModel, bits: BitsPreset, calib: CalibSettings, dest: Path) -> None:
    """Rewrite the model by the recipe, calibrate it and write the artifact to dest (atomically)."""
    from calib import calibrate2, recipes
    from calib.calibrate import calibrate, sample_windows

    calib = settings_for(lm, bits, calib)
    recipe = recipes.get(calib.method)
    if lm.config.family == "mamba2":
        calibrate = calibrate2.calibrate
    text, path = read_text(calib.text)
    tokens = for_model(lm.folder, lm.config.vocab_size).encode(text)
    calib.validate(lm.config.family)
    rewritten, notes = recipe.apply(lm, calib, sample_windows(tokens, calib.samples, calib.seq_len, str(path)))
    qm = calibrate(rewritten, bits, calib, tokens, str(path))
    qm.manifest["recipe"] = {"name": recipe.name, "summary": recipe.summary, "source": recipe.source,
                             "rewrites": notes}
    artifact.save(qm, dest)


def get_artifact(lm: LoadedModel, bits: BitsPreset, opts: RunOptions) -> tuple[artifact.QuantizedModel, Path, bool]:
    """The cached artifact for (model, weights, bits, calibration), built when absent."""
    if opts.artifact:
        qm = artifact.load(Path(opts.artifact))
        made = qm.manifest
        if made["bits"]["name"] != bits.name or made["model"]["weights_sha256"] != lm.sha256:
            raise QsimError(f"--artifact {opts.artifact}: calibrated for {made['model']['name']} "
                            f"{made['bits']['name']}, not for these weights at --bits {bits.name}")
        return qm, Path(opts.artifact), True
    _, cpath = read_text(opts.calib.text)
    key = artifact_key(lm, bits, opts.calib, hashlib.sha256(cpath.read_bytes()).hexdigest())
    dest = cache_root() / f"{lm.name}-{bits.name}-{key[:16]}"
    if opts.cache and dest.is_dir():
        try:
            return artifact.load(dest), dest, True
        except QsimError:
            pass  # a damaged cache entry is rebuilt below
    build_artifact(lm, bits, opts.calib, dest)
    return artifact.load(dest), dest, False  # always the bytes on disk: fresh and cached runs agree


# Per family, the float model's tensors behind each SQNR tensor: in_proj's output pieces, the scan output and
# out_proj's input (the quamba hooks record the pieces under the same names, and "scan", "out_proj_in")
SQNR_SOURCES = {"mamba": {"in_proj": ("x_in", "z"), "scan": "y", "out_proj_in": "y"},
                "mamba2": {"in_proj": ("z", "xBC"), "scan": "ys", "out_proj_in": "y"}}


class _Recorder:
    """Float-model hook that keeps copies of the tensors compared by SQNR."""

    def __init__(self, src: dict):
        self.names = {*src["in_proj"], src["scan"], src["out_proj_in"]}
        self.seen = defaultdict(list)

    def __call__(self, layer, name, x):
        if name in self.names:
            self.seen[(layer, name)].append(np.array(x))


class _Accumulator:
    """Sums over evaluation windows (or one window): NLL, agreement, KL, SQNR signal and error energy."""

    def __init__(self):
        self.nll = defaultdict(float)
        self.count = 0
        self.top1 = defaultdict(float)
        self.kl = defaultdict(float)
        self.sig = defaultdict(float)
        self.err = defaultdict(float)
        self.saturation: dict[str, dict[str, int]] = {"fixed": {}, "quamba": {}}

    def add(self, other: _Accumulator) -> None:
        for mine, theirs in ((self.nll, other.nll), (self.top1, other.top1), (self.kl, other.kl),
                             (self.sig, other.sig), (self.err, other.err)):
            for k, v in theirs.items():
                mine[k] += v
        self.count += other.count
        for numerics, counts in other.saturation.items():
            mine = self.saturation[numerics]
            for k, v in counts.items():
                mine[k] = mine.get(k, 0) + v

    def logits(self, name: str, logits: np.ndarray, tokens: np.ndarray, ref: np.ndarray | None) -> None:
        self.nll[name] += float(metrics.nll(logits, tokens).sum())
        if ref is not None:
            n = len(tokens)
            self.top1[name] += metrics.top1_agreement(ref, logits) * n
            self.kl[name] += metrics.mean_kl(ref, logits) * n

    def tensor(self, key: tuple, ref: np.ndarray, test: np.ndarray) -> None:
        ref = ref.astype(np.float64)
        self.sig[key] += float(np.sum(ref**2))
        self.err[key] += float(np.sum((ref - test.astype(np.float64)) ** 2))

    def sqnr(self, numerics: str, tensor: str, n_layer: int) -> list[float]:
        out = []
        for i in range(n_layer):
            s, e = self.sig[(numerics, tensor, i)], self.err[(numerics, tensor, i)]
            out.append(round(10 * math.log10(s / e), 3) if e > 0 and s > 0 else float("inf"))
        return out


def merge(accs: list[_Accumulator]) -> _Accumulator:
    """Per-window sums added in window order: the same float additions, in the same order, as one pass."""
    total = _Accumulator()
    for a in accs:
        total.add(a)
    return total


def _sqnr_tensors(seen: dict, i: int, src: dict) -> dict[str, np.ndarray]:
    """The SQNR tensors of layer i from what a hook recorded under the float model's names."""
    g = lambda n: np.concatenate(seen[(i, n)])
    return {"in_proj": np.concatenate([g(n) for n in src["in_proj"]], axis=1), "scan": g(src["scan"]),
            "out_proj_in": g(src["out_proj_in"])}


def _fixed_tensors(qm, tr, i: int) -> dict[str, np.ndarray]:
    if qm.config.family == "mamba2":
        return _fixed_tensors2(qm, tr, i)
    sc, di = qm.layer(i)["scales"], qm.config.d_inner
    xz = tr.get(i, "xz").astype(np.float64)
    xz[:, :di] *= sc["x"]
    xz[:, di:] *= sc["z"]
    return unsmoothed(qm, i, {"in_proj": xz, "scan": tr.get(i, "y") * sc["y"],
                              "out_proj_in": _unrotated(qm, tr.get(i, "yo") * sc["yo"])})


def _unrotated(qm, yo: np.ndarray) -> np.ndarray:
    di = qm.config.d_inner
    return hadamard.fwht_float_t(yo) / math.sqrt(di) if qm.manifest["hadamard"] else yo


def _fixed_tensors2(qm, tr, i: int) -> dict[str, np.ndarray]:
    """Mamba-2's SQNR tensors from the fixed trace, in real units: in_proj's z and xBC rows, ys, out_proj's input."""
    c, sc, p = qm.config, qm.layer(i)["scales"], f"layers.{i}"
    zx = tr.get(i, "in_proj")[:, : c.d_inner + c.conv_dim].astype(np.float64)
    zx[:, : c.d_inner] *= sc["z"]
    zx[:, c.d_inner :] *= sc["xBC"]
    ys = tr.get(i, "ys") * np.repeat(qm.t(f"{p}.ys.scale"), c.d_inner // qm.t(f"{p}.ys.scale").size)
    return {"in_proj": zx, "scan": ys, "out_proj_in": _unrotated(qm, tr.get(i, "yo") * sc["y_rot"])}


def reordered(qm, i: int, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float model's SQNR tensors in the channel order of a Mamba-2 artifact whose recipe reordered
    heads and channels (Quamba2): in_proj's z and x rows, the scan output and out_proj's input."""
    key = f"layers.{i}.chan_perm"
    if qm is None or key not in qm.tensors:
        return t
    perm, di = qm.t(key).astype(np.int64), qm.config.d_inner
    rows = np.concatenate([perm, di + perm, np.arange(2 * di, t["in_proj"].shape[1])])
    return {"in_proj": t["in_proj"][:, rows], "scan": t["scan"][:, perm], "out_proj_in": t["out_proj_in"][:, perm]}


def unsmoothed(qm, i: int, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scan output and out_proj input back in the float model's units: a smoothing recipe divided them by
    out_smooth per channel (the rotations need no undoing here: in_proj's output and y do not rotate)."""
    key = f"layers.{i}.out_smooth"
    if key not in qm.tensors:
        return t
    s = qm.t(key).astype(np.float64)
    return {**t, "scan": t["scan"] * s, "out_proj_in": t["out_proj_in"] * s}


def datapath_features(qm: artifact.QuantizedModel) -> dict[str, bool]:
    """What the artifact's recipe needs at run time beyond the base datapath (the cost model charges it)."""
    n = qm.config.n_layer
    return {"online_hadamard": bool(qm.manifest["hadamard"]),
            "scan_out_per_channel": any(f"layers.{i}.out_smooth" in qm.tensors for i in range(n))}


def fixed_executor(qm: artifact.QuantizedModel, name: str):
    """The `fixed` executor by name; the CUDA one lives in gpu/ and is imported only when asked for."""
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise QsimError("--executor cuda: no CUDA device visible to torch on this machine")
        try:
            from gpu.executor import CudaExecutor

            return CudaExecutor(qm)
        except ImportError as exc:
            raise QsimError(f"--executor cuda: {exc} (install the [gpu] extra)") from None
    from qsim.fixed.executor import FixedExecutor
    from qsim.fixed.executor2 import FixedExecutor2

    return (FixedExecutor2 if qm.config.family == "mamba2" else FixedExecutor)(qm, name)


def _compile(fixed, tokens: np.ndarray) -> None:
    """Run the fixed kernels once outside the timed region, so Numba compiles them there: one layer and the
    head suffice (every layer has the same types), and a large model's other layers are not prepared twice."""
    from qsim.fixed.executor import Trace

    trace = Trace(names=set())
    fixed.head(fixed.block(0, fixed.embed(tokens, trace), fixed.new_state(), trace), trace)


def evaluate(lm: LoadedModel, qm, bits: BitsPreset, windows: list[np.ndarray], executor: str):
    """Every window through float, quamba and (with 8-bit activations) fixed: one _Accumulator per window.

    Layer-major: each layer's weights (float, dequantized, integer) are used once for all the windows.
    """
    cfg = lm.config
    mamba2 = cfg.family == "mamba2"
    fm = float_model2.dispatch(cfg)
    src = SQNR_SOURCES[cfg.family]
    dequant, hook_cls = (quamba2.dequant_weights, quamba2.Quamba2Hook) if mamba2 else (dequant_weights, QuambaHook)
    quamba_w = dequant(qm) if qm is not None else fp16_weights(cfg, lm.weights)
    fixed = None
    if qm is not None and bits.integer_activations:
        from qsim.fixed.executor import Trace

        fixed = fixed_executor(qm, executor)
        _compile(fixed, windows[0][:2])
        scale = fixed.logit_scale()
    accs = [_Accumulator() for _ in windows]
    timing = defaultdict(float)

    def timed(numerics: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        timing[numerics] += time.perf_counter() - t0
        return out

    record = {*src["in_proj"], "scan", "out_proj_in"} if qm is not None else frozenset()
    hooks = [hook_cls(qm, bits, record=record) for _ in windows]
    r_float = [timed("float", fm.embed, lm.weights, w) for w in windows]
    r_quamba = [timed("quamba", fm.embed, quamba_w, w) for w in windows]
    if fixed is not None:
        traces = [Trace(names={"in_proj", "ys", "yo"} if mamba2 else {"xz", "y", "yo"}) for _ in windows]
        states = [fixed.new_state() for _ in windows]
        r_fixed = [timed("fixed", fixed.embed, w, tr) for w, tr in zip(windows, traces)]
    for i in progress(range(cfg.n_layer), desc=f"run {lm.name} {bits.name} ({len(windows)} seq)", unit="layer"):
        lw, qlw = lm.weights.layers[i], quamba_w.layers[i]
        for k, acc in enumerate(accs):
            rec = _Recorder(src)
            r_float[k] = timed("float", fm.block, cfg, lw, r_float[k], i, rec)
            fl = reordered(qm, i, _sqnr_tensors(rec.seen, i, src))
            r_quamba[k] = timed("quamba", fm.block, cfg, qlw, r_quamba[k], i, hooks[k])
            if qm is not None:
                qt = unsmoothed(qm, i, _sqnr_tensors(hooks[k].seen, i, {**src, "scan": "scan",
                                                                        "out_proj_in": "out_proj_in"}))
                for key in [key for key in hooks[k].seen if key[0] == i]:
                    del hooks[k].seen[key]
                for name in SQNR_TENSORS:
                    acc.tensor(("quamba", name, i), fl[name], qt[name])
            if fixed is not None:
                r_fixed[k] = timed("fixed", fixed.block, i, r_fixed[k], states[k], traces[k])
                ft = _fixed_tensors(qm, traces[k], i)
                for name in SQNR_TENSORS:
                    acc.tensor(("fixed", name, i), fl[name], ft[name])
                traces[k].tensors.clear()
        del lw, qlw
    for k, (w, acc) in enumerate(zip(windows, accs)):
        ref = timed("float", fm.head, cfg, lm.weights, r_float[k], None)
        acc.logits("float", ref, w, None)
        acc.logits("quamba", timed("quamba", fm.head, cfg, quamba_w, r_quamba[k], hooks[k]), w, ref)
        acc.saturation["quamba"] = dict(hooks[k].saturation)
        if fixed is not None:
            acc.logits("fixed", timed("fixed", fixed.head, r_fixed[k], traces[k]) * scale, w, ref)
            acc.saturation["fixed"] = dict(traces[k].saturation)
        acc.count = len(w) - 1
    return accs, dict(timing)


@dataclass
class Prepared:
    """What evaluate() needs and the report states: split from run() so the windows can be evaluated elsewhere."""

    opts: RunOptions
    bits: BitsPreset
    lm: LoadedModel
    tokenizer: str
    text_path: Path
    windows: list[np.ndarray]
    qm: artifact.QuantizedModel | None
    artifact_path: Path | None
    cached: bool
    t_start: float
    memory: memory.MemoryEstimate


def prepare(opts: RunOptions) -> Prepared:
    """Resolve the model, cut the evaluation windows and get (or build) the artifact."""
    t_start = time.perf_counter()
    bits = preset(opts.bits)
    if opts.seq_len < 2 or opts.eval_seqs < 1:
        raise QsimError(f"--seq-len {opts.seq_len} / --eval-seqs {opts.eval_seqs}: need >= 2 and >= 1")
    opts.calib.validate()  # the widest ranges: bad options fail before the model is read
    lm = resolve(opts.model, opts.require_weights)
    opts = replace(opts, calib=settings_for(lm, bits, opts.calib))
    opts.calib.validate(lm.config.family)
    mem = memory.estimate(lm.config, bits, opts.calib, opts.eval_seqs, opts.seq_len,
                          calibrating=opts.artifact is None)
    memory.check(mem, f"run {lm.name} {bits.name}")
    tok = for_model(lm.folder, lm.config.vocab_size)
    text, tpath = read_text(opts.eval_text)
    ids = tok.encode(text)
    if len(ids) < opts.seq_len:
        raise QsimError(f"{tpath}: {len(ids)} tokens, shorter than one sequence of --seq-len {opts.seq_len}")
    starts = np.linspace(0, len(ids) - opts.seq_len, opts.eval_seqs).astype(np.int64)
    windows = [ids[s : s + opts.seq_len] for s in starts]

    qm = path = None
    cached = False
    if bits.weight_bits < 16:
        qm, path, cached = get_artifact(lm, bits, opts)
    return Prepared(opts, bits, lm, tok.kind, tpath, windows, qm, path, cached, t_start, mem)


def report(p: Prepared, accs: list[_Accumulator], timing: dict[str, float]) -> dict:
    """The run report from the per-window accumulators, merged in window order."""
    opts, bits, lm, qm, cfg = p.opts, p.bits, p.lm, p.qm, p.lm.config
    acc = merge(accs)
    fixed_ran = "fixed" in acc.nll

    n_tok = opts.seq_len * opts.eval_seqs
    numerics = ["float", "quamba"] + (["fixed"] if fixed_ran else [])
    return {
        "qsim_spec_version": spec.SPEC_VERSION,
        "model": lm.name,
        "config": cfg.to_dict(),
        **({"gated_norm": ("per group of d_inner / ngroups channels (mamba_ssm; transformers >= 5)"
                           if cfg.norm_per_group else "over the whole d_inner (transformers < 5)")}
           if cfg.family == "mamba2" else {}),
        "weights": "synthetic" if lm.synthetic else "checkpoint",
        "weights_source": lm.source,
        "weights_location": lm.location,
        "weights_sha256": lm.sha256,
        "accuracy_meaningful": not lm.synthetic,
        "tokenizer": p.tokenizer,
        "bits": bits.name,
        "spec_version": spec.SPEC_VERSION,
        "artifact": str(p.artifact_path) if p.artifact_path else None,
        "artifact_cached": p.cached,
        "calibration": asdict(opts.calib) if qm is not None else None,
        "recipe": qm.manifest.get("recipe") if qm is not None else None,
        "datapath_features": datapath_features(qm) if qm is not None else None,
        "eval": {"text": str(p.text_path), "sequences": opts.eval_seqs, "seq_len": opts.seq_len,
                 "tokens_evaluated": acc.count},
        "nats_per_token": {k: acc.nll[k] / acc.count for k in numerics},
        "perplexity": {k: math.exp(acc.nll[k] / acc.count) for k in numerics},
        "agreement_vs_float": {k: {"top1": acc.top1[k] / n_tok, "mean_kl": acc.kl[k] / n_tok}
                               for k in numerics if k != "float"},
        "sqnr_db": {k: {t: acc.sqnr(k, t, cfg.n_layer) for t in SQNR_TENSORS}
                    for k in numerics if k != "float" and qm is not None},
        "saturation": {"fixed": acc.saturation["fixed"], "quamba": acc.saturation["quamba"]},
        "fixed_unavailable": None if fixed_ran else
        f"the integer datapath is defined for 8-bit activations; {bits.name} has none",
        "tokens_per_s": {k: n_tok / timing[k] for k in numerics if timing.get(k, 0) > 0},
        "fixed_executor": opts.executor if fixed_ran else None,
        "wall_time_s": time.perf_counter() - p.t_start,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "memory": {"estimate": p.memory.as_dict(), "peak_rss_bytes": memory.peak_rss_bytes()},
    }


def run(opts: RunOptions) -> dict:
    p = prepare(opts)
    return report(p, *evaluate(p.lm, p.qm, p.bits, p.windows, p.opts.executor))
