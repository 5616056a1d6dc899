"""The quantized-model artifact: the one contract every executor reads.

A folder with `manifest.json` (spec version, model configuration, bits, every
scale, multiplier, shift and table, and how each was calibrated) and
`weights.safetensors` (integer tensors; int4 packed two per byte). Written
atomically: a sibling temporary folder renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsim import artifact_check, spec
from qsim.config import Mamba2Config, MambaConfig
from qsim.errors import QsimError
from qsim.qweights import IntLinear, pack_int4, unpack_int4

FORMAT = "qsim-quantized-model"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
SHIPPED_ARTIFACTS = Path(__file__).parent / "artifacts"  # committed artifacts: the contract as data


@dataclass
class QuantizedModel:
    manifest: dict
    tensors: dict[str, np.ndarray]

    @property
    def config(self) -> MambaConfig | Mamba2Config:
        m = self.manifest["model"]
        return (Mamba2Config if m.get("family") == "mamba2" else MambaConfig).from_dict(m["config"])

    def layer(self, i: int) -> dict:
        return self.manifest["layers"][i]

    def t(self, name: str) -> np.ndarray:
        try:
            return self.tensors[name]
        except KeyError:
            raise QsimError(f"artifact: tensor {name} is missing from {WEIGHTS}") from None

    def linear(self, name: str) -> IntLinear:
        fmt = self.manifest["linears"][name]
        if fmt["format"] == "int4":
            return IntLinear(unpack_int4(self.t(f"{name}.q4"), fmt["cols"]), self.t(f"{name}.gs"), fmt["group"])
        return IntLinear(self.t(f"{name}.q"))

    def set_linear(self, name: str, lin: IntLinear) -> None:
        if lin.gs is None:
            self.tensors[f"{name}.q"] = lin.q
            self.manifest["linears"][name] = {"format": "int8"}
        else:
            self.tensors[f"{name}.q4"] = pack_int4(lin.q)
            self.tensors[f"{name}.gs"] = lin.gs
            self.manifest["linears"][name] = {"format": "int4", "group": lin.group, "cols": int(lin.q.shape[1])}


def file_sha256(path: Path) -> str:
    """Hashed in 4 MiB chunks: a multi-GB artifact is never held twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_folder(dest: Path, write) -> None:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        write(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


SAFETENSORS_DTYPES = {np.dtype(t): name for t, name in (
    ("int8", "I8"), ("uint8", "U8"), ("int16", "I16"), ("int32", "I32"), ("int64", "I64"),
    ("float16", "F16"), ("float32", "F32"), ("float64", "F64"))}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors format written tensor by tensor (no serialized copy of the whole artifact in memory).

    Layout as the format defines it: an 8-byte little-endian header length, the JSON header
    (padded with spaces to a multiple of 8), then the tensors' bytes back to back; tensors are
    ordered by descending item size, then name, so every tensor starts aligned to its item size.
    """
    names = sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n))
    header, offset = {}, 0
    for n in names:
        a = tensors[n]
        header[n] = {"dtype": SAFETENSORS_DTYPES[a.dtype], "shape": list(a.shape),
                     "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for n in names:
            f.write(np.ascontiguousarray(tensors[n]).reshape(-1).view(np.uint8).data)


def save(qm: QuantizedModel, dest: Path) -> None:
    def write(tmp: Path) -> None:
        write_safetensors(tmp / WEIGHTS, qm.tensors)
        manifest = dict(qm.manifest, weights_sha256=file_sha256(tmp / WEIGHTS))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    _atomic_folder(dest, write)


def load(folder: Path) -> QuantizedModel:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    mpath, wpath = folder / MANIFEST, folder / WEIGHTS
    for p in (mpath, wpath):
        if not p.is_file():
            raise QsimError(f"{folder}: not a quantized-model folder ({p.name} is missing)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QsimError(f"{mpath}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise QsimError(f"{mpath}: not a {FORMAT} manifest")
    if manifest.get("spec_version") not in spec.ACCEPTED_SPEC_VERSIONS:  # versions with this Mamba-1 datapath
        raise QsimError(
            f"{mpath}: spec version {manifest.get('spec_version')} differs from this qsim's "
            f"{spec.SPEC_VERSION} (accepted: {', '.join(spec.ACCEPTED_SPEC_VERSIONS)}); recalibrate"
        )
    if file_sha256(wpath) != manifest.get("weights_sha256"):
        raise QsimError(f"{wpath}: sha256 does not match the manifest (corrupt or modified)")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise QsimError(f"{wpath}: corrupt safetensors file ({exc})") from None
    qm = QuantizedModel(manifest, tensors)
    try:
        artifact_check.validate(qm)
    except QsimError as exc:
        raise QsimError(f"{folder}: {exc}") from None
    return qm
