"""The three sources (image folders, TFDS, arrays) and the tf.data pipeline behind them."""

import json
import os
import pathlib

import numpy as np
import pytest
from data_fixtures import (
    batches,
    class_colour,
    encode,
    label_of_pixels,
    make_folder,
    solid,
    tiny_data_config,
)

from tl_keras.data import bundle as data_lib
from tl_keras.data.sources import from_arrays, load_data


def all_of(ds):
    out = batches(ds)
    return np.concatenate([x for x, _ in out]), np.concatenate([y for _, y in out])


# --- image folders ---------------------------------------------------------------------------------
def test_folder_source_labels_follow_images_and_split_is_stratified(tmp_path):
    make_folder(tmp_path, {"ant": 6, "bee": 9, "cat": 3})
    data = load_data(tiny_data_config(tmp_path))
    assert data.class_names == ["ant", "bee", "cat"]
    assert (data.num_train, data.num_val, data.num_test) == (12, 6, 0)
    assert data.report.per_class == {"train": [4, 6, 2], "val": [2, 3, 1]}
    x, y = all_of(data.train)
    assert x.dtype == np.float32 and x.shape == (12, 32, 32, 3)
    assert y.dtype == np.float32 and set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_array_equal(label_of_pixels(x), y.argmax(1))
    xv, yv = all_of(data.val)
    np.testing.assert_array_equal(label_of_pixels(xv), yv.argmax(1))
    assert xv[0, 0, 0].tolist() == list(map(float, class_colour(int(yv[0].argmax()))))


def test_split_depends_on_the_seed_only(tmp_path):
    make_folder(tmp_path, {"ant": 10, "bee": 10})
    a = load_data(tiny_data_config(tmp_path, seed=1))
    b = load_data(tiny_data_config(tmp_path, seed=1))
    c = load_data(tiny_data_config(tmp_path, seed=2))
    order = lambda d: [x.tobytes() for x, _ in batches(d.train)]  # noqa: E731
    assert order(a) == order(b)
    train_a, _ = data_lib.stratified_split([0] * 10 + [1] * 10, 0.34, 1)
    train_c, _ = data_lib.stratified_split([0] * 10 + [1] * 10, 0.34, 2)
    assert not np.array_equal(train_a, train_c)
    assert c.num_train == a.num_train


def test_every_epoch_is_a_new_permutation_of_the_same_images(tmp_path):
    make_folder(tmp_path, {"ant": 8, "bee": 8})
    data = load_data(tiny_data_config(tmp_path, val_fraction=0.0))
    epochs = [
        np.concatenate([y.argmax(1) for _, y in batches(data.train_epochs(e, 1))]) for e in (0, 1)
    ]
    assert sorted(epochs[0]) == sorted(epochs[1]) and not np.array_equal(*epochs)
    assert data.val is None and data.steps_per_epoch == 4


def test_split_layout_train_val_test_folders_are_used(tmp_path):
    make_folder(tmp_path / "train", {"ant": 4, "bee": 4})
    make_folder(tmp_path / "val", {"ant": 2, "bee": 2})
    make_folder(tmp_path / "test", {"ant": 1, "bee": 3})
    data = load_data(tiny_data_config(tmp_path))
    assert data.class_names == ["ant", "bee"]
    assert (data.num_train, data.num_val, data.num_test) == (8, 4, 4)
    _, yt = all_of(data.test)
    assert yt.argmax(1).tolist() == [0, 1, 1, 1]


def test_explicit_val_dir_and_test_dir(tmp_path):
    make_folder(tmp_path / "a", {"ant": 4, "bee": 4})
    make_folder(tmp_path / "b", {"ant": 2, "bee": 1})
    make_folder(tmp_path / "c", {"ant": 1, "bee": 1})
    cfg = tiny_data_config(
        tmp_path / "a", val_dir=str(tmp_path / "b"), test_dir=str(tmp_path / "c")
    )
    data = load_data(cfg)
    assert (data.num_train, data.num_val, data.num_test) == (8, 3, 2)
    xv, yv = all_of(data.val)
    np.testing.assert_array_equal(label_of_pixels(xv), yv.argmax(1))


def test_hidden_and_non_image_files_are_ignored_and_reported(tmp_path, caplog):
    make_folder(tmp_path, {"ant": 3, "bee": 3})
    (tmp_path / "ant" / "notes.txt").write_text("not data")
    (tmp_path / "ant" / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "bee" / "._bee_00.png").write_bytes(b"AppleDouble")  # macOS resource fork
    (tmp_path / "README.md").write_text("about")
    with caplog.at_level("INFO", logger="tl_keras"):
        data = load_data(tiny_data_config(tmp_path, val_fraction=0.0))
    assert data.num_train == 6 and data.report.num_skipped == 0
    assert sorted(data.report.ignored_files) == ["README.md", os.path.join("ant", "notes.txt")]
    assert "ignored 2 file(s)" in caplog.text


# --- resizing --------------------------------------------------------------------------------------
@pytest.fixture
def wide_image(tmp_path):
    """One 16 x 32 image per class: left half white, right half the class colour."""
    for k, name in enumerate(["ant", "bee"]):
        image = np.full((16, 32, 3), 255, np.uint8)
        image[:, 16:] = class_colour(k)
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(encode(image))
    return tmp_path


def first_image(folder, **overrides):
    data = load_data(tiny_data_config(folder, val_fraction=0.0, **overrides))
    x, y = all_of(data.train)
    return x[y.argmax(1) == 0][0]


def test_resize_modes(wide_image):
    ant = np.asarray(class_colour(0), np.float32)
    stretch = first_image(wide_image, resize_mode="stretch", resize_method="nearest")
    assert (stretch[:, :16] == 255).all() and (stretch[:, 16:] == ant).all()
    crop = first_image(wide_image, resize_mode="crop", resize_method="nearest")
    assert (crop[:, :8] == 255).all() and (crop[:, 24:] == ant).all()  # the centred 16x16, 2x
    pad = first_image(wide_image, resize_mode="pad", resize_method="nearest")
    assert (pad[:8] == 0).all() and (pad[24:] == 0).all()  # black bars above and below
    assert (pad[8:24, :16] == 255).all() and (pad[8:24, 16:] == ant).all()
    crop_or_pad = first_image(wide_image, resize_mode="crop_or_pad")  # no scaling: 16x32 kept
    assert (crop_or_pad[:8] == 0).all() and (crop_or_pad[24:] == 0).all()
    assert (crop_or_pad[8:24, :16] == 255).all() and (crop_or_pad[8:24, 16:] == ant).all()


def test_resize_method_is_used(tmp_path):
    checker = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)
    for name in ("ant", "bee"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(encode(np.stack([checker] * 3, -1)))
    nearest = first_image(tmp_path, resize_method="nearest")
    bilinear = first_image(tmp_path, resize_method="bilinear")
    assert set(np.unique(nearest)) == {0.0, 255.0}
    assert len(np.unique(bilinear)) > 2
    assert np.array_equal(bilinear, np.round(bilinear))  # whole pixel values, cache-friendly


# --- cache -----------------------------------------------------------------------------------------
def test_memory_and_file_cache_give_the_same_batches(tmp_path, caplog):
    make_folder(tmp_path / "d", {"ant": 5, "bee": 5})
    (tmp_path / "d" / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    common = dict(augment="light", resize_mode="crop", max_skipped_fraction=0.2)
    plain = load_data(tiny_data_config(tmp_path / "d", **common))
    memory = load_data(tiny_data_config(tmp_path / "d", cache="memory", **common))
    wd = str(tmp_path / "w")
    with caplog.at_level("INFO", logger="tl_keras"):
        first = load_data(tiny_data_config(tmp_path / "d", cache="file", **common), workdir=wd)
        again = load_data(tiny_data_config(tmp_path / "d", cache="file", **common), workdir=wd)
    assert caplog.text.count("reusing the file cache") == 2  # train and val, second load
    assert again.report.decode_check_s == 0.0 and again.report.num_skipped == 1
    reference = batches(plain.train_epochs(1, 1)) + batches(plain.val)
    for other in (memory, first, again):
        got = batches(other.train_epochs(1, 1)) + batches(other.val)
        assert len(got) == len(reference)
        for (xa, ya), (xb, yb) in zip(reference, got, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    cached = sorted(p.name for p in (tmp_path / "w" / "data" / "cache").iterdir())
    assert len(cached) == 2 and cached[0].startswith("train-") and cached[1].startswith("val-")


def test_file_cache_is_rebuilt_when_a_file_changes(tmp_path):
    make_folder(tmp_path / "d", {"ant": 3, "bee": 3})
    cfg = tiny_data_config(tmp_path / "d", cache="file", val_fraction=0.0)
    load_data(cfg, workdir=str(tmp_path / "w"))
    changed = tmp_path / "d" / "ant" / "ant_00.png"
    changed.write_bytes(encode(solid(1)))
    data = load_data(cfg, workdir=str(tmp_path / "w"))
    assert data.report.decode_check_s > 0  # decoded again, not read from the stale cache
    assert len(list((tmp_path / "w" / "data" / "cache").iterdir())) == 2
    x, _ = all_of(data.train)
    assert sorted(label_of_pixels(x).tolist()) == [0, 0, 1, 1, 1, 1]


# --- arrays ----------------------------------------------------------------------------------------
def coloured_arrays(n_per_class=(4, 4, 4), size=20):
    x = np.concatenate([np.stack([solid(k, (size, size))] * n) for k, n in enumerate(n_per_class)])
    y = np.concatenate([[k] * n for k, n in enumerate(n_per_class)])
    return x, y


def test_from_arrays_in_memory(tmp_path):
    x, y = coloured_arrays()
    data = from_arrays(tiny_data_config(""), x, y, class_names=["a", "b", "c"])
    assert data.class_names == ["a", "b", "c"] and (data.num_train, data.num_val) == (9, 3)
    xt, yt = all_of(data.train)
    assert xt.shape == (9, 32, 32, 3)
    np.testing.assert_array_equal(label_of_pixels(xt), yt.argmax(1))


def test_from_arrays_grayscale_one_hot_and_given_val():
    x, y = coloured_arrays((3, 3))
    gray = x[..., 0]  # N x H x W
    data = from_arrays(
        tiny_data_config("", val_fraction=0.0),
        gray,
        np.eye(2)[y],
        x_val=gray[2:4],
        y_val=y[2:4],
        x_test=gray[::3],
        y_test=y[::3],
    )
    assert data.class_names == ["0", "1"]
    assert (data.num_train, data.num_val, data.num_test) == (6, 2, 2)
    xt, _ = all_of(data.train)
    assert np.array_equal(xt[..., 0], xt[..., 1]) and np.array_equal(xt[..., 0], xt[..., 2])


def test_npz_source(tmp_path):
    x, y = coloured_arrays()
    path = tmp_path / "arrays.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[::4], y_test=y[::4], class_names=["a", "b", "c"])
    data = load_data(tiny_data_config(path))
    assert data.class_names == ["a", "b", "c"] and data.source == str(path)
    assert (data.num_train, data.num_val, data.num_test) == (9, 3, 3)


# --- TFDS ------------------------------------------------------------------------------------------
TF_FLOWERS = ["dandelion", "daisy", "tulips", "sunflowers", "roses"]


@pytest.fixture
def mock_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    # Random examples generated from the builder's code: nothing is downloaded.
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
        yield tfds


def test_tfds_source_with_held_out_validation(mock_tfds):
    data = load_data(tiny_data_config("tfds:tf_flowers", val_fraction=0.2))
    assert data.class_names == TF_FLOWERS
    assert data.num_train + data.num_val == 30 and data.num_val >= 5  # stratified: every class
    assert data.report.per_class["val"].count(0) == 0
    x, y = next(iter(data.train))
    assert x.shape == (4, 32, 32, 3) and y.shape == (4, 5)


def test_tfds_split_specs(mock_tfds, monkeypatch):
    opened, read = [], []
    builder, as_dataset = mock_tfds.builder, mock_tfds.core.DatasetBuilder.as_dataset
    monkeypatch.setattr(
        mock_tfds, "builder", lambda name, **kw: opened.append((name, kw)) or builder(name, **kw)
    )
    monkeypatch.setattr(
        mock_tfds.core.DatasetBuilder,
        "as_dataset",
        lambda self, split, **kw: read.append(split) or as_dataset(self, split=split, **kw),
    )
    cfg = tiny_data_config(
        "tfds:tf_flowers",
        train_split="train[:80%]",
        val_split="train[80%:]",
        test_split="train[:10%]",
        tfds_data_dir="/nonexistent/prepared",
    )
    data = load_data(cfg)
    # The mock gives every split the same 30 examples; the specs reach TFDS unchanged.
    assert (data.num_train, data.num_val, data.num_test) == (30, 30, 30)
    assert data.report.images == {"train": 30, "val": 30, "test": 30}
    assert opened == [("tf_flowers", {"data_dir": "/nonexistent/prepared"})]
    assert read == ["train[:80%]", "train[80%:]", "train[:10%]"]


# --- the report reaches the artifacts --------------------------------------------------------------
@pytest.mark.slow
def test_skipped_files_are_counted_in_the_phase_summary(tmp_path):
    from conftest import tiny_config

    from tl_keras.training import runner

    make_folder(tmp_path / "d", {"ant": 6, "bee": 6})
    (tmp_path / "d" / "ant" / "broken.jpg").write_bytes(b"not a jpeg at all")
    cfg = tiny_config(data_dir=str(tmp_path / "d"), max_skipped_fraction=0.1, augment="light")
    runner.train(cfg, str(tmp_path / "w"), phase="fe")
    summary = json.loads(pathlib.Path(tmp_path / "w" / "fe" / "summary.json").read_text())
    assert summary["data"]["num_skipped"] == 1
    assert summary["data"]["skipped"][0]["item"] == os.path.join("ant", "broken.jpg")
    assert summary["data"]["pipeline"]["augment"] == "light"


def test_the_pipeline_takes_its_fields_from_the_data_settings_and_augmentation():
    """One home for each data field: a `Pipeline`'s fields are a `DataSettings`'s reading fields
    and an `Augmentation`'s, with their defaults, plus where the file cache goes;
    `Pipeline.from_settings` hands over the settings' values."""
    import dataclasses

    from tl_keras.data.pipeline import Pipeline
    from tl_keras.data.settings import Augmentation, DataSettings, default

    fields = {f.name: f.default for f in dataclasses.fields(Pipeline)}
    augmentation = {f.name: f.default for f in dataclasses.fields(Augmentation)}
    data = {f.name for f in dataclasses.fields(DataSettings)}
    assert set(fields) - data - set(augmentation) == {"cache_dir"}
    for name, value in fields.items():
        if name in augmentation:
            assert value == augmentation[name], name
        elif name in data and name != "seed":  # the data's seed is the run's: no default
            assert value == default(name) or value is dataclasses.MISSING, name
    given = DataSettings(
        data_dir="photos", image_size=40, seed=3, batch_size=5, resize_method="area",
        resize_mode="crop", cache="file", max_skipped_fraction=0.1,
    )  # fmt: skip
    p = Pipeline.from_settings(given, Augmentation(augment="light", mixup=0.2), workdir="/w")
    assert {n: getattr(p, n) for n in set(fields) & data} == {
        n: getattr(given, n) for n in set(fields) & data
    }
    assert (p.augment, p.mixup, p.cache_dir) == ("light", 0.2, os.path.join("/w", "data", "cache"))
