"""What a data set's pretrained features say about it: duplicates, label errors, balance, outliers.

Pure numpy over arrays: the features of every image (N x D, the frozen base's pooled output), the
integer labels, and optionally each image's split, file path and content hash. No TensorFlow;
`diagnose` runs every check and returns a JSON-serialisable report, `summary_line` the one log
line shown before training.

How each check decides (every threshold lives in `Thresholds`, and the report records them):

* **Duplicates.** Exact: the same content hash (of the file's bytes, or of the decoded pixels,
  whichever the caller hashed). Near: a resized or re-encoded copy lands next to its original in
  feature space, but how close "next to" is depends on the backbone and on how crowded that part
  of the space is (MobileNet-0.25 puts unrelated meadow photos at cosine 0.96 and a 64 px JPEG
  copy of a photo at 0.94). So a pair counts as near-duplicate when its cosine similarity `s` is
  at least `near_duplicate_min_cosine` and its *local* score `(s - b) / (1 - b)` is at least
  `near_duplicate_score`, where `b` is the similarity of the `neighbourhood_k`-th nearest
  neighbour of whichever of the two images sits in the denser place: the pair's cosine distance
  is at most 30% of the distance to that neighbour. Pairs at or above `identical_cosine` count
  whatever their neighbourhood. A photo after a colour edit, or turned grey, moves further in
  feature space than that; its 16 px grey thumbnail hardly changes. So when thumbnails are
  given, a pair whose thumbnails correlate at least `thumbnail_correlation` (and whose features
  are at least `thumbnail_min_cosine` alike) is a near-duplicate too: on the shared flowers 15
  real pairs (copies, edits, grey versions) score >= 0.978 and every other pair <= 0.960. Pairs
  are joined into groups, each with the evidence that joined it (`same bytes`, `features`,
  `thumbnails`), and groups that straddle train / validation / test (leakage) are listed first.
* **Likely label errors** (confident-learning style). Two out-of-sample opinions on every
  image's class: a softmax-regression probe trained on the other folds (`doctor.linear_probe`; its
  probabilities temperature-scaled against the given labels, so that they mean what they say
  whatever the probe's regularisation), and a vote of the image's `label_k` nearest neighbours
  (its own duplicates excluded). Their average `p` ranks suspects by `1 - p[given label]`; a
  suspect is a *likely* label error when `p[given] <= label_error_max_given` and another class
  has `p >= label_error_min_suggested`, which is then the suggested label. How many of these are
  real depends on the base: a probe that tells the classes apart only 63% of the time (the
  shared MobileNet-0.25 on flowers) also flags hard and odd photos: below
  `label_check_min_accuracy` the check is reported as weak (`reliable: false`), and the summary
  line says "label suspects to review" instead of counting "likely label errors".
* **Class balance.** Images per class and split; a warning when the largest class has more than
  `imbalance_ratio` times the images of the smallest (or a class has none).
* **Outliers.** Images far from every class (wrong folder, not a photo of the subject, another
  domain): the robust z-score (median / MAD) of the angle to the nearest class centroid (the
  image's own class without it) is at least `outlier_z`. A cluster of images from another
  domain is far from every centroid too, so the score does not ask for isolation; the report
  adds each outlier's `isolation` (the same z-score of the angle to its `neighbourhood_k`-th
  neighbour) to tell a lone odd image from a group of them.

Classes with fewer than `min_class_images` images are too small to learn from or to vote on: their
own images get no label or outlier verdict (duplicates and balance are still checked), and the
report says so in `limits` rather than guessing.

**Deferred checks.** Duplicates (above all across splits) and balance must be known before
training: a leaked copy inflates every validation figure the run reports. Label errors and
outliers can wait: `diagnose(..., deferred=DEFERRABLE)` skips them (the probe is most of the
checks' time: docs/benchmarks.md, the doctor before training), and their sections say
`deferred` instead of a verdict, so nobody reads "0 label errors" into a check that did not run.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_keras import calibration
from tl_keras.doctor.linear_probe import out_of_fold_probabilities
from tl_keras.doctor.neighbours import (
    NEIGHBOURS_KEPT,
    _sorted_splits,
    _split_rank,
    content_hash,
    duplicate_groups,
    duplicate_pairs,
    l2_normalize,
    local_density,
    nearest_neighbours,
    thumbnail_pairs,
)
from tl_keras.doctor.thresholds import Thresholds
from tl_keras.errors import ConfigError, DataError

REPORT_VERSION = 1
CHECKS = ("duplicates", "balance", "label_errors", "outliers")  # in the report's order
DEFERRABLE = ("label_errors", "outliers")  # may wait until after training; the others never do


# --- label errors -------------------------------------------------------------------------------


def neighbour_votes(
    nbr_idx: np.ndarray, labels: np.ndarray, num_classes: int, k: int, exclude: np.ndarray
) -> np.ndarray:
    """Share of each image's k nearest neighbours in each class, skipping `exclude[i, col]`."""
    n = len(nbr_idx)
    votes = np.zeros((n, num_classes))
    keep = ~exclude
    rank = np.cumsum(keep, axis=1)  # the k first kept neighbours vote
    voters = keep & (rank <= k)
    rows = np.repeat(np.arange(n), nbr_idx.shape[1])
    np.add.at(votes, (rows[voters.ravel()], labels[nbr_idx].ravel()[voters.ravel()]), 1.0)
    total = votes.sum(axis=1, keepdims=True)
    return np.divide(votes, total, out=np.full_like(votes, 1.0 / num_classes), where=total > 0)


def label_suspects(
    p: np.ndarray, labels: np.ndarray, checked: np.ndarray, t: Thresholds
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks images by how little the evidence `p` supports their given label.

    Returns:
      (order: indices of checked images, most suspect first; suggested: the most probable other
      class of every image; likely: whether each image is a likely label error).
    """
    n, num_classes = p.shape
    given = p[np.arange(n), labels]
    others = np.where(np.eye(num_classes, dtype=bool)[labels], -np.inf, p)
    suggested = others.argmax(axis=1)
    likely = (
        checked
        & (given <= t.label_error_max_given)
        & (p[np.arange(n), suggested] >= t.label_error_min_suggested)
    )
    idx = np.flatnonzero(checked)
    order = idx[np.lexsort((idx, given[idx]))]  # least support first; ties by index
    return order, suggested, likely


# --- outliers -----------------------------------------------------------------------------------


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v - median) / (1.4826 MAD), over the finite values; 0 where the spread is 0."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return np.full_like(values, np.nan)
    median = np.median(finite)
    mad = 1.4826 * np.median(np.abs(finite - median))
    if mad <= 0:
        mad = 1.2533 * np.mean(np.abs(finite - median))  # mean absolute deviation, normal scale
    if mad <= 0:
        return np.where(np.isfinite(values), 0.0, np.nan)
    return (values - median) / mad


def centroid_distance(z: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Cosine distance from each image to the nearest class centroid, its own class without it.

    NaN for an image alone in its class with no other class to compare with.
    """
    n = len(z)
    onehot = np.eye(num_classes)[labels]
    counts = onehot.sum(axis=0)
    sums = onehot.T @ z.astype(np.float64)  # K x D
    best = np.full(n, -np.inf)
    for c in range(num_classes):
        own = labels == c
        centre = np.broadcast_to(sums[c], z.shape).copy()
        size = np.full(n, counts[c])
        centre[own] -= z[own]  # leave the image out of its own class's centroid
        size[own] -= 1
        norms = np.linalg.norm(centre, axis=1)
        valid = (size > 0) & (norms > 0)
        cos = np.einsum("nd,nd->n", z, centre) / np.where(valid, norms, 1.0)
        best = np.where(valid, np.maximum(best, cos), best)
    return np.where(np.isfinite(best), 1.0 - best, np.nan)


# --- class balance ------------------------------------------------------------------------------


def class_balance(
    labels: np.ndarray, splits: Sequence[str], class_names: Sequence[str], t: Thresholds
) -> dict[str, Any]:
    """Images per class and split, the largest-to-smallest ratio, and warnings.

    Returns:
      `counts` ({class: {split: n}}), `totals` ({class: n}), `ratio` (largest / smallest class;
      None when a class has no images), `largest`, `smallest`, `ok`, and `warnings` (plain words).
    """
    split_names = _sorted_splits(set(splits))
    counts = {name: dict.fromkeys(split_names, 0) for name in class_names}
    for label, split in zip(labels.tolist(), splits, strict=True):
        counts[class_names[label]][split] += 1
    totals = {name: sum(c.values()) for name, c in counts.items()}
    largest = max(totals, key=lambda k: (totals[k], k))
    smallest = min(totals, key=lambda k: (totals[k], k))
    warnings = []
    ratio = None
    if totals[smallest] == 0:
        empty = [name for name, n in totals.items() if n == 0]
        warnings.append(f"no images of class {', '.join(empty)}")
    else:
        ratio = totals[largest] / totals[smallest]
        if ratio > t.imbalance_ratio:
            warnings.append(
                f"imbalanced: {largest} has {totals[largest]} images, {ratio:.0f}x the "
                f"{totals[smallest]} of {smallest} (more than {t.imbalance_ratio:g}x): accuracy "
                "says little here, read balanced accuracy and macro F1, and consider "
                'class_weight="balanced"'
            )
    for split in split_names:
        missing = [name for name in class_names if totals[name] and not counts[name][split]]
        if missing and len(split_names) > 1:
            warnings.append(f"split {split!r} has no images of class {', '.join(missing)}")
    return {
        "counts": counts,
        "totals": totals,
        "ratio": round(ratio, 2) if ratio is not None else None,
        "largest": largest,
        "smallest": smallest,
        "ok": not warnings,
        "warnings": warnings,
    }


# --- the report ---------------------------------------------------------------------------------


def diagnose(
    features: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    splits: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
    hashes: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    thresholds: Thresholds | None = None,
    seed: int = 0,
    thumbnails: np.ndarray | None = None,
    extra_limits: Sequence[str] = (),
    no_features: Sequence[str] | None = None,
    deferred: Sequence[str] = (),
) -> dict[str, Any]:
    """Runs every check and returns the report (JSON-serialisable; `summary` is the log line).

    Args:
      features: N x D, each image's features from the frozen pretrained base (any scale; they
        are L2-normalised here); None = no features (see below).
      labels: N class indices in [0, len(class_names)).
      splits: each image's split ('train', 'val', 'test', ...); None = all 'train'.
      paths: each image's file, to name it in the report; None = '#<index>'.
      hashes: each image's content hash (`content_hash` of its bytes or pixels), for exact
        duplicates; None = only identical features count as exact.
      class_names: the name of each class index; None = '0', '1', ...
      thresholds: None = `Thresholds()`.
      seed: the probe's fold assignment.
      thumbnails: N x P small grey thumbnails (e.g. 16 x 16 = 256 pixels each), to find
        edited and grey copies; None = features and hashes only.
      extra_limits: what the caller could not check, listed first in the report's limits.
      no_features: with `features=None`, the limits to state (why there are no features);
        default `NO_FEATURES`.
      deferred: checks of `DEFERRABLE` not to run now (their sections say `deferred`).

    With `features=None` only exact copies (the hashes) and the class balance are checked.

    Returns:
      {'version', 'num_images', 'num_classes', 'class_names', 'splits', 'thresholds', 'checks'
      (run), 'deferred', 'balance', 'duplicates', 'label_errors', 'outliers', 'limits',
      'summary'}.

    Raises:
      DataError: the arrays do not fit together (lengths, label range, non-finite features).
      ConfigError: `deferred` names a check that cannot wait.
    """
    t = thresholds or Thresholds()
    deferred = _deferrable(deferred)
    if features is None:  # zero-width rows; each image its own content unless hashes say not
        features = np.zeros((len(np.asarray(labels)), 0), np.float32)
        hashes = hashes if hashes is not None else [f"#{i}" for i in range(len(features))]
        thumbnails = None
        x, images = _checked_inputs(features, labels, splits, paths, hashes, class_names)
        features = None
    else:
        x, images = _checked_inputs(features, labels, splits, paths, hashes, class_names)
    z = l2_normalize(x)
    nbr_idx, density, pairs = _duplicates(
        z, images, thumbnails, t, features_given=features is not None
    )
    groups = duplicate_groups(
        pairs,
        hash_ids=images.hash_ids,
        labels=images.labels,
        splits=images.splits,
        paths=images.paths,
        class_names=images.class_names,
    )
    checked, limits = _what_can_be_checked(images, t)
    if features is None:
        checked, limits = None, list(no_features or [NO_FEATURES])
    limits = [*(extra_limits or ()), *limits]
    if checked is None:  # label errors and outliers cannot run at all: nothing waits
        deferred = ()
    report = {
        "version": REPORT_VERSION,
        "num_images": len(images.labels),
        "num_classes": len(images.class_names),
        "class_names": images.class_names,
        "splits": _sorted_splits(set(images.splits)),
        "thresholds": dataclasses.asdict(t),
        "checks": _checks_run(deferred, can_wait=checked is not None),
        "deferred": list(deferred),
        "balance": class_balance(images.labels, images.splits, images.class_names, t),
        "duplicates": _duplicate_summary(groups),
        "label_errors": (
            _deferred_section("label_errors")
            if "label_errors" in deferred
            else _label_report(z, nbr_idx, pairs, checked, images, t, seed)
        ),
        "outliers": (
            _deferred_section("outliers")
            if "outliers" in deferred
            else _outlier_report(z, density, checked, images, t)
        ),
        "limits": limits,
    }
    report["summary"] = summary_line(report)
    return report


def _checks_run(deferred: Sequence[str], *, can_wait: bool) -> list[str]:
    """The checks that ran now: not deferred, and label errors and outliers only when the data
    allows their statistics (`can_wait`)."""
    return [c for c in CHECKS if c not in deferred and (can_wait or c not in DEFERRABLE)]


def _deferrable(deferred: Sequence[str]) -> tuple[str, ...]:
    """`deferred` in `CHECKS` order, refused when it names a check that cannot wait."""
    wrong = sorted(set(deferred) - set(DEFERRABLE))
    if wrong:
        raise ConfigError(
            f"the doctor cannot defer {', '.join(wrong)}: only {', '.join(DEFERRABLE)} may wait "
            "until after training (duplicates and balance are always checked)"
        )
    return tuple(c for c in CHECKS if c in deferred)


def _deferred_section(check: str) -> dict[str, Any]:
    """A check's section when it was deferred: no verdict, and no count that reads as one."""
    if check == "label_errors":
        return {"checked": False, "deferred": True, "num_likely": None, "suspects": []}
    return {"checked": False, "deferred": True, "num_outliers": None, "items": []}


def _label_report_unchecked() -> dict[str, Any]:
    return {"checked": False, "num_likely": 0, "num_checked": 0, "suspects": []}


def _outliers_unchecked() -> dict[str, Any]:
    return {"checked": False, "num_outliers": 0, "items": []}


NO_FEATURES = (
    "no features: only exact copies (the same content hash) and the class balance are checked; "
    "near-duplicates, label errors and outliers need a pretrained base's features"
)


def _duplicates(z, images, thumbnails, t: Thresholds, *, features_given: bool):
    """The neighbour lists, local density and duplicate pairs (exact only without features)."""
    n = len(images.labels)
    if not features_given:
        empty_idx, empty_sim = np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
        density = np.full(n, np.nan)
        return (
            empty_idx,
            density,
            duplicate_pairs(empty_idx, empty_sim, density, images.hash_ids, t),
        )
    nbr_idx, nbr_sim = nearest_neighbours(z, NEIGHBOURS_KEPT)
    density = local_density(nbr_idx, nbr_sim, images.hash_ids, t)
    pairs = duplicate_pairs(nbr_idx, nbr_sim, density, images.hash_ids, t)
    if thumbnails is not None:
        if len(thumbnails) != n:
            raise DataError(f"thumbnails must have one row per image ({n}); got {len(thumbnails)}")
        known = {(i, j) for i, j, _, _ in pairs}
        pairs = sorted(pairs + [q for q in thumbnail_pairs(z, thumbnails, t) if q[:2] not in known])
    return nbr_idx, density, pairs


@dataclasses.dataclass(frozen=True)
class _Images:
    """What the doctor knows about the images besides their features (checked, aligned)."""

    labels: np.ndarray
    splits: list[str]
    paths: list[str]
    class_names: list[str]
    hash_ids: np.ndarray  # images with equal content share an id


def _what_can_be_checked(images: _Images, t: Thresholds) -> tuple[np.ndarray | None, list[str]]:
    """Which images get label-error and outlier verdicts (None: no statistics at all), and the
    limits to say in the report."""
    n, num_classes = len(images.labels), len(images.class_names)
    counts = np.bincount(images.labels, minlength=num_classes)
    small = [
        images.class_names[c] for c in range(num_classes) if 0 < counts[c] < t.min_class_images
    ]
    limits = []
    if n <= t.neighbourhood_k:
        limits.append(
            f"{n} images: too few neighbours for near-duplicates (need more than "
            f"{t.neighbourhood_k}); only exact and identical copies are found"
        )
    if n < t.min_images or (counts >= t.min_class_images).sum() < 2:
        limits.insert(
            0,
            f"{n} images in {int((counts > 0).sum())} classes: too few for label-error and "
            f"outlier statistics (they need at least {t.min_images} images, and 2 or more classes "
            f"of {t.min_class_images} or more); duplicates and balance are checked",
        )
        return None, limits
    if small:
        limits.insert(
            0,
            f"class {', '.join(small)} has fewer than {t.min_class_images} images: too few to "
            "learn from or to vote on, so its images get no label-error or outlier verdict "
            "(duplicates and balance are checked)",
        )
    return counts[images.labels] >= t.min_class_images, limits


def _checked_inputs(features, labels, splits, paths, hashes, class_names):
    x = np.asarray(features)
    if x.ndim != 2 or not len(x):
        raise DataError(f"features must be an N x D array with N >= 1; got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise DataError(
            f"features of {len(bad)} images are NaN or infinite (first: index {bad[0]}); "
            "recompute the features (a corrupt image or cache)"
        )
    n = len(x)
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"labels must be {n} integers, one per feature row; got {y.dtype} {y.shape}"
        )
    y = y.astype(np.int64)
    if class_names is None:
        class_names = [str(c) for c in range(int(y.max()) + 1)]
    class_names = [str(c) for c in class_names]
    if y.min() < 0 or y.max() >= len(class_names):
        raise DataError(
            f"labels must be in [0, {len(class_names)}) for the classes {class_names[:8]}; "
            f"got {int(y.min())}..{int(y.max())}"
        )
    splits = ["train"] * n if splits is None else [str(s) for s in splits]
    paths = [f"#{i}" for i in range(n)] if paths is None else [str(p) for p in paths]
    if hashes is None:  # identical feature rows are the best evidence of identical content left
        hashes = [content_hash(row) for row in np.ascontiguousarray(x)]
    hashes = [str(h) for h in hashes]
    for name, values in (("splits", splits), ("paths", paths), ("hashes", hashes)):
        if len(values) != n:
            raise DataError(f"{name} must have one entry per image ({n}); got {len(values)}")
    hash_ids = np.unique(np.asarray(hashes), return_inverse=True)[1].astype(np.int64).reshape(-1)
    return x, _Images(y, splits, paths, class_names, hash_ids)


def _duplicate_summary(groups: list[dict[str, Any]]) -> dict[str, Any]:
    leaked: collections.Counter[str] = collections.Counter()
    for g in groups:
        if "train" in g["splits"]:
            leaked.update(m["split"] for m in g["members"] if m["split"] != "train")
    return {
        "num_groups": len(groups),
        "num_exact_groups": sum(g["kind"] == "exact" for g in groups),
        "num_across_splits": sum(g["across_splits"] for g in groups),
        "num_label_conflicts": sum(g["label_conflict"] for g in groups),
        "num_images": sum(g["size"] for g in groups),
        "leaked_from_train": dict(sorted(leaked.items(), key=lambda kv: _split_rank(kv[0]))),
        "groups": groups,
    }


def _label_report(z, nbr_idx, pairs, checked, images: _Images, t: Thresholds, seed: int):
    if checked is None:
        return _label_report_unchecked()
    y, splits, paths, class_names = images.labels, images.splits, images.paths, images.class_names
    num_classes = len(class_names)
    raw = out_of_fold_probabilities(
        z, y, num_classes, folds=t.probe_folds, l2=t.probe_l2, seed=seed
    )
    # The probe's regularisation makes its probabilities too soft or too sharp; temperature
    # scaling against the given labels (mostly right) makes "p_given <= 0.1" mean what it says.
    temperature = calibration.fit_temperature(raw, y)
    probe = calibration.apply_temperature(raw, temperature)
    partners = collections.defaultdict(set)  # an image's duplicates must not vote for it
    for i, j, _, _ in pairs:
        partners[i].add(j)
        partners[j].add(i)
    exclude = np.zeros(nbr_idx.shape, dtype=bool)
    for i, js in partners.items():
        exclude[i] = np.isin(nbr_idx[i], list(js))
    votes = neighbour_votes(nbr_idx, y, num_classes, t.label_k, exclude)
    p = (probe + votes) / 2
    order, suggested, likely = label_suspects(p, y, checked, t)
    ar = np.arange(len(y))
    listed = [i for rank, i in enumerate(order) if rank < t.max_listed or likely[i]]
    suspects = [
        {
            "path": paths[i],
            "split": splits[i],
            "label": class_names[y[i]],
            "suggested": class_names[suggested[i]],
            "score": round(float(1 - p[i, y[i]]), 4),
            "p_given": round(float(p[i, y[i]]), 4),
            "p_suggested": round(float(p[i, suggested[i]]), 4),
            "probe_p_given": round(float(probe[i, y[i]]), 4),
            "neighbours_agreeing": round(float(votes[i, y[i]]), 4),
            "likely": bool(likely[i]),
        }
        for i in listed
    ]
    accuracy = float(np.mean(probe[checked].argmax(1) == y[checked]))
    reliable = accuracy >= t.label_check_min_accuracy
    return {
        "checked": True,
        "reliable": reliable,
        "note": (
            "a probe on these features tells the classes apart well: likely label errors are "
            "worth fixing"
            if reliable
            else f"a probe on these features gets only {accuracy:.0%} of the labels right (below "
            f"{t.label_check_min_accuracy:.0%}): hard and odd photos rank as high as wrong labels, "
            "so the suspects are a list to review, not a count of errors (a stronger backbone "
            "sharpens it)"
        ),
        "num_checked": int(checked.sum()),
        "num_likely": int(likely.sum()),
        "probe_accuracy": round(accuracy, 4),
        "probe_temperature": round(temperature, 4),
        "neighbour_accuracy": round(float(np.mean(votes[checked].argmax(1) == y[checked])), 4),
        "mean_p_given": round(float(np.mean(p[ar, y][checked])), 4),
        "suspects": suspects,
    }


def _outlier_report(z, density, checked, images: _Images, t: Thresholds):
    if checked is None:
        return _outliers_unchecked()
    y, splits, paths, class_names = images.labels, images.splits, images.paths, images.class_names
    # Angles, not cosine distances: 1 - cos grows with the square of the angle, so its spread
    # has a long right tail, and a median / MAD score flags ordinary members of broad classes.
    to_centroid = _angle(centroid_distance(z, y, len(class_names)))
    to_neighbour = _angle(1.0 - density)
    score = robust_z(np.where(checked, to_centroid, np.nan))
    isolation = robust_z(np.where(checked, to_neighbour, np.nan))
    flagged = np.flatnonzero(np.nan_to_num(score, nan=-np.inf) >= t.outlier_z)
    flagged = flagged[np.lexsort((flagged, -score[flagged]))]
    return {
        "checked": True,
        "num_outliers": len(flagged),
        "items": [
            {
                "path": paths[i],
                "split": splits[i],
                "label": class_names[y[i]],
                "score": round(float(score[i]), 3),
                "isolation": _rounded(isolation[i], 3),
                "centroid_angle": round(float(to_centroid[i]), 2),
                "neighbour_angle": _rounded(to_neighbour[i], 2),
            }
            for i in flagged[: t.max_listed]
        ],
    }


def _angle(cosine_distance: np.ndarray) -> np.ndarray:
    """Degrees between two directions, from their cosine distance (NaN stays NaN)."""
    return np.degrees(np.arccos(np.clip(1.0 - cosine_distance, -1.0, 1.0)))


def _rounded(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def summary_line(report: dict[str, Any]) -> str:
    """The one line shown before training, e.g.

    'doctor: 3 duplicate groups (1 across train/val), 12 likely label errors, balance ok,
    2 outliers', or with label errors and outliers deferred:
    'doctor: 3 duplicate groups (1 across train/val), balance ok; label errors and outliers
    deferred'
    """
    dup = report["duplicates"]
    across = collections.Counter("/".join(g["splits"]) for g in dup["groups"] if g["across_splits"])
    dup_text = f"{dup['num_groups']} duplicate group{'s' * (dup['num_groups'] != 1)}"
    if across:
        dup_text += f" ({', '.join(f'{n} across {s}' for s, n in sorted(across.items()))})"
    parts = [dup_text, _labels_text(report), _balance_text(report), _outliers_text(report)]
    line = "doctor: " + ", ".join(p for p in parts if p is not None)
    deferred = report.get("deferred") or []
    if deferred:
        line += f"; {' and '.join(_CHECK_NAMES[c] for c in deferred)} deferred"
    if report["limits"]:
        line += f" ({len(report['limits'])} limit{'s' * (len(report['limits']) != 1)}: see report)"
    return line


_CHECK_NAMES = {"label_errors": "label errors", "outliers": "outliers"}


def _labels_text(report: dict[str, Any]) -> str | None:
    labels = report["label_errors"]
    if labels.get("deferred"):
        return None  # said once, at the end of the line
    if not labels["checked"]:
        return "label errors not checked"
    n = labels["num_likely"]
    if labels.get("reliable", True):
        return f"{n} likely label error{'s' * (n != 1)}"
    return (
        f"{n} label suspect{'s' * (n != 1)} to review (weak check: a probe gets "
        f"{labels['probe_accuracy']:.0%} right)"
    )


def _outliers_text(report: dict[str, Any]) -> str | None:
    outliers = report["outliers"]
    if outliers.get("deferred"):
        return None
    if not outliers["checked"]:
        return "outliers not checked"
    n = outliers["num_outliers"]
    return f"{n} outlier{'s' * (n != 1)}"


def _balance_text(report: dict[str, Any]) -> str:
    balance = report["balance"]
    if balance["ok"]:
        return "balance ok"
    if balance["ratio"] is not None and balance["ratio"] > report["thresholds"]["imbalance_ratio"]:
        return (
            f"imbalance {balance['ratio']:.0f}:1 ({balance['largest']} "
            f"{balance['totals'][balance['largest']]}, {balance['smallest']} "
            f"{balance['totals'][balance['smallest']]})"
        )
    return balance["warnings"][0]


__all__ = [
    "CHECKS",
    "DEFERRABLE",
    "Thresholds",
    "class_balance",
    "content_hash",
    "diagnose",
    "l2_normalize",
    "nearest_neighbours",
    "summary_line",
]
