"""`qsim compare`: recipes side by side, their hardware cost, the Pareto front, bad input."""

from __future__ import annotations

import json
import re

import pytest

from qsim.cli import main
from qsim.compare import pareto, parse_alphas
from qsim.errors import QsimError

SMALL = ["--model", "mamba-tiny", "--eval-seqs", "1", "--seq-len", "64", "--calib-samples", "2", "--calib-len", "64"]


def _row(kl: float, nj: float) -> dict:
    return {"mean_kl": {"quamba": 9.0, "fixed": kl}, "hardware": {"decode_nj_per_token": nj}}


def test_pareto_front():
    rows = [_row(0.01, 10), _row(0.02, 5), _row(0.02, 12), _row(0.005, 20), _row(0.01, 10)]
    assert pareto(rows) == [0, 1, 3, 4]  # 2 is beaten by 0; equal rows do not beat each other


def test_pareto_uses_quamba_where_fixed_is_unavailable():
    rows = [{"mean_kl": {"quamba": 0.1}, "hardware": {"decode_nj_per_token": 1.0}}, _row(0.2, 2.0)]
    assert pareto(rows) == [0]


@pytest.mark.parametrize("text,msg", [("0.5,x", "not a comma-separated list"), ("1.5", "1.5 is outside (0, 1]"),
                                      ("0", "0.0 is outside")])
def test_bad_alphas(text, msg):
    with pytest.raises(QsimError, match=re.escape(msg)):
        parse_alphas(text)


@pytest.mark.parametrize("argv,msg", [
    (["--methods", "rtn,bogus"], "--method bogus: unknown recipe; valid:"),
    (["--methods", "quamba2"], "Mamba-2"),
    (["--methods", "rtn", "--alphas", "0.999"], "--alphas: none of the methods clips"),
    (["--alphas", "2"], "--alphas 2: 2.0 is outside (0, 1]"),
    (["--bits", "fp16"], "--bits fp16: nothing to quantize"),
    (["--target", "nowhere"], "nowhere"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, msg):
    rc = main(["compare", *SMALL, "--json", str(tmp_path / "c.json"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and msg in err, err
    assert not (tmp_path / "c.json").exists()


def test_compare_two_recipes_and_an_alpha_sweep(tmp_path, capsys):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    argv = ["compare", *SMALL, "--methods", "rtn,quamba,smoothquant", "--alphas", "1.0,0.999",
            "--json", str(out), "--plot", str(png)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    c = json.loads(out.read_text())
    got = [(r["method"], r["alpha"]) for r in c["rows"]]
    assert got == [("rtn", None), ("quamba", 1.0), ("quamba", 0.999), ("smoothquant", None)]
    for r in c["rows"]:
        assert set(r["perplexity"]) == {"float", "quamba", "fixed"} and r["fixed_unavailable"] is None
        assert r["recipe"]["name"] == r["method"]
        assert r["hardware"]["decode_nj_per_token"] > 0 and r["hardware"]["decode_cycles_per_token"] > 0
        assert r["method"] in text
        # every tensor is compared in the float model's units: a smoothing recipe's y is unsmoothed first
        assert min(r["worst_sqnr_db"]["fixed"].values()) > 8 and min(r["worst_sqnr_db"]["quamba"].values()) > 8
    feats = {r["method"]: r["datapath_features"] for r in c["rows"]}
    assert feats["rtn"] == {"online_hadamard": False, "scan_out_per_channel": False}
    assert feats["quamba"] == {"online_hadamard": True, "scan_out_per_channel": False}
    assert feats["smoothquant"] == {"online_hadamard": False, "scan_out_per_channel": True}
    hw = {r["method"]: r["hardware"] for r in c["rows"]}
    # the online Hadamard is work on the chip: the cost model charges it
    assert hw["quamba"]["decode_nj_per_token"] > hw["rtn"]["decode_nj_per_token"]
    assert any(r["pareto"] for r in c["rows"])
    # both alphas were really calibrated: different SSM-input scales give different quamba figures
    q = [r for r in c["rows"] if r["method"] == "quamba"]
    assert q[0]["perplexity"]["quamba"] != q[1]["perplexity"]["quamba"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second compare only evaluates: every artifact comes from the cache, figures unchanged
    assert main(argv) == 0
    again = json.loads(out.read_text())
    assert all(r["artifact_cached"] for r in again["rows"])
    assert [r["perplexity"] for r in again["rows"]] == [r["perplexity"] for r in c["rows"]]
