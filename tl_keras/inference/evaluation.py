"""Where a model fails, in numbers: `evaluate(model, dataset, class_names)` -> `Evaluation`.

Accuracy, balanced accuracy and macro F1 with 95% bootstrap intervals (`tl_keras.stats`), the
loss, top-k accuracy, per-class precision / recall / F1 / support with macro and weighted
averages (`tl_keras.metrics`, their one definition), the confusion matrix, calibration (ECE
before and after a temperature, `tl_keras.calibration`), and the most confident mistakes, for any
model and data in memory: one forward pass (`tl_keras.model.forward`). The data's class names
are checked against the model's: a different set of classes is an error, a different order is
remapped.

The figures are drawn by `tl_keras.inference.evaluation_plots`; `tl_keras.inference.evaluate`
evaluates a workdir's model and writes the report (`python -m tl_keras.evaluate`).
"""

from __future__ import annotations

import dataclasses
import heapq
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_keras import calibration, metrics, stats
from tl_keras.errors import DataError
from tl_keras.model.forward import forward
from tl_keras.progress import Progress

DEFAULT_TOP_K = 0  # 0 = `default_top_k(classes)`; an explicit k is clipped to classes - 1
DEFAULT_NUM_ERRORS = 16  # images in the gallery of confident mistakes
DEFAULT_BATCH_SIZE = 32  # images per forward pass
LOSS_EPSILON = 1e-7  # Keras's probability clip in categorical cross-entropy


def default_top_k(num_classes: int) -> int:
    """The k of the top-k accuracy when none is asked for: the largest of 5, 3 and 2 that is at
    most a quarter of the classes, else 1 (top-1 only, which is the accuracy).

    A top-k over a large share of the classes says little: top-4 of 5 classes is near 1 for any
    model that is not useless. So 5 classes get top-1 only, 8 get top-2, 12 top-3, 20 and more
    top-5 (ImageNet's figure).
    """
    return next((k for k in (5, 3, 2) if 4 * k <= num_classes), 1)


@dataclasses.dataclass
class ConfidentError:
    """One misclassified image.

    Attributes:
      index: its position in the evaluated data (0-based, in the data's order).
      true_class: the label.
      predicted_class: the model's top-1 class.
      confidence: the probability the model gave its (wrong) top-1 class.
      true_probability: the probability it gave the true class.
      file: the image file, when the data came from files.
      item: otherwise, the data source's name of the image when known (`x_train[12]`,
        `tf_flowers[train] example 17`).
      image: the pixels (uint8, height x width x 3), for the gallery; not written to JSON.
    """

    index: int
    true_class: str
    predicted_class: str
    confidence: float
    true_probability: float
    file: str | None = None
    item: str | None = None
    image: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def where(self) -> str:
        """The image in a few words: its file name, the source's name of it, or its index."""
        if self.file:
            return os.path.basename(self.file)
        return self.item or f"image #{self.index}"

    def as_dict(self) -> dict[str, Any]:
        """The JSON entry: `index` always (its position in the evaluated data), then `file` or
        `item` when known; never a null."""
        known = {"file": self.file} if self.file else {"item": self.item} if self.item else {}
        return {
            "index": self.index,
            **known,
            "true_class": self.true_class,
            "predicted_class": self.predicted_class,
            "confidence": _round(self.confidence),
            "true_probability": _round(self.true_probability),
        }


@dataclasses.dataclass
class Evaluation:
    """Every figure of one evaluation (what `metrics.json` holds).

    Attributes:
      class_names: the model's classes, in output order.
      num_images: images evaluated.
      accuracy: top-1 accuracy.
      loss: mean categorical cross-entropy (as Keras computes it).
      top_k: the k of `top_k_accuracy`.
      top_k_accuracy: fraction of images whose class is among the k most probable.
      per_class: class name -> {'precision', 'recall', 'f1', 'support'}. Precision of a class
        never predicted is 0, as is recall of a class with no images.
      macro_avg: unweighted mean of precision, recall and F1 over the classes the data has or
        the model predicts (scikit-learn's rule: `tl_keras.metrics`).
      weighted_avg: the same weighted by support.
      confusion: counts, rows = true class, columns = predicted class.
      confident_errors: the mistakes with the highest confidence, most confident first.
      balanced_accuracy: mean recall over the classes the data has (honest when imbalanced).
      macro_f1: `macro_avg['f1']`.
      intervals: metric -> (low, high), 95% percentile bootstrap over the images.
      calibration: the temperature applied and the ECE / NLL before and after it, with the
        reliability diagrams (`tl_keras.calibration.calibration_report`).
      paths: files written (by `write_report`), name -> path.
    """

    class_names: list[str]
    num_images: int
    accuracy: float
    loss: float
    top_k: int
    top_k_accuracy: float
    per_class: dict[str, dict[str, float]]
    macro_avg: dict[str, float]
    weighted_avg: dict[str, float]
    confusion: np.ndarray
    confident_errors: list[ConfidentError]
    balanced_accuracy: float = 0.0
    macro_f1: float = 0.0
    intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    paths: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def num_errors(self) -> int:
        return int(self.num_images - np.trace(self.confusion))

    def normalized_confusion(self) -> np.ndarray:
        """Rows divided by their totals (each row sums to 1; a class with no images is 0)."""
        totals = self.confusion.sum(axis=1, keepdims=True)
        return np.divide(
            self.confusion, totals, out=np.zeros(self.confusion.shape), where=totals > 0
        )

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain JSON-serialisable data."""
        return {
            "num_images": self.num_images,
            "accuracy": _round(self.accuracy),
            "balanced_accuracy": _round(self.balanced_accuracy),
            "macro_f1": _round(self.macro_f1),
            "intervals": {
                "confidence": stats.DEFAULT_CONFIDENCE,
                "method": "percentile bootstrap over the images",
                **{k: [_round(lo), _round(hi)] for k, (lo, hi) in self.intervals.items()},
            },
            "calibration": self.calibration,
            "loss": _round(self.loss),
            "top_k": self.top_k,
            "top_k_accuracy": _round(self.top_k_accuracy),
            "class_names": list(self.class_names),
            "per_class": {
                name: {k: _round(v) for k, v in row.items()} for name, row in self.per_class.items()
            },
            "macro_avg": {k: _round(v) for k, v in self.macro_avg.items()},
            "weighted_avg": {k: _round(v) for k, v in self.weighted_avg.items()},
            "confusion_matrix": self.confusion.astype(int).tolist(),
            "confident_errors": [e.as_dict() for e in self.confident_errors],
        }

    def summary(self) -> str:
        """A plain-text report: overall figures, then one line per class."""
        width = max(12, *(len(c) for c in self.class_names))
        top_k = f"top-{self.top_k} accuracy {self.top_k_accuracy:.4f}, " if self.top_k > 1 else ""
        lines = [
            f"{self.num_images} images: accuracy {self._with_interval('accuracy')}, balanced "
            f"accuracy {self._with_interval('balanced_accuracy')}, macro F1 "
            f"{self._with_interval('macro_f1')}",
            f"loss {self.loss:.4f}, {top_k}{self.num_errors} errors",
        ]
        c = self.calibration
        if c:
            lines.append(
                f"calibration: temperature {c['temperature']:.3g}, ECE {c['ece_before']:.3f} "
                f"before, {c['ece_after']:.3f} after"
            )
        lines.append(f"{'class':<{width}} precision    recall        f1   support")
        rows = [*self.per_class.items(), ("macro avg", self.macro_avg)]
        rows.append(("weighted avg", self.weighted_avg))
        for name, row in rows:
            support = row.get("support", self.num_images)
            lines.append(
                f"{name:<{width}} {row['precision']:9.4f} {row['recall']:9.4f} "
                f"{row['f1']:9.4f} {int(support):9d}"
            )
        return "\n".join(lines)

    def _with_interval(self, name: str) -> str:
        value = getattr(self, name)
        if name not in self.intervals:
            return f"{value:.4f}"
        lo, hi = self.intervals[name]
        return f"{value:.4f} [{lo:.3f}, {hi:.3f}]"


# --- the computation ------------------------------------------------------------------------------
def evaluate(
    model,
    dataset: Any,
    class_names: Sequence[str],
    *,
    data_class_names: Sequence[str] | None = None,
    files: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    num_errors: int = DEFAULT_NUM_ERRORS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    temperature: float = 1.0,
) -> Evaluation:
    """Evaluates a classifier on labelled images.

    Args:
      model: a Keras classifier taking raw float32 pixels and returning probabilities (or any
        callable from images to probabilities: `tl_keras.model.forward`).
      dataset: a `tf.data.Dataset` of batched (images, labels), or an (images, labels) pair of
        arrays. Labels are one-hot rows or class indices, in the data's label order.
      class_names: the model's classes, in its output order.
      data_class_names: the data's classes in its label order; checked against `class_names`
        (other classes are an error, another order is remapped). None = the model's.
      files: the image file of each example, in the data's order (for the gallery and JSON).
      names: otherwise, the data source's name of each example (`x_train[12]`).
      top_k: k of the top-k accuracy, clipped to [1, classes - 1]; 0 = `default_top_k`.
      num_errors: how many of the most confident mistakes to keep.
      batch_size: images per forward pass for arrays.
      temperature: applied to the model's probabilities (`calibration.apply_temperature`)
        before every figure; the calibration entry compares the ECE before and after it.

    Returns:
      The `Evaluation`.

    Raises:
      DataError: the data has other classes than the model, is empty, or its labels do not fit.

    Example:
      >>> result = evaluate(model, data.val, data.class_names)
      >>> result.accuracy, result.per_class["circle"]["recall"]
    """
    from tl_keras.data.pipeline import class_indices, labelled_batches
    from tl_keras.inference.trained import check_class_names

    class_names = [str(c) for c in class_names]
    num_classes = len(class_names)
    outputs = int(model.outputs[0].shape[-1])
    if outputs != num_classes:
        raise DataError(
            f"the model gives {outputs} class probabilities but {num_classes} class names were "
            f"given ({class_names[:8]}); pass the model's own class names"
        )
    to_model = np.arange(num_classes)
    if data_class_names is not None:
        to_model = np.asarray(check_class_names(class_names, list(data_class_names), "the data"))
    k = max(1, min(int(top_k), num_classes - 1)) if top_k else default_top_k(num_classes)

    probabilities, labels = [], []
    kept: list[tuple[float, int, ConfidentError]] = []  # min-heap on confidence
    seen = 0
    raw_probabilities = []
    known = files if files is not None else names
    progress = Progress("evaluate", total=len(known) if known is not None else None)
    batches = labelled_batches(dataset, batch_size)
    for (images, batch_labels), raw in forward(model, batches, progress=progress):
        raw = np.asarray(raw, dtype=np.float64)
        probs = raw if temperature == 1.0 else calibration.apply_temperature(raw, temperature)
        y = to_model[class_indices(batch_labels, len(images), len(to_model))]
        raw_probabilities.append(raw)
        probabilities.append(probs)
        labels.append(y)
        predicted = probs.argmax(axis=1)
        for i in np.flatnonzero(predicted != y) if num_errors > 0 else ():
            index = seen + int(i)
            error = ConfidentError(
                index=index,
                true_class=class_names[y[i]],
                predicted_class=class_names[predicted[i]],
                confidence=float(probs[i, predicted[i]]),
                true_probability=float(probs[i, y[i]]),
                file=str(files[index]) if files is not None else None,
                item=str(names[index]) if names is not None else None,
                image=np.clip(np.asarray(images[i]), 0, 255).astype(np.uint8),
            )
            item = (error.confidence, -index, error)  # ties: the earlier image wins
            if len(kept) < num_errors:
                heapq.heappush(kept, item)
            elif item[:2] > kept[0][:2]:
                heapq.heapreplace(kept, item)
        seen += len(images)
    progress.close()
    if not seen:
        raise DataError("the data to evaluate is empty; point at a folder with images")
    probs = np.concatenate(probabilities)
    y = np.concatenate(labels)
    result = _figures(probs, y, class_names, k, [e for _, _, e in sorted(kept, reverse=True)])
    result.calibration = calibration.calibration_report(
        np.concatenate(raw_probabilities), y, temperature
    )
    return result


def _figures(
    probs: np.ndarray,
    y: np.ndarray,
    class_names: list[str],
    k: int,
    errors: list[ConfidentError],
) -> Evaluation:
    n, num_classes = probs.shape
    predicted = probs.argmax(axis=1)
    true_p = probs[np.arange(n), y]
    loss = float(np.mean(-np.log(np.clip(true_p, LOSS_EPSILON, 1 - LOSS_EPSILON))))
    # Rank of the true class: how many classes are strictly more probable (ties count as in).
    rank = np.sum(probs > true_p[:, None], axis=1)
    report = metrics.classification_report(y, predicted, num_classes)
    rows = report["per_class"]
    per_class = {
        name: {
            "precision": float(rows["precision"][c]),
            "recall": float(rows["recall"][c]),
            "f1": float(rows["f1"][c]),
            "support": int(rows["support"][c]),
        }
        for c, name in enumerate(class_names)
    }
    return Evaluation(
        class_names=list(class_names),
        num_images=int(n),
        accuracy=report["accuracy"],
        loss=loss,
        top_k=k,
        top_k_accuracy=float(np.mean(rank < k)),
        per_class=per_class,
        macro_avg=report["macro_avg"],
        weighted_avg=report["weighted_avg"],
        confusion=report["confusion"],
        confident_errors=errors,
        balanced_accuracy=report["balanced_accuracy"],
        macro_f1=report["macro_f1"],
        intervals=stats.bootstrap_scores(y, predicted, num_classes),
    )


def _round(value: float) -> float:
    return value if isinstance(value, int) else round(float(value), 6)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_NUM_ERRORS",
    "DEFAULT_TOP_K",
    "ConfidentError",
    "Evaluation",
    "default_top_k",
    "evaluate",
]
