"""The Mamba-2 golden sets (SPEC.md section 15) re-executed independently, element by element.

Each committed `ssd` set runs again through qsim.fixed.ssd (token by token) and qsim.fixed.ssd_numba
(prefill per sequence, and step by step where the set stores the state after every token) from its own
files only: same ys, final state, per-token state, dt, dA and saturation counts. Each `gated_norm` set
runs through both gated_rmsnorm's. Byte-for-byte regeneration from the committed Mamba-2 artifact is
tests/golden/test_golden_sets.py's (the same check as every set). The random set is also built in memory
here, so its checks run before any Mamba-2 set is committed.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json

import numpy as np
import pytest

from golden import generate as G
from qsim import spec, tables
from qsim.fixed import ops, ssd, ssd_numba

KINDS = ("ssd", "gated_norm")


def _committed() -> dict[str, str]:
    out = {}
    for p in sorted(G.SETS.iterdir()):
        if (p / "manifest.json").is_file():
            kind = json.loads((p / "manifest.json").read_text()).get("kind")
            if kind in KINDS:
                out[p.name] = kind
    return out


COMMITTED = _committed()
EXPECTED = {name: ("gated_norm" if name.startswith("gated_norm") else "ssd") for name in G.mamba2_catalog()}
NAMES = {**EXPECTED, **COMMITTED}


def _names(kind: str) -> list:
    names = sorted(n for n, k in NAMES.items() if k == kind)
    return names or [pytest.param(None, marks=pytest.mark.skip(
        reason=f"no Mamba-2 {kind} set: {G.relative(G.ARTIFACT2)} is not committed yet, nor any set cut from it"))]


def _stored(name: str) -> tuple[dict, dict]:
    if name not in COMMITTED:
        pytest.skip(f"golden/sets/{name} is not committed yet: cut it with `python -m golden --only {name}` "
                    f"from {G.relative(G.ARTIFACT2)} and commit the folder")
    return G.load(name, G.SETS)  # checks every file's sha256 against the manifest


def _parse(files: dict[str, bytes]) -> tuple[dict, dict]:
    """(manifest, arrays) from a set's rendered bytes, as a reader of the committed files sees them."""
    manifest = json.loads(files["manifest.json"])
    arrays = {}
    for f, info in manifest["files"].items():
        assert hashlib.sha256(files[f]).hexdigest() == info["sha256"]
        arrays[f[:-4]] = np.load(io.BytesIO(files[f]), allow_pickle=False)
    return manifest, arrays


def _i64(a: dict) -> dict:
    return {k: np.asarray(v).astype(np.int64) for k, v in a.items()}


def ssd_params(manifest: dict, a: dict) -> dict:
    return {**{k: a[k] for k in ("dt_table", "a_q", "Dq", "m_h", "s_h", "m_y", "s_y", "exp_tab")},
            "frac": manifest["constants"]["frac"], "state_bits": manifest["constants"]["state_bits"]}


def check_ssd(manifest: dict, arrays: dict) -> None:
    """Re-execute an ssd set from its files and compare every output with what it stores."""
    a = _i64(arrays)
    dims = manifest["dims"]
    T, D, H, P, G_, N = (dims[k] for k in ("tokens", "d_inner", "nheads", "headdim", "ngroups", "d_state"))
    assert D == H * P and a["x"].shape == (T, D) and a["B"].shape == a["C"].shape == (T, G_, N)
    assert a["dt_raw"].shape == (T, H) and a["h_final"].shape == (H, P, N) and a["start"][0] == 1
    p = ssd_params(manifest, a)
    ssd.validate_ssd(p, N, G_, manifest["set"])  # the constants are valid (5.3)
    np.testing.assert_array_equal(a["exp_tab"], tables.exp2_frac_table())
    starts = [int(t) for t in np.flatnonzero(a["start"])] + [T]

    # NumPy reference, token by token, from the zero state at every start flag
    dt = a["dt_table"][np.arange(H), a["dt_raw"] + 128]
    np.testing.assert_array_equal(dt, a["dt"], err_msg="dt")
    dA = np.stack([ops.decay(dt[t], a["a_q"][:, None], p["frac"], a["exp_tab"])[:, 0] for t in range(T)])
    np.testing.assert_array_equal(dA, a["dA"], err_msg="dA")
    ys = np.empty((T, D), np.int64)
    hs = np.empty((T, H, P, N), np.int64)
    sat = {"state": 0, "ssd_out": 0}
    h = h_n = None
    for t in range(T):
        h = ssd.new_state(H, P, N) if a["start"][t] else h
        ys[t], h, n = ssd.ssd_step(a["x"][t], a["B"][t], a["C"][t], a["dt_raw"][t], h, p)
        hs[t] = h
        sat = {k: sat[k] + n[k] for k in sat}
    np.testing.assert_array_equal(ys, a["ys"], err_msg="ys (numpy)")
    np.testing.assert_array_equal(h, a["h_final"], err_msg="final state (numpy)")
    if "h" in a:
        np.testing.assert_array_equal(hs, a["h"], err_msg="state per token (numpy)")
    assert sat == manifest["saturations"]

    # Numba: a prefill per sequence, and one step at a time where the per-token state is stored
    ys_n = np.empty((T, D), np.int64)
    sat_n = {"state": 0, "ssd_out": 0}
    for s, e in itertools.pairwise(starts):
        ys_n[s:e], h_n, n = ssd_numba.ssd_prefill(a["x"][s:e], a["B"][s:e], a["C"][s:e], a["dt_raw"][s:e], None, p)
        sat_n = {k: sat_n[k] + n[k] for k in sat_n}
    np.testing.assert_array_equal(ys_n, a["ys"], err_msg="ys (numba)")
    np.testing.assert_array_equal(h_n, a["h_final"], err_msg="final state (numba)")
    assert sat_n == manifest["saturations"]
    if "h" in a:
        for t in range(T):
            h_n = ssd_numba.new_state(H, P, N) if a["start"][t] else h_n
            y1, h_n, _ = ssd_numba.ssd_step(a["x"][t], a["B"][t], a["C"][t], a["dt_raw"][t], h_n, p)
            np.testing.assert_array_equal(y1, a["ys"][t], err_msg=f"ys token {t} (numba step)")
            np.testing.assert_array_equal(h_n, a["h"][t], err_msg=f"state after token {t} (numba step)")


def check_gated_norm(manifest: dict, arrays: dict) -> None:
    a = _i64(arrays)
    m, s = manifest["constants"]["m"], manifest["constants"]["s"]
    dims = manifest["dims"]
    assert a["ys"].shape == (dims["tokens"], dims["d_inner"]) and a["eps_int"].shape == (dims["norm_groups"],)
    ssd.validate_gated_norm({"w": a["w"], "eps_int": a["eps_int"], "m": m, "s": s}, dims["d_inner"])
    np.testing.assert_array_equal(a["rsqrt"], tables.rsqrt_table())
    sz = a["silu_z"][a["z"] + 128]
    np.testing.assert_array_equal(sz, a["sz"], err_msg="sz")
    np.testing.assert_array_equal(spec.rshift_round(a["ys"] * sz, spec.GATE_PRODUCT_SHIFT), a["g"], err_msg="g")
    for impl in (ssd, ssd_numba):
        y, n = impl.gated_rmsnorm(a["ys"], sz, a["w"], a["eps_int"], m, s, a["rsqrt"])
        np.testing.assert_array_equal(y, a["y"], err_msg=f"y ({impl.__name__})")
        assert n == manifest["saturations"]["gated_norm"]
        y1, _ = impl.gated_rmsnorm(a["ys"][-1], sz[-1], a["w"], a["eps_int"], m, s, a["rsqrt"])  # one token
        np.testing.assert_array_equal(y1, a["y"][-1], err_msg=f"y, last token alone ({impl.__name__})")


@pytest.mark.parametrize("name", _names("ssd"))
def test_ssd_set_reexecutes(name):
    check_ssd(*_stored(name))


@pytest.mark.parametrize("name", _names("gated_norm"))
def test_gated_norm_set_reexecutes(name):
    check_gated_norm(*_stored(name))


def test_random_g2_in_memory():
    """ssd_random_g2 as the generator builds it: valid constants, 2 groups, the edges it promises, re-executed."""
    manifest, a = _parse(G.render("ssd_random_g2", *G.ssd_random_g2()))
    check_ssd(manifest, a)
    assert manifest["dims"]["ngroups"] == 2 and manifest["spec_version"] == spec.SPEC_VERSION
    dt, a_q, frac = a["dt"].astype(np.int64), a["a_q"].astype(np.int64), manifest["constants"]["frac"]
    widest = dt * a_q + (1 << (frac - 9)) >= 1 << 31  # 9.1's rounding add needs all 32 bits
    assert widest[:, 0].any() and int(dt.max()) * int(a_q.max()) == spec.DT_MAX * 65535
    assert (a["x"][widest[:, 0], : manifest["dims"]["headdim"]] == 0).all()  # only the decay moves head 0 there
    assert (dt == 0).any() and (a["dA"] == 1 << spec.DECAY_BITS).any()
    limit = spec.ssd_dq_limit(manifest["dims"]["d_state"], manifest["constants"]["state_bits"])
    assert int(np.abs(a["Dq"].astype(np.int64)).max()) == limit
    assert manifest["saturations"]["state"] > 0 and manifest["saturations"]["ssd_out"] > 0
    assert (a["m_h"] >= 1 << 30).any() and (a["m_h"] < 1 << 15).any()  # 31-bit and 15-bit state multipliers
