"""Where a trained model fails: metrics, a confusion matrix, and its most confident mistakes.

`evaluate_workdir` (what `python -m tl_keras.evaluate` does) writes, under `<workdir>/evaluation/<data>/` (or `--out_dir`):

  metrics.json            accuracy, balanced accuracy and macro F1 with 95% bootstrap intervals,
                          loss, top-k accuracy, per-class precision / recall / F1 / support,
                          macro and weighted averages (`tl_keras.metrics`, their one definition),
                          the confusion matrix, calibration (ECE before and after the workdir's
                          temperature), and the most confident mistakes
  confusion_matrix.png    counts, and rows normalised to recall
  confident_errors.png    the misclassified images the model was surest about
  reliability.png         reliability diagrams before and after the temperature

The library call `evaluate(model, dataset, class_names)` returns the same numbers for any model
and data in memory. The data's class names are checked against the model's: a different set of
classes is an error, a different order is remapped.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_keras import calibration, io, metrics, plotting, stats
from tl_keras.errors import ConfigError, DataError
from tl_keras.model.forward import forward
from tl_keras.model.served import InferenceSettings, inference_model
from tl_keras.progress import Progress

log = logging.getLogger("tl_keras")

DEFAULT_TOP_K = 0  # 0 = `default_top_k(classes)`; an explicit k is clipped to classes - 1
DEFAULT_NUM_ERRORS = 16  # images in the gallery of confident mistakes
DEFAULT_BATCH_SIZE = 32  # images per forward pass
SPLITS = ("test", "val")
LOSS_EPSILON = 1e-7  # Keras's probability clip in categorical cross-entropy
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
ERRORS_FILE = "confident_errors.png"
RELIABILITY_FILE = "reliability.png"


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


# --- figures --------------------------------------------------------------------------------------
def plot_confusion_matrix(evaluation: Evaluation, path: str | None = None):
    """Draws the confusion matrix twice: counts, and rows normalised (recall on the diagonal).

    Args:
      evaluation: what `evaluate` returned.
      path: PNG to write (atomically); None = do not save.

    Returns:
      The matplotlib Figure.
    """
    from tl_keras.plotting import new_figure, save_figure

    names = evaluation.class_names
    n = len(names)
    side = min(4 + 0.45 * n, 14)
    fig = new_figure(figsize=(2 * side + 1.5, side))
    axes = fig.subplots(1, 2, squeeze=False)
    panels = (
        (evaluation.confusion, "counts", "d"),
        (evaluation.normalized_confusion(), "normalised by true class (row = recall)", ".2f"),
    )
    for ax, (matrix, title, fmt) in zip(axes[0], panels, strict=True):
        vmax = max(float(matrix.max()), 1e-9)
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(
            range(n), names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center"
        )
        ax.set_yticks(range(n), names)
        if n <= 25:  # beyond that the numbers are unreadable; the colours still tell
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(
                    j,
                    i,
                    format(value, fmt),
                    ha="center",
                    va="center",
                    fontsize=8 if n > 10 else 10,
                    color="white" if value > 0.6 * vmax else "black",
                )
    fig.suptitle(
        f"{evaluation.num_images} images, accuracy {evaluation.accuracy:.3f}, "
        f"{evaluation.num_errors} errors"
    )
    fig.tight_layout()
    if path:
        save_figure(fig, path)
    return fig


def plot_confident_errors(evaluation: Evaluation, path: str | None = None, *, columns: int = 4):
    """Draws the most confident mistakes, each titled with its true and predicted class.

    Args:
      evaluation: what `evaluate` returned (with images kept in `confident_errors`).
      path: PNG to write (atomically); None = do not save.
      columns: images per row.

    Returns:
      The matplotlib Figure.
    """
    from tl_keras.plotting import new_figure, save_figure

    errors = [e for e in evaluation.confident_errors if e.image is not None]
    if not errors:
        fig = new_figure(figsize=(5, 1.5), layout="constrained")
        ax = fig.subplots()
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"no misclassified images among {evaluation.num_images}",
            ha="center",
            va="center",
        )
    else:
        cols = min(columns, len(errors))
        rows = math.ceil(len(errors) / cols)
        # Constrained layout sizes the gaps from the captions themselves, so a three-line
        # caption never runs into the image above it (tight_layout let them overlap).
        fig = new_figure(figsize=(2.6 * cols, 3.2 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, error in zip(axes.ravel(), errors, strict=False):
            ax.imshow(error.image)
            ax.set_title(
                f"true {error.true_class}\npredicted {error.predicted_class} "
                f"({error.confidence:.2f})\n{_shorten(error.where, CAPTION_CHARS)}",
                fontsize=8,
                color="firebrick",
            )
        fig.suptitle(f"Most confident mistakes ({len(errors)} of {evaluation.num_errors})")
    if path:
        save_figure(fig, path)
    return fig


CAPTION_CHARS = 30  # a caption line longer than this would run into its neighbour's


def _shorten(text: str, limit: int) -> str:
    """`text`, or its start and end around an ellipsis when longer than `limit` characters."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head) :]}"


def write_report(
    evaluation: Evaluation, out_dir: str, *, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """Writes metrics.json, confusion_matrix.png, confident_errors.png and reliability.png.

    Each file is written atomically.

    Args:
      evaluation: what `evaluate` returned.
      out_dir: the folder (created if missing).
      extra: more JSON fields for metrics.json (which model, which data).

    Returns:
      name -> path of each file written (also stored in `evaluation.paths`).
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "metrics": os.path.join(out_dir, METRICS_FILE),
        "confusion_matrix": os.path.join(out_dir, CONFUSION_FILE),
        "confident_errors": os.path.join(out_dir, ERRORS_FILE),
    }
    plot_confusion_matrix(evaluation, paths["confusion_matrix"])
    plot_confident_errors(evaluation, paths["confident_errors"])
    c = evaluation.calibration
    if c:
        paths["reliability"] = os.path.join(out_dir, RELIABILITY_FILE)
        plotting.plot_reliability(
            [c["reliability_before"], c["reliability_after"]],
            paths["reliability"],
            titles=[
                f"as the model answers: ECE {100 * c['ece_before']:.1f}%",
                f"temperature {c['temperature']:.2f}: ECE {100 * c['ece_after']:.1f}%",
            ],
            suptitle=f"{evaluation.num_images} images",
        )
    io.atomic_write_json(paths["metrics"], {**(extra or {}), **evaluation.as_dict()})
    evaluation.paths = paths
    return paths


# --- a workdir --------------------------------------------------------------------------------------
def evaluate_workdir(
    workdir: str,
    *,
    data_dir: str | None = None,
    split: str | None = None,
    phase: str | None = None,
    out_dir: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    num_errors: int = DEFAULT_NUM_ERRORS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    trust_code: bool = False,
) -> Evaluation:
    """Evaluates a workdir's model and writes the report (what `python -m tl_keras.evaluate` does).

    Args:
      workdir: a folder written by `tl_keras.train`.
      data_dir: an image-folder tree evaluated whole (one sub-folder per class, the model's
        classes). Exclusive with `split`.
      split: 'test' (the workdir data's test split, when its source has one) or 'val' (the
        validation split training held out; not a test figure). Default: 'test'.
      phase: which phase's model; None = the final one.
      out_dir: where to write; default `<workdir>/evaluation/<split or data folder name>`.
      top_k, num_errors, batch_size: as in `evaluate`.
      trust_code: load a model file that runs code (see `load_trained`).

    Returns:
      The `Evaluation`, with `paths` of the files written.

    Raises:
      ConfigError: both data_dir and split, or an unknown split.
      WorkdirError: no trained model in the workdir, or `out_dir` (by default inside the
        workdir) cannot be written.
      DataError: the data is missing, has no such split, or has other classes than the model.
    """
    if data_dir and split:
        raise ConfigError(
            f"--data_dir={data_dir!r} and --split={split!r} both say what to evaluate; give one"
        )
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split={split!r} is not known; use one of {', '.join(SPLITS)}")
    if batch_size < 1 or top_k < 0 or num_errors < 0:
        raise ConfigError(
            f"batch_size={batch_size} must be positive, top_k={top_k} 0 (the default for the "
            f"number of classes) or more, and num_errors={num_errors} at least 0"
        )
    from tl_keras.inference.trained import read_run, writable_output

    read_run(workdir)  # no run there: that error first
    tag = _folder_tag(data_dir) if data_dir else split or "test"
    out_dir = out_dir or os.path.join(os.path.abspath(workdir), "evaluation", tag)
    writable_output(out_dir, "--out_dir=FOLDER")  # before any work
    if data_dir:
        data = _folder_data(workdir, data_dir, phase=phase, batch_size=batch_size, trust=trust_code)
    else:
        data = _split_data(workdir, split or "test", phase=phase, trust=trust_code)
    run = data.run
    # TTA in the graph, the temperature on its output: the figures before and after it.
    tta_only = inference_model(run.model, InferenceSettings(1.0, run.inference.tta))
    evaluation = evaluate(
        tta_only,
        data.dataset,
        run.class_names,
        data_class_names=data.class_names,
        files=data.files,
        names=data.names,
        top_k=top_k,
        num_errors=num_errors,
        batch_size=batch_size,
        temperature=run.inference.temperature,
    )
    extra = {
        "model": {
            "workdir": run.workdir,
            "phase": run.phase,
            "backbone": run.backbone,
            "image_size": run.image_size,
            "model_sha256": run.fingerprint(),
            "inference": run.inference.to_dict(),
        },
        "data": {"source": data.source, "split": data.split},
    }
    write_report(evaluation, out_dir, extra=extra)
    return evaluation


@dataclasses.dataclass
class _Evaluated:
    """A workdir's model and the data to evaluate it on, with where that data comes from."""

    run: Any  # tl_keras.inference.trained.TrainedModel
    dataset: Any
    class_names: list[str]
    files: list[str] | None
    tag: str  # the folder under <workdir>/evaluation/
    source: str
    split: str | None
    names: list[str] | None = None  # the source's name of each image, when not files


def _folder_data(
    workdir: str, data_dir: str, *, phase: str | None, batch_size: int, trust: bool
) -> _Evaluated:
    """A whole image-folder tree, decoded and resized as training did; classes checked first."""
    from tl_keras.data import pipeline, sources
    from tl_keras.inference import trained as trained_lib

    listing = sources.list_image_folder(data_dir)
    model_classes = trained_lib.read_run(workdir)["class_names"]
    trained_lib.check_class_names(model_classes, listing.class_names, repr(data_dir))  # fail fast
    run = trained_lib.load_trained(workdir, phase=phase, trust_code=trust)
    config = trained_lib.run_config(workdir)  # resize as training did
    settings = pipeline.Pipeline(
        image_size=run.image_size,
        batch_size=batch_size,
        resize_mode=config.resize_mode,
        resize_method=config.resize_method,
        max_skipped_fraction=config.max_skipped_fraction,
    )
    dataset, listing, _ = sources.folder_dataset(data_dir, settings)
    return _Evaluated(
        run,
        dataset,
        listing.class_names,
        listing.files,
        _folder_tag(data_dir),
        os.path.abspath(data_dir),
        None,
    )


def _split_data(workdir: str, split: str, *, phase: str | None, trust: bool) -> _Evaluated:
    """The test or validation split of the workdir's own data, split exactly as in training."""
    from tl_keras.inference import trained as trained_lib

    run = trained_lib.load_trained(workdir, phase=phase, trust_code=trust)
    bundle = trained_lib.load_run_data(workdir)
    dataset = bundle.val if split == "val" else getattr(bundle, "test", None)
    if dataset is None:
        hint = (
            "pass --data_dir=FOLDER of held-out images (one sub-folder per class)"
            if split == "test"
            else "it was trained with val_fraction=0; pass --data_dir=FOLDER"
        )
        raise DataError(
            f"the data of workdir {workdir!r} ({bundle.source}) has no {split} split; {hint}"
            + ("; or --split=val for the validation split" if split == "test" else "")
        )
    return _Evaluated(
        run,
        dataset,
        bundle.class_names,
        bundle.image_files.get(split),
        split,
        bundle.source,
        split,
        names=bundle.image_names.get(split),
    )


def _folder_tag(data_dir: str) -> str:
    name = os.path.basename(os.path.normpath(os.path.abspath(data_dir)))
    return "data-" + ("".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "root")
