"""mamba-tiny training script and its corpus: the fast scan is exact, the written
folder is a valid transformers MambaForCausalLM with the same logits, and the
shipped splits are disjoint, within budget and match SOURCE.md."""

import hashlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the folder is local; never reach for the Hub

import pytest
import torch
import torch.nn.functional as F

from qsim import train_tiny as tt


def _scan_inputs(dtype, b=2, l=45, d=8, n=4, dt_scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, d, generator=g)
    dt = F.softplus(torch.randn(b, l, d, generator=g)) * dt_scale
    A = -torch.exp(torch.randn(d, n, generator=g))
    B, C = torch.randn(b, l, n, generator=g), torch.randn(b, l, n, generator=g)
    return [t.to(dtype).requires_grad_() for t in (x, dt, A, B, C)]


def _value_and_grads(fn, args, w):
    y = fn(*args)
    return [y, *torch.autograd.grad((y * w).sum(), args)]


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_chunked_scan_matches_sequential(chunk, dtype, tol):
    args = _scan_inputs(dtype)
    w = torch.randn(args[0].shape, dtype=dtype)
    got = _value_and_grads(lambda *a: tt.selective_scan(*a, chunk=chunk), args, w)
    ref = _value_and_grads(tt.selective_scan_ref, args, w)
    for name, p, q in zip(("y", "dx", "ddt", "dA", "dB", "dC"), got, ref):
        rel = ((p - q).abs().max() / q.abs().max()).item()
        assert rel < tol, f"{name}: relative error {rel:.2e}"


def test_scan_stable_when_decays_underflow():
    """Large dt*|A| (decays that underflow to 0 in float32) must not give inf/nan."""
    args = _scan_inputs(torch.float32, l=96, dt_scale=40.0)
    w = torch.randn(args[0].shape)
    got = _value_and_grads(tt.selective_scan, args, w)
    ref = _value_and_grads(tt.selective_scan_ref, args, w)
    for p, q in zip(got, ref):
        assert torch.isfinite(p).all()
        assert ((p - q).abs().max() / q.abs().max()).item() < 1e-5


@pytest.fixture
def one_thread():
    """Many tiny ops: on a busy 2-core machine extra OpenMP threads make them ~20x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_short_run_learns_and_loads_in_transformers(tmp_path, monkeypatch, one_thread):
    """12 steps x 4 x 64 bytes (warmup 2, seed 0) must learn more than byte frequencies.

    Measured here (validation on the first 4096 bytes, seeds 0/1/2): 2.799/2.791/2.778
    nats/byte, step-1 training loss 5.551/5.530/5.532, ~7 s. Byte frequencies alone
    (unigram of the train split, add-one) give 3.392 on the same bytes and the untrained
    model ln 256 = 5.545. Bounds: below 3.1 (under the unigram baseline; 0.3 above the
    measured value, 15x the seed spread of 0.02) and at least 2 nats under step 1's loss
    (measured 2.75).
    """
    from safetensors.torch import load_file
    from transformers import MambaForCausalLM

    load = tt.load_split
    monkeypatch.setattr(tt, "load_split", lambda name: load(name)[:4096] if name == "valid" else load(name))
    out, rep = tmp_path / "model", tmp_path / "report"
    val = tt.main(["--out", str(out), "--report-dir", str(rep), "--steps", "12", "--device", "cpu",
                   "--batch-size", "4", "--seq-len", "64", "--warmup", "2", "--log-every", "1",
                   "--eval-every", "0"])
    assert (out / "model.safetensors").stat().st_size <= 10e6
    log = [json.loads(s) for s in (rep / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 13)) and log[-1]["final"]
    assert log[-1]["val_loss"] == round(val, 4)
    assert val < 3.1 and val < log[0]["loss"] - 2.0, (val, log[0]["loss"])
    assert (rep / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "nats/byte" in (rep / "TRAINING.md").read_text()

    hf, info = MambaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    ours = tt.TinyMamba(tt.CONFIG)
    ours.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    ids = torch.randint(0, 256, (2, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(ids), hf(ids).logits
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-4


def _lines(name):
    return (tt.DATA / f"{name}.txt").read_text(encoding="ascii").splitlines()


def test_corpus_splits_disjoint_and_within_budget():
    sizes = {s: (tt.DATA / f"{s}.txt").stat().st_size for s in ("train", "valid", "calib")}
    assert sum(sizes.values()) <= 3_000_000
    assert sizes["valid"] > 100_000 and sizes["calib"] > 100_000
    long = {s: {ln for ln in _lines(s) if len(ln) >= 40} for s in sizes}
    assert not long["train"] & long["valid"]
    assert not long["train"] & long["calib"]
    assert not long["valid"] & long["calib"]


def test_source_md_records_split_hashes():
    source = (tt.DATA / "SOURCE.md").read_text()
    for s in ("train", "valid", "calib"):
        assert hashlib.sha256((tt.DATA / f"{s}.txt").read_bytes()).hexdigest() in source, s
