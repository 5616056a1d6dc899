"""Quamba2's sort-and-cluster reorder (calib.reorder.plan): permutations, scale groups, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from calib import reorder
from calib.reorder import CHANNEL_GROUPS, HEAD_GROUPS, Reorder, plan
from qsim.errors import QsimError

BANDS = np.array([0.05, 0.5, 5.0, 50.0])  # four clear magnitude bands inside every head


def _random_stat(nheads: int, headdim: int, seed: int = 0) -> np.ndarray:
    """Per-channel mean |x|: log-normal, every head at its own overall magnitude."""
    rng = np.random.default_rng(seed)
    return (np.exp(rng.normal(0, 1, (nheads, headdim))) * np.exp(rng.normal(0, 1, (nheads, 1)))).ravel()


def _banded_stat(nheads: int, headdim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each head: headdim/4 channels in each band (placed at random), +-5 % jitter, a per-head factor."""
    rng = np.random.default_rng(seed)
    band = np.stack([rng.permutation(np.repeat(np.arange(4), headdim // 4)) for _ in range(nheads)])
    stat = BANDS[band] * (1 + 0.05 * rng.uniform(-1, 1, band.shape)) * rng.uniform(0.8, 1.25, (nheads, 1))
    return stat.ravel(), band.ravel()


def _check_structure(r: Reorder, nheads: int, headdim: int, ngroups: int) -> None:
    per_group = nheads // ngroups
    assert sorted(r.head_perm.tolist()) == list(range(nheads))
    assert sorted(r.chan_perm.tolist()) == list(range(nheads * headdim))
    assert r.groups.shape == (nheads * headdim,) and r.groups.dtype == np.int32
    for new, old in enumerate(r.head_perm):
        assert new // per_group == old // per_group, "a head left its SSD group"
        chans = r.chan_perm[new * headdim : (new + 1) * headdim]
        assert sorted(chans.tolist()) == list(range(old * headdim, (old + 1) * headdim)), "a head lost channels"
        g = r.groups[new * headdim : (new + 1) * headdim]
        # numbering: ssd_group * HEAD_GROUPS * CHANNEL_GROUPS + head_group * CHANNEL_GROUPS + channel_group
        ssd, hg, cg = g // (HEAD_GROUPS * CHANNEL_GROUPS), g // CHANNEL_GROUPS % HEAD_GROUPS, g % CHANNEL_GROUPS
        assert (ssd == new // per_group).all()
        assert len(set(hg.tolist())) == 1, "one head, one head group"
        assert (np.diff(cg) >= 0).all(), "a head's channels are laid out channel group by channel group"
    # heads are laid out head group by head group inside each SSD group
    head_group = r.groups[::headdim] // CHANNEL_GROUPS
    assert (np.diff(head_group) >= 0).all()


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("nheads,headdim", [(8, 12), (16, 6), (4, 10)])
def test_permutations_stay_inside_ssd_groups_and_heads(nheads, headdim, ngroups):
    r = plan(_random_stat(nheads, headdim, seed=nheads + ngroups), nheads, ngroups)
    _check_structure(r, nheads, headdim, ngroups)
    per_group = nheads // ngroups
    n_hg = min(HEAD_GROUPS, per_group)
    for g in range(ngroups):
        hgs = {int(x) // CHANNEL_GROUPS % HEAD_GROUPS for x in r.groups[g * per_group * headdim : (g + 1) * per_group * headdim]}
        assert hgs == set(range(n_hg)), "every head group is used (as many as the SSD group has heads, up to 4)"
    assert len(np.unique(r.groups)) <= ngroups * HEAD_GROUPS * CHANNEL_GROUPS


def test_deterministic():
    stat = _random_stat(16, 12, seed=3)
    a, b = plan(stat, 16, 2), plan(stat.copy(), 16, 2)
    for name in ("head_perm", "chan_perm", "groups"):
        assert np.array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("ngroups", [1, 2])
def test_planted_bands_are_recovered_exactly(ngroups):
    """4 clear magnitude bands per head: every channel's channel group is its band (groups numbered by
    increasing magnitude), whichever head group its head falls into."""
    nheads, headdim = 16, 12
    stat, band = _banded_stat(nheads, headdim, seed=ngroups)
    r = plan(stat, nheads, ngroups)
    _check_structure(r, nheads, headdim, ngroups)
    assert np.array_equal(r.groups % CHANNEL_GROUPS, band[r.chan_perm])
    # and so every scale group holds channels of one band only: its range is the band's, not the layer's
    for g in np.unique(r.groups):
        s = stat[r.chan_perm[r.groups == g]]
        assert s.max() / s.min() < 2  # bands are 10x apart; heads differ by up to 1.25 / 0.8, jitter 5 %


def test_heads_with_the_same_profile_share_a_head_group():
    """Four kinds of heads (flat, linear, one outlier band, exponential): one head group per kind."""
    nheads, headdim = 16, 8
    profiles = np.array([[1, 1, 1, 1], [1, 2, 3, 4], [1, 1, 1, 60], [1, 8, 64, 512]], dtype=float)
    rng = np.random.default_rng(5)
    kind = rng.permutation(np.repeat(np.arange(4), 4))
    stat = np.stack([rng.permutation(np.repeat(profiles[k], 2)) * rng.uniform(0.5, 2.0) * (1 + 0.02 * rng.random(8))
                     for k in kind])
    r = plan(stat.ravel(), nheads, 1)
    head_group = r.groups[::headdim] // CHANNEL_GROUPS
    by_kind = {int(k): {int(h) for h, kk in zip(head_group, kind[r.head_perm]) if kk == k} for k in range(4)}
    assert all(len(v) == 1 for v in by_kind.values()), by_kind
    assert len(set().union(*by_kind.values())) == 4


def test_apply_moves_every_per_channel_and_per_head_tensor():
    """apply(): z and x rows of in_proj, the conv's x channels, gnorm and out_proj columns by channel;
    dt rows, dt_bias, A_log, D by head; B and C rows and conv channels untouched."""
    from qsim.config import Mamba2Config
    from qsim.weights import synthetic_layer

    cfg = Mamba2Config(d_model=16, n_layer=1, vocab_size=256, d_state=3, headdim=4, ngroups=2)
    lw = synthetic_layer(cfg, 0, seed=1)
    lw = {k: v + np.random.default_rng(2).normal(0, 1, v.shape).astype(np.float32) for k, v in lw.items()}
    r = plan(_random_stat(cfg.nheads, cfg.headdim, seed=9), cfg.nheads, cfg.ngroups)
    out = reorder.apply(lw, r, cfg)
    di, cd, gn = cfg.d_inner, cfg.conv_dim, cfg.ngroups * cfg.d_state
    ip, ip0 = out["in_proj"], lw["in_proj"]
    assert np.array_equal(ip[:di], ip0[r.chan_perm])
    assert np.array_equal(ip[di : 2 * di], ip0[di + r.chan_perm])
    assert np.array_equal(ip[2 * di : 2 * di + 2 * gn], ip0[2 * di : 2 * di + 2 * gn])
    assert np.array_equal(ip[di + cd :], ip0[di + cd + r.head_perm])
    assert np.array_equal(out["conv_w"][:di], lw["conv_w"][r.chan_perm])
    assert np.array_equal(out["conv_b"][di:], lw["conv_b"][di:])
    for key in ("dt_bias", "A_log", "D"):
        assert np.array_equal(out[key], lw[key][r.head_perm])
    assert np.array_equal(out["gnorm"], lw["gnorm"][r.chan_perm])
    assert np.array_equal(out["out_proj"], lw["out_proj"][:, r.chan_perm])
    assert np.array_equal(out["x_groups"], r.groups) and "x_groups" not in lw
    assert not np.array_equal(r.chan_perm, np.arange(di)), "the test statistic must move channels"


@pytest.mark.parametrize("stat,nheads,what", [
    (np.full(96, np.nan), 8, "NaN"),
    (np.r_[np.ones(95), np.inf], 8, "infinite"),
    (np.ones(97), 8, "not a multiple of the heads"),
    (np.ones((8, 12)), 8, "two-dimensional"),
    (np.ones(4), 8, "fewer channels than heads"),
])
def test_bad_statistic_is_a_qsim_error(stat, nheads, what):
    with pytest.raises(QsimError, match="reorder"):
        plan(stat, nheads, 2)
