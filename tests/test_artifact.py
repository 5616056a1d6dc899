import json

import numpy as np
import pytest

from qsim import artifact
from qsim.errors import QsimError
from qsim.qweights import pack_int4, unpack_int4


def test_round_trip_is_exact(tiny_artifacts, tmp_path):
    qm = tiny_artifacts[1]["w4a8"]
    artifact.save(qm, tmp_path / "a")
    back = artifact.load(tmp_path / "a")
    assert back.tensors.keys() == qm.tensors.keys()
    for k, v in qm.tensors.items():
        assert back.tensors[k].dtype == v.dtype and np.array_equal(back.tensors[k], v), k
    assert back.manifest["layers"] == json.loads(json.dumps(qm.manifest["layers"]))
    assert back.manifest["linears"]["layers.0.in_proj"]["format"] == "int4"
    assert np.array_equal(back.linear("layers.0.in_proj").q, qm.linear("layers.0.in_proj").q)


def test_int4_packing_round_trip():
    q = np.random.default_rng(0).integers(-8, 8, (5, 37)).astype(np.int8)
    packed = pack_int4(q)
    assert packed.shape == (5, 19) and packed.dtype == np.uint8
    assert np.array_equal(unpack_int4(packed, 37), q)


def test_spec_version_mismatch_is_refused(tiny_artifacts, tmp_path):
    artifact.save(tiny_artifacts[1]["w8a8"], tmp_path / "a")
    m = tmp_path / "a" / "manifest.json"
    d = json.loads(m.read_text())
    d["spec_version"] = "0.0.1"
    m.write_text(json.dumps(d))
    with pytest.raises(QsimError, match="spec version 0.0.1"):
        artifact.load(tmp_path / "a")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(QsimError, match="manifest.json is missing"):
        artifact.load(tmp_path)


def test_save_replaces_atomically(tiny_artifacts, tmp_path):
    dest = tmp_path / "a"
    artifact.save(tiny_artifacts[1]["w8a8"], dest)
    artifact.save(tiny_artifacts[1]["w4a8"], dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert artifact.load(dest).manifest["bits"]["name"] == "w4a8"


def test_streamed_safetensors_read_back_by_the_library(tmp_path):
    """The artifact's own writer produces files the safetensors library reads, every dtype aligned."""
    import struct

    from safetensors.numpy import load_file

    from qsim.artifact import write_safetensors

    rng = np.random.default_rng(0)
    t = {"w.q": rng.integers(-127, 128, (5, 3)).astype(np.int8), "w.gs": np.arange(7, dtype=np.uint8),
         "s": rng.normal(size=3), "rq": np.arange(6, dtype=np.int32).reshape(3, 2).T, "e": np.zeros((0, 2), np.int64),
         "g": np.arange(3, dtype=np.int16), "f": np.ones(2, np.float32)}
    write_safetensors(tmp_path / "x.safetensors", t)
    back = load_file(str(tmp_path / "x.safetensors"))
    assert set(back) == set(t)
    for k, v in t.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    raw = (tmp_path / "x.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0
    for k, meta in json.loads(raw[8 : 8 + n]).items():
        assert meta["data_offsets"][0] % t[k].dtype.itemsize == 0, k
