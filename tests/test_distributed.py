"""Ray: evaluation windows sharded over a local Ray with 2 CPUs give the plain run's figures, and
a sweep's points run as Ray tasks; an unreachable address is one line and exit 2."""

from __future__ import annotations

import json
import logging
import socket

import pytest
import ray

from qsim.cli import main
from qsim.distributed import blas_threads, split

RUN = ["--model", "mamba-tiny", "--bits", "w8a8", "--seq-len", "48", "--eval-seqs", "3",
       "--calib-samples", "2", "--calib-len", "64"]
GRID = """model = "mamba-tiny"
bits = "w8a8"
method = "quamba"
target = ["asic-28nm", "ecp5-85f"]

[run]
seq_len = 48
eval_seqs = 3
calib_samples = 2
calib_len = 64
"""
NOT_FIGURES = {"wall_time_s", "tokens_per_s", "date", "command", "ray", "memory"}  # memory: the peak RSS differs


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """conftest's isolated artifact cache, already for this module's fixtures (they precede its autouse one)."""
    path = str(tmp_path_factory.getbasetemp() / "qsim-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QSIM_CACHE", path)
        yield path


@pytest.fixture(scope="module")
def local_ray(cache):
    """A local Ray with 2 CPUs whose workers share that cache."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"QSIM_CACHE": cache, "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def plain(cache, tmp_path_factory):
    """The single-process run every Ray result is held to (it also calibrates the shared artifact)."""
    out = tmp_path_factory.mktemp("plain") / "plain.json"
    assert main(["run", *RUN, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_split_is_contiguous_and_balanced():
    bounds = lambda n, parts: [(r.start, r.stop) for r in split(n, parts)]
    assert bounds(3, 2) == [(0, 2), (2, 3)]
    assert bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert bounds(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_blas_threads_follow_openblas_rule(monkeypatch):
    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    cores = blas_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert blas_threads() == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", str(cores + 5))  # takes precedence, capped at the cores
    assert blas_threads() == cores


def test_sharded_run_equals_plain_run(local_ray, plain, tmp_path, capsys):
    out = tmp_path / "ray.json"
    assert main(["run", *RUN, "--ray", "--json", str(out)]) == 0
    assert "fixed" in capsys.readouterr().out
    sharded = json.loads(out.read_text())
    assert sharded["ray"] == {"address": "local", "shards": 2}  # 3 windows over the 2 CPUs
    assert sharded["artifact_cached"] and sharded["eval"]["tokens_evaluated"] == 3 * 47
    assert set(sharded) - NOT_FIGURES == set(plain) - NOT_FIGURES
    for key in set(plain) - NOT_FIGURES - {"artifact_cached"}:
        assert sharded[key] == plain[key], key  # exact: every figure, every layer's SQNR, every count
    assert set(sharded["tokens_per_s"]) == {"float", "quamba", "fixed"}


def test_sweep_points_as_ray_tasks(local_ray, plain, tmp_path):
    grid, out = tmp_path / "grid.toml", tmp_path / "sweep"
    grid.write_text(GRID)
    assert main(["sweep", "--grid", str(grid), "--ray", "--out", str(out)]) == 0
    lines = [json.loads(s) for s in (out / "results.jsonl").read_text().splitlines()]
    assert [ln["point"]["target"] for ln in lines] == ["asic-28nm", "ecp5-85f"]
    for ln in lines:  # the worker's run equals the driver's plain run
        row = ln["row"]
        assert row["perplexity"] == plain["perplexity"]
        assert row["mean_kl"] == {k: v["mean_kl"] for k, v in plain["agreement_vs_float"].items()}
    assert lines[0]["row"]["hardware"]["decode_nj_per_token"] < lines[1]["row"]["hardware"]["decode_nj_per_token"]
    assert (out / "summary.md").is_file() and (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("address,msg", [(None, "no Ray cluster reachable"),
                                         ("nohost", "not an address of the form HOST:PORT")])
def test_bad_address_one_line_exit_2(tmp_path, capsys, address, msg):
    address = address or f"127.0.0.1:{_closed_port()}"
    grid, out = tmp_path / "grid.toml", tmp_path / "sweep"
    grid.write_text(GRID)
    for argv in (["run", *RUN, "--ray", address, "--json", str(tmp_path / "r.json")],
                 ["sweep", "--grid", str(grid), "--ray", address, "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"--ray {address}: {msg}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]  # nothing written
