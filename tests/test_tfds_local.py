"""Every TFDS path a user takes, on TFDS's real code with data prepared locally.

`tests/tfds_local.py` runs TFDS's own builders with only the download replaced by a local file,
so these tests go through what `tfds.testing.mock_data` (tests/test_data.py) skips: the
download manager, the builder's example generator, the writer, shards, dataset_info and reading
prepared files back. That path is where a fresh install broke (TFDS imports importlib_resources
there without installing it) while every mocked test passed.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import FLOWERS, REPO, run_cli
from data_fixtures import tiny_data_config
from test_cli import assert_one_line_error

tfds = pytest.importorskip("tensorflow_datasets")
import tfds_local  # noqa: E402  (after the importorskip: it needs TFDS)

from tl_keras.data.sources import load_data  # noqa: E402
from tl_keras.errors import DataError  # noqa: E402

PER_CLASS = 6  # 30 images: every class in a 20% stratified hold-out
CLI_MODEL = [
    "--backbone=tiny",
    "--weights=none",
    "--image_size=32",
    "--batch_size=8",
    "--epochs_fe=1",
    "--epochs_ft=0",
    "--head_units=8",
    "--val_fraction=0.2",
]
HELPER = str(REPO / "tests" / "tfds_local.py")


def _env() -> dict:
    """The subprocess environment run_cli uses, with no network (tfds_local.OFFLINE_ENV)."""
    return {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        **tfds_local.OFFLINE_ENV,
    }


def read(path) -> dict:
    return json.loads(pathlib.Path(path).read_text())


@pytest.fixture(autouse=True)
def real_tfds():
    """Fails clearly when an earlier test in this process left TFDS mocked (tfds.testing)."""
    where = tfds.core.DatasetBuilder.as_dataset.__module__
    assert not where.startswith("tensorflow_datasets.testing"), (
        f"DatasetBuilder.as_dataset is still {where}'s mock: a test undid its patch after "
        "tfds.testing.mock_data exited"
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> pathlib.Path:
    """`flower_photos/<class>/*.jpg` as in TFDS's archive: real photos from ../shared if there."""
    return tfds_local.make_flower_photos(
        tmp_path_factory.mktemp("src"), per_class=PER_CLASS, photos=FLOWERS
    )


@pytest.fixture(scope="module")
def archive(photos, tmp_path_factory) -> pathlib.Path:
    return tfds_local.pack_archive(photos, tmp_path_factory.mktemp("dl") / "flower_photos.tgz")


@pytest.fixture(scope="module")
def prepared(archive, tmp_path_factory) -> pathlib.Path:
    """A tfds_data_dir holding tf_flowers prepared by TFDS's own builder from `archive`."""
    data_dir = tmp_path_factory.mktemp("tfds")
    tfds_local.prepare_tf_flowers(data_dir, archive)
    return data_dir


def test_tfds_own_builder_prepares_the_local_archive(prepared, photos):
    builder = tfds.builder("tf_flowers", data_dir=str(prepared))
    version_dir = prepared / "tf_flowers" / "3.0.1"
    assert (version_dir / "dataset_info.json").is_file()
    assert list(version_dir.glob("tf_flowers-train.tfrecord-*-of-*"))
    assert builder.info.splits["train"].num_examples == 5 * PER_CLASS
    assert builder.info.features["label"].names == list(tfds_local.TF_FLOWERS_CLASSES)
    # Every stored image is a source file's bytes, under its folder's label.
    names = builder.info.features["label"].names
    source = {p.read_bytes(): p.parent.name for p in photos.glob("*/*.jpg")}
    ds = builder.as_dataset(
        "train", as_supervised=True, decoders={"image": tfds.decode.SkipDecoding()}
    )
    stored = {image: names[label] for image, label in ds.as_numpy_iterator()}
    assert stored == source


def test_load_data_reads_prepared_data_without_downloading(prepared):
    with tfds_local.local_downloads({}) as asked:  # any download would fail, and be recorded
        data = load_data(
            tiny_data_config("tfds:tf_flowers", tfds_data_dir=str(prepared), val_fraction=0.2)
        )
    assert asked == []
    assert data.class_names == list(tfds_local.TF_FLOWERS_CLASSES)
    assert (data.num_train, data.num_val) == (25, 5)
    assert data.report.per_class["val"] == [1] * 5 and data.report.num_skipped == 0
    x, y = next(iter(data.val))
    assert x.shape == (4, 32, 32, 3) and y.shape == (4, 5)


def test_load_data_downloads_and_prepares_what_is_missing(archive, tmp_path):
    """The package's own download_and_prepare call, TFDS's real one, fed the local archive."""
    data_dir = tmp_path / "tfds"
    with tfds_local.local_downloads({tfds_local.TF_FLOWERS_URL: archive}) as asked:
        data = load_data(tiny_data_config("tfds:tf_flowers", tfds_data_dir=str(data_dir)))
    assert asked == [tfds_local.TF_FLOWERS_URL]
    assert (data_dir / "tf_flowers" / "3.0.1" / "dataset_info.json").is_file()
    assert data.num_train + data.num_val == 5 * PER_CLASS
    assert sum(1 for _ in data.train) == data.steps_per_epoch


@pytest.mark.slow
def test_cli_prepares_then_trains_offline_from_tfds_data_dir(archive, tmp_path):
    """A user's two steps: download and prepare (here from the local archive) while training,
    then train again with no network at all from the prepared --tfds_data_dir."""
    data_dir = tmp_path / "tfds"
    common = ["--data_dir=tfds:tf_flowers", f"--tfds_data_dir={data_dir}", *CLI_MODEL]
    first = tmp_path / "first"
    proc = subprocess.run(
        [sys.executable, HELPER, str(archive), "tl_keras.train", *common, f"--workdir={first}"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (data_dir / "tf_flowers" / "3.0.1" / "dataset_info.json").is_file()
    assert read(first / "run.json")["class_names"] == list(tfds_local.TF_FLOWERS_CLASSES)

    second = tmp_path / "second"
    proc = run_cli(*common, f"--workdir={second}", env=tfds_local.OFFLINE_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = read(second / "fe" / "summary.json")["data"]
    assert data["source"] == "tfds:tf_flowers"
    assert data["images"] == {"train": 25, "val": 5} and data["num_skipped"] == 0
    assert "Downloading and preparing" not in proc.stdout + proc.stderr


def test_offline_without_prepared_data_is_one_clear_line(tmp_path):
    """No substitution and no network: TFDS's real download fails, the package says what to do."""
    proc = subprocess.run(
        [
            sys.executable,
            HELPER,
            "offline",
            "tl_keras.train",
            "--data_dir=tfds:tf_flowers",
            f"--tfds_data_dir={tmp_path / 'tfds'}",
            *CLI_MODEL,
            f"--workdir={tmp_path / 'w'}",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(
        proc,
        "TFDS could not download or prepare 'tf_flowers' into",
        "If this machine is offline",
        "--tfds_data_dir=DIR",
    )
    assert "not installed" not in proc.stderr
    assert not (tmp_path / "w" / "run.json").exists()


def test_a_missing_module_is_named_not_blamed_on_the_network(archive, tmp_path):
    """The fresh-install failure, reproduced: importlib_resources absent from the process."""
    script = (
        "import sys\n"
        "sys.modules['importlib_resources'] = None  # as if not installed\n"
        f"sys.argv = ['tfds_local', {str(archive)!r}, 'tl_keras.train', "
        f"'--data_dir=tfds:tf_flowers', '--tfds_data_dir={tmp_path / 'tfds'}', "
        f"*{CLI_MODEL!r}, '--workdir={tmp_path / 'w'}']\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "import tfds_local\n"
        "tfds_local.main(sys.argv[1:])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(
        proc,
        "TFDS cannot download and prepare 'tf_flowers'",
        "the Python module 'importlib_resources' is not installed",
        "not a network problem",
        "pip install importlib_resources",
    )
    assert "offline" not in proc.stderr


def test_data_sets_the_docs_name_prepare_on_this_install(tmp_path):
    """cats_vs_dogs and oxford_flowers102 (docs/data.md names them) through their own builders, from
    local downloads:
    every module their download-and-prepare path imports is installed with tl_keras."""
    files = {tfds_local.CATS_VS_DOGS_URL: tfds_local.make_cats_vs_dogs_zip(tmp_path / "c.zip")}
    files.update(tfds_local.make_oxford_flowers102(tmp_path / "oxford"))
    with tfds_local.local_downloads(files):
        cats = load_data(
            tiny_data_config("tfds:cats_vs_dogs", tfds_data_dir=str(tmp_path), val_fraction=0.25)
        )
        oxford = load_data(
            tiny_data_config(
                "tfds:oxford_flowers102",
                tfds_data_dir=str(tmp_path),
                val_split="validation",
                test_split="test",
                val_fraction=0.0,
            )
        )
    assert cats.class_names == ["cat", "dog"] and (cats.num_train, cats.num_val) == (6, 2)
    assert len(oxford.class_names) == 102
    assert (oxford.num_train, oxford.num_val, oxford.num_test) == (102, 102, 102)


def test_a_missing_lazy_import_is_named(tmp_path, monkeypatch):
    """oxford_flowers102 needs scipy.io, which TFDS imports lazily and re-raises wrapped."""
    files = tfds_local.make_oxford_flowers102(tmp_path / "oxford")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as if scipy were not installed
    with (
        tfds_local.local_downloads(files),
        pytest.raises(
            DataError,
            match=r"TFDS cannot download and prepare 'oxford_flowers102': the Python module "
            r"'scipy' is not installed .* not a network problem: install it with pip install "
            r"scipy and run again",
        ),
    ):
        load_data(tiny_data_config("tfds:oxford_flowers102", tfds_data_dir=str(tmp_path)))
