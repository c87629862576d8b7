"""Every export checked: the artifact and the Keras model run on the same images and must agree.

`parity_check` compares the probabilities within a per-format tolerance (`PARITY_TOLERANCES`);
`export` writes several formats, each to a temporary sibling first, checks it, and only then
renames it into place, so a bad export never replaces a good one. `quantization_accuracy`
measures what a quantised TFLite file costs in accuracy on labelled data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tl_keras import io
from tl_keras.data.pipeline import class_indices, labelled_batches
from tl_keras.errors import ExportError, ExportParityError
from tl_keras.inference.export.formats import (
    _WRITERS,
    ARTIFACT_NAMES,
    as_images,
    check_float32_compute,
    check_formats,
    check_quantization,
    format_label,
    input_spec,
    load_runner,
    require,
    variant_key,
)
from tl_keras.model.forward import forward
from tl_keras.progress import Progress


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How far an export's outputs may stray from the Keras model's.

    Every output must satisfy `|exported - keras| <= atol + rtol * |keras|` (as np.allclose),
    and, when `mean_atol` is set, the mean of `|exported - keras|` must not exceed it.
    """

    atol: float
    rtol: float = 0.0
    mean_atol: float | None = None


# Every default parity tolerance, in one place. Outputs are softmax probabilities in [0, 1], so
# the tolerances are in probability units. Measured on two kinds of model: (a) MobileNet-0.25 with
# real ImageNet weights and a 5-class head trained on flower photos, 128 px, 687 held-out photos;
# (b) random-weight backbones (BatchNorm statistics set from data) at 32 px on 64 random images:
# MobileNet-0.25, MobileNetV3Small, EfficientNetB0. (b) is the harsher case: a few images sit
# near a tie between classes, so the worst single output strays much further than the mean.
# A real mismatch (another model, a missing preprocessing layer) moves the mean by 0.1 or more;
# one output bias nudged by 0.01 moves single outputs by 2.5e-3.
_FLOAT32 = Tolerance(atol=5e-4, mean_atol=2e-5)


PARITY_TOLERANCES: dict[str, Tolerance] = {
    # Same TF kernels as Keras, traced and fused: max |diff| (a) 7e-7, (b) up to 5.4e-5.
    "saved_model": _FLOAT32,
    # float32 TFLite kernels (BatchNorm folded, XNNPACK): max (a) 1.5e-5, (b) up to 1.0e-4;
    # mean (a) 8e-7, (b) up to 3e-6.
    "tflite": _FLOAT32,
    # float32 ONNX Runtime kernels: max (a) 8.4e-6, (b) up to 1.6e-4; mean up to 3e-6.
    "onnx": _FLOAT32,
    # float16 weights: max (a) 0.041, (b) up to 0.117 (EfficientNetB0); mean (a) 0.0026 (worst
    # batch of 8: 0.0047), (b) up to 0.006. Top-1 agreement (a) 98.8%, accuracy unchanged.
    "tflite_float16": Tolerance(atol=0.25, mean_atol=0.02),
    # int8 weights, activations quantised to int8 on the fly: max (a) 0.40, (b) 0.93
    # (EfficientNetB0), so single outputs bound nothing (atol=1: probabilities differ by at most
    # 1) and only the mean is checked: (a) 0.033 (worst batch of 8: 0.059), (b) up to 0.086.
    # Top-1 agreement (a) 90%, (b) 75-95%; accuracy (a) within 1.5 points.
    "tflite_dynamic": Tolerance(atol=1.0, mean_atol=0.1),
}


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """How closely an exported artifact reproduces the Keras model on one batch of images.

    Attributes:
        format: "saved_model", "tflite" or "onnx".
        quantization: None, "float16" or "dynamic" (TFLite only).
        path: the artifact that was checked.
        num_images: how many images both models ran on.
        max_abs_diff: largest |exported - keras| over all images and classes.
        mean_abs_diff: mean |exported - keras|.
        top1_agreement: fraction of images whose argmax class is the same in both.
        atol: absolute tolerance applied to every output.
        rtol: relative tolerance applied to every output.
        mean_atol: bound applied to mean_abs_diff, or None.
        passed: whether the outputs were within tolerance.
    """

    format: str
    quantization: str | None
    path: str
    num_images: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    atol: float
    rtol: float
    mean_atol: float | None
    passed: bool

    @property
    def label(self) -> str:
        """The format as messages name it: 'tflite', or 'tflite (float16)' when quantised."""
        return format_label(self.format, self.quantization)

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a plain JSON-serialisable dict."""
        return dataclasses.asdict(self)


def default_tolerance(fmt: str, quantization: str | None = None) -> Tolerance:
    """Return the default parity tolerance for a format and quantisation.

    Args:
        fmt: "saved_model", "tflite" or "onnx".
        quantization: None, or "float16" / "dynamic" for TFLite.

    Returns:
        The `Tolerance` from `PARITY_TOLERANCES`.

    Raises:
        ExportError: if the format or quantisation is unknown, or quantisation is asked of a
            format other than TFLite.
    """
    return PARITY_TOLERANCES[variant_key(fmt, quantization)]


def export(
    model: keras.Model,
    out_dir: str | os.PathLike,
    formats: Iterable[str] = ("saved_model", "tflite"),
    *,
    quantization: str | None = None,
    check_images: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Export the model in several formats, checking each against the Keras model before keeping it.

    Each artifact is written to a temporary sibling inside `out_dir`; when `check_images` is
    given it must pass `parity_check` (default tolerances) before it is renamed into place.
    On a failure nothing is left at that artifact's final path and a previous artifact there is
    untouched; formats exported before the failure stay exported. The TFLite file is converted
    from the SavedModel just written when both are requested.

    Args:
        model: a single-input Keras classifier taking raw float32 pixels.
        out_dir: directory for the artifacts (created if missing): "saved_model/",
            "model.tflite" (or "model_float16.tflite" / "model_dynamic.tflite"), "model.onnx".
        formats: any of "saved_model", "tflite", "onnx".
        quantization: None, "float16" or "dynamic"; applies to the TFLite export only.
        check_images: raw float32 pixels shaped (N, height, width, 3) to check parity on, or
            None to skip the checks.

    Returns:
        {"paths": {format: path}, "parity": {format: ParityReport}}; "parity" is empty when
        no check_images are given.

    Raises:
        ExportError: for an unknown format or quantisation, quantisation without "tflite",
            check_images of the wrong shape, or a float16-computing (mixed-precision) model
            with "tflite" or "onnx"; raised before anything is written.
        MissingDependencyError: if "onnx" is requested and tf2onnx / onnx (or onnxruntime, when checking)
            is missing; raised before anything is written.
        ExportParityError: if an artifact does not reproduce the model within tolerance.
    """
    requested = check_formats(formats)
    check_quantization(quantization)
    if quantization is not None and "tflite" not in requested:
        raise ExportError(
            f"quantization={quantization!r} applies only to the TFLite export, but formats="
            f"{requested!r}. Add 'tflite' to formats or drop quantization."
        )
    input_spec(model)
    for fmt in set(requested) & {"tflite", "onnx"}:
        check_float32_compute(model, fmt)
    images = None if check_images is None else as_images(check_images, model)
    if "onnx" in requested:
        require("tf2onnx", "onnx", *(("onnxruntime",) if images is not None else ()))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    reports: dict[str, ParityReport] = {}
    for fmt in requested:
        fmt_quant = quantization if fmt == "tflite" else None
        final = out_dir / ARTIFACT_NAMES[variant_key(fmt, fmt_quant)]
        options: dict[str, Any] = {}
        if fmt == "tflite":
            # Converting the SavedModel already written (and checked) saves a second trace.
            options = {"quantization": fmt_quant, "saved_model_dir": paths.get("saved_model")}

        def write(tmp: Path, fmt=fmt, fmt_quant=fmt_quant, final=final, options=options) -> None:
            _WRITERS[fmt](model, tmp, **options)
            if images is None:
                return
            try:
                report = parity_check(model, tmp, fmt, images, quantization=fmt_quant)
            except ExportParityError as err:
                # The temporary file named in err is about to be deleted: name the final path.
                raise ExportParityError(
                    dataclasses.replace(err.report, path=str(final)),
                    advice="Nothing was written there; an earlier export at that path is "
                    "unchanged. The converter does not reproduce this model faithfully: try "
                    "another format or quantisation, or check it with parity_check by hand.",
                ) from None
            reports[fmt] = dataclasses.replace(report, path=str(final))

        with io.atomic_path(final) as tmp:
            write(Path(tmp))
        paths[fmt] = str(final)
    return {"paths": paths, "parity": reports}


def parity_check(
    keras_model: keras.Model,
    exported_path: str | os.PathLike,
    fmt: str,
    images: np.ndarray,
    *,
    quantization: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    mean_atol: float | None = None,
) -> ParityReport:
    """Run the exported artifact and the Keras model on the same images and compare outputs.

    Args:
        keras_model: the model the artifact was exported from.
        exported_path: the SavedModel directory, .tflite file or .onnx file.
        fmt: "saved_model", "tflite" or "onnx".
        images: raw float32 pixels shaped (N, height, width, 3) matching the model input.
        quantization: the TFLite quantisation used ("float16", "dynamic"), which selects the
            looser default tolerance; None for float32 artifacts.
        atol: absolute tolerance for every output; defaults to
            `default_tolerance(fmt, quantization).atol`.
        rtol: relative tolerance for every output; defaults to the same table.
        mean_atol: bound on the mean absolute difference over all outputs; defaults to the
            same table.

    Returns:
        A `ParityReport` with `passed=True`.

    Raises:
        ExportError: for an unknown format or quantisation, or images of the wrong shape.
        MissingDependencyError: if fmt is "onnx" and onnxruntime is not installed.
        ExportParityError: if any output differs by more than atol + rtol * |keras output|, or
            the mean difference exceeds mean_atol; its `report` attribute holds the measurements.
    """
    tolerance = default_tolerance(fmt, quantization)
    atol = tolerance.atol if atol is None else float(atol)
    rtol = tolerance.rtol if rtol is None else float(rtol)
    mean_atol = tolerance.mean_atol if mean_atol is None else float(mean_atol)
    images = as_images(images, keras_model)

    ((_, expected),) = forward(keras_model, [images])  # one batch: the parity images
    actual = load_runner(fmt, exported_path)(images)
    if actual.shape != expected.shape:
        raise ExportError(
            f"The {fmt} export at {str(exported_path)!r} returns shape {actual.shape}, the Keras "
            f"model {expected.shape}: it was exported from a different model. Re-export it."
        )
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    # NaN never passes: the comparison below is False for NaN.
    passed = bool(np.all(diff <= atol + rtol * np.abs(expected)))
    if mean_atol is not None:
        passed = passed and bool(np.mean(diff) <= mean_atol)
    report = ParityReport(
        format=fmt,
        quantization=quantization,
        path=str(exported_path),
        num_images=len(images),
        max_abs_diff=float(np.max(diff)),
        mean_abs_diff=float(np.mean(diff)),
        top1_agreement=float(np.mean(actual.argmax(-1) == expected.argmax(-1))),
        atol=atol,
        rtol=rtol,
        mean_atol=mean_atol,
        passed=passed,
    )
    if not passed:
        raise ExportParityError(report)
    return report


def quantization_accuracy(
    keras_model: keras.Model,
    tflite_path: str | os.PathLike,
    dataset: Any,
    *,
    batch_size: int = 64,
) -> dict[str, float | int]:
    """Measure the accuracy of the Keras model and of a (quantised) TFLite export on labelled data.

    Args:
        keras_model: the float model the TFLite file was exported from.
        tflite_path: the .tflite file (float32, float16 or dynamic-range quantised).
        dataset: a `tf.data.Dataset` of (images, labels), batched or not, or an
            (images, labels) pair of arrays. Images are raw float32 pixels; labels are class
            indices (shape (N,) or (N, 1)) or one-hot / probability vectors (shape (N, classes)).
        batch_size: batch size for an unbatched dataset or a pair of arrays.

    Returns:
        {"num_examples": int, "keras_accuracy": float, "tflite_accuracy": float,
        "accuracy_drop": keras_accuracy - tflite_accuracy, "top1_agreement": float}.

    Raises:
        TypeError: if dataset is neither a tf.data.Dataset nor an (images, labels) pair.
        ExportError: if the dataset is empty or images and labels do not line up.
    """
    run_tflite = load_runner("tflite", tflite_path)
    total = keras_correct = tflite_correct = agree = 0
    progress = Progress(f"accuracy of {os.path.basename(os.fspath(tflite_path))}")
    batches = (
        (as_images(images, keras_model), labels)
        for images, labels in labelled_batches(dataset, batch_size)
    )
    for (images, labels), keras_out in forward(keras_model, batches, progress=progress):
        labels = class_indices(labels, len(images))
        keras_pred = keras_out.argmax(-1)
        tflite_pred = run_tflite(images).argmax(-1)
        total += len(images)
        keras_correct += int(np.sum(keras_pred == labels))
        tflite_correct += int(np.sum(tflite_pred == labels))
        agree += int(np.sum(keras_pred == tflite_pred))
    progress.close()
    if total == 0:
        raise ExportError("The dataset given to quantization_accuracy yielded no examples.")
    keras_acc, tflite_acc = keras_correct / total, tflite_correct / total
    return {
        "num_examples": total,
        "keras_accuracy": keras_acc,
        "tflite_accuracy": tflite_acc,
        "accuracy_drop": keras_acc - tflite_acc,
        "top1_agreement": agree / total,
    }
