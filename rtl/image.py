"""The memory image a whole-model decode engine reads: every constant and weight of a Mamba-1 artifact.

`build_image(qm, bus_bytes)` lays a quantized artifact (qsim/SPEC.md section 3) out as one flat
little-endian byte image: a header (magic, format version, the configuration, the offset of each
section), the global tables, the embedding, one fixed-size record per layer (layer i at
`layers + i * layer_stride`), the final norm and lm_head. Every field has a fixed width chosen from the
spec's bounds and starts on a `bus_bytes` boundary. `read_image(data)` decodes an image from its
header alone. rtl/IMAGE.md is the normative description; this module is its implementation.

Field names are the artifact's own: a tensor of weights.safetensors keeps its name (`layers.3.in_proj.q`),
a manifest integer its key path (`layers.3.norm.m` is `manifest.layers[3].norm.m`).
"""

from __future__ import annotations

import struct

import numpy as np

from qsim.errors import QsimError

MAGIC = b"QSIM-IMG"
VERSION = 1
BUS_BYTES = (1, 2, 4, 8, 16, 32, 64)
# header: MAGIC, then these little-endian uint32 words, then the uint64 words
HEADER_U32 = (
    "version", "header_bytes", "bus_bytes", "d_model", "d_inner", "d_state", "dt_rank", "d_conv", "n_layer",
    "vocab", "state_bits", "hadamard",
    "in_proj.format", "in_proj.group", "x_proj.format", "x_proj.group", "dt_proj.format", "dt_proj.group",
    "out_proj.format", "out_proj.group", "lm_head.format", "lm_head.group",
)
HEADER_U64 = ("tables", "embedding", "layers", "layer_stride", "final_norm", "lm_head", "image_bytes")
HEADER_BYTES = len(MAGIC) + 4 * len(HEADER_U32) + 8 * len(HEADER_U64)  # 152 (before padding to the bus)
LINEARS = ("in_proj", "x_proj", "dt_proj", "out_proj", "lm_head")
INT8, INT4 = 0, 1  # weight format codes of the header's <linear>.format words
DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "int64")


def _align(n: int, bus: int) -> int:
    return -(-n // bus) * bus


def _linear(name: str, rows: int, cols: int, fmt: int, group: int) -> list:
    if fmt == INT8:
        return [(f"{name}.q", "int8", (rows, cols))]
    return [(f"{name}.q4", "uint8", (rows, -(-cols // 2))), (f"{name}.gs", "uint8", (rows, -(-cols // group)))]


def _sections(h: dict) -> dict:
    """Fields of each section, in image order: (name, dtype, shape); layer fields relative ("P." prefix)."""
    dm, di, n, r, k, v = h["d_model"], h["d_inner"], h["d_state"], h["dt_rank"], h["d_conv"], h["vocab"]

    def lin(kind, prefix, rows, cols):
        return _linear(f"{prefix}{kind}", rows, cols, h[f"{kind}.format"], h[f"{kind}.group"])

    def rq(prefix, rows):
        return [(f"{prefix}.rq_m", "int32", (rows,)), (f"{prefix}.rq_s", "uint8", (rows,))]

    def pair(prefix):
        return [(f"{prefix}.m", "int32", ()), (f"{prefix}.s", "uint8", ())]

    def norm(g, p):
        return [(g, "int16", (dm,)), (f"{p}.eps_int", "int64", ())] + pair(p)

    layer = (
        norm("P.norm.g", "P.norm")
        + lin("in_proj", "P.", 2 * di, dm) + rq("P.in_proj", 2 * di)
        + [("P.conv.w", "int8", (di, k)), ("P.conv.b", "int32", (di,))] + pair("P.conv")
        + [("P.tables.silu_conv", "int8", (256,))]
        + lin("x_proj", "P.", r + 2 * n, di) + rq("P.x_proj", r + 2 * n)
        + lin("dt_proj", "P.", di, r) + [("P.dt_proj.b", "int32", (di,))] + pair("P.dt_proj")
        + [("P.tables.softplus_dt", "uint16", (256,)), ("P.tables.silu_z", "int16", (256,))]
        + [("P.A.q", "uint16", (di, n)), ("P.scan.a_frac_bits", "uint8", ()), ("P.scan.m_h", "int32", ()),
           ("P.scan.s_h", "uint8", ()), ("P.D.q", "int64", (di,)), ("P.scan.m_y", "int32", (di,)),
           ("P.scan.s_y", "uint8", (di,))]
        + pair("P.out_in")
        + lin("out_proj", "P.", dm, di) + rq("P.out_proj", dm)
    )
    return {
        "tables": [("tables.rsqrt", "uint16", (768,)), ("tables.exp2_frac", "uint16", (256,))],
        "embedding": pair("embedding") + [("embedding.q", "int8", (v, dm))],
        "layers": layer,
        "final_norm": norm("norm_f.g", "final_norm"),
        "lm_head": lin("lm_head", "", v, dm),
    }


def _place(fields: list, start: int, bus: int) -> tuple[dict, int]:
    out, off = {}, start
    for name, dt, shape in fields:
        off = _align(off, bus)
        out[name] = (off, dt, shape)
        off += np.dtype(dt).itemsize * int(np.prod(shape, dtype=np.int64))
    return out, off


def layout_of(h: dict) -> tuple[dict, dict]:
    """The layout (name -> (offset, dtype, shape), absolute, every layer) and the section offsets
    (the header's uint64 words) that a header's configuration words determine."""
    bus, sec = h["bus_bytes"], _sections(h)
    layout, offsets = {}, {}
    off = _align(HEADER_BYTES, bus)
    for name in ("tables", "embedding"):
        offsets[name] = off
        fields, off = _place(sec[name], off, bus)
        layout.update(fields)
    offsets["layers"] = base = _align(off, bus)
    rel, end = _place(sec["layers"], 0, bus)
    offsets["layer_stride"] = stride = _align(end, bus)
    for i in range(h["n_layer"]):
        for name, (o, dt, shape) in rel.items():
            layout[f"layers.{i}.{name[2:]}"] = (base + i * stride + o, dt, shape)
    off = base + h["n_layer"] * stride
    for name in ("final_norm", "lm_head"):
        offsets[name] = off = _align(off, bus)
        fields, off = _place(sec[name], off, bus)
        layout.update(fields)
    offsets["image_bytes"] = _align(off, bus)
    return layout, offsets


def _header(qm, bus_bytes: int) -> dict:
    m, c = qm.manifest, qm.config
    if getattr(c, "family", "mamba") != "mamba":
        raise QsimError(f"model family {c.family}: the decode engine's image is for Mamba-1 artifacts only")
    if m["bits"]["act_bits"] != 8:
        raise QsimError(f"bits {m['bits']['name']}: the fixed datapath (and its image) needs 8-bit activations")
    if bus_bytes not in BUS_BYTES:
        raise QsimError(f"--bus-bytes {bus_bytes}: must be a power of two in [1, 64]")
    h = {"version": VERSION, "header_bytes": _align(HEADER_BYTES, bus_bytes), "bus_bytes": bus_bytes,
         "d_model": c.d_model, "d_inner": c.d_inner, "d_state": c.d_state, "dt_rank": c.dt_rank,
         "d_conv": c.d_conv, "n_layer": c.n_layer, "vocab": c.vocab_size, "state_bits": m["state_bits"],
         "hadamard": int(bool(m["hadamard"]))}
    for kind in LINEARS:  # one format per kind across layers: the layer record has one fixed size
        names = [f"layers.{i}.{kind}" for i in range(c.n_layer)] if kind != "lm_head" else ["lm_head"]
        fmts = {n: m["linears"][n] for n in names}
        first = fmts[names[0]]
        for n, f in fmts.items():
            if (f["format"], f.get("group")) != (first["format"], first.get("group")):
                raise QsimError(f"linears.{n}: format {f['format']} (group {f.get('group')}) differs from "
                                f"{names[0]}'s {first['format']} (group {first.get('group')}); a fixed-size layer "
                                "record needs one weight format per linear across layers")
        if first["format"] not in ("int8", "int4"):
            raise QsimError(f"linears.{names[0]}: unknown weight format {first['format']!r}")
        h[f"{kind}.format"] = INT8 if first["format"] == "int8" else INT4
        h[f"{kind}.group"] = 0 if first["format"] == "int8" else int(first["group"])
    for name in HEADER_U32:
        if name in h and not 0 <= int(h[name]) < 1 << 32:
            raise QsimError(f"header.{name}: value {h[name]} does not fit its uint32 word")
    return h


def _value(qm, name: str):
    """A field's value: the tensor of that name, else the manifest integer at that key path."""
    if name in qm.tensors:
        return qm.tensors[name]
    node = qm.manifest
    parts = name.split(".")
    try:
        if parts[0] == "layers":
            node, parts = node["layers"][int(parts[1])], parts[2:]
        for p in parts:
            node = node[p]
    except (KeyError, IndexError, TypeError):
        raise QsimError(f"{name}: missing from the artifact (neither a tensor nor a manifest key)") from None
    return node


def _encode(name: str, value, dtype: str, shape: tuple) -> bytes:
    a = np.asarray(value)
    if a.dtype == object and all(isinstance(x, int) and not isinstance(x, bool) for x in a.flat):
        vals = [int(x) for x in a.flat]  # integers beyond int64 (a hand-edited manifest)
    elif a.dtype.kind in "iu":
        vals = [int(a.min()), int(a.max())] if a.size else []
    else:
        raise QsimError(f"{name}: {a.dtype} values, expected integers")
    if tuple(a.shape) != tuple(shape):
        raise QsimError(f"{name}: shape {tuple(a.shape)}, expected {tuple(shape)} from the configuration")
    info = np.iinfo(dtype)
    bad = [v for v in vals if not info.min <= v <= info.max]
    if bad:
        raise QsimError(f"{name}: value {bad[0]} does not fit its image field {dtype} [{info.min}, {info.max}]")
    return np.asarray(a.astype(np.int64) if a.dtype == object else a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def build_image(qm, bus_bytes: int = 8) -> tuple[bytes, dict]:
    """The image of a Mamba-1 artifact and its layout: name -> (offset, dtype, shape).

    Raises QsimError naming the field when a value does not fit its width (or the artifact is not a
    Mamba-1 8-bit-activation one, or bus_bytes is not a power of two in [1, 64])."""
    h = _header(qm, bus_bytes)
    layout, offsets = layout_of(h)
    data = bytearray(offsets["image_bytes"])
    for name in HEADER_U64:
        if offsets[name] >= 1 << 64:
            raise QsimError(f"header.{name}: {offsets[name]} does not fit its uint64 word")
    head = MAGIC + struct.pack(f"<{len(HEADER_U32)}I", *(h[n] for n in HEADER_U32))
    head += struct.pack(f"<{len(HEADER_U64)}Q", *(offsets[n] for n in HEADER_U64))
    data[: len(head)] = head
    for name, (off, dt, shape) in layout.items():
        b = _encode(name, _value(qm, name), dt, shape)
        data[off : off + len(b)] = b
    return bytes(data), layout


def read_header(data: bytes) -> dict:
    """The header's words by name (HEADER_U32 and HEADER_U64), checked against the image's size."""
    if len(data) < HEADER_BYTES or bytes(data[: len(MAGIC)]) != MAGIC:
        raise QsimError(f"image: no {MAGIC.decode()} header (not a qsim decode-engine image)")
    u32 = struct.unpack_from(f"<{len(HEADER_U32)}I", data, len(MAGIC))
    u64 = struct.unpack_from(f"<{len(HEADER_U64)}Q", data, len(MAGIC) + 4 * len(HEADER_U32))
    h = dict(zip(HEADER_U32, u32)) | dict(zip(HEADER_U64, u64))
    if h["version"] != VERSION:
        raise QsimError(f"image: format version {h['version']}, this reader knows {VERSION}")
    if h["bus_bytes"] not in BUS_BYTES:
        raise QsimError(f"image: bus_bytes {h['bus_bytes']} is not a power of two in [1, 64]")
    for kind in LINEARS:
        if h[f"{kind}.format"] not in (INT8, INT4) or (h[f"{kind}.format"] == INT4) != (h[f"{kind}.group"] > 0):
            raise QsimError(f"image: {kind} format {h[f'{kind}.format']} group {h[f'{kind}.group']} is invalid")
    return h


def read_image(data: bytes) -> dict:
    """Decode an image from its header alone: {"header": words by name, "layout": name -> (offset, dtype,
    shape), "fields": name -> int (scalar) or np.ndarray}. Refuses an image whose section offsets or size
    differ from those its configuration words determine."""
    h = read_header(data)
    layout, offsets = layout_of(h)
    for name in HEADER_U64:
        if h[name] != offsets[name]:
            raise QsimError(f"image: header {name} is {h[name]}, the configuration gives {offsets[name]}")
    if h["header_bytes"] != _align(HEADER_BYTES, h["bus_bytes"]) or len(data) != h["image_bytes"]:
        raise QsimError(f"image: {len(data)} bytes, the header says {h['image_bytes']} (truncated or padded)")
    fields = {}
    for name, (off, dt, shape) in layout.items():
        a = np.frombuffer(data, np.dtype(dt).newbyteorder("<"), int(np.prod(shape, dtype=np.int64)), off)
        fields[name] = int(a[0]) if shape == () else a.astype(dt).reshape(shape)
    return {"header": h, "layout": layout, "fields": fields}


def default_out(artifact, bus_bytes: int):
    from rtl.build import BUILD

    return BUILD / "image" / f"{artifact.resolve().name}_bus{bus_bytes}.bin"


def _atomic_write(path, data: bytes) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the image from the simulator's other users
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_image(artifact, out=None, bus_bytes: int = 8) -> tuple:
    """`python -m rtl image`: load the artifact, build its image, write OUT and OUT.json (layout, header,
    sha256) atomically. Raises QsimError (one line, naming what and where) before writing anything."""
    import hashlib
    import json
    from pathlib import Path

    from qsim import artifact as art

    if bus_bytes not in BUS_BYTES:
        raise QsimError(f"--bus-bytes {bus_bytes}: must be a power of two in [1, 64]")
    artifact = Path(artifact)
    if not artifact.is_dir():
        raise QsimError(f"--artifact {artifact}: {'not a folder' if artifact.exists() else 'no such folder'}")
    try:
        qm = art.load(artifact)
        data, layout = build_image(qm, bus_bytes)
    except QsimError as exc:
        raise QsimError(f"{artifact}: {exc}") from None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise QsimError(f"{artifact}: malformed manifest ({type(exc).__name__}: {exc})") from None
    out = Path(out) if out is not None else default_out(artifact, bus_bytes)
    if out.is_dir():
        raise QsimError(f"--out {out}: is a folder, expected a file name")
    sha = hashlib.sha256(data).hexdigest()
    meta = {"format": "qsim-decode-image", "version": VERSION, "image": out.name, "bytes": len(data),
            "sha256": sha, "artifact": str(artifact), "artifact_weights_sha256": qm.manifest.get("weights_sha256"),
            "header": read_header(data),
            "layout": {n: {"offset": o, "dtype": dt, "shape": list(s)} for n, (o, dt, s) in layout.items()}}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(out, data)
        _atomic_write(out.with_name(out.name + ".json"), (json.dumps(meta, indent=1) + "\n").encode())
    except OSError as exc:
        raise QsimError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    return out, meta
