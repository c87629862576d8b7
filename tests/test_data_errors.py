"""Bad data: every case is a DataError naming the path or value and the fix, or a counted skip.

docs/data.md's "Bad data" table lists the same cases with the decision for each.
"""

import os

import numpy as np
import pytest
from data_fixtures import batches, encode, make_folder, solid, tiny_data_config

from tl_keras import config as config_lib
from tl_keras.config import Config
from tl_keras.data.sources import from_arrays, load_data
from tl_keras.errors import ConfigError, DataError


# --- folders: fail -----------------------------------------------------------------------------------
def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"data_dir='.*nope' is not a folder; point it at a folder"):
        load_data(tiny_data_config(tmp_path / "nope"))


def test_relative_path_says_it_is_resolved_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DataError,
        match=f"data_dir='photos' \\(relative to the current directory {tmp_path}\\) is not a folder",
    ):
        load_data(tiny_data_config("photos"))


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="is empty; it needs one sub-folder of images per class"):
        load_data(tiny_data_config(tmp_path))


def test_images_without_class_folders(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(solid(0)))
    with pytest.raises(DataError, match="holds 1 images but no class sub-folders"):
        load_data(tiny_data_config(tmp_path))


def test_one_class(tmp_path):
    make_folder(tmp_path, ["ant"])
    with pytest.raises(
        DataError, match=r"has 1 class folder \('ant'\); a classifier needs at least 2"
    ):
        load_data(tiny_data_config(tmp_path))


def test_class_folder_without_images(tmp_path):
    make_folder(tmp_path, ["ant", "bee"])
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("photos to come")
    (tmp_path / "dog").mkdir()
    with pytest.raises(
        DataError,
        match=r"class folder\(s\) cat \(1 other files\), dog \(empty\) in .* contain no images",
    ):
        load_data(tiny_data_config(tmp_path))


def test_split_layout_without_train(tmp_path):
    make_folder(tmp_path / "val", ["ant", "bee"])
    make_folder(tmp_path / "test", ["ant", "bee"])
    with pytest.raises(DataError, match=r"has test, val/ but no train/ folder"):
        load_data(tiny_data_config(tmp_path))


def test_split_layout_with_val_and_validation(tmp_path):
    for split in ("train", "val", "validation"):
        make_folder(tmp_path / split, ["ant", "bee"])
    with pytest.raises(DataError, match=r"has both val/ and validation/; keep one"):
        load_data(tiny_data_config(tmp_path))


def test_class_in_training_missing_from_validation_folder(tmp_path):
    make_folder(tmp_path / "train", ["ant", "bee", "cat"])
    make_folder(tmp_path / "val", ["ant", "bee"])
    with pytest.raises(
        DataError, match=r"val_dir=.* has no folder for class\(es\) cat of the training data"
    ):
        load_data(tiny_data_config(tmp_path))


def test_validation_class_unknown_to_training(tmp_path):
    make_folder(tmp_path / "a", ["ant", "bee"])
    make_folder(tmp_path / "b", ["ant", "bee", "cow"])
    with pytest.raises(
        DataError, match=r"val_dir=.* has class folder\(s\) cow that the training data does not"
    ):
        load_data(tiny_data_config(tmp_path / "a", val_dir=str(tmp_path / "b")))


def test_test_folder_missing_a_class(tmp_path):
    make_folder(tmp_path / "a", ["ant", "bee"])
    make_folder(tmp_path / "t", ["ant", "bee"])
    for f in (tmp_path / "t" / "bee").iterdir():
        f.write_bytes(b"garbage")
    cfg = tiny_data_config(tmp_path / "a", test_dir=str(tmp_path / "t"), max_skipped_fraction=1.0)
    with pytest.raises(
        DataError,
        match=r"test data \(test_dir=.*\) has no images of class\(es\) bee \(6 unreadable file",
    ):
        load_data(cfg)


def test_class_with_one_image_cannot_be_split(tmp_path):
    make_folder(tmp_path, {"ant": 5, "bee": 1})
    with pytest.raises(
        DataError,
        match=r"class\(es\) bee \(1\) in .* have fewer than 2 images.* or set val_fraction=0",
    ):
        load_data(tiny_data_config(tmp_path))
    assert load_data(tiny_data_config(tmp_path, val_fraction=0.0)).num_train == 6


# --- folders: skip, count, log ---------------------------------------------------------------------
def test_corrupt_truncated_and_fake_images_are_skipped_counted_and_logged(tmp_path, caplog):
    make_folder(tmp_path, {"ant": 10, "bee": 10})
    jpeg = encode(solid(0, (40, 40)), "JPEG")
    (tmp_path / "ant" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "ant" / "text.png").write_text("I am not a PNG")
    (tmp_path / "bee" / "empty.jpg").write_bytes(b"")
    with caplog.at_level("INFO", logger="tl_keras"):
        data = load_data(tiny_data_config(tmp_path, val_fraction=0.0, max_skipped_fraction=0.15))
    assert data.num_train == 20 and data.report.num_skipped == 3
    reasons = {s["item"]: s["reason"] for s in data.report.skipped}
    assert reasons == {
        os.path.join("ant", "text.png"): "not an image TensorFlow can decode (unknown format)",
        os.path.join("ant", "truncated.jpg"): reasons[os.path.join("ant", "truncated.jpg")],
        os.path.join("bee", "empty.jpg"): "empty file",
    }
    assert "JPEG" in reasons[os.path.join("ant", "truncated.jpg")]
    assert "SKIPPED 3 image file(s)" in caplog.text and "truncated.jpg" in caplog.text
    assert sum(len(x) for x, _ in batches(data.train_epochs(0, 2))) == 40  # fit never meets them


def test_too_many_unreadable_files_is_an_error(tmp_path):
    make_folder(tmp_path, {"ant": 4, "bee": 4})
    for i in range(2):
        (tmp_path / "ant" / f"heic_{i}.jpg").write_bytes(b"ftypheic....")
    with pytest.raises(
        DataError,
        match=r"2 of 10 images .* cannot be decoded, more than max_skipped_fraction=0.05 allows: "
        r"ant/heic_0.jpg \(not an image",
    ):
        load_data(tiny_data_config(tmp_path))


def test_class_whose_every_image_is_unreadable(tmp_path):
    make_folder(tmp_path, {"ant": 4, "bee": 4})
    for f in (tmp_path / "bee").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(
        DataError, match=r"training data .* has no images of class\(es\) bee \(4 unreadable"
    ):
        load_data(tiny_data_config(tmp_path, val_fraction=0.0, max_skipped_fraction=1.0))


def test_mixed_sizes_and_modes_all_become_rgb_at_the_model_size(tmp_path, caplog):
    rgb = solid(0, (30, 50))
    files = {
        "gray.png": encode(rgb, "PNG", "L"),
        "rgba.png": encode(rgb, "PNG", "RGBA"),
        "palette.png": encode(rgb, "PNG", "P"),
        "gray16.png": encode(rgb, "PNG", "I;16"),
        "cmyk.jpg": encode(rgb, "JPEG", "CMYK"),
        "small.gif": encode(solid(0, (7, 5)), "GIF"),
        "big.bmp": encode(solid(0, (90, 120)), "BMP"),
        "photo.JPEG": encode(rgb, "JPEG"),
        "web.webp": encode(rgb, "WEBP"),
    }
    for name, blob in files.items():
        (tmp_path / "ant").mkdir(exist_ok=True)
        (tmp_path / "ant" / name).write_bytes(blob)
    make_folder(tmp_path, {"bee": 3}, size=(64, 16))
    with caplog.at_level("INFO", logger="tl_keras"):
        data = load_data(tiny_data_config(tmp_path, val_fraction=0.0))
    assert data.num_train == 12 and data.report.num_skipped == 0
    x, _ = batches(data.train)[0]
    assert x.shape == (4, 32, 32, 3)
    assert data.report.image_sizes["distinct"] == 4  # 30x50, 7x5, 90x120, 64x16
    assert data.report.image_sizes["smallest"] == "7x5"
    assert "mixed image sizes (4 distinct, 7x5 to 90x120); all become 32x32 RGB" in caplog.text


# --- TFDS ------------------------------------------------------------------------------------------
def test_unknown_tfds_name():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(
        DataError, match=r"'tf_flowerz' is not a TFDS data set \(did you mean 'tf_flowers'\?\)"
    ):
        load_data(tiny_data_config("tfds:tf_flowerz"))


def test_tfds_download_failure_says_how_to_use_prepared_data(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(
        DataError,
        match=r"TFDS could not download or prepare 'tf_flowers' into .*/prepared \(ConnectionError: "
        r"Failed to resolve .*\)\. If this machine is offline.*--tfds_data_dir=DIR",
    ):
        load_data(tiny_data_config("tfds:tf_flowers", tfds_data_dir=str(tmp_path / "prepared")))


def test_tfds_bad_split_spec(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # The patch is undone inside the mock's block: undone after it, it would put the mock's
    # as_dataset back for every later test in the process (tests/test_tfds_local.py reads for real).
    with (
        tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE),
        monkeypatch.context() as patch,
    ):
        as_dataset = tfds.core.DatasetBuilder.as_dataset

        def unknown_split(self, split, **kwargs):
            if split != "validaton":
                return as_dataset(self, split=split, **kwargs)
            raise ValueError(f"Unknown split \"{split}\". Should be one of ['train'].")

        patch.setattr(tfds.core.DatasetBuilder, "as_dataset", unknown_split)
        with pytest.raises(
            DataError, match=r"val_split='validaton' is not a split of TFDS tf_flowers"
        ):
            load_data(tiny_data_config("tfds:tf_flowers", val_split="validaton"))


# --- arrays ----------------------------------------------------------------------------------------
X = np.zeros((6, 8, 8, 3), np.uint8)
Y = np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(y_train=np.array([0, 1, 2, 0, 7, 2]), class_names=["a", "b", "c"]),
            r"y_train\[4\] = 7 is out of range: labels must be class indices in \[0, 3\) for the "
            r"3 class_names \(1 label\(s\) out of range\)",
        ),
        (dict(y_train=np.array([0, 1, -1, 0, 1, 2])), r"y_train\[2\] = -1 is out of range"),
        (dict(y_train=Y[:5]), r"y_train has shape \(5,\) for 6 images"),
        (dict(y_train=np.array([0.5, 1, 2, 0, 1, 2])), "labels must be integer class indices"),
        (dict(y_train=np.full((6, 3), 1 / 3)), "y_train is 2-D but not one-hot"),
        (dict(x_train=X.astype(np.float32) / 255 + 0.5), r"looks scaled to \[0, 1\]"),
        (dict(x_train=np.full((6, 8, 8, 3), 300.0)), r"values in \[300, 300\]; pixels must be raw"),
        (dict(x_train=np.full((6, 8, 8, 3), np.nan)), "contains NaN or infinite values"),
        (dict(x_train=np.zeros((6, 8, 8, 2), np.uint8)), r"x_train has shape \(6, 8, 8, 2\)"),
        (dict(y_train=np.zeros(6, int)), "y_train has one class"),
        (dict(x_val=X), "x_val and y_val come together"),
        (dict(x_val=X, y_val=np.array([0, 0, 0, 1, 1, 1])), r"validation data .* class\(es\) 2"),
    ],
)
def test_bad_arrays(kwargs, match):
    arrays = {"x_train": X, "y_train": Y, **kwargs}
    with pytest.raises(DataError, match=match):
        from_arrays(
            tiny_data_config(""),
            arrays.pop("x_train"),
            arrays.pop("y_train"),
            **arrays,
        )


def test_bad_npz_files(tmp_path):
    (tmp_path / "not.npz").write_text("plain text")
    with pytest.raises(DataError, match=r"is not a readable \.npz file"):
        load_data(tiny_data_config(tmp_path / "not.npz"))
    np.savez(tmp_path / "keys.npz", images=X, labels=Y)
    with pytest.raises(DataError, match="has arrays images, labels but not x_train, y_train"):
        load_data(tiny_data_config(tmp_path / "keys.npz"))
    np.savez(tmp_path / "extra.npz", x_train=X, y_train=Y, x_valid=X)
    with pytest.raises(DataError, match="has array\\(s\\) x_valid that tl_keras would ignore"):
        load_data(tiny_data_config(tmp_path / "extra.npz"))
    with pytest.raises(DataError, match="missing.npz'.* is not a file"):
        load_data(tiny_data_config(tmp_path / "missing.npz"))


# --- settings that do not fit the source -----------------------------------------------------------
@pytest.mark.parametrize(
    "data_dir, field, value",
    [
        ("tfds:tf_flowers", "val_dir", "val/"),
        ("photos/", "val_split", "validation"),
        ("x.npz", "test_dir", "t/"),
        ("synthetic", "tfds_data_dir", "/data/tfds"),
    ],
)
def test_source_fields_that_would_be_ignored_are_refused(data_dir, field, value):
    with pytest.raises(DataError, match=f"{field}='{value}' applies only to"):
        load_data(tiny_data_config(data_dir, **{field: value}))


def test_cache_file_needs_a_workdir(tmp_path):
    make_folder(tmp_path, ["ant", "bee"])
    with pytest.raises(DataError, match="cache='file' needs a workdir"):
        load_data(tiny_data_config(tmp_path, cache="file"))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(augment="heavy"), "augment='heavy' is not a preset; use one of none, light, strong"),
        (dict(augment="lite"), "did you mean 'light'"),
        (dict(resize_method="bilinearr"), "did you mean 'bilinear'"),
        (dict(resize_mode="fit"), "resize_mode='fit' is not allowed"),
        (dict(cache="disk"), "cache='disk' is not allowed"),
        (dict(mixup=-0.2), "mixup=-0.2 is not allowed"),
        (dict(cutmix=2.0), "cutmix=2.0 is not allowed"),
        (dict(label_smoothing=1.0), "label_smoothing=1.0 is not allowed"),
        (dict(max_skipped_fraction=1.5), "max_skipped_fraction=1.5 is not allowed"),
    ],
)
def test_config_rejects_bad_data_settings(overrides, match):
    with pytest.raises(ConfigError, match=match):
        config_lib.validate(Config(**overrides))
