"""The CLI on each data source and the shipped flowers configs, through the command's main in
this process (tests/inprocess.py): the train command's own process is tests/test_cli.py's, and
what these assert (the data each source gives, the runs the configs make) is the same there."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
from conftest import REPO, SHARED
from data_fixtures import solid
from inprocess import benchmark, command
from test_cli import assert_one_line_error

from tl_keras.model import pretrained
from tl_keras.training.history import History

MODEL = [
    "--backbone=tiny",
    "--weights=none",
    "--image_size=32",
    "--batch_size=8",
    "--epochs_fe=1",
    "--epochs_ft=1",
    "--head_units=8",
]
TF_FLOWERS = ["dandelion", "daisy", "tulips", "sunflowers", "roses"]


def read(path) -> dict:
    return json.loads(pathlib.Path(path).read_text())


@pytest.mark.slow
def test_cli_trains_on_an_npz_file(tmp_path):
    x = np.concatenate([np.stack([solid(k, (24, 24))] * 8) for k in range(3)])
    y = np.repeat([0, 1, 2], 8)
    np.savez(tmp_path / "shapes.npz", x_train=x, y_train=y, class_names=["r", "g", "b"])
    workdir = tmp_path / "w"
    proc = command(
        f"--data_dir={tmp_path / 'shapes.npz'}",
        *MODEL,
        "--augment=light",
        "--mixup=0.2",
        "--label_smoothing=0.1",
        f"--workdir={workdir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read(workdir / "run.json")["class_names"] == ["r", "g", "b"]
    data = read(workdir / "ft" / "summary.json")["data"]
    assert data["images"] == {"train": 18, "val": 6} and data["num_skipped"] == 0
    assert data["pipeline"]["augment"] == "light" and data["pipeline"]["mixup"] == 0.2
    assert History.load(str(workdir / "history.json")).epochs == [1, 2]
    assert (
        "data: " in proc.stdout and "training augmentation: light (horizontal flip" in proc.stdout
    )
    # cache='auto' (the default) keeps 24 decoded images in memory
    assert "mixup 0.2, label_smoothing 0.1; cache: memory" in proc.stdout


@pytest.mark.slow
def test_cli_trains_on_tfds_with_mock_data(tmp_path):
    """The train command on `tfds:tf_flowers`, with TFDS mocked (nothing downloads)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    workdir = tmp_path / "w"
    args = ["--data_dir=tfds:tf_flowers", "--val_fraction=0.25", *MODEL, f"--workdir={workdir}"]
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        proc = command(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read(workdir / "run.json")["class_names"] == TF_FLOWERS
    data = read(workdir / "fe" / "summary.json")["data"]
    assert data["source"] == "tfds:tf_flowers" and sum(data["images"].values()) == 40


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--data_dir=no/such/photos"], ["data_dir='no/such/photos' (relative to the current"]),
        (["--data_dir=tfds:tf_flowerz"], ["'tf_flowerz' is not a TFDS data set"]),
    ],
)
def test_cli_bad_data_is_one_clear_line(tmp_path, args, fragments):
    proc = command(*MODEL, *args, f"--workdir={tmp_path / 'w'}")
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "w" / "run.json").exists()


@pytest.mark.slow
@pytest.mark.shared
def test_flowers_config_runs(tmp_path, flowers_dir, shared_weights):
    """configs/flowers.toml as shipped, one fe epoch: real photos with real ImageNet features.

    Its paths are relative to the repository root (../shared). When ../shared lives elsewhere
    (TL_KERAS_SHARED), the two paths are given as flags; everything else comes from the file.
    """
    workdir = tmp_path / "flowers"
    paths = []
    if SHARED.resolve() != (REPO.parent / "shared").resolve():
        paths = [f"--data_dir={flowers_dir}", f"--weights={shared_weights}"]
    proc = command(
        "--config=configs/flowers.toml",
        *paths,
        "--epochs_fe=1",
        "--epochs_ft=0",
        f"--workdir={workdir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = read(workdir / "run.json")
    assert run["class_names"] == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    assert run["image_size"] == 128
    record = History.load(str(workdir / "history.json")).records[0]
    assert record["val_accuracy"] > 0.5  # chance is 0.2: the pretrained features are real
    data = read(workdir / "fe" / "summary.json")["data"]
    assert data["images"] == {"train": 2752, "val": 687} and data["num_skipped"] == 0


@pytest.mark.slow
@pytest.mark.shared
def test_flowers_lite0_config_runs(tmp_path, flowers_dir, monkeypatch):
    """configs/flowers_lite0.toml: `weights = "imagenet"` converts Lite0's checkpoint into the
    cache (an empty one here) and trains on it. The file's settings on 40 of the shared photos a
    class (its whole folder costs Lite0 about a minute a pass on 2 cores), 12 epochs of the head on
    their cached features (about a second in all; 0.70 validation accuracy where 3 reached 0.55).
    """
    if not importlib.util.find_spec(pretrained.CHECKPOINT_MODULE):
        pytest.skip(f"{pretrained.CHECKPOINT_PACKAGE} not installed")
    photos = tmp_path / "flowers"
    for cls in sorted(pathlib.Path(flowers_dir).iterdir()):
        (photos / cls.name).mkdir(parents=True)
        for photo in sorted(cls.glob("*.jpg"))[:40]:
            (photos / cls.name / photo.name).symlink_to(photo)
    cache, workdir = tmp_path / "cache", tmp_path / "lite0"
    monkeypatch.setenv("TL_KERAS_CACHE_DIR", str(cache))
    proc = command(
        "--config=configs/flowers_lite0.toml",
        f"--data_dir={photos}",
        "--epochs_fe=12",
        "--epochs_ft=0",
        f"--workdir={workdir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    converted = list((cache / "weights").glob("efficientnet_lite0_imagenet_notop-*.weights.h5"))
    assert len(converted) == 1  # the checkpoint, converted into the cache by the run itself
    config = read(workdir / "config.json")
    assert (config["backbone"], config["weights"], config["image_size"]) == (
        "efficientnet_lite0",
        "imagenet",
        128,
    )
    run = read(workdir / "run.json")
    assert run["class_names"] == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    records = History.load(str(workdir / "history.json")).records
    assert len(records) == 12 and {r["phase"] for r in records} == {"fe"}
    assert records[-1]["val_accuracy"] > 0.5  # chance is 0.2: the ImageNet features are real


@pytest.mark.slow
def test_input_benchmark_runs(tmp_path):
    """docs/benchmarks.md's input command, on a tiny folder, tiny sizes and one short round,
    measuring the test backbone (MobileNet-0.25's tracing was most of the test's time)."""
    from data_fixtures import make_folder

    folder = make_folder(tmp_path / "d", {"ant": 12, "bee": 12})
    out = tmp_path / "input.json"
    proc = benchmark(
        "bench_input.py",
        tmp_path,
        f"--data_dir={folder}",
        "--sizes=32,48",
        "--batch_size=8",
        "--pipeline_batches=2",
        "--model_steps=1",
        "--warmup=1",
        "--repeats=1",
        "--backbone=tiny",
        f"--out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read(out)
    assert [r["image_size"] for r in result["results"]] == [32, 48]
    row = result["results"][0]
    assert set(row["pipeline_img_s"]) == {"none", "light", "strong"}
    assert row["model_img_s"]["fe"] > 0 and row["ratio_light_vs_fe"] > 0
    assert "| 32 px |" in proc.stdout and "light ÷ fe" in proc.stdout
