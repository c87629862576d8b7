"""Calibrated answers: the temperature fitted after training, flip TTA, applied by predict,
evaluate and every export (parity extended to them), and old workdirs unchanged.

One tiny run trains fe and ft in two processes' worth of calls (each `train` call ends by
fitting the temperature of the model it made); the predict and export tests then set the
workdir's "inference" section by hand (T = 2.5, flip) so the effect is large and known.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil

import numpy as np
import pytest
from conftest import tiny_config

from tl_keras import calibration
from tl_keras.errors import ConfigError, WorkdirError
from tl_keras.model.served import InferenceSettings, inference_model, settings_from_run

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime"))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> str:
    """fe, then ft, each its own `train` call: 3 classes x 40 shapes, 24 validation images."""
    from tl_keras.training.runner import train

    workdir = str(tmp_path_factory.mktemp("calibrated") / "run")
    cfg = tiny_config(synthetic_images_per_class=40, epochs_fe=2)
    train(cfg, workdir, phase="fe")
    fe_run = read_json(f"{workdir}/run.json")
    train(cfg, workdir, phase="ft")
    return workdir, fe_run


def with_section(workdir: str, tmp_path, **section) -> str:
    """A copy of the workdir whose run.json holds this inference section."""
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    run = read_json(f"{copy}/run.json")
    run["inference"] = section
    write_json(f"{copy}/run.json", run)
    return copy


def read_json(path: str):
    return json.loads(pathlib.Path(path).read_text())


def write_json(path: str, value) -> None:
    pathlib.Path(path).write_text(json.dumps(value))


# --- the settings and the wrapper ---------------------------------------------------------------
def test_settings_read_from_run_json():
    assert settings_from_run({}, "ft") == InferenceSettings(1.0, "none")
    run = {"inference": {"temperature": 1.7, "tta": "flip", "phase": "ft"}}
    assert settings_from_run(run, "ft") == InferenceSettings(1.7, "flip")
    assert settings_from_run(run, "fe") == InferenceSettings(1.0, "flip")  # fitted for ft only
    assert settings_from_run({"inference": {"tta": "flip"}}, "fe") == InferenceSettings(1.0, "flip")
    for bad in ({"temperature": -1}, {"temperature": "hot"}, {"tta": "rotate"}, [1]):
        with pytest.raises(WorkdirError, match="the workdir is damaged"):
            settings_from_run({"inference": bad}, "ft")
    with pytest.raises(ConfigError, match="tta='rotate' is not known; use one of none, flip"):
        InferenceSettings(1.0, "rotate")


def test_the_wrapper_is_the_model_when_nothing_applies_and_the_formula_otherwise():
    from tl_keras.model.classifier import build_model

    model = build_model("mobilenet", 3, image_size=32, weights=None, alpha=0.25, head_units=8)
    model.get_layer("predictions").bias.assign([2.0, 0.0, -1.0])  # a random base says nothing
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    assert inference_model(model) is model
    p = np.asarray(model(x, training=False), np.float64)
    mirrored = np.asarray(model(x[:, :, ::-1], training=False), np.float64)
    scaled = np.asarray(inference_model(model, InferenceSettings(2.5))(x, training=False))
    np.testing.assert_allclose(scaled, calibration.apply_temperature(p, 2.5), atol=1e-6)
    both = inference_model(model, InferenceSettings(0.5, "flip"))
    np.testing.assert_allclose(
        np.asarray(both(x, training=False)),
        calibration.apply_temperature((p + mirrored) / 2, 0.5),
        atol=1e-6,
    )
    assert np.abs(scaled - p).max() > 1e-3  # it really changes the probabilities


# --- after training -------------------------------------------------------------------------------
def test_each_train_call_fits_the_temperature_of_the_model_it_made(calibrated):
    workdir, fe_run = calibrated
    assert fe_run["inference"]["phase"] == "fe"
    run = read_json(f"{workdir}/run.json")
    section = run["inference"]
    assert section["phase"] == "ft" and section["tta"] == "none"
    assert section["fitted"] == "yes: on 24 validation images"
    t = section["temperature"]
    assert t != 1.0 and calibration.TEMPERATURE_BOUNDS[0] < t < calibration.TEMPERATURE_BOUNDS[1]
    report = read_json(f"{workdir}/calibration/calibration.json")
    c = report["calibration"]
    assert c["temperature"] == t and c["nll_after"] <= c["nll_before"]
    assert report["validation"]["num_images"] == 24
    assert 0 <= report["validation"]["balanced_accuracy"] <= 1
    assert pathlib.Path(f"{workdir}/calibration/reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_the_fitted_temperature_is_the_validation_nll_minimum(calibrated):
    """Recomputed from the saved ft model on the validation split: the same T."""
    from tl_keras.inference.trained import load_run_data, load_trained
    from tl_keras.model.forward import forward

    workdir, _ = calibrated
    trained = load_trained(workdir)
    answers = list(forward(trained.model, load_run_data(workdir).val))
    probs = np.concatenate([np.asarray(out, np.float64) for _, out in answers])
    labels = np.concatenate([np.asarray(onehot).argmax(-1) for (_, onehot), _ in answers])
    assert trained.inference.temperature == pytest.approx(
        calibration.fit_temperature(probs, labels), rel=1e-6
    )
    assert load_trained(workdir, phase="fe").inference.temperature == 1.0  # fitted for ft


def test_too_few_validation_images_keep_temperature_one(trained_workdir):
    run = read_json(f"{trained_workdir}/run.json")
    assert run["inference"]["temperature"] == 1.0
    assert run["inference"]["fitted"].startswith("no: 6 validation images")


# --- applied everywhere -----------------------------------------------------------------------------
def test_predict_and_evaluate_apply_the_workdir_temperature_and_flip(calibrated, tmp_path):
    from tl_keras.inference import evaluate as ev
    from tl_keras.inference import predict as pr
    from tl_keras.inference.trained import load_trained

    workdir, _ = calibrated
    copy = with_section(workdir, tmp_path, temperature=2.5, tta="flip", phase="ft")
    files = pr.list_inputs([f"{copy}/data/synthetic/circle"])[:5]
    got = pr.predict_workdir(copy, files, top_k=3)
    raw = load_trained(workdir).model
    x = np.stack([pr.load_image(f, 32) for f in files])
    p = (np.asarray(raw(x), np.float64) + np.asarray(raw(x[:, :, ::-1]), np.float64)) / 2
    expected = calibration.apply_temperature(p, 2.5)
    for row, e in zip(got, expected, strict=True):
        assert row.probabilities == pytest.approx(sorted(e, reverse=True), abs=1e-6)
    result = ev.evaluate_workdir(copy, split="val", out_dir=str(tmp_path / "eval"))
    saved = json.loads((tmp_path / "eval" / ev.METRICS_FILE).read_text())
    assert saved["model"]["inference"] == {"temperature": 2.5, "tta": "flip"}
    assert result.calibration["temperature"] == 2.5


def test_an_old_workdir_without_the_section_answers_exactly_as_before(calibrated, tmp_path):
    from tl_keras.inference import predict as pr
    from tl_keras.inference.trained import load_trained

    workdir, _ = calibrated
    old = str(tmp_path / "old")
    shutil.copytree(workdir, old)
    run = read_json(f"{old}/run.json")
    del run["inference"]
    write_json(f"{old}/run.json", run)
    trained = load_trained(old)
    assert trained.served is trained.model
    files = pr.list_inputs([f"{old}/data/synthetic/square"])[:3]
    got = pr.predict_workdir(old, files, top_k=3)
    x = np.stack([pr.load_image(f, 32) for f in files])
    raw = trained.model.predict_on_batch(x)
    for row, e in zip(got, raw, strict=True):
        assert row.probabilities == sorted(float(v) for v in e)[::-1]  # bitwise


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_exports_bake_in_the_temperature_and_tta_and_match_predict(calibrated, tmp_path, tta):
    """Parity extended: each artifact reproduces the calibrated graph predict runs, which is
    far from the raw model; a later change of temperature makes --verify fail."""
    from tl_keras.inference import export as ex
    from tl_keras.inference.trained import load_trained

    workdir, _ = calibrated
    copy = with_section(workdir, tmp_path, temperature=2.5, tta=tta, phase="ft")
    formats = ["saved_model", "tflite"] + (["onnx"] if HAS_ONNX and tta == "flip" else [])
    manifest = ex.export_workdir(copy, formats=formats, out_dir=str(tmp_path / "export"))
    assert manifest["inference"] == {"temperature": 2.5, "tta": tta}
    trained = load_trained(copy)
    images = ex.parity_images(copy, 8)
    served = np.asarray(trained.served(images, training=False))
    raw = np.asarray(trained.model(images, training=False))
    assert np.abs(served - raw).max() > 0.05
    for name, entry in manifest["artifacts"].items():
        assert entry["parity"]["passed"] and entry["inference"]["temperature"] == 2.5
        artifact = ex.load_artifact(tmp_path / "export" / name)(images)
        np.testing.assert_allclose(artifact, served, atol=5e-4)
    run = read_json(f"{copy}/run.json")
    run["inference"]["temperature"] = 1.0
    write_json(f"{copy}/run.json", run)
    with pytest.raises(ex.ExportParityError, match="artifacts fail"):
        ex.verify_workdir(copy, out_dir=str(tmp_path / "export"))
