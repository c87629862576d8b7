"""tl_keras.inference.evaluate: the figures are right, the report is written, the data's classes are checked.

The metric tests use a stub model with known probabilities, so every figure is checked against
a hand count (and the loss against Keras's own). The workdir tests evaluate a tiny trained run.
"""

from __future__ import annotations

import json
import os
import shutil
import types

import keras
import numpy as np
import pytest
from inprocess import command

from tl_keras.errors import ConfigError, DataError
from tl_keras.inference import evaluate as ev
from tl_keras.inference import evaluation as evaluation_lib
from tl_keras.inference import evaluation_plots

CLASSES = ["cat", "dog", "fox"]
# Ten images: their labels, and the stub model's probabilities for each.
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],  # cat, right
        [0.6, 0.3, 0.1],  # cat, right
        [0.2, 0.7, 0.1],  # cat -> dog (0.7)
        [0.05, 0.1, 0.85],  # cat -> fox (0.85), the second most confident mistake; cat third
        [0.1, 0.8, 0.1],  # dog, right
        [0.3, 0.6, 0.1],  # dog, right
        [0.5, 0.4, 0.1],  # dog -> cat (0.5), true class second
        [0.1, 0.1, 0.8],  # fox, right
        [0.2, 0.2, 0.6],  # fox, right
        [0.05, 0.9, 0.05],  # fox -> dog (0.9), the most confident mistake; fox tied second
    ]
)


class StubModel:
    """Returns PROBS (or `probs`) for images whose pixels all hold the image's index."""

    outputs = [types.SimpleNamespace(shape=(None, len(CLASSES)))]

    def __init__(self, probs=PROBS):
        self.probs = probs

    def __call__(self, images):
        return self.probs[np.asarray(images)[:, 0, 0, 0].astype(int)]


def stub_data(labels=LABELS, num_classes=3):
    images = np.broadcast_to(np.arange(len(labels))[:, None, None, None], (len(labels), 4, 4, 3))
    return images.astype(np.float32), np.eye(num_classes, dtype=np.float32)[labels]


@pytest.fixture(scope="module")
def result():
    return evaluation_lib.evaluate(StubModel(), stub_data(), CLASSES, batch_size=4, top_k=2)


def test_overall_figures_match_a_hand_count(result):
    assert result.num_images == 10 and result.num_errors == 4
    assert result.accuracy == pytest.approx(0.6)
    np.testing.assert_array_equal(result.confusion, [[2, 1, 1], [1, 2, 0], [0, 1, 2]])
    # top-2: the true class is among the two most probable for all but image 3 (cat third);
    # image 9's fox ties for second place, and a tie counts as in.
    assert result.top_k == 2 and result.top_k_accuracy == pytest.approx(0.9)


def test_loss_is_the_keras_categorical_crossentropy(result):
    keras_loss = keras.losses.CategoricalCrossentropy()(np.eye(3)[LABELS], PROBS)
    assert result.loss == pytest.approx(float(keras_loss), rel=1e-6)


def test_per_class_precision_recall_f1_support(result):
    cat = result.per_class["cat"]  # predicted cat: images 0, 1, 6 -> 2 right
    assert cat["precision"] == pytest.approx(2 / 3) and cat["recall"] == pytest.approx(2 / 4)
    assert cat["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert cat["support"] == 4
    dog = result.per_class["dog"]  # predicted dog: images 2, 4, 5, 9 -> 2 right
    assert (dog["precision"], dog["recall"], dog["support"]) == pytest.approx((0.5, 2 / 3, 3))
    recalls = [result.per_class[c]["recall"] for c in CLASSES]
    assert result.macro_avg["recall"] == pytest.approx(np.mean(recalls))
    assert result.weighted_avg["recall"] == pytest.approx(np.average(recalls, weights=[4, 3, 3]))
    # Weighted recall is accuracy, by definition: a cross-check of the bookkeeping.
    assert result.weighted_avg["recall"] == pytest.approx(result.accuracy)


def test_confident_errors_most_confident_first(result):
    errors = result.confident_errors
    assert [(e.index, e.true_class, e.predicted_class) for e in errors] == [
        (9, "fox", "dog"),
        (3, "cat", "fox"),
        (2, "cat", "dog"),
        (6, "dog", "cat"),
    ]
    assert errors[0].confidence == pytest.approx(0.9)
    assert errors[0].true_probability == pytest.approx(0.05)
    assert errors[1].confidence == pytest.approx(0.85)
    assert errors[0].image.dtype == np.uint8 and errors[0].image.shape == (4, 4, 3)


def test_gallery_keeps_only_the_most_confident(result):
    top2 = evaluation_lib.evaluate(StubModel(), stub_data(), CLASSES, num_errors=2, batch_size=3)
    assert [e.index for e in top2.confident_errors] == [9, 3]
    assert top2.accuracy == result.accuracy


def test_top_k_is_clipped_below_the_number_of_classes():
    # top-3 of 3 classes is 1 by definition; the report uses top-2 instead.
    assert evaluation_lib.evaluate(StubModel(), stub_data(), CLASSES, top_k=5).top_k == 2


@pytest.mark.parametrize(
    "classes, k",
    [(2, 1), (3, 1), (5, 1), (7, 1), (8, 2), (11, 2), (12, 3), (19, 3), (20, 5), (1000, 5)],
)
def test_default_top_k_covers_at_most_a_quarter_of_the_classes(classes, k):
    """Never "top-4 of 5": a top-k over many of the classes is near 1 for any model."""
    assert evaluation_lib.default_top_k(classes) == k


def test_few_classes_report_top_1_only_by_default():
    result = evaluation_lib.evaluate(
        StubModel(), stub_data(), CLASSES
    )  # 3 classes, top_k not given
    assert result.top_k == 1 and result.top_k_accuracy == result.accuracy
    assert "top-" not in result.summary().splitlines()[0]
    with pytest.raises(ConfigError, match="top_k=-1 0 \\(the default"):
        ev.evaluate_workdir("unused", split="val", top_k=-1)


def test_a_mistake_is_named_by_its_file_or_its_place_in_the_source_never_null():
    images, labels = stub_data()
    names = [f"x_train[{i}]" for i in range(10)]
    by_name = evaluation_lib.evaluate(
        StubModel(), (images, labels), CLASSES, names=names, num_errors=2
    )
    assert [e.as_dict() for e in by_name.confident_errors][0] == {
        "index": 9, "item": "x_train[9]", "true_class": "fox", "predicted_class": "dog",
        "confidence": 0.9, "true_probability": 0.05,
    }  # fmt: skip
    files = [f"/photos/{CLASSES[y]}/{i}.jpg" for i, y in enumerate(LABELS)]
    by_file = evaluation_lib.evaluate(
        StubModel(), (images, labels), CLASSES, files=files, num_errors=2
    )
    assert [e.as_dict()["file"] for e in by_file.confident_errors] == [files[9], files[3]]
    unknown = evaluation_lib.evaluate(StubModel(), (images, labels), CLASSES, num_errors=2)
    assert [set(e.as_dict()) & {"file", "item"} for e in unknown.confident_errors] == [set(), set()]
    assert "null" not in json.dumps([e.as_dict() for e in unknown.confident_errors])


def test_array_data_names_each_validation_image_by_its_array_index():
    from conftest import tiny_config

    from tl_keras.data.sources import from_arrays

    x = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3)).astype(np.uint8)
    y = np.arange(20) % 2
    data = from_arrays(tiny_config(val_fraction=0.25), x, y)
    names = data.image_names["val"]
    assert len(names) == data.num_val == 4 and not data.image_files  # 2 of each class
    held_out = [int(n.removeprefix("x_train[").removesuffix("]")) for n in names]
    val_x = np.concatenate([b.numpy() for b, _ in data.val])
    assert val_x.shape[0] == 4 and len(set(held_out)) == 4  # distinct training images
    assert [int(y[i]) for i in held_out] == [
        int(v) for v in np.concatenate([b.numpy().argmax(1) for _, b in data.val])
    ]


def test_gallery_captions_never_run_into_the_images_above():
    """Three-line captions under a row of images: each caption's box stays clear of the image
    above it and of its neighbours' captions (tight_layout let them overlap)."""
    long = "a_rather_long_file_name_from_a_camera_roll_0001.jpg"
    errors = [
        evaluation_lib.ConfidentError(i, "sunflower", "dandelion", 0.99, 0.001, file=f"/p/{i}{long}",
                          image=np.zeros((128, 128, 3), np.uint8))
        for i in range(12)
    ]  # fmt: skip
    evaluation = evaluation_lib.evaluate(StubModel(), stub_data(), CLASSES)
    evaluation.confident_errors = errors
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = evaluation_plots.plot_confident_errors(evaluation)
    canvas = FigureCanvasAgg(fig)  # the figure was closed after saving: a fresh canvas draws it
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.images]
    rows: dict[float, list] = {}
    for ax in axes:
        rows.setdefault(round(ax.get_position().y0, 3), []).append(ax)
    ordered = [
        sorted(rows[y], key=lambda a: a.get_position().x0) for y in sorted(rows, reverse=True)
    ]
    assert [len(r) for r in ordered] == [4, 4, 4]
    for above, row in zip(ordered, ordered[1:], strict=False):
        for top, ax in zip(above, row, strict=True):
            image = top.get_window_extent(renderer)
            caption = ax.title.get_window_extent(renderer)
            assert caption.y1 < image.y0, (caption, image)
    for row in ordered:
        boxes = [ax.title.get_window_extent(renderer) for ax in row]
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:], strict=False)), boxes


def test_labels_in_another_class_order_are_remapped(result):
    # The same data, labelled in the order fox, cat, dog.
    order = ["fox", "cat", "dog"]
    relabelled = np.array([order.index(CLASSES[y]) for y in LABELS])
    images, one_hot = stub_data(relabelled)
    again = evaluation_lib.evaluate(
        StubModel(), (images, one_hot), CLASSES, data_class_names=order, top_k=2
    )
    assert again.as_dict() == result.as_dict()


@pytest.mark.parametrize(
    "data_classes, fragments",
    [
        (
            ["cat", "dog", "wolf"],
            ["missing from the data: [fox]", "not known to the model: [wolf]"],
        ),
        (["cat", "dog"], ["missing from the data: [fox]"]),
    ],
)
def test_a_class_mismatch_is_an_error_naming_the_classes(data_classes, fragments):
    images, _ = stub_data()
    labels = np.zeros(len(images), int)
    with pytest.raises(DataError) as caught:
        evaluation_lib.evaluate(
            StubModel(), (images, labels), CLASSES, data_class_names=data_classes
        )
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_bad_data_is_refused():
    with pytest.raises(DataError, match="got 10 images but 3 labels"):
        evaluation_lib.evaluate(StubModel(), (stub_data()[0], LABELS[:3]), CLASSES)
    with pytest.raises(DataError, match="empty"):
        evaluation_lib.evaluate(StubModel(), (np.zeros((0, 4, 4, 3)), np.zeros(0)), CLASSES)
    with pytest.raises(DataError, match="2 class names"):
        evaluation_lib.evaluate(StubModel(), stub_data(), CLASSES[:2])


def test_report_files(tmp_path, result):
    paths = ev.write_report(result, str(tmp_path / "out"), extra={"model": {"phase": "ft"}})
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        [ev.METRICS_FILE, ev.CONFUSION_FILE, ev.ERRORS_FILE, ev.RELIABILITY_FILE]
    )
    saved = json.loads((tmp_path / "out" / ev.METRICS_FILE).read_text())
    assert saved["model"] == {"phase": "ft"}
    assert saved["accuracy"] == 0.6 and saved["per_class"]["fox"]["support"] == 3
    assert saved["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert [e["index"] for e in saved["confident_errors"]] == [9, 3, 2, 6]
    assert all(os.path.getsize(paths[k]) > 5_000 for k in ("confusion_matrix", "confident_errors"))


def test_balanced_accuracy_macro_f1_and_their_intervals(result, tmp_path):
    recalls = [2 / 4, 2 / 3, 2 / 3]
    assert result.balanced_accuracy == pytest.approx(np.mean(recalls))
    f1 = [result.per_class[c]["f1"] for c in CLASSES]
    assert result.macro_f1 == pytest.approx(np.mean(f1)) == pytest.approx(result.macro_avg["f1"])
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        low, high = result.intervals[name]
        assert 0 <= low <= getattr(result, name) <= high <= 1
    first = result.summary().splitlines()[0]
    assert (
        first.startswith("10 images: accuracy 0.6000 [") and "balanced accuracy 0.6111 [" in first
    )
    ev.write_report(result, str(tmp_path))
    saved = json.loads((tmp_path / ev.METRICS_FILE).read_text())
    assert saved["balanced_accuracy"] == pytest.approx(0.611111, abs=1e-6)
    assert saved["intervals"]["accuracy"] == [
        pytest.approx(v) for v in result.intervals["accuracy"]
    ]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_macro_averages_follow_scikit_learn_when_a_model_class_is_absent():
    """One definition with tl_keras.metrics: a class the data lacks and the model never
    predicts does not drag the macro averages down (it did before: F1 0 averaged in)."""
    sk = pytest.importorskip("sklearn.metrics")
    labels = np.array([0, 0, 1, 1, 1, 0])  # no fox
    probs = PROBS[:6].copy()
    probs[3] = [0.1, 0.85, 0.05]  # nothing predicted fox
    model = StubModel(probs)
    result = evaluation_lib.evaluate(model, stub_data(labels), CLASSES)
    predicted = probs.argmax(1)
    assert result.macro_avg["f1"] == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
    assert result.macro_avg["precision"] == pytest.approx(
        sk.precision_score(labels, predicted, average="macro", zero_division=0)
    )
    assert result.balanced_accuracy == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
    assert result.per_class["fox"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_temperature_applies_to_every_figure_and_calibration_compares_both(result):
    from tl_keras import calibration

    scaled = evaluation_lib.evaluate(StubModel(), stub_data(), CLASSES, temperature=2.0, top_k=2)
    expected = calibration.apply_temperature(PROBS, 2.0)
    keras_loss = keras.losses.CategoricalCrossentropy()(np.eye(3)[LABELS], expected)
    assert scaled.loss == pytest.approx(float(keras_loss), rel=1e-6)
    assert scaled.accuracy == result.accuracy  # a temperature changes no prediction
    assert scaled.confident_errors[0].confidence == pytest.approx(expected[9].max())
    c = scaled.calibration
    assert c["temperature"] == 2.0
    assert c["ece_before"] == pytest.approx(calibration.expected_calibration_error(PROBS, LABELS))
    assert c["ece_after"] == pytest.approx(calibration.expected_calibration_error(expected, LABELS))
    assert result.calibration["ece_before"] == result.calibration["ece_after"]  # T = 1


def test_confusion_figure_shows_counts_and_recall(result):
    fig = evaluation_plots.plot_confusion_matrix(result)
    counts, normalised = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert counts.get_title() == "counts" and "row = recall" in normalised.get_title()
    assert [t.get_text() for t in counts.get_xticklabels()] == CLASSES
    np.testing.assert_allclose(normalised.images[0].get_array(), result.normalized_confusion())
    cells = {t.get_text() for t in normalised.texts}
    assert {"0.50", "0.67"} <= cells  # cat's and dog's recall on the diagonal


def test_gallery_without_errors_says_so():
    perfect = evaluation_lib.evaluate(StubModel(), stub_data(PROBS.argmax(1)), CLASSES)
    assert perfect.accuracy == 1.0 and perfect.confident_errors == []
    fig = evaluation_plots.plot_confident_errors(perfect)
    assert "no misclassified images among 10" in fig.axes[0].texts[0].get_text()


# --- a trained workdir ----------------------------------------------------------------------------
def test_workdir_validation_figures_equal_keras_evaluate(trained_workdir, tmp_path):
    from tl_keras.inference.trained import load_run_data, load_trained

    result = ev.evaluate_workdir(trained_workdir, split="val", out_dir=str(tmp_path))
    trained = load_trained(trained_workdir)
    assert trained.phase == "ft"  # the final model, not fe's
    model = trained.model
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    loss, accuracy = model.evaluate(load_run_data(trained_workdir).val, verbose=0)
    assert result.accuracy == pytest.approx(accuracy, abs=1e-6)
    assert result.loss == pytest.approx(loss, rel=1e-4)
    saved = json.loads((tmp_path / ev.METRICS_FILE).read_text())
    assert saved["model"]["phase"] == "ft" and saved["data"]["split"] == "val"
    assert saved["accuracy"] == pytest.approx(result.accuracy, abs=5e-7)  # stored with 6 decimals
    # Every mistake names its file (never "file": null): a validation image of its true class.
    errors = saved["confident_errors"]
    assert errors and None not in [e.get("file") for e in errors]
    for e in errors:
        assert (
            os.path.isfile(e["file"])
            and os.path.basename(os.path.dirname(e["file"])) == (e["true_class"])
        )
    val_files = load_run_data(trained_workdir).image_files["val"]
    assert [e["file"] for e in errors] == [val_files[e["index"]] for e in errors]


def test_workdir_phase_selects_that_phase_model(trained_workdir, tmp_path):
    fe = ev.evaluate_workdir(trained_workdir, split="val", phase="fe", out_dir=str(tmp_path))
    assert json.loads((tmp_path / ev.METRICS_FILE).read_text())["model"]["phase"] == "fe"
    assert fe.num_images > 0


def test_workdir_without_a_test_split_says_what_to_do(trained_workdir, tmp_path):
    with pytest.raises(DataError, match=r"has no test split.*--data_dir=.*--split=val"):
        ev.evaluate_workdir(trained_workdir, out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="give one"):
        ev.evaluate_workdir(trained_workdir, data_dir="x", split="val")


def test_workdir_test_split_is_used_when_the_data_has_one(trained_workdir, tmp_path, monkeypatch):
    # The data sources gain a `test` split (TFDS test split, a separate test folder): evaluate
    # takes it from the bundle whenever it is there. Here the validation batches stand in for it.
    from tl_keras.inference import trained as trained_lib

    real = trained_lib.load_run_data(trained_workdir)
    with_test = types.SimpleNamespace(
        val=None,
        test=real.val,
        class_names=real.class_names,
        source="with a test split",
        image_files={"test": real.image_files["val"]},
        image_names={},
    )
    monkeypatch.setattr(trained_lib, "load_run_data", lambda workdir, **kw: with_test)
    result = ev.evaluate_workdir(trained_workdir, out_dir=str(tmp_path))  # --split=test default
    assert result.num_images == real.num_val
    saved = json.loads((tmp_path / ev.METRICS_FILE).read_text())
    assert saved["data"] == {"source": "with a test split", "split": "test"}


def test_workdir_refuses_a_folder_of_other_classes(trained_workdir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(os.path.join(trained_workdir, "data", "synthetic"), other)
    os.rename(other / "square", other / "hexagon")
    with pytest.raises(DataError, match=r"missing from the data: \[square\].*\[hexagon\]"):
        ev.evaluate_workdir(trained_workdir, data_dir=str(other), out_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()  # nothing written


# --- the command line -----------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_evaluates_a_folder_whole(trained_workdir, tmp_path):
    """The command in this process (tests/inprocess.py); the real process and console script:
    tests/test_console_scripts.py."""
    folder = os.path.join(trained_workdir, "data", "synthetic")
    proc = command(
        f"--workdir={trained_workdir}", f"--data_dir={folder}", f"--out_dir={tmp_path}",
        "--top_k=2", "--num_errors=4", module="tl_keras.evaluate",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / ev.METRICS_FILE).read_text())
    assert saved["num_images"] == 30 and saved["top_k"] == 2  # the whole folder, 3 x 10
    assert saved["data"]["source"] == os.path.abspath(folder)
    assert len(saved["confident_errors"]) == min(4, 30 - round(30 * saved["accuracy"]))
    assert all(e["file"].startswith(folder) for e in saved["confident_errors"])
    assert f"accuracy {saved['accuracy']:.4f}" in proc.stdout
    assert "macro avg" in proc.stdout and str(tmp_path / ev.CONFUSION_FILE) in proc.stdout


def test_workdir_folder_skips_an_unreadable_image_as_training_does(trained_workdir, tmp_path):
    folder = tmp_path / "held_out"
    shutil.copytree(os.path.join(trained_workdir, "data", "synthetic"), folder)
    (folder / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = ev.evaluate_workdir(
        trained_workdir, data_dir=str(folder), out_dir=str(tmp_path / "out")
    )
    assert result.num_images == 30  # the 30 good images; the broken one is skipped, not fatal
    saved = json.loads((tmp_path / "out" / ev.METRICS_FILE).read_text())
    assert not any("broken.png" in e["file"] for e in saved["confident_errors"])


@pytest.mark.slow
def test_cli_class_mismatch_is_one_line_and_exit_2(trained_workdir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(os.path.join(trained_workdir, "data", "synthetic", "circle"), other / "cat")
    shutil.copytree(os.path.join(trained_workdir, "data", "synthetic", "square"), other / "dog")
    proc = command(
        f"--workdir={trained_workdir}", f"--data_dir={other}", f"--out_dir={tmp_path / 'out'}",
        module="tl_keras.evaluate",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "missing from the data: [circle, square, triangle]" in errors[0]
    assert "not known to the model: [cat, dog]" in errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_validation_split_goes_to_the_workdir(trained_workdir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)  # it writes there: the session's stays as it was
    proc = command(f"--workdir={workdir}", "--split=val", module="tl_keras.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = os.path.join(workdir, "evaluation", "val")
    with open(os.path.join(folder, ev.METRICS_FILE)) as f:
        saved = json.load(f)
    assert saved["data"]["split"] == "val" and saved["model"]["phase"] == "ft"
    assert sorted(os.listdir(folder)) == sorted(
        [ev.METRICS_FILE, ev.CONFUSION_FILE, ev.ERRORS_FILE, ev.RELIABILITY_FILE]
    )
