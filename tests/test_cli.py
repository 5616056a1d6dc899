"""The command line: reports, caching, and one-line errors with exit status 2 for bad input."""

import json

import pytest

from qsim.cli import main
from qsim.config import REGISTRY, MambaConfig, RegisteredModel

FAST = ["--seq-len", "64", "--eval-seqs", "2", "--calib-samples", "2", "--calib-len", "64"]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_reports_all_figures(hf_checkpoint, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = _run(capsys, "run", "--model", str(hf_checkpoint[0]), "--bits", "w8a8", *FAST,
                          "--json", str(out_json))
    assert code == 0, err
    r = json.loads(out_json.read_text())
    assert r["weights"] == "checkpoint" and r["bits"] == "w8a8" and r["eval"]["tokens_evaluated"] == 126
    assert set(r["perplexity"]) == {"float", "quamba", "fixed"}
    for k in ("quamba", "fixed"):
        assert 0 <= r["agreement_vs_float"][k]["top1"] <= 1 and r["agreement_vs_float"][k]["mean_kl"] >= 0
        assert all(len(v) == 2 for v in r["sqnr_db"][k].values())
    assert "state" in r["saturation"]["fixed"] and r["tokens_per_s"]["fixed"] > 0
    assert "SQNR vs float" in out and "SYNTHETIC" not in out


def test_cached_run_reproduces_fresh_run(hf_checkpoint, tmp_path, capsys):
    reports = []
    for i in range(2):
        p = tmp_path / f"{i}.json"
        assert _run(capsys, "run", "--model", str(hf_checkpoint[0]), "--bits", "w4a8", *FAST, "--json", str(p))[0] == 0
        reports.append(json.loads(p.read_text()))
    assert [r["artifact_cached"] for r in reports] == [False, True]
    for key in ("perplexity", "agreement_vs_float", "sqnr_db", "saturation"):
        assert reports[0][key] == reports[1][key], key


def test_synthetic_weights_are_marked(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(REGISTRY, "mamba-test", RegisteredModel(
        "mamba-test", "state-spaces/none", MambaConfig(d_model=32, n_layer=1, vocab_size=256)))
    p = tmp_path / "s.json"
    code, out, _ = _run(capsys, "run", "--model", "mamba-test", *FAST, "--json", str(p))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("!! SYNTHETIC WEIGHTS") and lines[-1].endswith("NOT meaningful.")
    r = json.loads(p.read_text())
    assert r["weights"] == "synthetic" and r["accuracy_meaningful"] is False
    code, _, err = _run(capsys, "run", "--model", "mamba-test", "--require-weights", *FAST)
    assert code == 2 and "--require-weights" in err


@pytest.mark.parametrize("bits", ["fp16", "w4a16"])
def test_16_bit_activation_presets_skip_fixed_with_reason(hf_checkpoint, capsys, bits):
    code, out, _ = _run(capsys, "run", "--model", str(hf_checkpoint[0]), "--bits", bits, *FAST)
    assert code == 0 and "fixed     n/a" in out and "quamba" in out


def test_calibrate_writes_artifact_usable_by_run(hf_checkpoint, tmp_path, capsys):
    dest = tmp_path / "q"
    assert _run(capsys, "calibrate", "--model", str(hf_checkpoint[0]), "--bits", "w8a8", "--out", str(dest),
                "--calib-samples", "2", "--calib-len", "64", "--no-hadamard", "--no-percentile")[0] == 0
    m = json.loads((dest / "manifest.json").read_text())
    assert m["hadamard"] is False and m["calibration"]["percentile"] is False
    code, out, _ = _run(capsys, "run", "--model", str(hf_checkpoint[0]), "--artifact", str(dest), *FAST)
    assert code == 0 and "(cached)" in out
    _one_line_error(capsys, ["run", "--model", str(hf_checkpoint[0]), "--artifact", str(dest), "--bits", "w4a8",
                             *FAST], "not for these weights at --bits w4a8")


def _one_line_error(capsys, argv, *needles):
    code, _out, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qsim: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_unknown_bits(capsys):
    _one_line_error(capsys, ["run", "--bits", "w3a5"], "w3a5", "fp16, w8a8, w4a8, w4a16")


def test_state_bits_take_the_model_familys_range(capsys):
    _one_line_error(capsys, ["run", "--model", "mamba-tiny", "--state-bits", "30"], "[12, 28] for a Mamba-1 model")
    _one_line_error(capsys, ["run", "--model", "mamba2-tiny", "--state-bits", "33"], "[12, 32]")
    _one_line_error(capsys, ["calibrate", "--model", "mamba-tiny", "--state-bits", "29", "--out", "x"], "[12, 28]")


def test_unknown_option(capsys):
    _one_line_error(capsys, ["run", "--frobnicate"], "--frobnicate")


def test_missing_path(capsys):
    _one_line_error(capsys, ["run", "--model", "/nonexistent/ckpt"], "/nonexistent/ckpt")


def test_eval_text_shorter_than_one_sequence(hf_checkpoint, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    _one_line_error(capsys, ["run", "--model", str(hf_checkpoint[0]), "--eval-text", str(short), *FAST],
                    str(short), "shorter than one sequence")


def test_empty_calibration_text_leaves_nothing_behind(hf_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    dest = tmp_path / "out"
    _one_line_error(capsys, ["calibrate", "--model", str(hf_checkpoint[0]), "--out", str(dest),
                             "--calib-text", str(empty)], "empty")
    assert not dest.exists() and list(tmp_path.iterdir()) == [empty]


def test_failed_run_writes_no_json(hf_checkpoint, tmp_path, capsys):
    p = tmp_path / "r.json"
    _one_line_error(capsys, ["run", "--model", str(hf_checkpoint[0]), "--alpha", "1.5", *FAST,
                             "--json", str(p)], "--alpha 1.5")
    assert not p.exists()


def test_corrupt_artifact(hf_checkpoint, tmp_path, capsys):
    dest = tmp_path / "q"
    assert main(["calibrate", "--model", str(hf_checkpoint[0]), "--out", str(dest),
                 "--calib-samples", "2", "--calib-len", "64"]) == 0
    w = dest / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    _one_line_error(capsys, ["run", "--model", str(hf_checkpoint[0]), "--artifact", str(dest), *FAST],
                    "weights.safetensors", "sha256")


def test_cuda_executor_without_gpu_is_one_line(hf_checkpoint, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: tests/gpu covers the CUDA executor")
    _one_line_error(capsys, ["run", "--model", str(hf_checkpoint[0]), "--executor", "cuda", *FAST], "--executor cuda")


@pytest.mark.parametrize("flag,method", [([], "GPTQ"), (["--no-gptq"], "round to nearest (half up)")])
def test_int4_weight_method_is_recorded(hf_checkpoint, tmp_path, capsys, flag, method):
    dest = tmp_path / "q"
    assert main(["calibrate", "--model", str(hf_checkpoint[0]), "--bits", "w4a8", "--out", str(dest),
                 "--calib-samples", "2", "--calib-len", "64", *flag]) == 0
    cal = json.loads((dest / "manifest.json").read_text())["calibration"]
    assert cal["gptq"] is (not flag) and cal["weights"].endswith(method if flag else "(percdamp 0.01)")
    assert method in cal["weights"]
