"""How far two calibrations of the same input may drift apart in different numeric environments.

Calibration runs float code (BLAS, numpy's SIMD loops, torch), whose last bits
depend on the CPU, the library's code path and the thread count, so artifacts
from two machines can differ (qsim/SPEC.md, section 14); the integer contract
does not depend on it because golden sets come from a committed artifact. What
may differ is bounded by this rule, set from mamba-tiny w8a8 under the seven
environments of tests/numeric_envs.py (scales moved by at most 9.1e-7 relative,
integers by one unit plus at most 6.0e-7 of their magnitude, e.g. Dq by 12 of
2.6e7; a 15-bit multiplier by one unit). Ranges are now snapped (calib.observers.snap_range), and
the w8a8 artifact comes out identical in all seven; w4a8's GPTQ, whose float Hessians the snap does
not reach, moved 8 int4 codes of one out_proj by one in three of them:

* every real (a scale) within SCALE_REL relative;
* every integer rounded from a real within 1 unit plus INT_REL relative;
* every (multiplier, shift) pair, as the value M / 2**S, within PAIR_REL relative
  (one unit of a 15-bit M is up to 2**-14 of it);
* everything else (shapes, dtypes, strings, configuration) identical.

`compare` returns the number of elements that differ per entry, so a report
can say how many moved, and the violations of the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qsim.qweights import unpack_int4

SCALE_REL = 2.0**-18  # 3.8e-6: ~6x the largest scale drift measured
INT_REL = 2.0**-16
PAIR_REL = 2.0**-13
IGNORED = {"weights_sha256"}  # a digest of the tensors, which are compared themselves
PAIRED = {"rq_m": "rq_s", "m_y": "s_y"}  # per-channel multiplier tensors -> their shifts (last name component)


@dataclass
class Drift:
    moved: dict[str, int] = field(default_factory=dict)  # entry -> elements that differ (within the rule)
    violations: list[str] = field(default_factory=list)

    def note(self, name: str, count: int) -> None:
        if count:
            self.moved[name] = self.moved.get(name, 0) + count


def _ints(d: Drift, name: str, a, b) -> None:
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if a.shape != b.shape:
        d.violations.append(f"{name}: shape {a.shape} vs {b.shape}")
        return
    diff = np.abs(a - b)
    bad = diff > 1 + INT_REL * np.abs(a)
    if bad.any():
        j = int(np.argmax(bad))
        d.violations.append(f"{name}: {int(bad.sum())} integers moved too far, e.g. {a.flat[j]} vs {b.flat[j]}")
    d.note(name, int(np.count_nonzero(diff)))


def _reals(d: Drift, name: str, a, b) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        d.violations.append(f"{name}: shape {a.shape} vs {b.shape}")
        return
    bad = np.abs(a - b) > SCALE_REL * np.abs(a)
    if bad.any():
        j = int(np.argmax(bad))
        d.violations.append(f"{name}: {int(bad.sum())} reals beyond {SCALE_REL:.1e} relative, "
                            f"e.g. {a.flat[j]!r} vs {b.flat[j]!r}")
    d.note(name, int(np.count_nonzero(a != b)))


def _pairs(d: Drift, name: str, ma, sa, mb, sb) -> None:
    va = np.asarray(ma, np.float64) * np.exp2(-np.asarray(sa, np.float64))
    vb = np.asarray(mb, np.float64) * np.exp2(-np.asarray(sb, np.float64))
    bad = np.abs(va - vb) > PAIR_REL * va
    if bad.any():
        d.violations.append(f"{name}: {int(bad.sum())} multipliers beyond {PAIR_REL:.1e} relative")
    d.note(name, int(np.count_nonzero((np.asarray(ma) != np.asarray(mb)) | (np.asarray(sa) != np.asarray(sb)))))


def _manifest(d: Drift, name: str, a, b) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            d.violations.append(f"{name}: keys differ ({sorted(a.keys() ^ b.keys())})")
            return
        if {"m", "s"} <= a.keys():
            _pairs(d, f"{name}.m/s", a["m"], a["s"], b["m"], b["s"])
        if {"m_h", "s_h"} <= a.keys():
            _pairs(d, f"{name}.m_h/s_h", a["m_h"], a["s_h"], b["m_h"], b["s_h"])
        for k in a.keys() - IGNORED - {"m", "s", "m_h", "s_h"}:
            _manifest(d, f"{name}.{k}", a[k], b[k])
    elif isinstance(a, list) and a and all(isinstance(v, int) for v in a):
        _ints(d, name, a, b)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (p, q) in enumerate(zip(a, b)):
            _manifest(d, f"{name}[{i}]", p, q)
    elif isinstance(a, float) and isinstance(b, float):
        _reals(d, name, a, b)
    elif isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
        _ints(d, name, a, b)
    elif a != b:
        d.violations.append(f"{name}: {a!r} vs {b!r}")


def compare(a, b) -> Drift:
    """Drift of artifact b from artifact a (QuantizedModels) under the rule above."""
    d = Drift()
    _manifest(d, "manifest", a.manifest, b.manifest)
    if a.tensors.keys() != b.tensors.keys():
        d.violations.append(f"tensors differ: {sorted(a.tensors.keys() ^ b.tensors.keys())}")
    for name in sorted(a.tensors.keys() & b.tensors.keys()):
        ta, tb = a.tensors[name], b.tensors[name]
        base, _, leaf = name.rpartition(".")
        if ta.dtype != tb.dtype:
            d.violations.append(f"{name}: dtype {ta.dtype} vs {tb.dtype}")
        elif leaf in PAIRED:
            s_name = f"{base}.{PAIRED[leaf]}"
            _pairs(d, f"{name}/{PAIRED[leaf]}", ta, a.tensors[s_name], tb, b.tensors[s_name])
        elif leaf in PAIRED.values():
            continue  # compared with its multiplier
        elif name.endswith(".q4"):
            _ints(d, name, unpack_int4(ta, 2 * ta.shape[1]), unpack_int4(tb, 2 * tb.shape[1]))
        elif ta.dtype.kind == "f":
            _reals(d, name, ta, tb)
        else:
            _ints(d, name, ta, tb)
    return d
