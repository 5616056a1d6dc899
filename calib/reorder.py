"""Quamba2's offline "sort and cluster" reorder of a Mamba-2 layer's heads and channels.

Why: Mamba-2's SSM input x has channels whose ranges differ by orders of
magnitude, and a per-tensor int8 scale wastes most codes on the few large
ones. Quamba2 (Chiang et al., arXiv 2503.22879, section 4) groups heads with
similar channel profiles and, inside each head group, channels of similar
magnitude, then gives every (SSD group, head group, channel group) its own
scale. Permuting channels and heads inside an SSD group changes nothing the
model computes: B and C are shared by the group's heads, and the gated norm
normalizes per group.

The procedure, per SSD group (the statistic is, per channel of x, the mean
|x| over a sample's tokens, maximised over the calibration samples):
1. each head's channels are sorted by the statistic (ascending) and the sorted
   vector L2-normalised;
2. the heads are clustered by those vectors: agglomerative, Ward linkage,
   HEAD_GROUPS clusters;
3. inside each head cluster the sorted channel positions are clustered by
   k-means (CHANNEL_GROUPS clusters, each position's feature is its
   normalised value in every member head, initialised at every
   headdim/CHANNEL_GROUPS-th position), so a channel group is a set of sorted positions shared by the
   cluster's heads while each head keeps its own channel order.
Heads are then laid out cluster by cluster and a head's channels group by
group. Clustering uses scikit-learn, deterministically (fixed k-means init, one run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qsim.errors import QsimError

HEAD_GROUPS = 4
CHANNEL_GROUPS = 4


@dataclass(frozen=True)
class Reorder:
    """One layer's permutation and the scale group of every channel after it.

    head_perm[new] = old head; chan_perm[new] = old channel of x (and z, the
    gated norm, out_proj's input); groups[c] = scale-group index of new channel c,
    numbered g * HEAD_GROUPS * CHANNEL_GROUPS + head_group * CHANNEL_GROUPS + channel_group."""

    head_perm: np.ndarray
    chan_perm: np.ndarray
    groups: np.ndarray


def plan(stat: np.ndarray, nheads: int, ngroups: int) -> Reorder:
    """The reorder of one layer from its per-channel statistic (d_inner,)."""
    from sklearn.cluster import AgglomerativeClustering, KMeans

    stat = np.asarray(stat, np.float64)
    headdim = stat.shape[0] // nheads
    if stat.shape != (nheads * headdim,) or not np.isfinite(stat).all():
        raise QsimError(f"reorder: statistic of shape {stat.shape} for {nheads} heads, or not finite")
    per_group = nheads // ngroups
    n_hc, n_cc = min(HEAD_GROUPS, per_group), min(CHANNEL_GROUPS, headdim)
    s = stat.reshape(nheads, headdim)
    order = np.argsort(s, axis=1, kind="stable")
    sorted_s = np.take_along_axis(s, order, axis=1)
    head_perm, chan_perm, groups = [], [], []
    for g in range(ngroups):
        heads = np.arange(g * per_group, (g + 1) * per_group)
        vecs = sorted_s[heads] / np.maximum(np.linalg.norm(sorted_s[heads], axis=1, keepdims=True), 1e-30)
        labels = (AgglomerativeClustering(n_clusters=n_hc, linkage="ward").fit_predict(vecs)
                  if n_hc > 1 else np.zeros(per_group, int))
        labels = _relabel(labels, sorted_s[heads].mean(axis=1))
        for hc in range(n_hc):
            members = heads[labels == hc]
            feats = vecs[labels == hc].T  # (headdim, members): one point per sorted position (normalised)
            init = feats[np.arange(n_cc) * (headdim // n_cc)]
            pos_labels = (KMeans(n_clusters=n_cc, init=init, n_init=1, random_state=0).fit_predict(feats)
                          if n_cc > 1 else np.zeros(headdim, int))
            pos_labels = _relabel(pos_labels, feats.mean(axis=1))
            pos_order = np.lexsort((np.arange(headdim), pos_labels))  # by group, then sorted position
            for h in members:
                head_perm.append(h)
                chan_perm.extend(h * headdim + order[h, pos_order])
                groups.extend((g * HEAD_GROUPS + hc) * CHANNEL_GROUPS + pos_labels[pos_order])
    return Reorder(np.array(head_perm), np.array(chan_perm), np.array(groups, dtype=np.int32))


def _relabel(labels: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Cluster ids renumbered by increasing mean key: the numbering does not depend on the library's."""
    ids = np.unique(labels)
    rank = np.argsort([key[labels == i].mean() for i in ids], kind="stable")
    new = np.empty(ids.max() + 1, int)
    new[ids[rank]] = np.arange(len(ids))
    return new[labels]


def apply(lw: dict[str, np.ndarray], r: Reorder, cfg) -> dict[str, np.ndarray]:
    """Layer weights with the reorder applied (a new dict; the input is not modified).

    in_proj rows: z and x by channel, B and C untouched, dt by head; the conv's x
    channels; dt_bias, A_log and D by head; the gated norm's weight by channel;
    out_proj's input columns by channel. `x_groups` records the scale groups and
    `chan_perm` the channel order (run puts the float model's tensors in it to compare)."""
    di = cfg.d_inner
    rows = np.concatenate([r.chan_perm, di + r.chan_perm, np.arange(2 * di, 2 * di + 2 * cfg.ngroups * cfg.d_state),
                           di + cfg.conv_dim + r.head_perm])
    conv_ch = np.concatenate([r.chan_perm, np.arange(di, cfg.conv_dim)])
    out = dict(lw)
    out["in_proj"] = lw["in_proj"][rows]
    out["conv_w"], out["conv_b"] = lw["conv_w"][conv_ch], lw["conv_b"][conv_ch]
    for key in ("dt_bias", "A_log", "D"):
        out[key] = lw[key][r.head_perm]
    out["gnorm"] = lw["gnorm"][r.chan_perm]
    out["out_proj"] = lw["out_proj"][:, r.chan_perm]
    out["x_groups"] = r.groups
    out["chan_perm"] = r.chan_perm.astype(np.int32)
    return out
