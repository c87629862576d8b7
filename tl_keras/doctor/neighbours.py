"""Hashes, nearest neighbours and duplicate groups: the doctor's one pass over all pairs.

Pure numpy (`tl_keras.doctor.analysis` explains how duplicates are judged, and re-exports
`content_hash`, `l2_normalize` and `nearest_neighbours`). `nearest_neighbours` computes the
similarities in blocks of rows, so memory stays at about `BLOCK_ELEMENTS` whatever the number of
images; the time grows with its square (about 2 s for 20,000 images of 256 values on 2 cores).
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_keras.doctor.thresholds import Thresholds

SPLIT_ORDER = ("train", "val", "test")  # how splits are listed; any other name sorts after
NEIGHBOURS_KEPT = 64  # per image, from the one pass over all pairs (duplicates, votes, density)
THUMBNAIL_NEIGHBOURS = 8  # most similar thumbnails kept per image (a photo has few copies)
EVIDENCE = {"exact": "same bytes", "near": "features", "thumbnail": "thumbnails"}
BLOCK_ELEMENTS = 1 << 24  # similarity entries computed at once: 64 MiB of float32


# --- hashes and features ------------------------------------------------------------------------


def content_hash(data: bytes | np.ndarray) -> str:
    """A SHA-256 hex digest of file bytes, or of decoded pixels (their shape and dtype included).

    Hash the file's bytes to find byte-identical copies; hash the decoded pixels to also find a
    copy saved again without loss (PNG from PNG, a renamed file).
    """
    if isinstance(data, np.ndarray):
        pixels = np.ascontiguousarray(data)
        header = f"{pixels.dtype.str}{pixels.shape}".encode()
        return hashlib.sha256(header + pixels.tobytes()).hexdigest()
    return hashlib.sha256(bytes(data)).hexdigest()


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def nearest_neighbours(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar other rows of each row of `z` (unit rows: cosine similarity).

    Computed in blocks of rows, so memory stays at about `BLOCK_ELEMENTS` similarities whatever N.

    Returns:
      (indices, similarities), each N x min(k, N - 1), most similar first; ties by lower index.
    """
    n = len(z)
    k = min(k, n - 1)
    indices = np.zeros((n, max(k, 0)), dtype=np.int64)
    sims = np.zeros((n, max(k, 0)), dtype=np.float32)
    if k <= 0:
        return indices, sims
    rows = max(1, min(n, BLOCK_ELEMENTS // n))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = z[start:stop] @ z.T
        block[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # never one's own match
        cand = np.argpartition(-block, k - 1, axis=1)[:, :k]  # k <= n - 1: never the diagonal
        cand_sims = np.take_along_axis(block, cand, axis=1)
        order = np.lexsort((cand, -cand_sims), axis=1)
        indices[start:stop] = np.take_along_axis(cand, order, axis=1)
        sims[start:stop] = np.take_along_axis(cand_sims, order, axis=1)
    return indices, sims


# --- duplicates ---------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def local_density(
    nbr_idx: np.ndarray, nbr_sim: np.ndarray, hash_ids: np.ndarray, t: Thresholds
) -> np.ndarray:
    """Similarity of each image's `neighbourhood_k`-th neighbour that is not a copy of it.

    Copies (same hash, or at least `identical_cosine`) are skipped, so an image with several
    copies is measured against its real neighbourhood. NaN when there are too few neighbours.
    """
    copy = (nbr_sim >= t.identical_cosine) | (hash_ids[nbr_idx] == hash_ids[:, None])
    ranked = np.where(copy, -np.inf, nbr_sim)
    ranked = -np.sort(-ranked, axis=1)
    k = t.neighbourhood_k
    if ranked.shape[1] < k:
        return np.full(len(nbr_sim), np.nan)
    b = ranked[:, k - 1].astype(np.float64)
    return np.where(np.isfinite(b), b, np.nan)


def duplicate_pairs(
    nbr_idx: np.ndarray,
    nbr_sim: np.ndarray,
    density: np.ndarray,
    hash_ids: np.ndarray,
    t: Thresholds,
) -> list[tuple[int, int, float, str]]:
    """Every duplicate pair (i < j, cosine, 'exact' | 'near'), from the neighbour lists and hashes.

    Exact pairs come from the hashes alone (all members of a hash group, chained), so they are
    found however many copies there are.
    """
    pairs: dict[tuple[int, int], tuple[float, str]] = {}
    first_of_hash: dict[int, int] = {}
    for i, h in enumerate(hash_ids.tolist()):
        if h in first_of_hash:
            pairs[(first_of_hash[h], i)] = (1.0, "exact")
        else:
            first_of_hash[h] = i
    b = np.maximum(density[:, None], density[nbr_idx])  # the denser of the two places
    with np.errstate(invalid="ignore", divide="ignore"):
        local = (nbr_sim - b) / (1.0 - b)
    near = (nbr_sim >= t.near_duplicate_min_cosine) & (
        (nbr_sim >= t.identical_cosine) | (np.nan_to_num(local, nan=-1.0) >= t.near_duplicate_score)
    )
    for i, col in zip(*np.nonzero(near), strict=True):
        j = int(nbr_idx[i, col])
        key = (min(int(i), j), max(int(i), j))
        if key not in pairs:
            pairs[key] = (float(nbr_sim[i, col]), "near")
    return [(i, j, s, kind) for (i, j), (s, kind) in sorted(pairs.items())]


def thumbnail_pairs(
    z: np.ndarray, thumbnails: np.ndarray, t: Thresholds
) -> list[tuple[int, int, float, str]]:
    """Pairs whose grey thumbnails correlate >= `thumbnail_correlation` (features alike enough).

    Returns:
      (i < j, feature cosine, 'thumbnail') for each pair, in index order.
    """
    x = np.asarray(thumbnails, dtype=np.float32).reshape(len(thumbnails), -1)
    centred = l2_normalize(x - x.mean(axis=1, keepdims=True))  # a flat image: all zero, no pair
    idx, corr = nearest_neighbours(centred, THUMBNAIL_NEIGHBOURS)
    pairs = {}
    for i, col in zip(*np.nonzero(corr >= t.thumbnail_correlation), strict=True):
        j = int(idx[i, col])
        cosine = float(z[i] @ z[j])
        if cosine >= t.thumbnail_min_cosine:
            pairs[(min(int(i), j), max(int(i), j))] = cosine
    return [(i, j, c, "thumbnail") for (i, j), c in sorted(pairs.items())]


def duplicate_groups(
    pairs: Sequence[tuple[int, int, float, str]],
    *,
    hash_ids: np.ndarray,
    labels: np.ndarray,
    splits: Sequence[str],
    paths: Sequence[str],
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """Joins duplicate pairs into groups, leakage across splits first.

    Returns:
      One dict per group: `kind` ('exact' when every member has the same hash, else 'near'),
      `size`, `splits`, `across_splits`, `classes`, `label_conflict`, `min_cosine` (its weakest
      link), `evidence` (what joined it: 'same bytes', 'features', 'thumbnails') and `members`
      (path, split, label), members in split order then path.
    """
    uf = _UnionFind(len(labels))
    for i, j, _, _ in pairs:
        uf.union(i, j)
    weakest: dict[int, float] = {}
    members: dict[int, set[int]] = collections.defaultdict(set)
    evidence: dict[int, set[str]] = collections.defaultdict(set)
    for i, j, s, kind in pairs:
        root = uf.find(i)
        members[root].update((i, j))
        weakest[root] = min(weakest.get(root, 1.0), s)
        evidence[root].add(EVIDENCE[kind])
    groups = []
    for root, idx in members.items():
        idx_sorted = sorted(idx, key=lambda k: (_split_rank(splits[k]), paths[k]))
        group_splits = _sorted_splits({splits[k] for k in idx})
        classes = sorted({class_names[labels[k]] for k in idx})
        groups.append(
            {
                "kind": "exact" if len({int(hash_ids[k]) for k in idx}) == 1 else "near",
                "size": len(idx),
                "splits": group_splits,
                "across_splits": len(group_splits) > 1,
                "classes": classes,
                "label_conflict": len(classes) > 1,
                "min_cosine": round(weakest[root], 4),
                "evidence": sorted(evidence[root]),
                "members": [
                    {"path": paths[k], "split": splits[k], "label": class_names[labels[k]]}
                    for k in idx_sorted
                ],
            }
        )
    groups.sort(
        key=lambda g: (
            not g["across_splits"],
            not g["label_conflict"],
            -g["size"],
            g["members"][0]["path"],
        )
    )
    return groups


def _split_rank(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def _sorted_splits(splits) -> list[str]:
    return sorted(splits, key=_split_rank)
