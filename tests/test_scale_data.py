"""benchmarks/scale_data.py: the scale benchmark's data, small."""

import json
import os
import sys

import numpy as np
import pytest
from conftest import REPO
from inprocess import benchmark

sys.path.insert(0, str(REPO / "benchmarks"))
import scale_data  # noqa: E402

tfds = pytest.importorskip("tensorflow_datasets")


def files(root) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
        for d, _, names in os.walk(root)
        for f in names
        if f.endswith(".jpg")
    }


def test_images_are_a_pure_function_of_seed_and_index():
    k, a = scale_data.draw(7, size=32, seed=3)
    assert k == 7 % 5 and a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, scale_data.draw(7, size=32, seed=3)[1])
    assert not np.array_equal(a, scale_data.draw(7, size=32, seed=4)[1])


def test_folder_is_the_same_with_any_number_of_workers_and_made_once(tmp_path):
    one = scale_data.make_folder(tmp_path / "one", 23, size=32, workers=1)
    two = scale_data.make_folder(tmp_path / "two", 23, size=32, workers=2)
    assert files(one) == files(two) and len(files(one)) == 23
    assert sorted(os.listdir(one)) == sorted([*scale_data.CLASSES, scale_data.MANIFEST])
    stamp = (one / scale_data.MANIFEST).stat().st_mtime_ns
    scale_data.make_folder(tmp_path / "one", 23, size=32, workers=1)  # complete: left alone
    assert (one / scale_data.MANIFEST).stat().st_mtime_ns == stamp


def test_tfds_set_holds_the_same_images_under_the_same_labels(tmp_path):
    folder = scale_data.make_folder(tmp_path / "f", 20, size=32, workers=1)
    version_dir = scale_data.make_tfds(folder, tmp_path / "tfds")
    assert version_dir == tmp_path / "tfds" / "tf_flowers" / "3.0.1"
    assert not (tmp_path / "tfds" / "flower_photos.tar").exists()  # the tar is not kept
    builder = tfds.builder("tf_flowers", data_dir=str(tmp_path / "tfds"))
    names = builder.info.features["label"].names
    ds = builder.as_dataset(
        "train", as_supervised=True, decoders={"image": tfds.decode.SkipDecoding()}
    )
    stored = {image: names[label] for image, label in ds.as_numpy_iterator()}
    assert stored == {data: path.split(os.sep)[0] for path, data in files(folder).items()}


@pytest.mark.slow
def test_documented_command_writes_its_table_and_json(tmp_path):
    results = tmp_path / "results"
    proc = benchmark("scale_data.py", results, "--sizes", "10", "--out", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((results / "scale_data.json").read_text())["results"]["10"]
    assert row["tfds_shards"] == 1 and row["folder_mib"] > 0 and not row["reused"]
    assert "| 10 |" in proc.stdout
