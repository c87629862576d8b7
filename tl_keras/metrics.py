"""Metrics that stay honest on imbalanced data: balanced accuracy and macro F1 (numpy only).

On a 99:1 data set a model that always answers the large class scores 0.99 accuracy; its
balanced accuracy is 0.5 and its macro F1 about 0.5. They are reported next to accuracy.

Which classes count follows scikit-learn, so the figures agree with it, and this module is
their one definition (evaluate, compare, the model card and the bootstrap intervals all call
`confusion_scores`):
* balanced accuracy: the mean recall over the classes present in `y_true` (a class nobody has
  cannot be recalled);
* macro averages (precision, recall, F1): the mean over the classes present in `y_true` or
  `y_pred` (a class predicted but never true scores 0; a class neither true nor predicted, e.g.
  a model class the evaluated data lacks, does not count). Pass `num_classes` to `macro_f1` to
  average over every class instead.
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


def confusion_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and the macro averages of confusion matrices (..., K, K).

    Vectorised over any leading axes, so a bootstrap scores thousands of resamples at once.
    The rules of the module docstring: balanced accuracy over the classes with images, macro
    averages over the classes true or predicted.

    Returns:
      {'accuracy', 'balanced_accuracy', 'macro_precision', 'macro_recall', 'macro_f1'}, each
      shaped like the leading axes.
    """
    cm = np.asarray(cm, dtype=np.float64)
    hits = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    total = support.sum(axis=-1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    present, seen = support > 0, (support > 0) | (predicted > 0)

    def mean_over(values, mask):
        return (values * mask).sum(axis=-1) / np.maximum(mask.sum(axis=-1), 1)

    return {
        "accuracy": hits.sum(axis=-1) / np.maximum(total, 1),
        "balanced_accuracy": mean_over(recall, present),
        "macro_precision": mean_over(precision, seen),
        "macro_recall": mean_over(recall, seen),
        "macro_f1": mean_over(f1, seen),
    }


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in `y_true`."""
    return float(confusion_scores(confusion_matrix(y_true, y_pred))["balanced_accuracy"])


def macro_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    """Mean F1 over the classes in `y_true` or `y_pred` (or over all `num_classes` when given)."""
    t, p = _labels(y_true, y_pred)
    if num_classes is not None:
        return float(np.mean(per_class(t, p, num_classes)["f1"]))
    return float(confusion_scores(confusion_matrix(t, p))["macro_f1"])


def classification_report(y_true, y_pred, num_classes: int) -> dict:
    """Every figure evaluate reports, from one confusion matrix (the rules above).

    Returns:
      {'accuracy', 'balanced_accuracy', 'macro_f1', 'per_class': {precision, recall, f1,
      support} arrays, 'macro_avg': {precision, recall, f1}, 'weighted_avg': the same weighted
      by support, 'confusion': K x K counts}.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    stats, scores = per_class(y_true, y_pred, num_classes), confusion_scores(cm)
    support = stats["support"].astype(np.float64)
    return {
        "accuracy": float(scores["accuracy"]),
        "balanced_accuracy": float(scores["balanced_accuracy"]),
        "macro_f1": float(scores["macro_f1"]),
        "per_class": stats,
        "macro_avg": {m: float(scores[f"macro_{m}"]) for m in ("precision", "recall", "f1")},
        "weighted_avg": {
            m: float(np.average(stats[m], weights=support)) for m in ("precision", "recall", "f1")
        },
        "confusion": cm,
    }


__all__ = [
    "accuracy",
    "balanced_accuracy",
    "classification_report",
    "confusion_matrix",
    "confusion_scores",
    "macro_f1",
    "per_class",
]
