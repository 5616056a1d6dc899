"""`qsim sweep`: an interrupted sweep resumes without redoing finished points; bad grids name key and line."""

from __future__ import annotations

import json
import re

import pytest

from qsim import run as runner
from qsim.cli import main
from qsim.sweep import append_line, key_line, load_grid, read_results

GRID = """# two recipes, one run each; the alpha axis only applies to quamba
model = "mamba-tiny"
bits = "w8a8"
method = ["rtn", "quamba"]
alpha = [1.0]
target = "asic-28nm"

[run]
seq_len = 32
eval_seqs = 1
calib_samples = 1
calib_len = 32
"""


def _counting(monkeypatch, fail_on: int | None = None) -> list:
    """Replace qsim.run.run by a wrapper that records each call and is interrupted (Ctrl-C) on call `fail_on`."""
    calls, real = [], runner.run

    def run(opts):
        calls.append(opts.calib.method)
        if len(calls) == fail_on:
            raise KeyboardInterrupt
        return real(opts)

    monkeypatch.setattr(runner, "run", run)
    return calls


def test_interrupted_sweep_resumes_without_redoing_finished_points(tmp_path, monkeypatch, capsys):
    grid, out = tmp_path / "grid.toml", tmp_path / "sweep"
    grid.write_text(GRID)
    argv = ["sweep", "--grid", str(grid), "--out", str(out)]
    results = out / "results.jsonl"

    calls = _counting(monkeypatch, fail_on=2)
    assert main(argv) == 130  # interrupted during the second point
    assert calls == ["rtn", "quamba"]
    first = results.read_text()
    assert len(first.splitlines()) == 1 and json.loads(first)["point"]["method"] == "rtn"
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl"]  # no summary of a half sweep

    calls = _counting(monkeypatch)
    assert main(argv) == 0
    assert calls == ["quamba"]  # the finished point is not computed again
    text = results.read_text()
    assert text.startswith(first) and len(text.splitlines()) == 2
    rows = [json.loads(s) for s in text.splitlines()]
    assert [(r["point"]["method"], r["point"]["alpha"]) for r in rows] == [("rtn", None), ("quamba", 1.0)]
    for r in rows:
        assert set(r["row"]["perplexity"]) == {"float", "quamba", "fixed"} and r["tokens_evaluated"] == 31
        assert r["row"]["hardware"]["target"] == "asic-28nm" and r["row"]["hardware"]["decode_nj_per_token"] > 0
    summary = (out / "summary.md").read_text()
    table = [s for s in summary.splitlines() if s.startswith("| mamba-tiny")]
    assert len(table) == 2 and "| rtn |" in table[0] and "| quamba | 1 |" in table[1]
    assert any(s.endswith("| * |") for s in table)  # the Pareto front is marked
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| rtn |" in capsys.readouterr().out

    calls = _counting(monkeypatch)
    assert main(argv) == 0 and calls == []  # a rerun of a finished sweep computes nothing
    assert results.read_text() == text


def test_results_survive_a_torn_line(tmp_path):
    path = tmp_path / "results.jsonl"
    line = {"point": {"method": "rtn"}, "run": {}, "spec": "x", "row": 1}
    append_line(path, line)
    with open(path, "a") as f:
        f.write('{"point": {"method": "quam')  # a crash in the middle of a write
    append_line(path, {**line, "point": {"method": "quamba"}})
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["point"]["method"] == "quamba"
    assert [r["point"]["method"] for r in read_results(path).values()] == ["rtn", "quamba"]


def test_key_line_finds_keys_in_their_table():
    text = 'bits = [\n  "w8a8",\n]\n[run]\nbits = 3\n"seq_len" = 4\n[other]\n'
    assert key_line(text, None, "bits") == 1
    assert key_line(text, "run", "bits") == 5
    assert key_line(text, "run", "seq_len") == 6
    assert key_line(text, None, "other") == 7
    assert key_line(text, None, "missing") is None


def test_alpha_collapses_for_recipes_without_percentile(tmp_path):
    g = tmp_path / "g.toml"
    g.write_text('method = ["rtn", "quamba"]\nalpha = [0.999, 1.0]\nstate_bits = [20, 24]\n')
    pts = [(p.method, p.alpha, p.state_bits) for p in load_grid(g).points]
    assert pts == [("rtn", None, 20), ("rtn", None, 24), ("quamba", 0.999, 20), ("quamba", 1.0, 20),
                   ("quamba", 0.999, 24), ("quamba", 1.0, 24)]  # the axes' order, the last varying fastest


@pytest.mark.parametrize("edit,line,msg", [
    (("target", "targets"), 6, "targets: unknown key (valid: model, bits, method, state_bits, alpha, target, run)"),
    (('method = ["rtn", "quamba"]', 'method = [\n  "rtn",\n  "bogus",\n]'), 4,
     "method: 'bogus': --method bogus: unknown recipe"),
    (("alpha = [1.0]", "alpha = [0.5, 1.5]"), 5, "alpha: 1.5: must be in (0, 1]"),
    (('bits = "w8a8"', 'bits = "fp16"'), 3, "bits: 'fp16': nothing to quantize"),
    (('bits = "w8a8"', 'bits = "w9a9"'), 3, "bits: 'w9a9': --bits 'w9a9': unknown preset"),
    (('model = "mamba-tiny"', 'model = "no/such/folder"'), 2, "model: 'no/such/folder': --model"),
    (('target = "asic-28nm"', 'target = ["asic-28nm", 7]'), 6, "target: 7 is not a string or a list"),
    (("alpha = [1.0]", "alpha = []"), 5, "alpha: empty list"),
    (("seq_len = 32", "seq_len = 1"), 9, "[run] seq_len: 1: must be >= 2"),
    (("eval_seqs = 1", "eval_seqs = [1, 2]"), 10, "[run] eval_seqs: [1, 2] is not an integer"),
    (("calib_len = 32", "calib_length = 32"), 12, "[run] calib_length: unknown key (valid: seq_len,"),
    (("[run]", "[eval]"), 8, "eval: unknown key"),
    (("calib_samples = 1", 'calib_text = "nowhere.txt"'), 11, "[run] calib_text: 'nowhere.txt':"),
])
def test_bad_grid_names_key_and_line(tmp_path, capsys, edit, line, msg):
    grid, out = tmp_path / "grid.toml", tmp_path / "sweep"
    assert edit[0] in GRID
    grid.write_text(GRID.replace(edit[0], edit[1]))
    assert main(["sweep", "--grid", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{grid}:{line}: {msg}" in err, err
    assert not out.exists()


def test_invalid_toml_and_missing_file(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('bits = "w8a8"\nmethod = [rtn]\n')
    assert main(["sweep", "--grid", str(grid)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(r"not valid TOML \(.*line 2", err), err
    assert main(["sweep", "--grid", str(tmp_path / "none.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err
