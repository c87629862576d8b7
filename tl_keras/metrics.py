"""Metrics that stay honest on imbalanced data: balanced accuracy and macro F1 (numpy only).

On a 99:1 data set a model that always answers the large class scores 0.99 accuracy; its
balanced accuracy is 0.5 and its macro F1 about 0.5. They are reported next to accuracy.

Which classes count follows scikit-learn, so the figures agree with it:
* balanced accuracy: the mean recall over the classes present in `y_true` (a class nobody has
  cannot be recalled);
* macro F1: the mean F1 over the classes present in `y_true` or `y_pred` (a class predicted but
  never true scores F1 = 0). Pass `num_classes` to average over every class instead.
"""

from __future__ import annotations

import numpy as np

from tl_keras.errors import DataError


def _labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape or not len(t):
        raise DataError(
            f"y_true and y_pred must be non-empty and of equal length; got {t.shape} and {p.shape}"
        )
    for name, a in (("y_true", t), ("y_pred", p)):
        if not np.issubdtype(a.dtype, np.integer) or a.min() < 0:
            raise DataError(f"{name} must be class indices (integers >= 0); got {a.dtype}")
    return t.astype(np.int64), p.astype(np.int64)


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts: row = true class, column = predicted class (K x K, K = num_classes or max + 1)."""
    t, p = _labels(y_true, y_pred)
    k = int(max(t.max(), p.max()) + 1) if num_classes is None else int(num_classes)
    if max(t.max(), p.max()) >= k:
        raise DataError(f"labels go up to {max(t.max(), p.max())} but num_classes={k}")
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true, y_pred) -> float:
    t, p = _labels(y_true, y_pred)
    return float(np.mean(t == p))


def per_class(y_true, y_pred, num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of every class (0 where undefined)."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    hits = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in `y_true`."""
    t, _ = _labels(y_true, y_pred)
    stats = per_class(y_true, y_pred)
    present = np.bincount(t, minlength=len(stats["recall"])) > 0
    return float(np.mean(stats["recall"][present]))


def macro_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    """Mean F1 over the classes in `y_true` or `y_pred` (or over all `num_classes` when given)."""
    t, p = _labels(y_true, y_pred)
    stats = per_class(t, p, num_classes)
    if num_classes is not None:
        return float(np.mean(stats["f1"]))
    k = len(stats["f1"])
    seen = (np.bincount(t, minlength=k) > 0) | (np.bincount(p, minlength=k) > 0)
    return float(np.mean(stats["f1"][seen]))


__all__ = ["accuracy", "balanced_accuracy", "confusion_matrix", "macro_f1", "per_class"]
