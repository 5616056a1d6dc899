"""Cut golden vector sets from the `fixed` NumPy reference, versioned with the spec.

A set is a folder of `.npy` files plus `manifest.json` (spec version, source
artifact and layer, constants, shape/dtype/sha256 per file). Sets are a pure
function of (spec, committed quantized artifact): the real-layer sets are cut
from qsim/artifacts/mamba-tiny-w8a8, never from a fresh float calibration, so
regenerating one runs integer code only and gives the same bytes on every
machine, which tests/golden checks. A spec change shows up as a failing test
and a new committed set rather than as silent drift.

Kinds:
  scan      per token xs, dt, B, C, z, sz (= silu_z table of z), start flags;
            layer constants a_q, Dq, m_y, s_y (per channel), exp table, silu_z
            table (+ scalars in the manifest); outputs y (int16), final state h
            (and h per token when small)
  hadamard  int16 rows y, raw transform y_had, int8 yo = requantize(y_had, m, s, 8)
  tables    SiLU / softplus tables of each layer, exp2-frac and rsqrt tables
  hadamard_matrices, decay, rounding   the spec's rules on their edges (qsim/SPEC.md)

Mamba-2 (SPEC.md section 15), cut from qsim/artifacts/mamba2-tiny-w8a8 and part of the catalogue
only while that folder exists:
  ssd       per token x, B, C (T, G, N), dt_raw, start flags; the layer's SSD constants dt_table,
            a_q, Dq, m_h, s_h, m_y, s_y, exp table (frac, state_bits in the manifest); intermediates
            dt, dA (per head); outputs ys (int16), final state (int32; per token when small)
  gated_norm   ys, z, silu_z table, sz, norm constants w, eps_int, rsqrt table (m, s in the
            manifest); intermediate g = ys*sz >> 7; output y (int16)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from qsim import hadamard, spec, tables
from qsim.artifact import SHIPPED_ARTIFACTS
from qsim.errors import QsimError
from qsim.fixed import ops

HERE = Path(__file__).parent
SETS = HERE / "sets"  # committed, small
LARGE = HERE / "large"  # generated on demand, git-ignored (golden/.gitignore)
TEXT = Path(__file__).parents[1] / "qsim" / "data" / "shakespeare" / "calib.txt"
REPO = Path(__file__).parents[1]
ARTIFACT = SHIPPED_ARTIFACTS / "mamba-tiny-w8a8"  # the committed contract the real-layer sets are cut from
ARTIFACT2 = SHIPPED_ARTIFACTS / "mamba2-tiny-w8a8"  # the Mamba-2 one: its sets are catalogued while it exists
REAL_TOKENS, LARGE_TOKENS = 16, 64
WINDOW_OFFSET = 4096  # byte offset of the prompt in calib.txt (away from the header)
PER_TOKEN_STATE_LIMIT = 1 << 16  # store h after every token when T*D*N is at most this


# ---------------------------------------------------------------- the artifact
def relative(path: Path) -> str:
    """A path as the manifests record it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


@lru_cache(maxsize=2)
def quantized(folder: str):
    """(QuantizedModel, prompt token ids) from an artifact on disk: integer data only, no float calibration.

    The prompt is the bytes of calib.txt (byte tokens: ids below 256 are valid for every vocabulary here)."""
    from qsim import artifact, tokenizer

    qm = artifact.load(Path(folder))
    toks = tokenizer.for_model(None, qm.config.vocab_size).encode(TEXT.read_text())
    return qm, toks


def source(folder: str, layer=None, **extra) -> dict:
    qm, _ = quantized(folder)
    m = qm.manifest
    return {"artifact": relative(Path(folder)), "artifact_weights_sha256": m["weights_sha256"],
            "model": m["model"]["name"], "model_weights_sha256": m["model"]["weights_sha256"], "layer": layer,
            "prompt": f"{relative(TEXT)} from byte {WINDOW_OFFSET}", **extra}


@lru_cache(maxsize=4)
def traced(folder: str, tokens: int):
    """Trace of a prefill over `tokens` bytes of calib.txt from the zero state."""
    from qsim.fixed.executor import FixedExecutor, Trace

    qm, toks = quantized(folder)
    window = toks[WINDOW_OFFSET: WINDOW_OFFSET + tokens]
    ex = FixedExecutor(qm, "numpy")
    trace = Trace()
    _, state = ex.prefill(window, trace=trace)
    return ex, trace, state, window


# ---------------------------------------------------------------- set bodies
SCAN_SCALARS = ("frac", "m_h", "s_h", "state_bits")


def scan_set(p: dict, xs, dt, B, C, z, silu_z, start) -> tuple[dict, dict]:
    """Run ops.scan sequence by sequence (a new sequence starts from h = 0 where start[t])."""
    T, D = xs.shape
    N = B.shape[1]
    sz = ops.lut(z, silu_z)
    h = np.zeros((D, N), np.int64)
    y = np.zeros((T, D), np.int64)
    hs = np.zeros((T, D, N), np.int64)
    sat_h = sat_y = 0
    for t in range(T):
        if start[t]:
            h = np.zeros_like(h)
        y[t: t + 1], h, nh, ny = ops.scan(xs[t: t + 1], dt[t: t + 1], B[t: t + 1], C[t: t + 1], sz[t: t + 1], h, p)
        hs[t] = h
        sat_h, sat_y = sat_h + nh, sat_y + ny
    arrays = {"xs": (xs, np.int8), "dt": (dt, np.uint16), "B": (B, np.int8), "C": (C, np.int8), "z": (z, np.int8),
              "sz": (sz, np.int16), "start": (start, np.uint8), "silu_z": (silu_z, np.int16),
              "a_q": (p["a_q"], np.uint16), "Dq": (p["Dq"], np.int64), "m_y": (p["m_y"], np.int32),
              "s_y": (p["s_y"], np.int32), "exp_tab": (p["exp_tab"], np.uint16),
              "y": (y, np.int16), "h_final": (h, np.int32)}
    if T * D * N <= PER_TOKEN_STATE_LIMIT:
        arrays["h"] = (hs, np.int32)
    meta = {"kind": "scan", "constants": {k: int(p[k]) for k in SCAN_SCALARS},
            "dims": {"tokens": T, "d_inner": D, "d_state": N},
            "saturations": {"state": int(sat_h), "output": int(sat_y)},
            "layout": "h0 = 0 at every token with start=1 (and at token 0); y = scan output y*SiLU(z), int16"}
    return arrays, meta


def hadamard_set(y, m: int, s: int) -> tuple[dict, dict]:
    y_had = ops.hadamard_rows(y)
    yo, sat = ops.requantize(y_had, m, s, 8)
    n = y.shape[1]
    arrays = {"y": (y, np.int16), "y_had": (y_had, np.int32), "yo": (yo, np.int8)}
    meta = {"kind": "hadamard", "constants": {"m": int(m), "s": int(s)},
            "dims": {"vectors": y.shape[0], "n": n, "factor": list(hadamard.factor(n))},
            "saturations": {"output": int(sat)}}
    return arrays, meta


# ---------------------------------------------------------------- the sets
def real_scan(folder: str, layer: int, tokens: int):
    ex, trace, state, window = traced(folder, tokens)
    di, n, rk = ex.cfg.d_inner, ex.cfg.d_state, ex.cfg.dt_rank
    xz, xp = trace.get(layer, "xz"), trace.get(layer, "x_proj")
    P = ex.layers[layer]
    start = np.zeros(tokens, np.int64)
    start[0] = 1
    arrays, meta = scan_set(P["scan"], trace.get(layer, "xs"), trace.get(layer, "dt"), xp[:, rk: rk + n],
                            xp[:, rk + n:], xz[:, di:], P["silu_z"], start)
    if not np.array_equal(arrays["y"][0], trace.get(layer, "y")) or \
            not np.array_equal(arrays["h_final"][0], state.h[layer]):
        raise QsimError(f"golden: scan of layer {layer} disagrees with the executor's trace")
    meta["source"] = source(folder, layer, tokens=window.tolist())
    return arrays, meta


def edge_scan(folder: str, layer: int):
    """Real layer constants, crafted inputs: all-zero, dt = 0, dt = DT_MAX with saturating state, random."""
    ex, *_ = traced(folder, REAL_TOKENS)
    di, n = ex.cfg.d_inner, ex.cfg.d_state
    P = ex.layers[layer]
    rng = np.random.default_rng(1)
    seqs = []

    def seq(T, xs, dt, B, C, z):
        seqs.append((T, xs, dt, B, C, z))

    zi = lambda T, w: np.zeros((T, w), np.int64)
    ri = lambda T, w, lo=-128, hi=128: rng.integers(lo, hi, (T, w))
    seq(3, zi(3, di), zi(3, di), zi(3, n), zi(3, n), zi(3, di))
    seq(3, ri(3, di), zi(3, di), ri(3, n), ri(3, n), ri(3, di))  # dt = 0: no decay, no input
    full = lambda T, w, v: np.full((T, w), v, np.int64)
    seq(4, full(4, di, 127), full(4, di, spec.DT_MAX), full(4, n, 127), full(4, n, 127), full(4, di, 127))  # saturate
    seq(4, full(4, di, -128), full(4, di, spec.DT_MAX), full(4, n, 127), full(4, n, -128), full(4, di, -128))
    seq(4, ri(4, di), ri(4, di, 0, spec.DT_MAX + 1), ri(4, n), ri(4, n), ri(4, di))
    cat = [np.concatenate([s[k] for s in seqs]) for k in range(1, 6)]
    start = np.concatenate([np.eye(1, s[0], dtype=np.int64)[0] for s in seqs])
    arrays, meta = scan_set(P["scan"], *cat[:4], cat[4], P["silu_z"], start)
    meta["source"] = source(folder, layer, inputs="crafted: zero (3), dt=0 (3), dt=DT_MAX saturating (4+4), random (4)")
    return arrays, meta


def random_scan(seed: int, d_inner: int, d_state: int, tokens: int, state_bits: int, wide: bool):
    """Random constants within the spec's bounds; `wide` takes a 31-bit state multiplier m_h. The output
    multipliers m_y, s_y differ per channel (15-bit m_y, shifts spread over 4 bits, as a recipe's
    per-channel smoothing spreads them)."""
    rng = np.random.default_rng(seed)
    dq_max = min(1 << 20, spec.scan_dq_limit(d_state, state_bits))  # y's accumulator stays within the spec
    frac = int(rng.integers(9, 31))
    p = {"a_q": rng.integers(0, 65536, (d_inner, d_state)), "frac": frac,
         "m_h": int(rng.integers(1 << 30, 1 << 31)) if wide else int(rng.integers(1 << 14, 1 << 15)),
         "s_h": int(rng.integers(37, 47)) if wide else int(rng.integers(15, 27)),  # dt is 15-bit
         "Dq": rng.integers(-dq_max, dq_max + 1, d_inner), "m_y": rng.integers(1 << 14, 1 << 15, d_inner),
         "s_y": rng.integers(0, 4, d_inner), "exp_tab": tables.exp2_frac_table(), "state_bits": state_bits}
    silu_z = np.asarray(quantized(str(ARTIFACT))[0].layer(0)["tables"]["silu_z"], np.int64)  # integer data
    T = tokens
    start = np.zeros(T, np.int64)
    start[[0, T // 2]] = 1
    xs, dt = rng.integers(-128, 128, (T, d_inner)), rng.integers(0, spec.DT_MAX + 1, (T, d_inner))
    B, C = rng.integers(-128, 128, (T, d_state)), rng.integers(-128, 128, (T, d_state))
    z = rng.integers(-128, 128, (T, d_inner))
    # channel 0 takes the widest decay exponent, dt*a_q + 2**(frac-9) >= 2**31 when frac >= 26, on every
    # other token with no input, so only the decay shapes its state there
    p["a_q"][0] = 65535
    dt[1::2, 0], xs[1::2, 0] = spec.DT_MAX, 0
    inputs = (xs, dt, B, C, z, silu_z, start)
    while True:  # the smallest common offset of the output shifts that saturates at most 1 output in 8
        arrays, meta = scan_set(p, *inputs)
        if meta["saturations"]["output"] * 8 <= T * d_inner:
            break
        p["s_y"] += 1
    meta["source"] = {"model": None, "layer": None, "inputs": f"numpy default_rng({seed}): random constants and "
                      "inputs; silu_z = layer 0's table of the committed artifact"}
    return arrays, meta


def real_hadamard(folder: str, layer: int, tokens: int):
    ex, trace, _, window = traced(folder, tokens)
    m, s = ex.layers[layer]["out_in_rq"]
    arrays, meta = hadamard_set(trace.get(layer, "y"), m, s)
    if not np.array_equal(arrays["yo"][0], trace.get(layer, "yo")):
        raise QsimError(f"golden: Hadamard of layer {layer} disagrees with the executor's trace")
    meta["source"] = source(folder, layer, tokens=window.tolist())
    return arrays, meta


def random_hadamard(seed: int, n: int, vectors: int):
    """Random rows plus edge rows (zeros, full-scale +/-, alternating) through a multiplier that saturates some."""
    rng = np.random.default_rng(seed)
    lo, hi = spec.int_range(spec.GATED_BITS)
    edge = np.stack([np.zeros(n), np.full(n, hi), np.full(n, lo), np.where(np.arange(n) % 2, lo, hi)])
    y = np.concatenate([edge, rng.integers(lo, hi + 1, (vectors, n)),
                        rng.integers(-4000, 4000, (vectors, n))]).astype(np.int64)
    m, s = spec.quantize_multiplier(127 / (1 << 15) / math.sqrt(n) * 8, f"golden n={n}")  # IEEE-exact ops only
    arrays, meta = hadamard_set(y, m, s)
    meta["source"] = {"model": None, "layer": None,
                      "inputs": f"4 edge rows, {vectors} full-range and {vectors} small random rows "
                                f"(default_rng({seed})); m, s for 8x the full-scale rms"}
    return arrays, meta


def table_set(folder: str):
    """The spec's fixed tables (integer-defined) and every layer's tables as the artifact stores them."""
    qm, _ = quantized(folder)
    arrays = {"exp2_frac": (tables.exp2_frac_table(), np.uint16), "rsqrt": (tables.rsqrt_table(), np.uint16)}
    widths = {"silu_conv": np.int8, "softplus_dt": np.uint16, "silu_z": np.int16}
    scales = {}
    for i in range(qm.config.n_layer):
        L = qm.layer(i)
        for name, dtype in widths.items():
            arrays[f"l{i}_{name}"] = (np.asarray(L["tables"][name], np.int64), dtype)
        scales[f"l{i}"] = {k: L["scales"][k] for k in ("conv_pre", "xs", "dt_pre", "dt", "z", "sz")}
    meta = {"kind": "tables", "source": source(folder), "scales": scales,
            "layout": "l{i}_silu_conv: int8 -> int8, l{i}_silu_z: int8 -> int16, l{i}_softplus_dt: int8 -> uint16 "
                      "(15-bit values), indexed by q + 128 (artifact data; scales informative); "
                      "exp2_frac: Q15 2**(-i/256); rsqrt: round(2**19/sqrt(m)), m in [256, 1024)"}
    return arrays, meta


def hadamard_matrix_set():
    """The base matrices (which Paley construction, which signs) and two Kronecker products (which order)."""
    sizes = (2, 12, 20, 24, 40)
    arrays = {f"h{n}": (hadamard.matrix(n), np.int8) for n in sizes}
    meta = {"kind": "hadamard_matrices", "dims": {"n": list(sizes)},
            "source": {"model": None, "layer": None, "inputs": "qsim.hadamard.matrix(n): y = x @ h{n}.T"}}
    return arrays, meta


def decay_set():
    """The decay at the corners of its domain: frac 9 and 30, dt and a_q 0 and full scale, shifts 16-18, 40, > 40."""
    one = 1 << spec.DECAY_BITS
    rows = [(0, 65535, 9), (spec.DT_MAX, 0, 30), (spec.DT_MAX, 65535, 9), (spec.DT_MAX, 65535, 30),
            (1, 1, 9), (1, 1, 30), (1, 255, 9), (1, 256, 9), (1, 257, 9)]
    for frac in (9, 20, 30):  # integer part k = 15 ... 18, 39 ... 41: fraction 0 and 255/256
        for k in (15, 16, 17, 18, 39, 40, 41):
            for f256 in (0, 255):
                e = (k * 256 + f256) << (frac - 8)
                if e <= spec.DT_MAX * 65535:
                    dt = min(spec.DT_MAX, max(1, -(-e // 65535)))
                    rows.append((dt, e // dt, frac))
    rng = np.random.default_rng(7)
    rows += [(int(d), int(a), int(f)) for d, a, f in zip(rng.integers(0, spec.DT_MAX + 1, 64),
                                                        rng.integers(0, 65536, 64), rng.integers(9, 31, 64))]
    dt, a_q, frac = (np.array(c, np.int64) for c in zip(*rows))
    exp_tab = tables.exp2_frac_table()
    dA = np.array([ops.decay(dt[j: j + 1], a_q[j: j + 1], int(frac[j]), exp_tab)[0, 0] for j in range(len(rows))])
    if dA.min() < 0 or dA.max() > one:
        raise QsimError("golden: decay left [0, 2**15]")
    arrays = {"dt": (dt, np.uint16), "a_q": (a_q, np.uint16), "frac": (frac, np.uint8), "decay": (dA, np.uint16)}
    meta = {"kind": "decay", "dims": {"rows": len(rows)},
            "source": {"model": None, "layer": None, "inputs": "corner cases, then default_rng(7)"},
            "layout": "decay[j] = spec decay of (dt[j], a_q[j], frac[j]) with the spec's exp2_frac table"}
    return arrays, meta


def rounding_set():
    """rshift_round, requantize and quantize_multiplier on their edges (ties of both signs, carries, S = 0)."""
    v = np.concatenate([np.arange(-9, 10), [-(1 << 62) + 1, (1 << 62) - 1]]).astype(np.int64)
    shifts = np.array([0, 1, 2, 3, 61], np.int64)
    rs = np.stack([spec.rshift_round(v, s) for s in shifts])
    acc = np.array([-(1 << 31), -1000, -516, -2, -1, 0, 1, 2, 10, 509, 1000, (1 << 31) - 1], np.int64)
    rq = np.stack([spec.requantize(acc, m, s, 8)[0] for m, s in ((1, 2), (3, 1), (16384, 15), (32767, 20))])
    reals = np.array([1.0, 0.5, 0.75, 3.0, 2.0**-40, 32767.5 / 2**15, 32767.75 / 2**15, 16383.5,
                      16384.0, 16384.5, 123456.5, 2.0**31 - 1, 0.1, 1 / 3, 1e-12], np.float64)
    ms = np.array([spec.quantize_multiplier(float(r)) for r in reals], np.int64)
    arrays = {"v": (v, np.int64), "shifts": (shifts, np.uint8), "rshift_round": (rs, np.int64),
              "acc": (acc, np.int64), "requant_int8": (rq, np.int8), "reals": (reals, np.float64),
              "multiplier": (ms[:, 0], np.int64), "shift": (ms[:, 1], np.uint8)}
    meta = {"kind": "rounding",
            "source": {"model": None, "layer": None, "inputs": "hand-picked edges"},
            "layout": "rshift_round[i, j] = rshift_round(v[j], shifts[i]); requant_int8[i] = requantize(acc, M, S, 8) "
                      "for (M, S) in (1, 2), (3, 1), (16384, 15), (32767, 20); (multiplier, shift)[j] = "
                      "quantize_multiplier(reals[j])"}
    return arrays, meta


# ---------------------------------------------------------------- Mamba-2 (SPEC.md section 15)
SSD_CONSTANTS = {"dt_table": np.uint16, "a_q": np.uint16, "Dq": np.int64, "m_h": np.int32, "s_h": np.int32,
                 "m_y": np.int32, "s_y": np.int32, "exp_tab": np.uint16}


@lru_cache(maxsize=4)
def traced2(folder: str, tokens: int):
    """As `traced`, through FixedExecutor2 (numpy) of a Mamba-2 artifact."""
    from qsim.fixed.executor import Trace
    from qsim.fixed.executor2 import FixedExecutor2

    qm, toks = quantized(folder)
    if qm.config.family != "mamba2":
        raise QsimError(f"golden: {relative(Path(folder))} is not a Mamba-2 artifact")
    window = toks[WINDOW_OFFSET: WINDOW_OFFSET + tokens]
    ex = FixedExecutor2(qm, "numpy")
    trace = Trace()
    _, state = ex.prefill(window, trace=trace)
    return ex, trace, state, window


def ssd_set(p: dict, x, B, C, dt_raw, start) -> tuple[dict, dict]:
    """Run ssd.ssd_step token by token (the state restarts from zeros where start[t]); p must pass validate_ssd."""
    from qsim.fixed import ssd

    x, B, C, dt_raw = (np.asarray(v, np.int64) for v in (x, B, C, dt_raw))
    T, D = x.shape
    G, N = B.shape[1:]
    H = p["a_q"].shape[0]
    ssd.validate_ssd(p, N, G, "golden")
    h = ssd.new_state(H, D // H, N)
    ys = np.zeros((T, D), np.int64)
    hs = np.zeros((T, H, D // H, N), np.int64)
    dt = ssd.dt_lookup(dt_raw, p["dt_table"])
    dA = np.stack([ssd.head_decay(dt[t], p["a_q"], p["frac"], p["exp_tab"]) for t in range(T)])
    sat = {"state": 0, "ssd_out": 0}
    for t in range(T):
        if start[t]:
            h = ssd.new_state(H, D // H, N)
        ys[t], h, n = ssd.ssd_step(x[t], B[t], C[t], dt_raw[t], h, p)
        hs[t] = h
        sat = {k: sat[k] + int(n[k]) for k in sat}
    arrays = {"x": (x, np.int8), "B": (B, np.int8), "C": (C, np.int8), "dt_raw": (dt_raw, np.int8),
              "start": (start, np.uint8), **{k: (p[k], dtype) for k, dtype in SSD_CONSTANTS.items()},
              "dt": (dt, np.uint16), "dA": (dA, np.uint16), "ys": (ys, np.int16), "h_final": (h, np.int32)}
    if T * D * N <= PER_TOKEN_STATE_LIMIT:
        arrays["h"] = (hs, np.int32)
    meta = {"kind": "ssd", "constants": {"frac": int(p["frac"]), "state_bits": int(p["state_bits"])},
            "dims": {"tokens": T, "d_inner": D, "nheads": H, "headdim": D // H, "ngroups": G, "d_state": N},
            "saturations": sat,
            "layout": "x (T, D), B and C (T, G, N), dt_raw (T, H); head h reads group h // (H / G); the state "
                      "(H, headdim, N) is 0 before every token with start=1 (and token 0); intermediates dt = "
                      "dt_table[h, dt_raw + 128], dA = 9.1's decay per head; ys = requantize(C.S + Dq*x, m_y, "
                      "s_y, 16), int16 (SPEC.md 15.3-15.4)"}
    return arrays, meta


def gated_norm_set(ys, z, silu_z, w, eps_int, m: int, s: int, rsqrt_tab) -> tuple[dict, dict]:
    """sz = silu_z[z + 128], g = ys*sz >> 7, y = the gated RMSNorm per norm group (SPEC.md 15.5)."""
    from qsim.fixed import ssd

    ys, z = np.asarray(ys, np.int64), np.asarray(z, np.int64)
    pn = {"w": np.asarray(w, np.int64), "eps_int": np.asarray(eps_int, np.int64), "m": int(m), "s": int(s)}
    ssd.validate_gated_norm(pn, ys.shape[1], "golden")
    sz = ops.lut(z, silu_z)
    y, sat = ssd.gated_rmsnorm(ys, sz, pn["w"], pn["eps_int"], pn["m"], pn["s"], rsqrt_tab)
    arrays = {"ys": (ys, np.int16), "z": (z, np.int8), "silu_z": (silu_z, np.int16), "sz": (sz, np.int16),
              "w": (pn["w"], np.int16), "eps_int": (pn["eps_int"], np.int64), "rsqrt": (rsqrt_tab, np.uint16),
              "g": (ssd.gate_product(ys, sz), np.int32), "y": (y, np.int16)}
    meta = {"kind": "gated_norm", "constants": {"m": pn["m"], "s": pn["s"]},
            "dims": {"tokens": ys.shape[0], "d_inner": ys.shape[1], "norm_groups": pn["eps_int"].shape[0]},
            "saturations": {"gated_norm": int(sat)},
            "layout": "ys, sz, y (T, D); norm group k = channels k*D/Gn ... (k+1)*D/Gn - 1; sz = silu_z[z + 128]; "
                      "intermediate g = rshift_round(ys*sz, 7); y = requantize(normed*w, m, s, 16) (SPEC.md 15.5)"}
    return arrays, meta


def real_ssd(folder: str, layer: int, tokens: int):
    ex, trace, state, window = traced2(folder, tokens)
    c = ex.cfg
    di, gn = c.d_inner, c.ngroups * c.d_state
    xbc = trace.get(layer, "xBC")
    B = xbc[:, di: di + gn].reshape(tokens, c.ngroups, c.d_state)
    C = xbc[:, di + gn:].reshape(tokens, c.ngroups, c.d_state)
    dt_raw = trace.get(layer, "in_proj")[:, di + c.conv_dim:]
    start = np.zeros(tokens, np.int64)
    start[0] = 1
    arrays, meta = ssd_set(ex.layers[layer]["ssd"], xbc[:, :di], B, C, dt_raw, start)
    if not np.array_equal(arrays["ys"][0], trace.get(layer, "ys")) or \
            not np.array_equal(arrays["h_final"][0], state.h[layer]):
        raise QsimError(f"golden: SSD of layer {layer} disagrees with the executor's trace")
    meta["source"] = source(folder, layer, tokens=window.tolist())
    return arrays, meta


def edge_ssd(folder: str, layer: int):
    """Real layer constants, crafted inputs: all zero; dt_raw = -128 and 127 (each head's smallest and largest
    dt) with random x, B, C; saturating x, B, C at dt_raw = 127, the state driven to both rails; random.
    Each sequence starts from the zero state."""
    ex, *_ = traced2(folder, REAL_TOKENS)
    c = ex.cfg
    D, H, G, N = c.d_inner, c.nheads, c.ngroups, c.d_state
    rng = np.random.default_rng(11)
    seqs = []

    def seq(T, x, bc, dt_raw):  # bc: (B, C) values, or None for random
        B, C = (np.full((T, G, N), v, np.int64) for v in bc) if bc else rng.integers(-128, 128, (2, T, G, N))
        seqs.append((x if np.ndim(x) else np.full((T, D), x, np.int64), B, C,
                     dt_raw if np.ndim(dt_raw) else np.full((T, H), dt_raw, np.int64)))

    seq(3, 0, (0, 0), 0)
    seq(3, rng.integers(-128, 128, (3, D)), None, -128)  # the smallest dt of each head's table
    seq(3, rng.integers(-128, 128, (3, D)), None, 127)  # the largest
    seq(4, 127, (-128, 127), 127)  # x*B at its negative extreme: the state saturates low
    seq(4, -128, (-128, -128), 127)  # x*B = +2**14: the state saturates high, C.S negative
    seq(4, rng.integers(-128, 128, (4, D)), None, rng.integers(-128, 128, (4, H)))
    x, B, C, dt_raw = (np.concatenate([s[k] for s in seqs]) for k in range(4))
    start = np.concatenate([np.eye(1, len(s[0]), dtype=np.int64)[0] for s in seqs])
    arrays, meta = ssd_set(ex.layers[layer]["ssd"], x, B, C, dt_raw, start)
    meta["source"] = source(folder, layer, inputs="crafted: zero (3), dt_raw=-128 random (3), dt_raw=127 random "
                            "(3), dt_raw=127 saturating x*B<0 (4) and x*B>0 (4), random (4); default_rng(11)")
    return arrays, meta


def random_ssd(seed: int, nheads: int, headdim: int, d_state: int, ngroups: int, tokens: int, state_bits: int):
    """Random constants within 5.3's bounds. frac = 28 and head 0 at a_q = 65535 with dt = DT_MAX on every
    other token (no input on its channels there): the widest decay exponent, whose rounding add
    dt*a_q + 2**(frac-9) needs 32 bits, shapes its state alone. Odd channels take a 31-bit m_h; the last
    channel's |Dq| is ssd_dq_limit (ys's accumulator near 2**47); every row's dt_table starts at dt = 0."""
    rng = np.random.default_rng(seed)
    H, P, N, G, T, W = nheads, headdim, d_state, ngroups, tokens, state_bits
    D = H * P
    dt_table = np.sort(rng.integers(0, spec.DT_MAX + 1, (H, 256)), axis=1)  # monotone, as a softplus
    dt_table[:, 0], dt_table[0, 255] = 0, spec.DT_MAX
    a_q = rng.integers(0, 65536, H)
    a_q[0] = 65535
    wide = np.arange(D) % 2
    m_h = np.where(wide, rng.integers(1 << 30, 1 << 31, D), rng.integers(1 << 14, 1 << 15, D))
    limit = spec.ssd_dq_limit(N, W)
    Dq = rng.integers(-(1 << 20), (1 << 20) + 1, D)
    Dq[-1] = -limit
    p = {"dt_table": dt_table, "a_q": a_q, "frac": 28, "exp_tab": tables.exp2_frac_table(), "m_h": m_h,
         "s_h": rng.integers(W + 2, W + 6, D) + 16 * wide, "Dq": Dq, "m_y": rng.integers(1 << 14, 1 << 15, D),
         "s_y": rng.integers(0, 4, D), "state_bits": W}
    x = rng.integers(-128, 128, (T, D))
    B, C = rng.integers(-128, 128, (2, T, G, N))
    dt_raw = rng.integers(-128, 128, (T, H))
    dt_raw[1::2, 0], x[1::2, :P] = 127, 0
    dt_raw[2::3, H - 1] = -128  # dt = 0: no decay and no input
    start = np.zeros(T, np.int64)
    start[[0, T // 2]] = 1
    base = p["s_y"].copy()
    base[-1] += 22  # Dq * x reaches 2**47, about 2**21 times the other channels' accumulators
    for off in range(64):  # the smallest common offset of the output shifts that saturates at most 1 output in 8
        p["s_y"] = base + off
        arrays, meta = ssd_set(p, x, B, C, dt_raw, start)
        if meta["saturations"]["ssd_out"] * 8 <= T * D:
            break
    meta["source"] = {"model": None, "layer": None,
                      "inputs": f"numpy default_rng({seed}): random constants and inputs"}
    return arrays, meta


def ssd_random_g2():
    return random_ssd(8, 4, 4, 8, 2, 12, 20)


def real_gated_norm(folder: str, layer: int, tokens: int):
    ex, trace, _, window = traced2(folder, tokens)
    P, di = ex.layers[layer], ex.cfg.d_inner
    arrays, meta = gated_norm_set(trace.get(layer, "ys"), trace.get(layer, "in_proj")[:, :di], P["silu_z"],
                                  *P["gnorm"], ex.rsqrt_tab)
    if not np.array_equal(arrays["sz"][0], trace.get(layer, "sz")) or \
            not np.array_equal(arrays["y"][0], trace.get(layer, "y")):
        raise QsimError(f"golden: gated norm of layer {layer} disagrees with the executor's trace")
    meta["source"] = source(folder, layer, tokens=window.tolist())
    return arrays, meta


def mamba2_catalog(folder2: str | Path | None = None) -> dict:
    """Name -> builder of the Mamba-2 sets; empty while the Mamba-2 artifact (default ARTIFACT2) does not exist.

    Cheap: reads only the artifact's manifest.json (for the last layer's number)."""
    folder2 = Path(ARTIFACT2 if folder2 is None else folder2)
    if not (folder2 / "manifest.json").is_file():
        return {}
    last = json.loads((folder2 / "manifest.json").read_text())["model"]["config"]["n_layer"] - 1
    f = str(folder2)
    return {
        "ssd_real_l0": lambda: real_ssd(f, 0, REAL_TOKENS),
        f"ssd_real_l{last}": lambda: real_ssd(f, last, REAL_TOKENS),
        "ssd_edge_l0": lambda: edge_ssd(f, 0),
        "ssd_random_g2": ssd_random_g2,
        "gated_norm_real_l0": lambda: real_gated_norm(f, 0, REAL_TOKENS),
    }


def catalog(folder: str | Path = ARTIFACT, large: bool = False, folder2: str | Path | None = None) -> dict:
    """Name -> zero-argument builder of every set (committed, or the large on-demand ones).

    The Mamba-2 sets (cut from `folder2`, default ARTIFACT2) follow Mamba-1's while that folder exists."""
    folder = str(folder)
    qm, _ = quantized(folder)
    n_layer, model = qm.config.n_layer, qm.manifest["model"]["name"]
    if large:
        return {**{f"scan_{model}_l{i}_t{LARGE_TOKENS}": (lambda i=i: real_scan(folder, i, LARGE_TOKENS))
                   for i in range(n_layer)},
                **{f"hadamard_{model}_l{i}_t{LARGE_TOKENS}": (lambda i=i: real_hadamard(folder, i, LARGE_TOKENS))
                   for i in range(n_layer)},
                "hadamard_random_n1536": lambda: random_hadamard(4, 1536, 16)}
    last = n_layer - 1
    return {
        "scan_real_l0": lambda: real_scan(folder, 0, REAL_TOKENS),
        f"scan_real_l{last}": lambda: real_scan(folder, last, REAL_TOKENS),
        "scan_edge_l0": lambda: edge_scan(folder, 0),
        "scan_random_s16": lambda: random_scan(2, 8, 16, 8, 16, False),
        "scan_random_wide": lambda: random_scan(3, 4, 8, 8, 28, True),
        "hadamard_real_l0": lambda: real_hadamard(folder, 0, REAL_TOKENS),
        f"hadamard_real_l{last}": lambda: real_hadamard(folder, last, REAL_TOKENS),
        "hadamard_random_n64": lambda: random_hadamard(5, 64, 6),
        "hadamard_random_n192": lambda: random_hadamard(6, 192, 6),
        "hadamard_matrices": hadamard_matrix_set,
        "decay": decay_set,
        "rounding": rounding_set,
        "tables": lambda: table_set(folder),
        **mamba2_catalog(folder2),
    }


# ---------------------------------------------------------------- files
def npy_bytes(a: np.ndarray, dtype) -> bytes:
    """Exact conversion to the stored dtype (refuses values that would wrap)."""
    a = np.asarray(a)
    out = a.astype(dtype)
    if not np.array_equal(out.astype(np.int64), a.astype(np.int64)):
        raise QsimError(f"golden: values do not fit {np.dtype(dtype).name}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(out), allow_pickle=False)
    return buf.getvalue()


def render(name: str, arrays: dict, meta: dict) -> dict[str, bytes]:
    """The exact bytes of every file of one set, manifest included."""
    files = {f"{k}.npy": npy_bytes(a, dt) for k, (a, dt) in sorted(arrays.items())}
    manifest = {"set": name, "spec_version": spec.SPEC_VERSION, **meta,
                "files": {f: {"shape": list(np.asarray(arrays[f[:-4]][0]).shape),
                              "dtype": np.dtype(arrays[f[:-4]][1]).name,
                              "sha256": hashlib.sha256(b).hexdigest()} for f, b in files.items()}}
    files["manifest.json"] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    return files


def write_set(dest: Path, files: dict[str, bytes]) -> None:
    """Atomic: a sibling temporary folder renamed into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for f, b in files.items():
            (tmp / f).write_bytes(b)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load(name: str, root: Path = SETS) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest, arrays) of a stored set; checks each file's sha256."""
    folder = root / name
    manifest = json.loads((folder / "manifest.json").read_text())
    arrays = {}
    for f, info in manifest["files"].items():
        data = (folder / f).read_bytes()
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise QsimError(f"golden set {name}: {f} does not match its manifest sha256")
        arrays[f[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
    return manifest, arrays


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m golden", description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, default=ARTIFACT,
                    help=f"quantized artifact to cut the real-layer sets from (default {relative(ARTIFACT)})")
    ap.add_argument("--artifact2", type=Path, default=None,
                    help=f"Mamba-2 artifact to cut the ssd/gated_norm sets from (default {relative(ARTIFACT2)}; "
                         "those sets are left out while it does not exist)")
    ap.add_argument("--large", action="store_true", help=f"write the large sets to {LARGE} instead")
    ap.add_argument("--out", type=Path, help="folder to write into (default golden/sets or golden/large)")
    ap.add_argument("--check", action="store_true", help="regenerate in memory and compare with the stored sets")
    ap.add_argument("--only", nargs="*", help="set names to build")
    a = ap.parse_args(argv)
    root = a.out or (LARGE if a.large else SETS)
    try:
        sets = catalog(a.artifact, a.large, a.artifact2)
        unknown = sorted(set(a.only or ()) - set(sets))
        if unknown:
            raise QsimError(f"--only: no set named {', '.join(unknown)} in the catalogue "
                            f"(the Mamba-2 sets need {relative(a.artifact2 or ARTIFACT2)})")
        bad = 0
        for name, build in sets.items():
            if a.only and name not in a.only:
                continue
            files = render(name, *build())
            if a.check:
                stored = {p.name: p.read_bytes() for p in (root / name).glob("*")} if (root / name).is_dir() else {}
                diff = sorted(f for f in files.keys() | stored.keys() if files.get(f) != stored.get(f))
                bad += bool(diff)
                print(f"{name}: {'differs in ' + ', '.join(diff) if diff else 'identical'}")
            else:
                write_set(root / name, files)
                print(f"{name}: {sum(map(len, files.values()))} bytes -> {root / name}")
        return 1 if bad else 0
    except QsimError as exc:
        print(f"golden: {exc}", file=sys.stderr)
        return 2
