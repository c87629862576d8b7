"""Classify new images with a trained workdir: top-k labels and probabilities per file.

`predict_workdir` is what `python -m tl_keras.predict` does:

  python -m tl_keras.predict --workdir=runs/b0 photo.jpg more_photos/
  python -m tl_keras.predict --workdir=runs/b0 --top_k=3 --output=predictions.csv more_photos/

Folders are searched recursively for image files (`tl_keras.data.pipeline.IMAGE_EXTENSIONS`:
.jpg, .jpeg, .png, .bmp, .gif, .webp); files named
explicitly are always tried. A file that cannot be read as an image is reported with its reason
(on its own row, and on stderr) and the others are still classified: the command fails only when
no image at all could be read. Images are decoded and resized exactly as in training
(`tl_keras.data.pipeline`), and the model does its own preprocessing, so raw pixels go in. The
probabilities are the workdir's calibrated answer: run.json's test-time augmentation and
temperature applied (`TrainedModel.served`, the graph every export holds).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tl_keras.errors import ConfigError, DataError
from tl_keras.io import atomic_write_text
from tl_keras.model.forward import forward

log = logging.getLogger("tl_keras")

DEFAULT_TOP_K = 3
DEFAULT_BATCH_SIZE = 32
OUTPUT_FORMATS = ("csv", "json")


@dataclasses.dataclass
class Prediction:
    """The model's answer for one file.

    Attributes:
      file: the path as listed.
      labels: the top-k class names, most probable first (empty when `error` is set).
      probabilities: their probabilities.
      error: why the file could not be classified, or None.
    """

    file: str
    labels: list[str] = dataclasses.field(default_factory=list)
    probabilities: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "predictions": [
                {"label": label, "probability": round(p, 6)}
                for label, p in zip(self.labels, self.probabilities, strict=True)
            ],
            "error": self.error,
        }


def list_inputs(paths: Iterable[str]) -> list[str]:
    """Expands folders into their image files (recursively, sorted); keeps files as given.

    A path that does not exist is kept, so that it is reported rather than silently dropped.
    """
    from tl_keras.data.pipeline import IMAGE_EXTENSIONS

    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [
                    os.path.join(folder, n)
                    for n in names
                    if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
                ]
            out += sorted(found)
        else:
            out.append(path)
    return out


def load_image(
    path: str, image_size: int, *, resize_mode: str = "stretch", resize_method: str = "bilinear"
) -> np.ndarray:
    """Reads one image as float32 raw 0..255 pixels at the model's size, exactly as training does.

    Args:
      path: an image file.
      image_size: the model's input size.
      resize_mode, resize_method: the run's (`config.json`); `predict_workdir` passes them.

    Raises:
      DataError: the file is missing or not an image TensorFlow can decode.
    """
    from tl_keras.data.pipeline import Pipeline, load_image_file

    pipeline = Pipeline(
        image_size=image_size, batch_size=1, resize_mode=resize_mode, resize_method=resize_method
    )
    return load_image_file(str(path), pipeline)


def predict(
    model,
    paths: Sequence[str],
    class_names: Sequence[str],
    *,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = DEFAULT_BATCH_SIZE,
    resize_mode: str = "stretch",
    resize_method: str = "bilinear",
) -> list[Prediction]:
    """Classifies image files, one `Prediction` per path, in order.

    A file that is missing or not an image gets a `Prediction` with `error` set; the others are
    classified as usual.

    Args:
      model: a Keras classifier taking raw float32 pixels (its input size is used).
      paths: image files (expand folders with `list_inputs`).
      class_names: the model's classes, in output order.
      top_k: how many labels per image (at most the number of classes).
      batch_size: images per forward pass.
      resize_mode, resize_method: how training resized images (the run's `config.json`).

    Returns:
      One `Prediction` per path.

    Example:
      >>> predict(model, ["cat.jpg", "notes.txt"], ["cat", "dog"], top_k=1)
      [Prediction(file='cat.jpg', labels=['cat'], probabilities=[0.93], error=None),
       Prediction(file='notes.txt', labels=[], probabilities=[], error='not a readable image ...')]
    """
    if top_k < 1 or batch_size < 1:
        raise ConfigError(f"top_k={top_k} and batch_size={batch_size} must be positive")
    class_names = [str(c) for c in class_names]
    size = int(model.inputs[0].shape[1])
    k = min(top_k, len(class_names))
    results = [Prediction(file=str(p)) for p in paths]

    def batches():  # (images, their positions in `paths`): the readable files, a batch at a time
        pending: list[tuple[int, np.ndarray]] = []
        for i, path in enumerate(paths):
            try:
                image = load_image(
                    str(path), size, resize_mode=resize_mode, resize_method=resize_method
                )
                pending.append((i, image))
            except DataError as e:
                results[i].error = str(e)
                log.warning("skipped %s: %s", path, e)
            if len(pending) >= batch_size or (pending and i == len(paths) - 1):
                yield np.stack([img for _, img in pending]), [i for i, _ in pending]
                pending = []

    for (_, positions), probs in forward(model, batches()):
        for i, row in zip(positions, probs, strict=True):
            best = np.argsort(-row, kind="stable")[:k]
            results[i].labels = [class_names[j] for j in best]
            results[i].probabilities = [float(row[j]) for j in best]
    return results


def predict_workdir(
    workdir: str,
    paths: Sequence[str],
    *,
    phase: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = DEFAULT_BATCH_SIZE,
    trust_code: bool = False,
) -> list[Prediction]:
    """Classifies files and folders with a workdir's model (what the command line does).

    Args:
      workdir: a folder written by `tl_keras.train`.
      paths: image files and folders (searched recursively for images).
      phase: which phase's model; None = the final one.
      top_k, batch_size: as in `predict`.
      trust_code: load a model file that runs code (see `load_trained`).

    Returns:
      One `Prediction` per image file found, in order.

    Raises:
      ConfigError: no paths given.
      DataError: the paths name no file at all (an empty folder).
      WorkdirError: no trained model in the workdir.
    """
    from tl_keras.data.pipeline import IMAGE_EXTENSIONS
    from tl_keras.inference.trained import load_trained, run_config

    if not paths:
        raise ConfigError("no images given: pass image files or folders after the flags")
    files = list_inputs(paths)
    if not files:
        raise DataError(
            f"no image files in {', '.join(map(repr, paths))} (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}, recursively)"
        )
    trained = load_trained(workdir, phase=phase, trust_code=trust_code)
    config = run_config(workdir)  # the images must be resized the way training resized them
    if not trained.inference.is_identity:
        log.info("%s's model answers with %s", trained.phase, trained.inference.describe())
    return predict(
        trained.served,
        files,
        trained.class_names,
        top_k=top_k,
        batch_size=batch_size,
        resize_mode=config.resize_mode,
        resize_method=config.resize_method,
    )


# --- output ---------------------------------------------------------------------------------------
def to_csv(predictions: Sequence[Prediction]) -> str:
    """One row per file: file, label_1, probability_1, ..., label_k, probability_k, error."""
    k = max((len(p.labels) for p in predictions), default=0)
    header = ["file"]
    for i in range(1, k + 1):
        header += [f"label_{i}", f"probability_{i}"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*header, "error"])
    for p in predictions:
        row = [p.file]
        for i in range(k):
            has = i < len(p.labels)
            row += [p.labels[i] if has else "", f"{p.probabilities[i]:.6f}" if has else ""]
        writer.writerow([*row, p.error or ""])
    return buffer.getvalue()


def to_json(predictions: Sequence[Prediction]) -> str:
    return json.dumps([p.as_dict() for p in predictions], indent=2) + "\n"


def to_text(predictions: Sequence[Prediction]) -> str:
    """A readable table: the file, then 'label probability' pairs, or the error."""
    width = min(max((len(p.file) for p in predictions), default=4), 60)
    lines = []
    for p in predictions:
        answer = (
            "  ".join(
                f"{label} {prob:.3f}" for label, prob in zip(p.labels, p.probabilities, strict=True)
            )
            if p.ok
            else f"ERROR {p.error}"
        )
        lines.append(f"{p.file:<{width}}  {answer}")
    return "\n".join(lines) + "\n"


def write_predictions(predictions: Sequence[Prediction], path: str) -> str:
    """Writes predictions as CSV or JSON, chosen by the file's suffix (atomically).

    Raises:
      ConfigError: the suffix is neither .csv nor .json.
      WorkdirError: its folder cannot be written.
    """
    check_output(path)
    csv_file = path.lower().endswith(".csv")
    text = to_csv(predictions) if csv_file else to_json(predictions)
    atomic_write_text(path, text)
    return path


def check_output(path: str) -> None:
    """Refuses an output file whose suffix is neither .csv nor .json, or that cannot be written.

    Raises:
      ConfigError: a suffix other than .csv or .json.
      WorkdirError: its folder is read-only or cannot be created.
    """
    if os.path.splitext(path)[1].lower().lstrip(".") not in OUTPUT_FORMATS:
        raise ConfigError(f"--output={path!r} must end in .csv or .json (that picks the format)")
    from tl_keras.inference.trained import writable_output

    writable_output(os.path.dirname(os.path.abspath(path)), "another --output=FILE")
