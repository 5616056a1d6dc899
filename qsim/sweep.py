"""`qsim sweep`: a grid of (model, bits, method, state_bits, alpha, target) points, resumable.

Grid file (TOML). Each axis is a scalar or a list; the points are their
product, in the order model, bits, method, state_bits, alpha, target (the last
varying fastest). An axis left out takes `qsim run`'s default. `alpha` only applies to
recipes that clip the SSM input by a percentile (quamba, quamba-rot); for the
others it collapses to one point with alpha null. The optional `[run]` table
holds the settings every point shares:

    model = "mamba-tiny"
    bits = ["w8a8", "w4a8"]
    method = ["rtn", "smoothquant", "quamba"]
    state_bits = [20, 24]
    alpha = [0.999, 0.99999]
    target = ["asic-28nm", "ecp5-85f"]

    [run]                # these are the defaults
    seq_len = 256
    eval_seqs = 4
    eval_text = "shakespeare/valid.txt"
    calib_samples = 16
    calib_len = 256
    calib_text = "shakespeare/calib.txt"
    smooth_alpha = 0.5
    prompt_len = 1024    # prefill length of the cost model

Points that differ only in `target` share one `qsim run` (the target only
enters the cost model). Each finished point is one line of
`OUT/results.jsonl`, written in one call and flushed, so an interrupted sweep
resumes where it stopped; then `OUT/summary.md` and `OUT/pareto.png`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from qsim import run as runner
from qsim import spec
from qsim.calib_settings import CalibSettings
from qsim.compare import hardware_cost, pareto, summarize
from qsim.errors import QsimError
from qsim.fileio import write_text_atomic

RESULTS, SUMMARY, PLOT = "results.jsonl", "summary.md", "pareto.png"


@dataclass(frozen=True)
class Point:
    model: str = runner.RunOptions.model
    bits: str = runner.RunOptions.bits
    method: str = CalibSettings.method
    state_bits: int = CalibSettings.state_bits
    alpha: float | None = CalibSettings.alpha  # None: the recipe does not clip by a percentile
    target: str = "asic-28nm"


@dataclass(frozen=True)
class Shared:
    """The [run] table: settings of every point."""

    seq_len: int = runner.RunOptions.seq_len
    eval_seqs: int = runner.RunOptions.eval_seqs
    eval_text: str = runner.RunOptions.eval_text
    calib_samples: int = CalibSettings.samples
    calib_len: int = CalibSettings.seq_len
    calib_text: str = CalibSettings.text
    smooth_alpha: float = CalibSettings.smooth_alpha
    prompt_len: int = 1024


@dataclass(frozen=True)
class Grid:
    path: Path
    points: list[Point]
    shared: Shared


# ---- the grid file ----------------------------------------------------------------------------------------------

def _check_model(v):
    from qsim.hw.shapes import model_shape

    model_shape(v)


def _check_bits(v):
    from qsim.bits import preset

    if preset(v).weight_bits == 16:
        raise QsimError("nothing to quantize; a sweep needs a quantized preset (w8a8, w4a8, w4a16)")


def _check_method(v):
    from calib.recipes import get

    get(v)


def _check_state_bits(v):
    if not spec.STATE_BITS_MIN <= v <= spec.STATE_BITS_MAX:
        raise QsimError(f"must be in [{spec.STATE_BITS_MIN}, {spec.STATE_BITS_MAX}]")


def _check_unit(v):
    if not 0.0 < v <= 1.0:
        raise QsimError("must be in (0, 1]")


def _check_open_unit(v):
    if not 0.0 < v < 1.0:
        raise QsimError("must be in (0, 1)")


def _check_target(v):
    from qsim.hw.target import load_target

    load_target(v)


def _check_text(v):
    from qsim.text import read_text

    read_text(v)


def _at_least(n):
    def check(v):
        if v < n:
            raise QsimError(f"must be >= {n}")
    return check


# key -> (type, check); a check raises QsimError with the reason
AXES = {"model": (str, _check_model), "bits": (str, _check_bits), "method": (str, _check_method),
        "state_bits": (int, _check_state_bits), "alpha": (float, _check_unit), "target": (str, _check_target)}
RUN_KEYS = {"seq_len": (int, _at_least(2)), "eval_seqs": (int, _at_least(1)), "eval_text": (str, _check_text),
            "calib_samples": (int, _at_least(1)), "calib_len": (int, _at_least(1)), "calib_text": (str, _check_text),
            "smooth_alpha": (float, _check_open_unit), "prompt_len": (int, _at_least(1))}
_HEADER = re.compile(r"\s*\[\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*\]\s*(#.*)?$")


def key_line(text: str, table: str | None, key: str) -> int | None:
    """The line that sets `key` in `table` (None: the top level; a table's own header counts as its key)."""
    current = None
    assign = re.compile(rf"\s*([\"']?){re.escape(key)}\1\s*=")
    for n, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            current = header.group(1).strip("\"'")
            if table is None and current == key:
                return n
        elif current == table and assign.match(line):
            return n
    return None


def _typed(v, kind) -> bool:
    if kind is float:
        return isinstance(v, int | float) and not isinstance(v, bool)
    return isinstance(v, kind) and not isinstance(v, bool)


def load_grid(path: Path) -> Grid:
    """Parse and check the whole grid before any work; an error names the file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QsimError(f"--grid {path}: cannot read ({exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise QsimError(f"{path}: not valid TOML ({exc})") from None

    def fail(table, key, msg):
        line = key_line(text, table, key)
        name = f"[{table}] {key}" if table else key
        return QsimError(f"{path}:{line}: {name}: {msg}" if line else f"{path}: {name}: {msg}")

    def values(table, key, v, kind, check, listed: bool) -> list:
        items = v if listed and isinstance(v, list) else [v]
        if not items:
            raise fail(table, key, "empty list")
        for item in items:
            if not _typed(item, kind):
                what = {int: "an integer", float: "a number", str: "a string"}[kind] + (" or a list" if listed else "")
                raise fail(table, key, f"{item!r} is not {what}")
            try:
                check(item)
            except QsimError as exc:
                raise fail(table, key, f"{item!r}: {exc}") from None
        return [float(i) if kind is float else i for i in items]

    valid = [*AXES, "run"]
    for key in raw:
        if key not in valid:
            raise fail(None, key, f"unknown key (valid: {', '.join(valid)})")
    run_table = raw.get("run", {})
    if not isinstance(run_table, dict):
        raise fail(None, "run", "must be a table ([run])")
    for key in run_table:
        if key not in RUN_KEYS:
            raise fail("run", key, f"unknown key (valid: {', '.join(RUN_KEYS)})")
    axes = {k: values(None, k, raw[k], *AXES[k], listed=True) if k in raw else [getattr(Point, k)] for k in AXES}
    shared = Shared(**{k: values("run", k, v, *RUN_KEYS[k], listed=False)[0] for k, v in run_table.items()})
    return Grid(path, _points(axes), shared)


def _points(axes: dict[str, list]) -> list[Point]:
    """The axes' product in file order; alpha is dropped (None) for recipes that do not clip by a percentile."""
    from calib.recipes import get

    out = {}
    for combo in itertools.product(*axes.values()):
        p = Point(**dict(zip(axes, combo)))
        if not get(p.method).percentile:
            p = Point(**{**asdict(p), "alpha": None})
        out.setdefault(p, None)
    return list(out)


# ---- running the points -----------------------------------------------------------------------------------------

def identity(p: Point, shared: Shared) -> str:
    """What makes a result reusable: the point, the shared settings and the spec version."""
    return json.dumps({"point": asdict(p), "run": asdict(shared), "spec": spec.SPEC_VERSION}, sort_keys=True)


def run_options(p: Point, shared: Shared) -> runner.RunOptions:
    calib = CalibSettings(samples=shared.calib_samples, seq_len=shared.calib_len, text=shared.calib_text,
                          method=p.method, alpha=CalibSettings.alpha if p.alpha is None else p.alpha,
                          state_bits=p.state_bits, smooth_alpha=shared.smooth_alpha)
    return runner.RunOptions(model=p.model, bits=p.bits, seq_len=shared.seq_len, eval_seqs=shared.eval_seqs,
                             eval_text=shared.eval_text, calib=calib)


def run_group(points: list[Point], shared: Shared) -> list[dict]:
    """One `qsim run` for points that differ only in target; one result line per point."""
    r = runner.run(run_options(points[0], shared))
    lines = []
    for p in points:
        cost = hardware_cost(p.model, p.bits, r["datapath_features"], p.target, shared.prompt_len)
        row = summarize(r, p.method, p.alpha, cost)
        lines.append({"point": asdict(p), "run": asdict(shared), "spec": spec.SPEC_VERSION, "row": row,
                      "weights": r["weights"], "accuracy_meaningful": r["accuracy_meaningful"],
                      "tokens_evaluated": r["eval"]["tokens_evaluated"], "wall_time_s": r["wall_time_s"],
                      "date": r["date"]})
    return lines


def read_results(path: Path) -> dict[str, dict]:
    """Finished points by identity; a line torn by a crash mid-write is not a result and is skipped."""
    done = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                done.setdefault(json.dumps({k: r[k] for k in ("point", "run", "spec")}, sort_keys=True), r)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def append_line(path: Path, obj: dict) -> None:
    """One whole line appended in one write, then synced: a reader never sees half a result."""
    data = (json.dumps(obj, allow_nan=True) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # after a torn line, start a fresh one
        if os.write(fd, data) != len(data):
            raise OSError(f"{path}: short write")
        os.fsync(fd)
    finally:
        os.close(fd)


def _groups(points: list[Point]) -> list[list[Point]]:
    by_run: dict[Point, list[Point]] = {}
    for p in points:
        by_run.setdefault(Point(**{**asdict(p), "target": ""}), []).append(p)
    return list(by_run.values())


def _execute(groups: list[list[Point]], shared: Shared, address: str | None, done_one) -> None:
    """Each group in this process, or each as a Ray task; done_one(lines) as each finishes."""
    if address is None:
        for g in groups:
            done_one(run_group(g, shared))
        return
    import ray

    from qsim.distributed import gather, remote

    task = remote(run_group)
    pending = [task.remote(g, shared) for g in groups]
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done_one(gather(ready)[0])
    finally:
        for ref in pending:
            ray.cancel(ref)


def sweep(grid_path: Path, out: Path | None = None, address: str | None = None) -> dict:
    """Run the grid's unfinished points (in this process, or as Ray tasks at `address`), then summarize."""
    from qsim.progress import progress

    grid = load_grid(grid_path)
    if address is not None:
        from qsim.distributed import connect

        connect(address)
    out = Path(out) if out else Path("reports/sweeps") / grid.path.stem
    results = out / RESULTS
    done = read_results(results)
    todo = [p for p in grid.points if identity(p, grid.shared) not in done]
    bar = progress(total=len(grid.points), initial=len(grid.points) - len(todo), desc=f"sweep {out.name}",
                   unit="point", leave=True)

    def finished(lines: list[dict]) -> None:
        for line in lines:
            append_line(results, line)
            done[identity(Point(**line["point"]), grid.shared)] = line
        bar.update(len(lines))

    with bar:
        _execute(_groups(todo), grid.shared, address, finished)
    lines = [done[identity(p, grid.shared)] for p in grid.points]
    summary = {"grid": str(grid.path), "out": str(out), "computed": len(todo), "lines": lines,
               "front": pareto([ln["row"] for ln in lines])}
    write_text_atomic(out / SUMMARY, summary_markdown(summary))
    _plot(lines, summary["front"], out / PLOT)
    return summary


# ---- the summary ------------------------------------------------------------------------------------------------

def _varying(lines: list[dict]) -> list[str]:
    return [k for k in ("model", "state_bits", "target") if len({ln["point"][k] for ln in lines}) > 1]


def _plot(lines: list[dict], front: list[int], path: Path) -> None:
    """compare's figure, each point labelled by its method and the other axes that vary."""
    from qsim.compare_plot import plot

    extra = _varying(lines)
    rows = []
    for i, ln in enumerate(lines):
        label = " ".join([ln["row"]["method"], *(f"{k}={ln['point'][k]}" for k in extra)])
        rows.append({**ln["row"], "method": label, "pareto": i in front})
    points = [ln["point"] for ln in lines]
    plot({"rows": rows, "model": ", ".join(dict.fromkeys(p["model"] for p in points)),
          "target": ", ".join(dict.fromkeys(p["target"] for p in points))}, path)


def _f(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def summary_markdown(s: dict) -> str:
    lines, front = s["lines"], set(s["front"])
    first = lines[0]
    out = [f"# Sweep {Path(s['out']).name}", "",
           (f"Grid `{s['grid']}`: {len(lines)} points ({s['computed']} computed in the last call, the rest read "
            f"from `{RESULTS}`); spec {first['spec']}; evaluation {first['tokens_evaluated']} tokens of "
            f"`{first['run']['eval_text']}` per point; written {datetime.now(UTC).isoformat(timespec='seconds')}."),
           "",
           ("| model | bits | method | alpha | state bits | target | ppl float | ppl quamba | ppl fixed "
            "| top-1 fixed | KL quamba | KL fixed | decode nJ/token | decode cycles/token | Pareto |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, ln in enumerate(lines):
        p, r = ln["point"], ln["row"]
        ppl, kl, hw = r["perplexity"], r["mean_kl"], r["hardware"]
        out.append(f"| {p['model']} | {p['bits']} | {p['method']} | {_f(p['alpha'], 'g')} | {p['state_bits']} "
                   f"| {p['target']} | {ppl['float']:.4f} | {ppl['quamba']:.4f} | {_f(ppl.get('fixed'), '.4f')} "
                   f"| {_f(r['top1'].get('fixed'), '.3f')} | {kl['quamba']:.5f} | {_f(kl.get('fixed'), '.5f')} "
                   f"| {hw['decode_nj_per_token']:.1f} | {hw['decode_cycles_per_token']} | {'*' if i in front else ''} |")
    out += ["", ("Pareto: no other point has both a lower KL against float (the fixed datapath's; quamba's "
                 "where fixed is n/a) and a lower decode energy per token (one decode step in the cost model, with "
                 f"the recipe's run-time work). Plot: `{PLOT}`.")]
    if not all(ln["accuracy_meaningful"] for ln in lines):
        out += ["", "!! SYNTHETIC WEIGHTS in some points: their accuracy figures are not meaningful."]
    return "\n".join(out) + "\n"

