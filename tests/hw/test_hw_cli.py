"""`estimate` and `report` through argparse, as `python -m qsim` will register them."""

import argparse
import json

import pytest

from qsim.bits import PRESETS
from qsim.config import MambaConfig
from qsim.errors import QsimError
from qsim.hw.cli import add_parsers
from qsim.hw.shapes import model_names
from qsim.hw.target import preset_names
from qsim.hw.units import scan_unit_cycles


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="qsim")
    add_parsers(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("target", preset_names())
def test_estimate_answers_for_every_model_and_preset(target, tmp_path, capsys):
    for model in model_names():
        for bits in PRESETS:
            assert run("estimate", "--model", model, "--bits", bits, "--target", target, "--prompt-len", "64",
                       "--reports", str(tmp_path)) == 0
            out = capsys.readouterr().out
            assert "prefill, 64 tokens" in out and "tokens/J" in out and "J/token" in out


def test_estimate_json(tmp_path, capsys):
    path = tmp_path / "out" / "e.json"
    assert run("estimate", "--model", "mamba-130m", "--target", "ecp5-85f", "--json", str(path),
               "--reports", str(tmp_path)) == 0
    data = json.loads(path.read_text())
    assert data["bits"] == "w8a8" and data["prompt_len"] == 1024 and data["rules"]
    assert "preset clock used" in data["clock_source"]
    for phase in ("prefill", "decode"):
        p = data[phase]
        assert p["cycles"] == sum(o["cycles"] for o in p["ops"])
        assert sum(o["energy_share"] for o in p["ops"]) == pytest.approx(1.0)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (("--model", "mamba-130m", "--bits", "w2a2"), "unknown preset"),
    (("--model", "mamba-130m", "--target", "tpu"), "not a preset"),
    (("--model", "mamba-130m", "--prompt-len", "0"), "--prompt-len"),
])
def test_estimate_bad_input_is_one_qsim_error(argv, message):
    with pytest.raises(QsimError, match=message):
        run("estimate", *argv)


def test_report_without_measurements_says_what_is_missing(tmp_path):
    out = tmp_path / "hw"
    stale = out / "pareto.png"
    out.mkdir()
    stale.write_bytes(b"old")
    assert run("report", "--reports", str(tmp_path), "--out", str(out), "--prompt-len", "128") == 0
    for name in ("summary.md", "estimates.json", "breakdown_time.png", "breakdown_energy.png", "latency.png"):
        assert (out / name).stat().st_size > 0
    assert not stale.exists()
    summary = (out / "summary.md").read_text()
    assert "bench.json absent" in summary and "cycles.json absent" in summary
    assert "plot skipped: no usable accuracy" in summary
    assert "both out of memory" in summary and "%" in summary


def test_report_with_every_measurement(tmp_path):
    (tmp_path / "rtl").mkdir()
    (tmp_path / "gpu").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "rtl" / "synth.json").write_text(json.dumps([{"unit": "scan", "part": "LFE5U-85F", "fmax_mhz": 111}]))
    (tmp_path / "rtl" / "cycles.json").write_text(json.dumps([
        {"unit": "scan", "lanes": 8, "d_inner": 16, "d_state": 16, "tokens": 4,
         "cycles": scan_unit_cycles(8, 16, 16, 4)}]))
    (tmp_path / "gpu" / "bench.json").write_text(json.dumps(
        [{"model": "mamba-2.8b", "config": "w8a8-fixed", "ttft_ms": 90.0, "tpot_ms": 2.0}]))
    for bits, ppl in (("fp16", 20.0), ("w8a8", 21.0), ("w4a8", 23.0)):
        (tmp_path / "run" / f"{bits}.json").write_text(json.dumps(
            {"model": "mamba-130m", "bits": bits, "weights": "synthetic", "accuracy_meaningful": False,
             "perplexity": {"float": 20.0, "quamba": ppl + 0.5, "fixed": ppl}}))
    # a model known only by the configuration its run report carries
    (tmp_path / "run" / "tiny.json").write_text(json.dumps(
        {"model": "my-tiny", "bits": "w8a8", "config": MambaConfig(d_model=64, n_layer=2, vocab_size=256).to_dict(),
         "perplexity": {"float": 3.0, "quamba": 3.2, "fixed": 3.1}}))
    (tmp_path / "run" / "other.json").write_text(json.dumps({"model": "gpt2", "bits": "w8a8"}))
    out = tmp_path / "hw"
    assert run("report", "--reports", str(tmp_path), "--out", str(out), "--model", "mamba-130m") == 0
    assert (out / "pareto.png").stat().st_size > 0 and (out / "rtl_cycles.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "111 MHz" in summary and "synthesis Fmax" in summary
    assert "1 agree exactly, 0 differ" in summary
    assert "synthetic weights, not a meaningful accuracy" in summary
    assert "my-tiny w8a8, perplexity (fixed) 3.1" in summary
    assert "other.json: skipped" in summary
    assert "w8a8-fixed" in summary
