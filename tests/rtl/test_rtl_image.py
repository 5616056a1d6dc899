"""The decode engine's memory image (rtl/IMAGE.md): round trip, layout rules, determinism, CLI refusals."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qsim import artifact
from qsim.errors import QsimError
from qsim.fixed.executor import FixedExecutor
from qsim.qweights import IntLinear
from rtl import image
from rtl.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
TINY = artifact.SHIPPED_ARTIFACTS / "mamba-tiny-w8a8"
TINY2 = artifact.SHIPPED_ARTIFACTS / "mamba2-tiny-w8a8"
INFORMATIVE = (".scale", ".out_smooth")


@pytest.fixture(scope="module")
def qm():
    return artifact.load(TINY)


def _artifact_value(qm, name):
    """The artifact's integer for an image field, found independently of rtl.image."""
    if name in qm.tensors:
        return np.asarray(qm.tensors[name], dtype=np.int64)
    parts, node = name.split("."), qm.manifest
    if parts[0] == "layers":
        node, parts = node["layers"][int(parts[1])], parts[2:]
    for p in parts:
        node = node[p]
    return np.asarray(node, dtype=np.int64)


def _integer_tensors(qm):
    return {n for n in qm.tensors if not n.endswith(INFORMATIVE) and ".quamba." not in n}


@pytest.mark.parametrize("bus", [1, 8, 64])
def test_every_field_decodes_to_the_artifacts_integers(qm, bus):
    data, layout = image.build_image(qm, bus)
    got = image.read_image(data)
    assert got["layout"] == layout and len(data) == got["header"]["image_bytes"]
    fields = got["fields"]
    for name, (_, dt, shape) in layout.items():
        v = np.asarray(fields[name], dtype=np.int64)
        assert v.shape == tuple(shape), name
        assert np.array_equal(v, _artifact_value(qm, name)), name
    # every integer tensor of the artifact is in the image, and every manifest constant the executor reads
    assert _integer_tensors(qm) <= set(layout)
    c, h = qm.config, got["header"]
    assert (h["d_model"], h["d_inner"], h["d_state"], h["dt_rank"], h["d_conv"], h["n_layer"], h["vocab"]) == (
        c.d_model, c.d_inner, c.d_state, c.dt_rank, c.d_conv, c.n_layer, c.vocab_size)
    assert (h["state_bits"], h["hadamard"], h["bus_bytes"]) == (qm.manifest["state_bits"], 1, bus)
    ex = FixedExecutor(qm)
    assert np.array_equal(fields["tables.rsqrt"], ex.rsqrt_tab) and np.array_equal(fields["tables.exp2_frac"],
                                                                                   ex.exp_tab)
    assert (fields["embedding.m"], fields["embedding.s"]) == ex.emb_rq
    assert all(fields[f"final_norm.{k}"] == ex.final[k] for k in ("eps_int", "m", "s"))
    assert np.array_equal(fields["lm_head.q"], ex.lm_head.q)
    for i in range(c.n_layer):  # the executor's own view of each layer (FixedExecutor._layer)
        P, p = ex._layer(i), f"layers.{i}"
        sc = P["scan"]
        assert (fields[f"{p}.norm.eps_int"], fields[f"{p}.norm.m"], fields[f"{p}.norm.s"]) == (
            P["norm"]["eps_int"], P["norm"]["m"], P["norm"]["s"])
        for key, name in (("in_proj", "in_proj"), ("x_proj", "x_proj"), ("dt_proj", "dt_proj"),
                          ("out_proj", "out_proj")):
            assert np.array_equal(fields[f"{p}.{name}.q"], P[key].q)
        for key, name in (("in_rq", "in_proj"), ("xp_rq", "x_proj"), ("out_rq", "out_proj")):
            assert np.array_equal(fields[f"{p}.{name}.rq_m"], P[key][0])
            assert np.array_equal(fields[f"{p}.{name}.rq_s"], P[key][1])
        for key, name in (("conv_rq", "conv"), ("dt_rq", "dt_proj"), ("out_in_rq", "out_in")):
            assert (fields[f"{p}.{name}.m"], fields[f"{p}.{name}.s"]) == tuple(P[key])
        for key, name in (("conv_w", "conv.w"), ("conv_b", "conv.b"), ("dt_b", "dt_proj.b")):
            assert np.array_equal(fields[f"{p}.{name}"], P[key])
        for t in ("silu_conv", "softplus_dt", "silu_z"):
            assert np.array_equal(fields[f"{p}.tables.{t}"], P[t])
        assert np.array_equal(fields[f"{p}.A.q"], sc["a_q"]) and np.array_equal(fields[f"{p}.D.q"], sc["Dq"])
        assert np.array_equal(fields[f"{p}.scan.m_y"], sc["m_y"]) and np.array_equal(fields[f"{p}.scan.s_y"],
                                                                                     sc["s_y"])
        assert (fields[f"{p}.scan.a_frac_bits"], fields[f"{p}.scan.m_h"], fields[f"{p}.scan.s_h"]) == (
            sc["frac"], sc["m_h"], sc["s_h"])


@pytest.mark.parametrize("bus", [1, 8, 64])
def test_layer_records_are_equally_spaced_aligned_and_nothing_overlaps(qm, bus):
    data, layout = image.build_image(qm, bus)
    h = image.read_header(data)
    base, stride, n = h["layers"], h["layer_stride"], h["n_layer"]
    assert stride % bus == 0 and base % bus == 0 and h["header_bytes"] % bus == 0
    assert all(off % bus == 0 for off, _, _ in layout.values())
    rel = {k[len("layers.0."):]: off - base for k, (off, _, _) in layout.items() if k.startswith("layers.0.")}
    for i in range(n):
        for name, o in rel.items():
            assert layout[f"layers.{i}.{name}"][0] == base + i * stride + o
    spans = sorted((off, off + np.dtype(dt).itemsize * int(np.prod(s, dtype=np.int64)), k)
                   for k, (off, dt, s) in layout.items())
    assert spans[0][0] >= image.HEADER_BYTES and spans[-1][1] <= len(data)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    last_rel_end = max(e for s, e, k in spans if k.startswith("layers.0.")) - base
    assert stride == -(-last_rel_end // bus) * bus and h["final_norm"] == base + n * stride
    assert data[: len(image.MAGIC)] == image.MAGIC and len(data) % bus == 0
    # the byte offsets IMAGE.md section 3 gives for the header words
    assert struct.unpack_from("<3I", data, 8) == (1, h["header_bytes"], bus)
    assert struct.unpack_from("<I", data, 48)[0] == 24 and struct.unpack_from("<2I", data, 88) == (0, 0)
    assert struct.unpack_from("<7Q", data, 96) == tuple(h[k] for k in image.HEADER_U64)


def test_same_artifact_gives_byte_identical_images(qm):
    a, la = image.build_image(qm, 8)
    b, lb = image.build_image(artifact.load(TINY), 8)
    assert a == b and la == lb


def test_int4_linears_round_trip_as_packed_codes_and_group_scales(qm):
    q4 = copy.copy(qm)
    q4.manifest, q4.tensors = copy.deepcopy(qm.manifest), dict(qm.tensors)
    rng = np.random.default_rng(0)
    names = [f"layers.{i}.{k}" for i in range(qm.config.n_layer) for k in ("in_proj", "x_proj", "out_proj")]
    for name in names + ["lm_head"]:
        w = qm.linear(name).q
        q4.tensors.pop(f"{name}.q")
        q4.set_linear(name, IntLinear(np.clip(w, -8, 7).astype(np.int8),
                                      rng.integers(1, 256, (w.shape[0], -(-w.shape[1] // 32))).astype(np.uint8), 32))
    data, layout = image.build_image(q4, 8)
    got = image.read_image(data)
    h = got["header"]
    assert (h["in_proj.format"], h["in_proj.group"], h["dt_proj.format"], h["lm_head.format"]) == (1, 32, 0, 1)
    for name in names + ["lm_head"]:
        assert np.array_equal(got["fields"][f"{name}.q4"], q4.tensors[f"{name}.q4"])
        assert np.array_equal(got["fields"][f"{name}.gs"], q4.tensors[f"{name}.gs"])
        assert f"{name}.q" not in layout
    assert np.array_equal(got["fields"]["layers.2.dt_proj.q"], qm.tensors["layers.2.dt_proj.q"])
    # one format per linear across layers, or no fixed record
    q4.manifest["linears"]["layers.3.x_proj"] = {"format": "int8"}
    q4.tensors["layers.3.x_proj.q"] = qm.tensors["layers.3.x_proj.q"]
    with pytest.raises(QsimError, match="linears.layers.3.x_proj: format int8"):
        image.build_image(q4, 8)


@pytest.mark.parametrize("name, value", [("layers.2.conv.b", 1 << 31), ("layers.4.dt_proj.b", -(1 << 31) - 1)])
def test_a_value_that_does_not_fit_its_field_is_refused(qm, name, value):
    bad = copy.copy(qm)
    bad.tensors = dict(qm.tensors)
    t = qm.tensors[name].astype(np.int64)
    t[7] = value
    bad.tensors[name] = t
    with pytest.raises(QsimError, match=rf"{name}: value {value} does not fit its image field int32"):
        image.build_image(bad, 8)
    bad.manifest = copy.deepcopy(qm.manifest)
    bad.tensors = qm.tensors
    bad.manifest["layers"][1]["conv"]["s"] = 300
    with pytest.raises(QsimError, match=r"layers.1.conv.s: value 300 does not fit its image field uint8"):
        image.build_image(bad, 8)


def test_read_image_refuses_a_foreign_truncated_or_inconsistent_image(qm):
    data, _ = image.build_image(qm, 8)
    with pytest.raises(QsimError, match="not a qsim decode-engine image"):
        image.read_image(b"NOTANIMG" + data[8:])
    with pytest.raises(QsimError, match="truncated or padded"):
        image.read_image(data[:-8])
    off = len(image.MAGIC) + 4 * len(image.HEADER_U32) + 8 * image.HEADER_U64.index("layer_stride")
    bad = data[:off] + struct.pack("<Q", 8) + data[off + 8:]
    with pytest.raises(QsimError, match="layer_stride"):
        image.read_image(bad)


def _cli(capsys, *argv):
    code = main(["image", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_image_and_its_layout(qm, tmp_path, capsys):
    out = tmp_path / "img" / "tiny.bin"
    code, stdout, err = _cli(capsys, "--artifact", TINY, "--out", out, "--bus-bytes", 16)
    assert code == 0, err
    data = out.read_bytes()
    meta = json.loads(out.with_name("tiny.bin.json").read_text())
    assert meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["bytes"] == len(data)
    assert data == image.build_image(qm, 16)[0]
    assert meta["layout"]["layers.1.A.q"]["offset"] == image.read_image(data)["layout"]["layers.1.A.q"][0]
    assert meta["header"]["bus_bytes"] == 16 and str(out) in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.bin", "tiny.bin.json"]  # no temp files left


def test_python_m_rtl_image_runs(tmp_path):
    out = tmp_path / "t.bin"
    r = subprocess.run([sys.executable, "-m", "rtl", "image", "--artifact", str(TINY), "--out", str(out)],
                       check=False, cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert r.returncode == 0, r.stderr
    assert image.read_header(out.read_bytes())["bus_bytes"] == 8


def _corrupt_weights(tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(TINY, bad)
    w = bad / artifact.WEIGHTS
    b = bytearray(w.read_bytes())
    b[-1] ^= 1
    w.write_bytes(bytes(b))
    return bad


def _bad_json(tmp_path):
    bad = tmp_path / "badjson"
    shutil.copytree(TINY, bad)
    (bad / artifact.MANIFEST).write_text("{not json")
    return bad


def _wide_bias(tmp_path):
    qm = artifact.load(TINY)
    t = qm.tensors["layers.2.conv.b"].astype(np.int64)
    t[0] = 1 << 33  # valid under SPEC 5.1 (|b| * M stays far below 2**62), but not an int32
    qm.tensors["layers.2.conv.b"] = t
    artifact.save(qm, tmp_path / "wide")
    return tmp_path / "wide"


@pytest.mark.parametrize("case, bus, message", [
    (lambda t: t / "missing", 8, "no such folder"),
    (_corrupt_weights, 8, "sha256 does not match"),
    (_bad_json, 8, "not valid JSON"),
    (lambda t: TINY2, 8, "Mamba-1 artifacts only"),
    (lambda t: TINY, 3, "--bus-bytes 3: must be a power of two"),
    (lambda t: TINY, 0, "--bus-bytes 0"),
    (lambda t: TINY, 128, "--bus-bytes 128"),
    (_wide_bias, 8, "layers.2.conv.b: value 8589934592 does not fit its image field int32"),
], ids=["missing", "corrupt", "bad-json", "mamba2", "bus3", "bus0", "bus128", "wide-bias"])
def test_cli_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys, case, bus, message):
    src = case(tmp_path)
    outdir = tmp_path / "out"
    code, _, err = _cli(capsys, "--artifact", src, "--out", outdir / "x.bin", "--bus-bytes", bus)
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("rtl image: ")
    assert not outdir.exists()
