"""Tests for tl_keras.inference.export: every format exports, reproduces the model, and is written atomically.

Classifiers on the test backbone `tiny` (tl_keras/model/tiny.py: five conv-BN blocks) at 32 px with
random weights keep the file to well under a minute.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tl_keras.inference import export as ex
from tl_keras.inference.export import formats
from tl_keras.model import tiny

SIZE = 32
NUM_CLASSES = 5
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="tf2onnx, onnx and onnxruntime not installed")
FLOAT_FORMATS = ("saved_model", "tflite", "onnx") if HAS_ONNX else ("saved_model", "tflite")
ARTIFACTS = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}


def build_classifier(seed: int) -> keras.Model:
    """The package's model layout, with a random base of the test backbone `tiny`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")(inputs)
    backbone = tiny.tiny_net(input_shape=(SIZE, SIZE, 3))
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(16, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        NUM_CLASSES, activation="softmax", dtype="float32", name="predictions"
    )(x)
    model = keras.Model(inputs, outputs)
    _calibrate_batchnorm(backbone, seed)
    return model


def _calibrate_batchnorm(backbone: keras.Model, seed: int) -> None:
    # With random weights and BatchNorm's initial statistics (mean 0, variance 1) activations
    # vanish, every image gets the same probabilities, and a parity check would prove nothing.
    # One training-mode pass with momentum 0 sets the statistics to those of real activations.
    pixels = np.random.default_rng(seed).uniform(0, 255, (32, SIZE, SIZE, 3)).astype("float32")
    norms = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in norms:
        layer.momentum = 0.0
    backbone(pixels / 127.5 - 1, training=True)
    for layer in norms:
        layer.momentum = 0.99


def random_images(n: int, seed: int = 42) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def model() -> keras.Model:
    built = build_classifier(seed=0)
    probabilities = np.asarray(built(random_images(8)))
    assert probabilities.std(axis=0).max() > 0.01, "test model must not be input-independent"
    return built


@pytest.fixture(scope="module")
def other_model() -> keras.Model:
    """A different model: other random weights, and a head that leans to other classes (a
    random tiny base's answers sit near uniform, so other weights alone move them little)."""
    built = build_classifier(seed=1)
    built.get_layer("predictions").bias.assign(np.linspace(2.0, -2.0, NUM_CLASSES))
    return built


@pytest.fixture(scope="module")
def nudged_model(model) -> keras.Model:
    """The same model with one output bias moved by 0.01 (probabilities move by ~2.5e-3)."""
    nudged = keras.models.clone_model(model)
    nudged.set_weights(model.get_weights())
    bias = nudged.get_layer("predictions").bias
    bias.assign(bias.numpy() + np.eye(NUM_CLASSES, dtype="float32")[0] * 0.01)
    return nudged


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return random_images(8)


@pytest.fixture(scope="module")
def exported(model, images, tmp_path_factory):
    return ex.export(model, tmp_path_factory.mktemp("float"), FLOAT_FORMATS, check_images=images)


@pytest.fixture(scope="module")
def float16_tflite(model, tmp_path_factory) -> str:
    return ex.export_tflite(
        model, tmp_path_factory.mktemp("f16") / "model.tflite", quantization="float16"
    )


@pytest.fixture(scope="module")
def dynamic_export(model, images, tmp_path_factory):
    return ex.export(
        model,
        tmp_path_factory.mktemp("dynamic"),
        ("tflite",),
        quantization="dynamic",
        check_images=images,
    )


# --------------------------------------------------------------------------- each format works


@pytest.mark.parametrize("fmt", FLOAT_FORMATS)
def test_float_formats_export_and_pass_parity(exported, fmt):
    path = exported["paths"][fmt]
    report = exported["parity"][fmt]
    assert path.endswith(ARTIFACTS[fmt]) and os.path.exists(path)
    assert report.passed and report.path == path
    assert report.num_images == 8 and report.top1_agreement == 1.0
    assert report.max_abs_diff <= ex.default_tolerance(fmt).atol


def test_export_leaves_only_the_artifacts(exported):
    out_dir = os.path.dirname(exported["paths"]["saved_model"])
    assert sorted(os.listdir(out_dir)) == sorted(ARTIFACTS[f] for f in FLOAT_FORMATS)


def test_saved_model_serves_raw_pixels_at_any_batch_size(exported, model):
    loaded = tf.saved_model.load(exported["paths"]["saved_model"])
    (spec,) = loaded.signatures["serving_default"].structured_input_signature[1].values()
    assert spec.dtype == tf.float32 and tuple(spec.shape) == (None, SIZE, SIZE, 3)
    pixels = random_images(3, seed=7)
    tolerance = ex.default_tolerance("saved_model").atol
    np.testing.assert_allclose(loaded.serve(pixels), model(pixels), atol=tolerance)


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_takes_float32_pixels_with_dynamic_batch(exported):
    interpreter = tf.lite.Interpreter(model_path=exported["paths"]["tflite"])
    (detail,) = interpreter.get_input_details()
    assert detail["dtype"] == np.float32
    assert list(detail["shape_signature"]) == [-1, SIZE, SIZE, 3]


@needs_onnx
def test_onnx_graph_has_one_named_input(exported):
    import onnxruntime

    session = onnxruntime.InferenceSession(exported["paths"]["onnx"])
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "image" and graph_input.type == "tensor(float)"
    assert graph_input.shape[1:] == [SIZE, SIZE, 3] and not isinstance(graph_input.shape[0], int)


@needs_onnx
def test_onnx_freezes_constants_captured_by_layers(tmp_path, images):
    # Keras's own model.export(format="onnx") turns tensors a layer captured (here
    # Normalization's mean and variance, as in EfficientNet) into extra required graph inputs.
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[4000.0] * 3)(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
    normalizing = keras.Model(inputs, outputs)
    path = ex.export_onnx(normalizing, tmp_path / "normalizing.onnx")
    report = ex.parity_check(normalizing, path, "onnx", images)
    assert report.passed and report.max_abs_diff < 1e-5


# --------------------------------------------------------------------------- quantisation


def test_float16_tflite_passes_parity_at_its_tolerance(model, images, float16_tflite):
    report = ex.parity_check(model, float16_tflite, "tflite", images, quantization="float16")
    assert report.passed and report.atol == ex.PARITY_TOLERANCES["tflite_float16"].atol
    assert report.max_abs_diff > 0  # really quantised
    # ...and it would fail the float32 tolerance, so the looser one is needed.
    with pytest.raises(ex.ExportParityError):
        ex.parity_check(model, float16_tflite, "tflite", images)


def test_dynamic_tflite_exports_and_passes_parity(dynamic_export, exported):
    path = dynamic_export["paths"]["tflite"]
    report = dynamic_export["parity"]["tflite"]
    assert path.endswith("model_dynamic.tflite") and report.passed
    assert report.quantization == "dynamic" and report.mean_atol is not None
    # int8 weights: a much smaller file than the float32 one.
    assert os.path.getsize(path) < 0.5 * os.path.getsize(exported["paths"]["tflite"])


def test_quantization_accuracy_reports_both_accuracies(model, float16_tflite):
    pixels = random_images(40, seed=3)
    labels = np.asarray(model(pixels)).argmax(-1)  # the float model is right by construction
    from_ints = ex.quantization_accuracy(
        model, float16_tflite, tf.data.Dataset.from_tensor_slices((pixels, labels))
    )
    assert from_ints["num_examples"] == 40 and from_ints["keras_accuracy"] == 1.0
    assert 0.0 <= from_ints["tflite_accuracy"] <= 1.0
    assert from_ints["tflite_accuracy"] == from_ints["top1_agreement"]
    assert from_ints["accuracy_drop"] == pytest.approx(1.0 - from_ints["tflite_accuracy"])

    one_hot = np.eye(NUM_CLASSES, dtype="float32")[labels]
    from_one_hot = ex.quantization_accuracy(model, float16_tflite, (pixels, one_hot), batch_size=16)
    assert from_one_hot == from_ints


def test_quantization_accuracy_rejects_mismatched_labels(model, float16_tflite):
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        ex.quantization_accuracy(model, float16_tflite, (random_images(4), np.zeros(3)))
    with pytest.raises(TypeError, match="got ndarray"):
        ex.quantization_accuracy(model, float16_tflite, random_images(4))


# --------------------------------------------------------------------------- parity failures


@pytest.mark.parametrize("fmt", FLOAT_FORMATS)
def test_parity_detects_a_nudged_weight(exported, nudged_model, images, fmt):
    path = exported["paths"][fmt]
    with pytest.raises(ex.ExportParityError) as caught:
        ex.parity_check(nudged_model, path, fmt, images)
    report = caught.value.report
    assert not report.passed and report.max_abs_diff > report.atol
    message = str(caught.value)
    assert fmt in message and f"{report.max_abs_diff:.3g}" in message
    assert f"atol={report.atol:g}" in message
    assert isinstance(caught.value, ValueError)


def test_quantised_parity_detects_a_different_model(other_model, images, dynamic_export):
    path = dynamic_export["paths"]["tflite"]
    with pytest.raises(ex.ExportParityError, match=r"tflite \(dynamic\).*mean_atol=0\.1"):
        ex.parity_check(other_model, path, "tflite", images, quantization="dynamic")


def test_explicit_tolerances_override_the_defaults(exported, nudged_model, images):
    path = exported["paths"]["tflite"]
    report = ex.parity_check(nudged_model, path, "tflite", images, atol=0.01, mean_atol=0.01)
    assert report.passed and (report.atol, report.mean_atol) == (0.01, 0.01)
    # Every single output is within atol=0.01, but the mean bound still catches the drift.
    with pytest.raises(ex.ExportParityError, match="mean_atol=2e-05"):
        ex.parity_check(nudged_model, path, "tflite", images, atol=0.01)


# --------------------------------------------------------------------------- atomic writes


def _write_copy_of(source: str):
    """A writer that 'exports' by copying an existing artifact, whatever model it is given."""

    def write(model, tmp, **options):
        if os.path.isdir(source):
            shutil.copytree(source, tmp)
        else:
            shutil.copyfile(source, tmp)

    return write


@pytest.mark.parametrize("fmt", ["saved_model", "tflite"])
def test_failed_parity_keeps_the_older_export(
    monkeypatch, tmp_path, exported, nudged_model, images, fmt
):
    good = exported["paths"][fmt]
    final = tmp_path / ARTIFACTS[fmt]
    (shutil.copytree if fmt == "saved_model" else shutil.copyfile)(good, final)
    older = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # The writer produces the original model's artifact while we export the nudged model.
    monkeypatch.setitem(formats._WRITERS, fmt, _write_copy_of(good))

    with pytest.raises(ex.ExportParityError, match="Nothing was written there") as caught:
        ex.export(nudged_model, tmp_path, (fmt,), check_images=images)

    assert caught.value.report.path == str(final)  # not the deleted temporary sibling
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == older  # same files, same bytes, no temporary siblings


def test_failed_parity_leaves_nothing_at_a_new_path(
    monkeypatch, tmp_path, exported, nudged_model, images
):
    monkeypatch.setitem(formats._WRITERS, "tflite", _write_copy_of(exported["paths"]["tflite"]))
    with pytest.raises(ex.ExportParityError):
        ex.export(nudged_model, tmp_path / "out", ("tflite",), check_images=images)
    assert os.listdir(tmp_path / "out") == []


def test_failing_writer_leaves_no_partial_file(monkeypatch, tmp_path, model):
    def crash_midway(model, tmp, **options):
        tmp.write_bytes(b"half a flatbuffer")
        raise OSError("disk full")

    monkeypatch.setitem(formats._WRITERS, "tflite", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        ex.export(model, tmp_path, ("tflite",))
    assert os.listdir(tmp_path) == []


def test_successful_export_replaces_an_older_saved_model(tmp_path, model, images, exported):
    final = tmp_path / "saved_model"
    final.mkdir()
    (final / "stale.txt").write_text("from an older export")
    path = ex.export_saved_model(model, final)
    assert sorted(os.listdir(tmp_path)) == ["saved_model"]
    assert not (final / "stale.txt").exists()
    assert ex.parity_check(model, path, "saved_model", images).passed


# --------------------------------------------------------------------------- argument errors


def test_export_rejects_bad_arguments_before_writing(tmp_path, model, images):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="'tf_lite'"):
        ex.export(model, out, ("tf_lite",))
    with pytest.raises(ValueError, match="applies only to the TFLite export"):
        ex.export(model, out, ("saved_model",), quantization="float16")
    with pytest.raises(ValueError, match="'int8'"):
        ex.export(model, out, ("tflite",), quantization="int8")
    with pytest.raises(ValueError, match=r"got shape \(8, 64, 64, 3\)"):
        ex.export(model, out, ("tflite",), check_images=np.zeros((8, 64, 64, 3)))
    assert not out.exists()


def test_mixed_precision_model_is_refused_for_tflite_before_writing(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(4, 3, dtype="mixed_float16", name="half_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32")(x)
    half = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match=r"half_conv \(float16\).*set_global_policy\('float32'\)"):
        ex.export(half, tmp_path / "out", ("saved_model", "tflite"))
    assert not (tmp_path / "out").exists()


def test_onnx_without_its_packages_fails_before_writing(monkeypatch, tmp_path, model):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tf2onnx" else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError, match="pip install 'tf2onnx>=1.17' onnx onnxruntime"):
        ex.export(model, tmp_path / "out", ("saved_model", "onnx"))
    assert not (tmp_path / "out").exists()


def test_parity_check_rejects_quantisation_for_float_formats(exported, model, images):
    with pytest.raises(ValueError, match="applies only to 'tflite'"):
        ex.parity_check(
            model, exported["paths"]["saved_model"], "saved_model", images, quantization="dynamic"
        )
