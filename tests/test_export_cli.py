"""Exporting a trained workdir, and `python -m tl_keras.export` as users run it.

The export of an unaltered model must pass its parity check; an artifact that was altered after
the export (or a converter that produced a different model) must make the command fail with
one error line and exit status 1, and leave nothing in place of the artifact.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import REPO, run_module
from inprocess import benchmark, command

from tl_keras.cli import common as cli
from tl_keras.errors import DataError, TLKerasError
from tl_keras.inference import export as ex

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime"))


def nudged(model: keras.Model, amount: float = 0.05) -> keras.Model:
    """A copy of the model with the first class's output bias moved: a 'deliberately altered'
    model whose probabilities differ by about 1e-2."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    bias = clone.get_layer("predictions").bias
    bias.assign(bias.numpy() + amount * np.eye(bias.shape[0], dtype="float32")[0])
    return clone


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def float16_export(trained_workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    first = ex.export_workdir(trained_workdir, formats=["saved_model", "tflite"], out_dir=str(out))
    second = ex.export_workdir(
        trained_workdir, formats=["tflite"], quantization="float16", out_dir=str(out)
    )
    return out, first, second


def test_workdir_export_checks_each_artifact_and_writes_a_manifest(trained_workdir, float16_export):
    from tl_keras.inference.trained import load_run_data, read_run

    out, first, _ = float16_export
    run = read_run(trained_workdir)
    assert sorted(first["artifacts"]) == ["model.tflite", "saved_model"]
    assert (out / ex.LABELS_FILE).read_text().splitlines() == run["class_names"]
    num_val = load_run_data(trained_workdir).num_val
    model_file = REPO / trained_workdir / "ft" / "model.keras"  # trained_workdir is absolute
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    for name, entry in first["artifacts"].items():
        assert entry["parity"]["passed"] and entry["parity"]["num_images"] == min(32, num_val)
        assert entry["parity"]["path"] == str(out / name)
        assert entry["phase"] == "ft" and entry["model_sha256"] == digest
        assert entry["bytes"] > 10_000
    assert first["input"]["shape"] == [None, run["image_size"], run["image_size"], 3]


def test_quantised_export_measures_accuracy_on_the_validation_split(
    trained_workdir, float16_export
):
    from tl_keras.inference.trained import load_run_data

    out, _, second = float16_export
    # Exports into one folder accumulate in its manifest.
    assert sorted(second["artifacts"]) == ["model.tflite", "model_float16.tflite", "saved_model"]
    entry = second["artifacts"]["model_float16.tflite"]
    assert entry["quantization"] == "float16" and entry["parity"]["quantization"] == "float16"
    accuracy = entry["accuracy"]
    assert accuracy["num_examples"] == load_run_data(trained_workdir).num_val
    assert accuracy["accuracy_drop"] == pytest.approx(
        accuracy["keras_accuracy"] - accuracy["tflite_accuracy"]
    )
    assert entry["bytes"] < 0.6 * second["artifacts"]["model.tflite"]["bytes"]
    assert json.loads((out / ex.MANIFEST_FILE).read_text()) == json.loads(json.dumps(second))


def test_the_model_card_describes_data_recipe_metrics_calibration_and_exports(
    trained_workdir, float16_export
):
    from tl_keras.inference.trained import load_trained

    out, _, second = float16_export
    card = json.loads((out / ex.CARD_JSON).read_text())
    trained = load_trained(trained_workdir)
    assert card["model"]["model_sha256"] == trained.fingerprint()
    assert card["model"]["inference"] == {"temperature": 1.0, "tta": "none"}
    run = json.loads((Path(trained_workdir) / "run.json").read_text())
    data = card["data"]
    assert data["manifest_sha256"]["at_training"] == run["doctor"]["manifest_sha256"]
    assert data["manifest_sha256"]["changed_since_training"] is False
    assert data["doctor"]["summary"] == run["doctor"]["summary"]
    assert data["doctor"]["deferred"] == run["doctor"]["deferred"]  # what still waits, if any
    assert data["images"] == {"train": 24, "val": 6}
    assert card["recipe"]["source"] == "recipe.json" and card["recipe"]["values"]["seed"] == 0
    assert {d["field"] for d in card["recipe"]["card"]["decisions"]} >= {"epochs_ft", "unfreeze"}
    assert [p["name"] for p in card["recipe"]["schedule"]] == ["fe", "ft"]
    metrics = card["metrics"]
    assert metrics["split"] == "val" and metrics["num_images"] == 6
    low, high = metrics["intervals"]["accuracy"]
    assert low <= metrics["accuracy"] <= high
    assert set(metrics["per_class"]) == set(run["class_names"])
    assert card["calibration"]["fitted"].startswith("no: 6 validation images")
    assert set(card["exports"]) == set(second["artifacts"])
    assert card["exports"]["model_float16.tflite"]["accuracy"]["num_examples"] == 6
    text = (out / ex.CARD_MARKDOWN).read_text()
    for heading in (
        "## Model",
        "## Data",
        "## Recipe",
        "## Metrics",
        "## Calibration",
        "## Exports",
    ):
        assert heading in text
    assert "| `model_float16.tflite` |" in text and "optimistic" in text
    # Its metrics: an evaluation of this very model already in the workdir (another test may
    # have made one), else a fresh one written beside the export, never into the workdir.
    reused = (Path(trained_workdir) / "evaluation" / "val" / "metrics.json").is_file()
    assert reused or (out / "evaluation" / "val" / "metrics.json").is_file()


def test_the_card_says_when_the_data_changed_and_reads_recipe_json(trained_workdir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_workdir, copy)
    image = sorted((copy / "data" / "synthetic" / "circle").glob("*.png"))[0]
    image.write_bytes(
        sorted((copy / "data" / "synthetic" / "square").glob("*.png"))[0].read_bytes()
    )
    (copy / "recipe.json").write_text(json.dumps({"decided": "by the recipe", "seed": 7}))
    ex.export_workdir(str(copy), formats=["tflite"], out_dir=str(tmp_path / "export"))
    card = json.loads((tmp_path / "export" / ex.CARD_JSON).read_text())
    assert card["data"]["manifest_sha256"]["changed_since_training"] is True
    assert card["recipe"] == {**card["recipe"], "source": "recipe.json"}
    assert card["recipe"]["card"] == {"decided": "by the recipe", "seed": 7}
    assert "CHANGED since training" in (tmp_path / "export" / ex.CARD_MARKDOWN).read_text()


def test_verify_passes_then_catches_an_altered_artifact(trained_workdir, float16_export):
    from tl_keras.inference.trained import load_trained

    out, _, _ = float16_export
    reports = ex.verify_workdir(trained_workdir, out_dir=str(out))
    assert len(reports) == 3 and all(r.passed for r in reports)
    model = load_trained(trained_workdir).model
    altered = out.parent / "altered"
    altered.mkdir()
    for name in ("export.json", "labels.txt", "model.tflite"):
        (altered / name).write_bytes((out / name).read_bytes())
    manifest = json.loads((altered / "export.json").read_text())
    manifest["artifacts"] = {"model.tflite": manifest["artifacts"]["model.tflite"]}
    (altered / "export.json").write_text(json.dumps(manifest))
    ex.export_tflite(nudged(model), altered / "model.tflite")
    with pytest.raises(ex.ExportParityError, match=r"1 of 1 artifacts fail \(model.tflite\)"):
        ex.verify_workdir(trained_workdir, out_dir=str(altered))


def test_load_artifact_tells_the_format_from_the_path(trained_workdir, float16_export):
    from tl_keras.inference.trained import load_trained

    out, _, _ = float16_export
    model = load_trained(trained_workdir).model
    images = ex.parity_images(trained_workdir, 4)
    for name in ("saved_model", "model.tflite"):
        np.testing.assert_allclose(ex.load_artifact(out / name)(images), model(images), atol=5e-4)
    with pytest.raises(ex.ExportError, match="cannot tell the format"):
        ex.load_artifact(out / ex.LABELS_FILE)


def test_workdir_export_without_its_data_says_how_to_point_at_it(trained_workdir, tmp_path):
    with pytest.raises(DataError, match="pass --data_dir=FOLDER if it moved"):
        ex.export_workdir(trained_workdir, data_dir=str(tmp_path / "gone"), out_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_package_exports_the_after_training_calls():
    import tl_keras
    from tl_keras.inference import evaluate, predict, trained

    assert tl_keras.export_workdir is ex.export_workdir
    assert tl_keras.evaluate_workdir is evaluate.evaluate_workdir
    assert tl_keras.predict_workdir is predict.predict_workdir
    assert tl_keras.load_trained is trained.load_trained


def test_cli_error_lines_and_exit_codes(capsys):
    def raises(error):
        def body():
            raise error

        return body

    report = ex.ParityReport("tflite", None, "m.tflite", 4, 0.1, 0.01, 0.5, 5e-4, 0.0, 2e-5, False)
    assert cli.report_errors(raises(ex.ExportParityError(report))) == cli.EXIT_CHECK_FAILED == 1
    assert "error: tflite export at 'm.tflite' does not match" in capsys.readouterr().err
    assert cli.report_errors(raises(ex.ExportError("bad\nformat"))) == cli.EXIT_BAD_INPUT == 2
    assert capsys.readouterr().err == "error: bad format\n"  # always one line
    missing = ex.MissingDependencyError("pip install onnx")
    assert isinstance(missing, ImportError) and isinstance(missing, TLKerasError)
    assert cli.report_errors(raises(missing)) == 2
    with pytest.raises(ex.ExportError):
        cli.report_errors(raises(ex.ExportError("x")), verbose=True)


# --- the command line -----------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_exports_then_verify_catches_an_altered_export(trained_workdir, tmp_path):
    from tl_keras.inference.trained import load_trained

    formats = "saved_model,tflite,onnx" if HAS_ONNX else "saved_model,tflite"
    out = tmp_path / "export"
    proc = run_module(
        "tl_keras.export", f"--workdir={trained_workdir}", f"--formats={formats}",
        f"--out_dir={out}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = (
        ["model.onnx", "model.tflite", "saved_model"]
        if HAS_ONNX
        else ["model.tflite", "saved_model"]
    )
    assert sorted(json.loads((out / "export.json").read_text())["artifacts"]) == names
    assert proc.stdout.count("parity ok:") == len(names)
    assert f"{out / 'model.tflite'}  (" in proc.stdout

    # The same command again, and its --verify, in this process (tests/inprocess.py).
    proc = command(
        f"--workdir={trained_workdir}", "--formats=tflite", "--quantization=float16",
        f"--out_dir={out}", module="tl_keras.export",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity ok: model_float16.tflite" in proc.stdout
    assert "accuracy on 6 validation images: keras" in proc.stdout
    names = sorted([*names, "model_float16.tflite"])
    assert sorted(json.loads((out / "export.json").read_text())["artifacts"]) == names

    # Deliberately alter the exported TFLite file: replace it with a nudged model's export.
    ex.export_tflite(nudged(load_trained(trained_workdir).model), out / "model.tflite")
    proc = command(
        f"--workdir={trained_workdir}", f"--out_dir={out}", "--verify", module="tl_keras.export"
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    (line,) = error_lines(proc)
    assert "Traceback" not in proc.stderr
    assert f"tflite export at '{out / 'model.tflite'}' does not match the Keras model" in line
    assert f"1 of {len(names)} artifacts fail (model.tflite)" in line


@pytest.mark.slow
def test_cli_fails_when_the_export_does_not_reproduce_the_model(
    trained_workdir, tmp_path, monkeypatch
):
    from tl_keras.inference.export import formats

    real_writer = formats._WRITERS["tflite"]

    def altered_writer(model, tmp, **options):
        # Exports a nudged copy: what a converter that changes the model would produce.
        real_writer(nudged(model), tmp, quantization=options.get("quantization"))

    monkeypatch.setitem(formats._WRITERS, "tflite", altered_writer)
    out = tmp_path / "export"
    proc = command(
        f"--workdir={trained_workdir}", "--formats=saved_model,tflite", f"--out_dir={out}",
        module="tl_keras.export",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    (line,) = error_lines(proc)
    assert f"tflite export at '{out / 'model.tflite'}' does not match the Keras model" in line
    assert "Nothing was written there" in line
    # The SavedModel (checked first, unaltered) stays; no TFLite file, not even a temporary one.
    assert sorted(os.listdir(out)) == ["saved_model"]


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_2(trained_workdir, tmp_path):
    proc = command(
        f"--workdir={trained_workdir}", "--formats=tf_lite", f"--out_dir={tmp_path / 'out'}",
        module="tl_keras.export",
    )  # fmt: skip
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "'tf_lite'" in line and "saved_model" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_benchmark_smoke_run(tmp_path):
    """The benchmark behind docs/benchmarks.md's export figures runs (tiny: shapes, 32 px, one epoch each)."""
    out = tmp_path / "export_smoke.json"
    proc = benchmark(
        "bench_export.py", tmp_path, "--smoke", f"--workdir={tmp_path / 'w'}", f"--out={out}"
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = results["artifacts"]
    assert {"saved_model", "model.tflite", "model_float16.tflite"} <= set(rows)
    for row in rows.values():
        whole = row["whole_validation_split"]
        assert whole["num_images"] == 6 and row["export_parity_check"]["passed"]
        assert whole["max_abs_diff"] <= 1.0 and 0.0 <= whole["top1_agreement"] <= 1.0
    assert rows["saved_model"]["whole_validation_split"]["max_abs_diff"] < 5e-4
    assert "| `model.tflite` |" in proc.stdout and results["machine"]["cpus"] >= 1
    assert results["calibration"]["fitted"].startswith("no: 6 validation images")
    parity = results["predict_vs_artifacts"]
    assert (
        parity["num_images"] == 6 and parity["saved_model"] < 5e-4 and parity["model.tflite"] < 5e-4
    )
    assert "predict vs artifact" in proc.stdout
