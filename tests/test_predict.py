"""tl_keras.inference.predict: top-k per file, pixels as in training, unreadable files reported not fatal."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
from conftest import run_module
from inprocess import command

from tl_keras.errors import ConfigError, DataError
from tl_keras.inference import predict as pr


@pytest.fixture(scope="module")
def trained(trained_workdir):
    from tl_keras.inference.trained import load_trained

    return load_trained(trained_workdir)


@pytest.fixture(scope="module")
def images_dir(trained_workdir, tmp_path_factory) -> str:
    """Two images in a nested folder, plus files a user's folder also holds."""
    root = tmp_path_factory.mktemp("photos")
    source = os.path.join(trained_workdir, "data", "synthetic")
    os.makedirs(root / "a" / "b")
    shutil.copy(os.path.join(source, "circle", "circle_0000.png"), root / "a" / "one.png")
    shutil.copy(os.path.join(source, "square", "square_0001.png"), root / "a" / "b" / "two.PNG")
    (root / "a" / "readme.txt").write_text("not an image, and not an image name: skipped")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return str(root)


def test_list_inputs_expands_folders_recursively(images_dir, tmp_path):
    given = [images_dir, str(tmp_path / "missing.png"), os.path.join(images_dir, "a", "readme.txt")]
    listed = pr.list_inputs(given)
    assert [os.path.relpath(p, images_dir) for p in listed[:3]] == [
        os.path.join("a", "b", "two.PNG"),
        os.path.join("a", "broken.jpg"),
        os.path.join("a", "one.png"),
    ]
    assert listed[3:] == given[1:]  # files named explicitly are kept, missing or not


@pytest.mark.parametrize("resize_mode", ["stretch", "crop", "pad"])
def test_load_image_gives_the_pixels_training_sees(images_dir, resize_mode):
    """The evaluation pipeline over a folder and predict's loader give the same pixels."""
    from tl_keras.data.images import Images
    from tl_keras.data.pipeline import Pipeline, eval_dataset

    path = os.path.join(images_dir, "a", "one.png")
    p = Pipeline(image_size=40, batch_size=1, resize_mode=resize_mode)
    ((batch, _),) = eval_dataset(Images("files", [path], np.array([0], np.int32), ["one"]), 2, p)
    np.testing.assert_array_equal(
        pr.load_image(path, 40, resize_mode=resize_mode), batch.numpy()[0]
    )


def test_non_images_are_reported_and_the_rest_classified(trained, images_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    paths = [
        str(notes),
        *pr.list_inputs([images_dir]),
        str(tmp_path / "gone.jpg"),
        str(tmp_path),  # a folder named as a file
    ]
    results = pr.predict(trained.model, paths, trained.class_names, top_k=2, batch_size=2)
    assert [r.file for r in results] == paths
    by_name = {os.path.basename(r.file): r for r in results}
    assert "not a readable image" in by_name["notes.txt"].error
    assert "not a readable image" in by_name["broken.jpg"].error
    assert by_name["gone.jpg"].error == "no such file"
    assert results[-1].error == "not a file"
    good = [r for r in results if r.ok]
    assert [os.path.basename(r.file) for r in good] == ["two.PNG", "one.png"]
    for r in good:
        probs = np.asarray(trained.model(pr.load_image(r.file, trained.image_size)[None]))[0]
        best = np.argsort(-probs)[:2]
        assert r.labels == [trained.class_names[i] for i in best]
        np.testing.assert_allclose(r.probabilities, probs[best], rtol=1e-5)
        assert r.probabilities[0] >= r.probabilities[1]
        assert r.labels[0] != r.labels[1]


def test_top_k_is_at_most_the_number_of_classes(trained, images_dir):
    (result,) = pr.predict(
        trained.model, [os.path.join(images_dir, "a", "one.png")], trained.class_names, top_k=9
    )
    assert sorted(result.labels) == sorted(trained.class_names)
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)


def test_csv_and_json_rows():
    predictions = [
        pr.Prediction("a.png", ["cat", "dog"], [0.75, 0.25]),
        pr.Prediction("b.txt", error="not a readable image (x)"),
    ]
    rows = list(csv.DictReader(io.StringIO(pr.to_csv(predictions))))
    assert rows[0] == {
        "file": "a.png",
        "label_1": "cat",
        "probability_1": "0.750000",
        "label_2": "dog",
        "probability_2": "0.250000",
        "error": "",
    }
    assert rows[1]["label_1"] == "" and rows[1]["error"] == "not a readable image (x)"
    parsed = json.loads(pr.to_json(predictions))
    assert parsed[0]["predictions"] == [
        {"label": "cat", "probability": 0.75},
        {"label": "dog", "probability": 0.25},
    ]
    assert parsed[1] == {"file": "b.txt", "predictions": [], "error": "not a readable image (x)"}
    text = pr.to_text(predictions)
    assert "cat 0.750  dog 0.250" in text and "ERROR not a readable image" in text


def test_output_suffix_picks_the_format(tmp_path):
    with pytest.raises(ConfigError, match=r"must end in \.csv or \.json"):
        pr.write_predictions([], str(tmp_path / "out.txt"))


def test_workdir_prediction_refuses_nothing_to_do(trained_workdir, tmp_path):
    with pytest.raises(ConfigError, match="no images given"):
        pr.predict_workdir(trained_workdir, [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files in"):
        pr.predict_workdir(trained_workdir, [str(tmp_path / "empty")])


# --- the command line -----------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_prints_a_table_and_reports_the_non_image(trained_workdir, images_dir, tmp_path):
    """`python -m tl_keras.predict` in a process of its own: stdout holds the table alone."""
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    proc = run_module(
        "tl_keras.predict", f"--workdir={trained_workdir}", "--top_k=2", images_dir, str(notes)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 4  # stdout is the table only: two.PNG, broken.jpg, one.png, notes.txt
    assert lines[0].startswith(os.path.join(images_dir, "a", "b", "two.PNG"))
    assert "ERROR not a readable image" in lines[1] and "ERROR not a readable image" in lines[3]
    assert len(lines[2].split()) == 1 + 2 * 2  # file, then two label/probability pairs
    assert f"skipped {notes}: not a readable image" in proc.stderr


@pytest.mark.slow
def test_cli_writes_csv_and_json(trained_workdir, images_dir, tmp_path):
    for suffix in ("csv", "json"):
        out = tmp_path / f"predictions.{suffix}"
        proc = command(
            f"--workdir={trained_workdir}", f"--output={out}", images_dir, module="tl_keras.predict"
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout == ""
        assert "2 of 3 files classified" in proc.stderr
        if suffix == "csv":
            rows = list(csv.DictReader(out.open()))
            assert [os.path.basename(r["file"]) for r in rows] == [
                "two.PNG",
                "broken.jpg",
                "one.png",
            ]
            assert rows[0]["label_3"] and rows[1]["error"].startswith("not a readable image")
        else:
            parsed = json.loads(out.read_text())
            assert [len(p["predictions"]) for p in parsed] == [3, 0, 3]


@pytest.mark.slow
def test_cli_fails_only_when_nothing_is_an_image(trained_workdir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    proc = command(f"--workdir={trained_workdir}", str(notes), module="tl_keras.predict")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: none of the 1 files could be read as an image"]
    bad = command(
        f"--workdir={trained_workdir}", "--output=x.txt", "a.png", module="tl_keras.predict"
    )
    assert bad.returncode == 2 and "must end in .csv or .json" in bad.stderr
