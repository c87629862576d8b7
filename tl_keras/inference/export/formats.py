"""The export formats: how a Keras classifier is written as each one, and run back.

The models this package builds take raw float32 pixels (0..255): preprocessing is a layer inside the
model, so every exported artifact takes raw pixels too and needs no preprocessing code to serve.

Formats and what they need:
- ``"saved_model"``: TensorFlow only. Load with ``tf.saved_model.load(path).serve(images)``.
- ``"tflite"``: TensorFlow only (the converter and the ``tf.lite.Interpreter`` ship with it). Runs
  on ``ai_edge_litert`` too, which is used for checks when installed. Optional post-training
  quantisation: ``"float16"`` (float16 weights) or ``"dynamic"`` (int8 weights, dynamic-range).
- ``"onnx"``: needs ``tf2onnx>=1.17`` and ``onnx`` to export, ``onnxruntime`` to check
  (``pip install -e ".[onnx]"``).

`export_saved_model`, `export_tflite` and `export_onnx` write one artifact atomically;
`load_artifact` runs one. Checking an artifact against its model is `tl_keras.inference.export.parity`.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tl_keras import io
from tl_keras.errors import ExportConversionError, ExportError, MissingDependencyError

FORMATS = ("saved_model", "tflite", "onnx")


QUANTIZATIONS = (None, "float16", "dynamic")


# File or directory name of each artifact inside `export`'s out_dir.
ARTIFACT_NAMES = {
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "tflite_float16": "model_float16.tflite",
    "tflite_dynamic": "model_dynamic.tflite",
    "onnx": "model.onnx",
}


OUTPUT_NAME = "output_0"  # same name as the SavedModel serving signature's output


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
    input_spec(model)
    with io.atomic_path(path) as tmp:
        _write_saved_model(model, Path(tmp))
    return str(Path(path))


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
    check_quantization(quantization)
    input_spec(model)
    check_float32_compute(model, "tflite")
    with io.atomic_path(path) as tmp:
        _write_tflite(model, Path(tmp), quantization=quantization)
    return str(Path(path))


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
    require("tf2onnx", "onnx")
    input_spec(model)
    check_float32_compute(model, "onnx")
    with io.atomic_path(path) as tmp:
        _write_onnx(model, Path(tmp))
    return str(Path(path))


def _write_saved_model(model: keras.Model, path: Path) -> None:
    model.export(
        str(path), format="tf_saved_model", verbose=False, input_signature=[input_spec(model)]
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

    spec = input_spec(model)
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
        tensors_to_rename={input_names[0]: spec.name, output_names[0]: OUTPUT_NAME},
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
    return load_runner(fmt, path)


def load_runner(fmt: str, path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    variant_key(fmt, None)
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
    require("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    return lambda images: np.asarray(session.run(None, {graph_input.name: images})[0])


def variant_key(fmt: str, quantization: str | None) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; expected one of {FORMATS}.")
    check_quantization(quantization)
    if quantization is None:
        return fmt
    if fmt != "tflite":
        raise ExportError(
            f"quantization={quantization!r} applies only to 'tflite', not {fmt!r}. "
            "Pass quantization=None for this format."
        )
    return f"tflite_{quantization}"


def format_label(fmt: str, quantization: str | None) -> str:
    return fmt if quantization is None else f"{fmt} ({quantization})"


def check_quantization(quantization: str | None) -> None:
    if quantization not in QUANTIZATIONS:
        raise ExportError(
            f"Unknown quantization {quantization!r}; expected one of {QUANTIZATIONS}."
        )


def check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"Unknown or no export formats {list(formats)!r}; choose from {FORMATS}.")
    # Canonical order, so the TFLite file can be converted from the SavedModel written just before.
    return tuple(f for f in FORMATS if f in formats)


def require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"ONNX export and checking need packages that are not installed: "
            f"{', '.join(missing)}. Install them with: pip install 'tf2onnx>=1.17' onnx onnxruntime"
        )


def input_spec(model: keras.Model) -> tf.TensorSpec:
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


def check_float32_compute(model: keras.Model, fmt: str) -> None:
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


def as_images(images: Any, model: keras.Model) -> np.ndarray:
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
