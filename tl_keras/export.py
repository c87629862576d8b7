"""Export a trained classifier to SavedModel, TFLite (LiteRT) and ONNX, and prove each export works.

The models this package builds take raw float32 pixels (0..255): preprocessing is a layer inside the
model, so every exported artifact takes raw pixels too and needs no preprocessing code to serve.

Every export can be checked against the Keras model it came from (`parity_check`): both run on the
same images and the probabilities must agree within a per-format tolerance (`PARITY_TOLERANCES`).
`export` writes each artifact to a temporary sibling first, checks it, and only then renames it into
place, so a bad export never replaces a good one.

Formats and what they need:
- ``"saved_model"``: TensorFlow only. Load with ``tf.saved_model.load(path).serve(images)``.
- ``"tflite"``: TensorFlow only (the converter and the ``tf.lite.Interpreter`` ship with it). Runs
  on ``ai_edge_litert`` too, which is used for checks when installed. Optional post-training
  quantisation: ``"float16"`` (float16 weights) or ``"dynamic"`` (int8 weights, dynamic-range).
- ``"onnx"``: needs ``tf2onnx>=1.17`` and ``onnx`` to export, ``onnxruntime`` to check
  (``pip install -e ".[onnx]"``).

For a trained workdir, `export_workdir` checks every artifact on the run's own validation images
and records them in ``export.json`` (with ``labels.txt``); `verify_workdir` re-checks them later.
Command line, a thin layer over those two:

  python -m tl_keras.export --workdir=runs/b0 --formats=saved_model,tflite,onnx
  python -m tl_keras.export --workdir=runs/b0 --formats=tflite --quantization=float16
  python -m tl_keras.export --workdir=runs/b0 --verify

A parity failure prints one ``error:`` line and exits 1; bad input exits 2.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tl_keras.errors import TLKerasError

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = (None, "float16", "dynamic")

# File or directory name of each artifact inside `export`'s out_dir.
_ARTIFACT_NAMES = {
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "tflite_float16": "model_float16.tflite",
    "tflite_dynamic": "model_dynamic.tflite",
    "onnx": "model.onnx",
}

_ONNX_OUTPUT_NAME = "output_0"  # same name as the SavedModel serving signature's output


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

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a plain JSON-serialisable dict."""
        return dataclasses.asdict(self)


class ExportError(TLKerasError):
    """An export cannot be made or checked as asked (a bad format, quantisation or input)."""


class MissingDependencyError(ExportError, ImportError):
    """A format needs a package that is not installed (ONNX: the `onnx` extra)."""


class ExportConversionError(ExportError, RuntimeError):
    """A converter cannot express the model in the asked format."""

    exit_code = 1  # the command was fine; the model does not convert


class ExportParityError(ExportError):
    """An exported artifact does not reproduce the Keras model within tolerance.

    Attributes:
        report: the `ParityReport` with the measured differences.
    """

    exit_code = 1  # a check failed (tl_keras.cli): not bad input, a wrong artifact

    def __init__(self, report: ParityReport, advice: str | None = None):
        self.report = report
        name = _format_label(report.format, report.quantization)
        mean = "" if report.mean_atol is None else f", mean_atol={report.mean_atol:g}"
        if advice is None:
            advice = (
                "Re-export from the model you are comparing against. For a quantised TFLite "
                "file pass quantization='float16' or 'dynamic'; if the difference is an "
                "accepted cost, pass looser atol / mean_atol."
            )
        super().__init__(
            f"{name} export at {report.path!r} does not match the Keras model: "
            f"max |diff| = {report.max_abs_diff:.3g}, mean |diff| = {report.mean_abs_diff:.3g}; "
            f"tolerance atol={report.atol:g}, rtol={report.rtol:g}{mean} "
            f"(on {report.num_images} images; top-1 agreement {report.top1_agreement:.1%}). "
            + advice
        )


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
    return PARITY_TOLERANCES[_variant_key(fmt, quantization)]


# --------------------------------------------------------------------------- public exporters


def export_saved_model(model: keras.Model, path: str | os.PathLike) -> str:
    """Export the model as a TensorFlow SavedModel whose `serve` endpoint takes raw pixels.

    The serving signature takes float32 images shaped (batch, height, width, 3), any batch size,
    and returns the class probabilities. The directory is written atomically.

    Args:
        model: a single-input Keras classifier.
        path: directory to write; an existing SavedModel there is replaced only on success.

    Returns:
        The path written, as a string.

    Raises:
        ExportError: if the model does not have exactly one image input.
    """
    _input_spec(model)
    return _atomic_write(Path(path), lambda tmp: _write_saved_model(model, tmp))


def export_tflite(
    model: keras.Model, path: str | os.PathLike, *, quantization: str | None = None
) -> str:
    """Export the model as a TFLite (LiteRT) flatbuffer that takes raw pixels.

    Only TFLite builtin ops are allowed, so the file runs on any LiteRT runtime without the Flex
    (select TF ops) delegate. The batch dimension stays dynamic. The file is written atomically.

    Args:
        model: a single-input Keras classifier.
        path: file to write (conventionally ending in ".tflite").
        quantization: None for float32; "float16" for float16 weights (half the size);
            "dynamic" for dynamic-range quantisation (int8 weights, a quarter to a third the
            size; layers with fewer than 1024 weights stay float32).

    Returns:
        The path written, as a string.

    Raises:
        ExportError: if the quantisation is unknown, the model does not have one image input,
            or it computes in float16 (a mixed-precision policy).
        ExportConversionError: if the converter cannot express the model with TFLite builtin ops.
    """
    _check_quantization(quantization)
    _input_spec(model)
    _check_float32_compute(model, "tflite")
    return _atomic_write(
        Path(path), lambda tmp: _write_tflite(model, tmp, quantization=quantization)
    )


def export_onnx(model: keras.Model, path: str | os.PathLike) -> str:
    """Export the model as an ONNX graph (via tf2onnx) that takes raw pixels.

    The graph has one input, named after the Keras input (e.g. "image"), shaped
    (batch, height, width, 3) with a dynamic batch, and one output named "output_0".
    The file is written atomically.

    Args:
        model: a single-input Keras classifier.
        path: file to write (conventionally ending in ".onnx").

    Returns:
        The path written, as a string.

    Raises:
        MissingDependencyError: if tf2onnx or onnx is not installed.
        ExportError: if the model does not have exactly one image input, or computes in float16
            (a mixed-precision policy).
        ExportConversionError: if the converted graph does not have exactly the model's one input.
    """
    _require("tf2onnx", "onnx")
    _input_spec(model)
    _check_float32_compute(model, "onnx")
    return _atomic_write(Path(path), lambda tmp: _write_onnx(model, tmp))


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
    requested = _check_formats(formats)
    _check_quantization(quantization)
    if quantization is not None and "tflite" not in requested:
        raise ExportError(
            f"quantization={quantization!r} applies only to the TFLite export, but formats="
            f"{requested!r}. Add 'tflite' to formats or drop quantization."
        )
    _input_spec(model)
    for fmt in set(requested) & {"tflite", "onnx"}:
        _check_float32_compute(model, fmt)
    images = None if check_images is None else _as_images(check_images, model)
    if "onnx" in requested:
        _require("tf2onnx", "onnx", *(("onnxruntime",) if images is not None else ()))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    reports: dict[str, ParityReport] = {}
    for fmt in requested:
        fmt_quant = quantization if fmt == "tflite" else None
        final = out_dir / _ARTIFACT_NAMES[_variant_key(fmt, fmt_quant)]
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

        paths[fmt] = _atomic_write(final, write)
    return {"paths": paths, "parity": reports}


# --------------------------------------------------------------------------- checking


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
    images = _as_images(images, keras_model)

    expected = _predict_keras(keras_model, images)
    actual = _load_runner(fmt, exported_path)(images)
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
    run_tflite = _load_runner("tflite", tflite_path)
    total = keras_correct = tflite_correct = agree = 0
    for images, labels in _labelled_batches(dataset, batch_size):
        images = _as_images(images, keras_model)
        labels = _class_indices(labels, len(images))
        keras_pred = _predict_keras(keras_model, images).argmax(-1)
        tflite_pred = run_tflite(images).argmax(-1)
        total += len(images)
        keras_correct += int(np.sum(keras_pred == labels))
        tflite_correct += int(np.sum(tflite_pred == labels))
        agree += int(np.sum(keras_pred == tflite_pred))
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


# --------------------------------------------------------------------------- writers


def _write_saved_model(model: keras.Model, path: Path) -> None:
    model.export(
        str(path), format="tf_saved_model", verbose=False, input_signature=[_input_spec(model)]
    )


def _write_tflite(
    model: keras.Model,
    path: Path,
    *,
    quantization: str | None = None,
    saved_model_dir: str | None = None,
) -> None:
    if saved_model_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            saved_model_dir = os.path.join(tmp, "saved_model")
            _write_saved_model(model, Path(saved_model_dir))
            flatbuffer = _convert_to_tflite(saved_model_dir, quantization)
    else:
        flatbuffer = _convert_to_tflite(saved_model_dir, quantization)
    Path(path).write_bytes(flatbuffer)


def _convert_to_tflite(saved_model_dir: str, quantization: str | None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    # Builtins only (Keras's own LiteRT export also allows SELECT_TF_OPS): a file that needs the
    # Flex delegate fails on mobile runtimes, so refuse it here rather than on the device.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        # DEFAULT without a representative dataset is dynamic-range quantisation.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as err:  # the converter raises its own ConverterError, not public in tf.lite
        # The converter lists every failing op; the first few name the culprit.
        summary = "\n".join(str(err).splitlines()[:4])
        raise ExportConversionError(
            f"TFLite conversion (quantization={quantization!r}) failed; only TFLite builtin ops "
            "are allowed, so a layer outside them needs replacing before export. The converter "
            f"said (in full in the chained error):\n{summary}"
        ) from err


def _write_onnx(model: keras.Model, path: Path) -> None:
    import logging

    import onnx
    import tf2onnx

    # tf2onnx logs every optimisation pass at INFO; its warnings and errors still show.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)

    spec = _input_spec(model)
    concrete = tf.function(
        lambda images: model(images, training=False), input_signature=[spec]
    ).get_concrete_function()
    # tf2onnx.convert.from_function, which Keras's model.export(format="onnx") uses, makes every
    # placeholder of the traced function a graph input, including tensors the function captured
    # (EfficientNet's Normalization mean and variance), so ONNX Runtime then demands them as
    # inputs. Name the real inputs ourselves; freezing turns the captured tensors into constants.
    captured = {id(t) for t in concrete.graph.internal_captures}
    input_names = [
        t.name for t in concrete.inputs if id(t) not in captured and t.dtype != tf.resource
    ]
    output_names = [t.name for t in concrete.outputs]
    graph_def = tf2onnx.tf_loader.from_function(concrete, input_names, output_names)
    tf2onnx.convert.from_graph_def(
        graph_def,
        name=model.name,
        input_names=input_names,
        output_names=output_names,
        tensors_to_rename={input_names[0]: spec.name, output_names[0]: _ONNX_OUTPUT_NAME},
        output_path=str(path),
    )
    graph_inputs = [i.name for i in onnx.load(str(path)).graph.input]
    if graph_inputs != [spec.name]:
        raise ExportConversionError(
            f"tf2onnx produced an ONNX graph with inputs {graph_inputs}; expected only "
            f"[{spec.name!r}]. Some layer in {model.name!r} does not freeze to constants."
        )


_WRITERS: dict[str, Callable[..., None]] = {
    "saved_model": _write_saved_model,
    "tflite": _write_tflite,
    "onnx": _write_onnx,
}


# --------------------------------------------------------------------------- runners


def load_artifact(
    path: str | os.PathLike, fmt: str | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Loads an exported artifact as a function from raw pixels to class probabilities.

    Args:
      path: a SavedModel folder, a .tflite file or a .onnx file.
      fmt: 'saved_model', 'tflite' or 'onnx'; None = from the path (folder, suffix).

    Returns:
      f(images) -> probabilities, for float32 batches shaped (N, size, size, 3) of 0..255
      pixels, any N.

    Raises:
      ExportError: the format cannot be told from the path.
      FileNotFoundError: nothing at the path.
    """
    if fmt is None:
        suffix = Path(path).suffix.lower()
        fmt = (
            "saved_model"
            if Path(path).is_dir()
            else {".tflite": "tflite", ".onnx": "onnx"}.get(suffix)
        )
        if fmt is None:
            raise ExportError(
                f"cannot tell the format of {str(path)!r}: pass fmt= one of {FORMATS}"
            )
    return _load_runner(fmt, path)


def _load_runner(fmt: str, path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    _variant_key(fmt, None)
    if not Path(path).exists():
        raise FileNotFoundError(f"No {fmt} export at {str(path)!r}; export it first.")
    if fmt == "saved_model":
        return _saved_model_runner(path)
    if fmt == "tflite":
        return _TFLiteRunner(path)
    return _onnx_runner(path)


def _saved_model_runner(path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    loaded = tf.saved_model.load(str(path))
    if hasattr(loaded, "serve"):
        return lambda images: np.asarray(loaded.serve(tf.constant(images)))
    # A SavedModel written by something else: fall back to its default signature.
    signature = loaded.signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1].keys()

    def run(images: np.ndarray) -> np.ndarray:
        (output,) = signature(**{input_name: tf.constant(images)}).values()
        return np.asarray(output)

    return run


class _TFLiteRunner:
    """Runs a .tflite file on batches of any size (resizing the input tensor when it changes)."""

    def __init__(self, path: str | os.PathLike):
        self._interpreter = _tflite_interpreter(path)
        (self._input,) = self._interpreter.get_input_details()
        (self._output,) = self._interpreter.get_output_details()
        self._batch_shape: tuple[int, ...] | None = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.shape != self._batch_shape:
            self._interpreter.resize_tensor_input(self._input["index"], list(images.shape))
            self._interpreter.allocate_tensors()
            self._batch_shape = images.shape
        self._interpreter.set_tensor(self._input["index"], images.astype(self._input["dtype"]))
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output["index"]))


def _tflite_interpreter(path: str | os.PathLike) -> Any:
    try:
        # LiteRT's own package is the supported interpreter from TF 2.20 on; use it when present.
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        # TF 2.21 still ships tf.lite.Interpreter and it works; it only warns about its future.
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        return Interpreter(model_path=str(path))


def _onnx_runner(path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    _require("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    return lambda images: np.asarray(session.run(None, {graph_input.name: images})[0])


def _predict_keras(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images, training=False))


# --------------------------------------------------------------------------- validation


def _variant_key(fmt: str, quantization: str | None) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; expected one of {FORMATS}.")
    _check_quantization(quantization)
    if quantization is None:
        return fmt
    if fmt != "tflite":
        raise ExportError(
            f"quantization={quantization!r} applies only to 'tflite', not {fmt!r}. "
            "Pass quantization=None for this format."
        )
    return f"tflite_{quantization}"


def _format_label(fmt: str, quantization: str | None) -> str:
    return fmt if quantization is None else f"{fmt} ({quantization})"


def _check_quantization(quantization: str | None) -> None:
    if quantization not in QUANTIZATIONS:
        raise ExportError(
            f"Unknown quantization {quantization!r}; expected one of {QUANTIZATIONS}."
        )


def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"Unknown or no export formats {list(formats)!r}; choose from {FORMATS}.")
    # Canonical order, so the TFLite file can be converted from the SavedModel written just before.
    return tuple(f for f in FORMATS if f in formats)


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"ONNX export and checking need packages that are not installed: "
            f"{', '.join(missing)}. Install them with: pip install 'tf2onnx>=1.17' onnx onnxruntime"
        )


def _input_spec(model: keras.Model) -> tf.TensorSpec:
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        count = "no defined inputs" if not inputs else f"{len(inputs)} inputs"
        raise ExportError(
            f"Export needs a built model with exactly one image input; {model.name!r} has "
            f"{count}. Build it as a functional model on keras.Input(shape=(S, S, 3))."
        )
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        raise ExportError(
            f"Export needs an image input shaped (batch, height, width, channels); "
            f"{model.name!r} takes {shape}."
        )
    # Raw pixels are always float32 (the preprocessing layer lives inside the model), and the
    # batch stays dynamic so servers can batch requests.
    return tf.TensorSpec((None, *shape[1:]), tf.float32, name=inputs[0].name or "image")


def _check_float32_compute(model: keras.Model, fmt: str) -> None:
    # Under a mixed_float16 policy the traced graph computes in float16: the TFLite converter then
    # finds no builtin float16 kernels, and ONNX Runtime's float16 kernels stray by ~2e-2.
    layers, low_precision = list(model.layers), []
    while layers:
        layer = layers.pop()
        if getattr(layer, "compute_dtype", "float32") not in ("float32", None):
            low_precision.append(f"{layer.name} ({layer.compute_dtype})")
        layers.extend(getattr(layer, "layers", []))
    if low_precision:
        raise ExportError(
            f"The {fmt} export needs a model that computes in float32, but {model.name!r} has "
            f"{len(low_precision)} layers that do not, e.g. {low_precision[0]}. Rebuild the "
            "model under keras.mixed_precision.set_global_policy('float32'), copy the weights "
            "across (set_weights(get_weights())), and export that; for a smaller TFLite file "
            "use quantization='float16'."
        )


def _as_images(images: Any, model: keras.Model) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    expected = tuple(model.inputs[0].shape[1:])
    matches = images.ndim == 4 and all(
        want is None or got == want for got, want in zip(images.shape[1:], expected, strict=True)
    )
    if not matches or len(images) == 0:
        raise ExportError(
            f"Images must be a non-empty batch of raw pixels shaped (N, {', '.join(map(str, expected))}) "
            f"to match the model input; got shape {images.shape}. Resize or batch them first."
        )
    return images


def _labelled_batches(dataset: Any, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    if isinstance(dataset, tf.data.Dataset):
        element = dataset.element_spec
        if not (isinstance(element, tuple) and len(element) == 2):
            raise TypeError(
                f"The dataset must yield (images, labels) pairs; its elements are {element}."
            )
        if element[0].shape.rank == 3:
            dataset = dataset.batch(batch_size)
        return dataset.as_numpy_iterator()
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = np.asarray(dataset[0]), np.asarray(dataset[1])
        if len(images) != len(labels):
            raise ExportError(
                f"Got {len(images)} images but {len(labels)} labels; they must line up one to one."
            )
        return (
            (images[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        )
    raise TypeError(
        f"dataset must be a tf.data.Dataset of (images, labels) or an (images, labels) pair of "
        f"arrays; got {type(dataset).__name__}."
    )


def _class_indices(labels: Any, count: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(-1)  # one-hot or soft labels
    labels = labels.reshape(-1)
    if len(labels) != count:
        raise ExportError(
            f"Got {count} images but labels shaped {labels.shape}; labels must be class indices "
            "(N,) / (N, 1) or one-hot (N, classes)."
        )
    return labels.astype(np.int64)


# --------------------------------------------------------------------------- atomic writes


def _atomic_write(final: Path, write: Callable[[Path], None]) -> str:
    """Run write(tmp) on a temporary sibling of `final`, then move it into place.

    The sibling lives in the same directory, so the final rename stays on one filesystem.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        _move_into_place(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    return str(final)


def _move_into_place(tmp: Path, final: Path) -> None:
    if not (tmp.is_dir() and final.is_dir()):
        os.replace(tmp, final)
        return
    # rename(2) cannot replace a non-empty directory: set the old one aside first and put it
    # back if the second rename fails, so `final` is only ever the old or the new export.
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------- a workdir

MANIFEST_FILE = "export.json"
LABELS_FILE = "labels.txt"
DEFAULT_PARITY_IMAGES = 32  # validation images each artifact is checked on


def parity_images(workdir: str, num_images: int, *, data_dir: str | None = None) -> np.ndarray:
    """The first `num_images` validation images of a workdir's data (training's own split).

    Falls back to the first training batches when the run kept no validation split.

    Args:
      workdir: a folder written by `tl_keras.train`.
      num_images: how many images (at least 1).
      data_dir: the data's folder, if it moved since training.

    Returns:
      Raw float32 pixels shaped (N, size, size, 3), N <= num_images.

    Raises:
      DataError: the workdir's data cannot be found or read.
    """
    from tl_keras.trained import load_run_data

    bundle = load_run_data(workdir, data_dir=data_dir)
    source = bundle.val if bundle.val is not None else bundle.train
    batches, count = [], 0
    for images, _ in source.as_numpy_iterator():
        batches.append(images[: num_images - count])
        count += len(batches[-1])
        if count >= num_images:
            break
    return np.concatenate(batches).astype(np.float32)


def _validation_set(workdir: str, class_names: list[str], data_dir: str | None):
    """The validation split with labels as the model's class indices, or None without one."""
    from tl_keras.trained import check_class_names, load_run_data

    bundle = load_run_data(workdir, data_dir=data_dir)
    if bundle.val is None:
        return None
    to_model = tf.constant(check_class_names(class_names, bundle.class_names, bundle.source))
    return bundle.val.map(lambda x, y: (x, tf.gather(to_model, tf.argmax(y, axis=-1))))


def _read_manifest(path: Path) -> dict[str, Any]:
    import json

    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportError(f"{path} is unreadable ({err}); delete it and export again") from None


def _write_manifest(out_dir: Path, manifest: dict[str, Any], class_names: list[str]) -> None:
    from tl_keras import io

    io.atomic_write_text(str(out_dir / LABELS_FILE), "".join(f"{c}\n" for c in class_names))
    io.atomic_write_json(str(out_dir / MANIFEST_FILE), manifest)


def export_workdir(
    workdir: str,
    *,
    formats: Iterable[str] = ("saved_model", "tflite"),
    quantization: str | None = None,
    out_dir: str | None = None,
    phase: str | None = None,
    num_parity_images: int = DEFAULT_PARITY_IMAGES,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Exports a workdir's model, checks each artifact, and records what was made.

    What `python -m tl_keras.export` does. Each artifact must pass `parity_check` on the first
    `num_parity_images` validation images of the run's data before it replaces anything. With a
    quantisation, the TFLite file's accuracy is also measured against the float Keras model on
    the whole validation split. The out_dir gets `labels.txt` (class names, one a line, in
    output order) and `export.json` (input and output conventions, and per artifact its size,
    source model, parity report and accuracy); exports made later into the same folder are
    added to it.

    Args:
      workdir: a folder written by `tl_keras.train`.
      formats: any of 'saved_model', 'tflite', 'onnx'.
      quantization: None, 'float16' or 'dynamic' (TFLite only).
      out_dir: where to write; default `<workdir>/export`.
      phase: which phase's model; None = the final one.
      num_parity_images: images for the parity check; 0 skips it (not recommended).
      data_dir: the data's folder, if it moved since training.

    Returns:
      The manifest written to `export.json`.

    Raises:
      ExportError: bad formats or quantisation (before anything is written).
      ExportParityError: an artifact does not reproduce the model (it is not kept).
      WorkdirError, DataError: no trained model, or its data cannot be found.

    Example:
      >>> manifest = export_workdir("runs/b0", formats=["tflite"], quantization="dynamic")
      >>> manifest["artifacts"]["model_dynamic.tflite"]["accuracy"]["accuracy_drop"]
    """
    from tl_keras.trained import load_trained

    requested = _check_formats(formats)
    _check_quantization(quantization)
    if num_parity_images < 0:
        raise ExportError(f"num_parity_images={num_parity_images} must be 0 (skip) or more")
    trained = load_trained(workdir, phase=phase)
    out = Path(out_dir or os.path.join(trained.workdir, "export"))
    images = None
    if num_parity_images:
        images = parity_images(workdir, num_parity_images, data_dir=data_dir)
    else:
        warnings.warn("num_parity_images=0: the exports are not checked", stacklevel=2)
    result = export(trained.model, out, requested, quantization=quantization, check_images=images)
    manifest = _read_manifest(out / MANIFEST_FILE)
    if manifest.get("class_names") not in (None, trained.class_names):
        manifest = {}  # artifacts of another run: their entries no longer describe this folder
    fingerprint = trained.fingerprint()
    artifacts = manifest.get("artifacts", {})
    for fmt, path in result["paths"].items():
        fmt_quant = quantization if fmt == "tflite" else None
        entry: dict[str, Any] = {
            "format": fmt,
            "quantization": fmt_quant,
            "bytes": _size(Path(path)),
            "phase": trained.phase,
            "model_sha256": fingerprint,
            "parity": result["parity"][fmt].as_dict() if fmt in result["parity"] else None,
        }
        if fmt == "tflite" and fmt_quant is not None:
            val = _validation_set(workdir, trained.class_names, data_dir)
            if val is not None:
                entry["accuracy"] = quantization_accuracy(trained.model, path, val)
        artifacts[os.path.basename(path)] = entry
    manifest = {
        "workdir": trained.workdir,
        "backbone": trained.backbone,
        "image_size": trained.image_size,
        "class_names": trained.class_names,
        "input": {
            "name": _input_spec(trained.model).name,
            "dtype": "float32",
            "shape": [None, trained.image_size, trained.image_size, 3],
            "pixels": "RGB, raw 0..255 (preprocessing is inside the model)",
        },
        "output": {
            "name": _ONNX_OUTPUT_NAME,
            "meaning": f"class probabilities (softmax), in {LABELS_FILE} order",
        },
        "artifacts": dict(sorted(artifacts.items())),
    }
    _write_manifest(out, manifest, trained.class_names)
    return manifest


def verify_workdir(
    workdir: str,
    *,
    out_dir: str | None = None,
    phase: str | None = None,
    num_parity_images: int = DEFAULT_PARITY_IMAGES,
    data_dir: str | None = None,
) -> list[ParityReport]:
    """Checks every artifact listed in an export folder's `export.json` against the Keras model.

    Use it before shipping artifacts that may have been copied, edited or exported from an
    older model: each one runs on the same validation images as the workdir's model.

    Args:
      workdir: a folder written by `tl_keras.train`.
      out_dir: the export folder; default `<workdir>/export`.
      phase: compare with this phase's model; None = the phase each artifact was exported from.
      num_parity_images: images to check on (at least 1).
      data_dir: the data's folder, if it moved since training.

    Returns:
      One passing `ParityReport` per artifact.

    Raises:
      ExportError: no export.json there, or an artifact it lists is missing.
      ExportParityError: an artifact does not reproduce the model; its report is the first
        failure, and the message names every failing artifact.
    """
    from tl_keras.trained import load_trained

    if num_parity_images < 1:
        raise ExportError(f"num_parity_images={num_parity_images}: verifying needs at least 1")
    out = Path(out_dir or os.path.join(os.path.abspath(workdir), "export"))
    artifacts = _read_manifest(out / MANIFEST_FILE).get("artifacts")
    if not artifacts:
        raise ExportError(f"{out / MANIFEST_FILE} lists no exports to verify; run the export first")
    missing = [name for name in artifacts if not (out / name).exists()]
    if missing:
        raise ExportError(f"{out} lacks {', '.join(missing)}, listed in {MANIFEST_FILE}")
    images = parity_images(workdir, num_parity_images, data_dir=data_dir)
    models: dict[str, keras.Model] = {}
    reports, failures = [], []
    for name, entry in artifacts.items():
        source = phase or entry.get("phase")
        if source not in models:
            models[source] = load_trained(workdir, phase=source).model
        try:
            reports.append(
                parity_check(
                    models[source],
                    out / name,
                    entry["format"],
                    images,
                    quantization=entry.get("quantization"),
                )
            )
        except ExportParityError as err:
            failures.append(err.report)
    if failures:
        names = ", ".join(Path(r.path).name for r in failures)
        raise ExportParityError(
            failures[0],
            advice=f"{len(failures)} of {len(artifacts)} artifacts fail ({names}): they were "
            "altered or exported from another model. Export again from this workdir.",
        )
    return reports


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# --------------------------------------------------------------------------- command line


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Folder of a training run (its final model is used).")
    flags.DEFINE_list(
        "formats", ["saved_model", "tflite"], f"Comma-separated, any of {', '.join(FORMATS)}."
    )
    flags.DEFINE_enum(
        "quantization",
        "none",
        ["none", "float16", "dynamic"],
        "TFLite post-training quantisation; its accuracy is measured on the validation split.",
    )
    flags.DEFINE_string("out_dir", None, "Output folder [default: <workdir>/export].")
    flags.DEFINE_string("phase", None, "Export this phase's model (default: the final one).")
    flags.DEFINE_integer(
        "parity_images",
        DEFAULT_PARITY_IMAGES,
        "Validation images each artifact is checked on; 0 skips the check.",
    )
    flags.DEFINE_string("data_dir", None, "The run's data folder, if it moved since training.")
    flags.DEFINE_boolean(
        "verify", False, "Export nothing: check the artifacts listed in <out_dir>/export.json."
    )
    flags.DEFINE_boolean("verbose", False, "Show tracebacks for bad-input errors.")


def main(argv: list[str]) -> int:
    import logging
    import sys

    from absl import flags

    from tl_keras import cli

    FLAGS = flags.FLAGS
    log = logging.getLogger("tl_keras")
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; every setting is a --flag", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    cli.setup_logging()

    def show(report: ParityReport) -> None:
        log.info(
            "parity %s: %s on %d images, max |diff| %.2g, mean %.2g, top-1 agreement %.1f%%",
            "ok" if report.passed else "FAILED",
            Path(report.path).name,
            report.num_images,
            report.max_abs_diff,
            report.mean_abs_diff,
            100 * report.top1_agreement,
        )

    def body() -> int:
        if not FLAGS.workdir:
            raise ExportError("--workdir is required: the folder of a training run")
        common = dict(phase=FLAGS.phase, data_dir=FLAGS.data_dir, out_dir=FLAGS.out_dir)
        if FLAGS.verify:
            for report in verify_workdir(
                FLAGS.workdir, num_parity_images=FLAGS.parity_images, **common
            ):
                show(report)
            log.info("verified: every artifact reproduces the model")
            return cli.EXIT_OK
        quantization = None if FLAGS.quantization == "none" else FLAGS.quantization
        manifest = export_workdir(
            FLAGS.workdir,
            formats=FLAGS.formats,
            quantization=quantization,
            num_parity_images=FLAGS.parity_images,
            **common,
        )
        out = Path(FLAGS.out_dir or os.path.join(manifest["workdir"], "export"))
        for name, entry in manifest["artifacts"].items():
            if entry["format"] not in FLAGS.formats or entry["quantization"] != quantization:
                continue  # from an earlier export into the same folder
            if entry["parity"]:
                show(ParityReport(**entry["parity"]))
            if "accuracy" in entry:
                acc = entry["accuracy"]
                log.info(
                    "accuracy on %d validation images: keras %.4f, %s %.4f (drop %.4f), "
                    "top-1 agreement %.1f%%",
                    acc["num_examples"],
                    acc["keras_accuracy"],
                    name,
                    acc["tflite_accuracy"],
                    acc["accuracy_drop"],
                    100 * acc["top1_agreement"],
                )
            print(f"{out / name}  ({entry['bytes']:,} bytes)")
        print(f"{out / MANIFEST_FILE}")
        return cli.EXIT_OK

    return cli.report_errors(body, verbose=FLAGS.verbose)


def run_main() -> None:
    """Entry point of `python -m tl_keras.export` (flags are defined only here)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run_main()
