"""Every threshold the data doctor applies, in one frozen value (`Thresholds`).

A leaf of the doctor: `neighbours` (duplicates) and `analysis` (label errors, balance, outliers)
both read it, and `diagnose` records it in its report.
"""

from __future__ import annotations

import dataclasses

from tl_keras.errors import DataError


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Every threshold the doctor applies; `diagnose` records them in its report."""

    # Duplicates (cosine similarity of L2-normalised features).
    near_duplicate_score: float = 0.7  # (s - b) / (1 - b): distance <= 30% of the k-th neighbour's
    near_duplicate_min_cosine: float = 0.9  # a near-duplicate pair is never less similar than this
    identical_cosine: float = 0.99  # at or above: duplicates whatever the neighbourhood
    neighbourhood_k: int = 5  # the k-th nearest neighbour measures how crowded a place is
    # Label errors.
    label_k: int = 10  # neighbours that vote on an image's class
    probe_folds: int = 5  # out-of-fold predictions of the softmax-regression probe
    probe_l2: float = 100.0  # L2 penalty on the probe's weights against the summed loss
    label_error_max_given: float = 0.1  # likely error: the given label gets at most this...
    label_error_min_suggested: float = 0.5  # ...and another class at least this
    label_check_min_accuracy: float = 0.8  # a weaker probe: suspects to review, not errors
    # Thumbnails (16 px grey, optional): edited and grey copies the features miss.
    thumbnail_correlation: float = 0.975  # Pearson correlation of the two thumbnails
    thumbnail_min_cosine: float = 0.7  # and their features at least this alike
    # Class balance.
    imbalance_ratio: float = 5.0  # warn when the largest class exceeds this x the smallest
    # Outliers.
    outlier_z: float = 3.5  # robust z-score of the angle to the nearest class centroid
    # Limits.
    min_class_images: int = 5  # fewer: no label or outlier verdict on that class's images
    min_images: int = 20  # fewer in all: no label-error or outlier statistics at all
    # Reporting.
    max_listed: int = 25  # suspects and outliers listed in the report (all are counted)

    def __post_init__(self):
        for name in (
            "near_duplicate_score",
            "near_duplicate_min_cosine",
            "identical_cosine",
            "thumbnail_correlation",
            "thumbnail_min_cosine",
            "label_check_min_accuracy",
        ):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise DataError(f"doctor threshold {name}={value} must be in (0, 1]")
        for name in ("neighbourhood_k", "label_k", "min_class_images", "min_images", "max_listed"):
            if getattr(self, name) < 1:
                raise DataError(f"doctor threshold {name}={getattr(self, name)} must be >= 1")
        if self.probe_folds < 2:
            raise DataError(f"doctor threshold probe_folds={self.probe_folds} must be >= 2")
        if self.imbalance_ratio < 1:
            raise DataError(f"doctor threshold imbalance_ratio={self.imbalance_ratio} must be >= 1")


__all__ = ["Thresholds"]
