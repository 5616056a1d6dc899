"""The latency model's free parameters fitted on published GPU latency, and leave-one-out errors.

Fit subset: every [[gpu]] entry of qsim/hw/published.toml with a TPOT or TTFT figure (the
out-of-memory entries only check capacity; the FPGA entry is no GPU). Fitted on it: eta and tau of
each device it has points on (orin-nano-8g, a5000), eps of both tensor-core classes and kappa,
shared by the devices. Not fitted: the H100's eta is its measured read bandwidth over its
datasheet figure, and its tau is the A5000's (assumed: no published H100 point exists).

Least squares on relative errors. Time is linear in (1/eta, tau, 1/eps, kappa) once each
operation's bound (compute or memory) is fixed, so each fit is closed-form (numpy lstsq); the
bounds start at the roofline's (efficiencies 1, no overhead) and are re-decided from the fitted
values until they stop changing. No random start: the fit is deterministic. Leave-one-out: each
point is predicted by the parameters fitted on all the other points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsim.bits import preset
from qsim.errors import QsimError
from qsim.hw.compare import PUBLISHED, read_published
from qsim.hw.devices import DEVICES, Device, device
from qsim.hw.devices import predict as roofline
from qsim.hw.latency import (
    CLASSES,
    Implementation,
    LatencyParams,
    Work,
    pass_work,
    seconds,
    terms,
)
from qsim.hw.measured import BENCH_PROMPT_LEN
from qsim.hw.shapes import model_shape

TARGETS = {"TPOT": 0.20, "TTFT": 0.35}  # issue 15: leave-one-out relative error every point must meet
BORROWED_TAU = {"h100-sxm": "a5000"}  # device -> the fitted device whose per-kernel time it is assumed to share
MAX_ROUNDS = 20
UNITS = {"eta": "fraction of datasheet bandwidth", "tau": "us per kernel", "eps": "fraction of dense peak",
         "kappa": "ALU instructions per int4 weight per token"}


@dataclass(frozen=True)
class Point:
    """One published figure and what its implementation runs."""

    device: str
    model: str
    bits: str
    method: str
    metric: str  # "TPOT" or "TTFT"
    prompt_len: int
    published_ms: float
    impl: Implementation
    source: str

    def work(self) -> list[Work]:
        decode = self.metric == "TPOT"
        return pass_work(model_shape(self.model), preset(self.bits), self.impl, 1 if decode else self.prompt_len,
                         decode)

    def roofline_ms(self) -> float:
        p = roofline(model_shape(self.model), preset(self.bits), device(self.device), self.prompt_len)
        return p.tpot_ms if self.metric == "TPOT" else p.ttft_ms


def points(path: Path = PUBLISHED) -> list[Point]:
    raw = read_published(path)
    found = []
    try:
        for e in raw.get("gpu", []):
            if e.get("oom"):
                continue
            impl = Implementation(bool(e["online_hadamard"]), bool(e["per_token_scales"]), int(e["state_bits"]))
            for metric in ("TPOT", "TTFT"):
                key = f"{metric.lower()}_ms"
                if key in e:
                    found.append(Point(e["device"], e["model"], e["bits"], e["method"], metric,
                                       int(e.get("prompt_len", BENCH_PROMPT_LEN)), float(e[key]), impl,
                                       raw["sources"][e["source"]]))
    except (KeyError, TypeError, ValueError) as exc:
        raise QsimError(f"{path}: bad [[gpu]] entry for the latency fit ({type(exc).__name__}: {exc})") from None
    return found


def _start(devices: list[str]) -> LatencyParams:
    """The roofline: every efficiency 1, no per-kernel time, no dequantization."""
    return LatencyParams({d: 1.0 for d in devices}, {d: 0.0 for d in devices}, {c: 1.0 for c in CLASSES}, 0.0)


def fit(pts: list[Point]) -> LatencyParams:
    """eta and tau of every device in `pts`, eps of both classes and kappa, by least relative squares."""
    works = [(p.work(), device(p.device)) for p in pts]
    y = np.array([p.published_ms * 1e-3 for p in pts])
    params, rows, names = _start(sorted({p.device for p in pts})), None, []
    for _ in range(MAX_ROUNDS):
        new_rows = [terms(w, dev, params) for w, dev in works]
        if new_rows == rows:
            missing = sorted(set(params.linear()) - set(names))
            if missing:
                raise QsimError(f"latency fit: {len(pts)} points do not determine {', '.join(missing)}")
            return params
        rows = new_rows
        names = sorted({n for r in rows for n in r})
        a = np.array([[r.get(n, 0.0) for n in names] for r in rows]) / y[:, None]
        if np.linalg.matrix_rank(a) < len(names):
            raise QsimError(f"latency fit: {len(pts)} points do not determine all of {', '.join(names)}")
        theta = np.linalg.lstsq(a, np.ones(len(pts)), rcond=None)[0]
        bad = [n for n, v in zip(names, theta) if v <= 0]
        if bad:
            raise QsimError(f"latency fit: non-positive {', '.join(bad)} (an effect the points contradict)")
        params = LatencyParams.from_linear(params.linear() | dict(zip(names, theta.tolist())))
    raise QsimError(f"latency fit: the operations' bounds did not settle in {MAX_ROUNDS} rounds")


def complete(params: LatencyParams) -> LatencyParams:
    """`params` with the devices that have no published point: eta from a measured bandwidth,
    tau borrowed (BORROWED_TAU)."""
    eta, tau = dict(params.eta), dict(params.tau_s)
    for name, dev in DEVICES.items():
        if name not in eta and dev.measured_gb_per_s:
            eta[name] = dev.measured_gb_per_s / dev.datasheet_gb_per_s
        if name not in tau and BORROWED_TAU.get(name) in tau:
            tau[name] = tau[BORROWED_TAU[name]]
    return LatencyParams(eta, tau, params.eps, params.kappa)


@dataclass(frozen=True)
class PointResult:
    point: Point
    roofline_ms: float
    fitted_ms: float  # by the fit on every point
    loo_ms: float  # by the fit on every other point

    @property
    def loo_error(self) -> float:
        return (self.loo_ms - self.point.published_ms) / self.point.published_ms

    @property
    def within_target(self) -> bool:
        return abs(self.loo_error) <= TARGETS[self.point.metric]


def leave_one_out(pts: list[Point]) -> list[PointResult]:
    full = fit(pts)
    out = []
    for i, p in enumerate(pts):
        dev: Device = device(p.device)
        loo = fit(pts[:i] + pts[i + 1:])
        out.append(PointResult(p, p.roofline_ms(), seconds(p.work(), dev, full) * 1e3,
                               seconds(p.work(), dev, loo) * 1e3))
    return out


def parameter_rows(params: LatencyParams, fitted: LatencyParams, pts: list[Point]) -> list[list[str]]:
    """name, value, unit, basis: fitted (on how many of the points it enters), measured, or assumed."""
    support: dict[str, int] = {}
    for p in pts:
        for name in terms(p.work(), device(p.device), fitted):
            support[name] = support.get(name, 0) + 1

    def fitted_on(name: str) -> str:
        return f"fitted on {len(pts)} published points; enters {support[name]} of them"

    rows = []
    for d, v in params.eta.items():
        dev = DEVICES[d]
        basis = (fitted_on(f"eta:{d}") if d in fitted.eta else
                 f"measured: {dev.measured_gb_per_s:g} of {dev.datasheet_gb_per_s:g} GB/s read "
                 f"(qsim/hw/SOURCES.md, {d})")
        rows.append([f"eta[{d}]", f"{v:.3f}", UNITS["eta"], basis])
    for d, v in params.tau_s.items():
        basis = (fitted_on(f"tau:{d}") if d in fitted.tau_s else
                 f"assumed: {BORROWED_TAU[d]}'s value (no published {d} point)")
        rows.append([f"tau[{d}]", f"{v * 1e6:.2f}", UNITS["tau"], basis])
    rows += [[f"eps[{c}]", f"{v:.3f}", UNITS["eps"], fitted_on(f"eps:{c}")] for c, v in params.eps.items()]
    rows.append(["kappa", f"{params.kappa:.4f}", UNITS["kappa"], fitted_on("kappa")])
    return rows
