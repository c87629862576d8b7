"""Data larger than memory: TFDS read from its shard files, the remembered decode check, the
memory cache's refusal, arrays memory-mapped, and each epoch split between workers.

The TFDS tests run TFDS's own `tf_flowers` builder on local files (tests/tfds_local.py) with
three shards, so the epoch really reads shard files, interleaved, as a user's prepared set is.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time

import numpy as np
import pytest
from data_fixtures import batches, encode, make_folder, solid, tiny_data_config

from tl_keras.data import bundle as data_lib
from tl_keras.data import check as check_lib
from tl_keras.data.pipeline import Pipeline, prepare
from tl_keras.data.sources import from_arrays, load_data
from tl_keras.data.sources.arrays import list_npz
from tl_keras.errors import DataError
from tl_keras.progress import Progress

tfds = pytest.importorskip("tensorflow_datasets")
import tfds_local  # noqa: E402  (after the importorskip: it needs TFDS)

from tl_keras.data import tfds_stream  # noqa: E402

SHARDS = 3
PER_CLASS = 8  # 40 images: 35 train + 5 validation at val_fraction 0.1


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def digests(ds) -> list[str]:
    return [digest(x) for xb, _ in batches(ds) for x in xb]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """tf_flowers prepared by TFDS's own builder from 40 distinct noisy JPEGs, in 3 shards."""
    root = tmp_path_factory.mktemp("tfds3")
    photos = tfds_local.make_flower_photos(root / "src", per_class=PER_CLASS, size=40)
    archive = tfds_local.pack_archive(photos, root / "flower_photos.tar")
    tfds_local.prepare_tf_flowers(root / "tfds", archive, num_shards=SHARDS)
    return root / "tfds"


def tfds_config(prepared, **overrides):
    return tiny_data_config(
        "tfds:tf_flowers", tfds_data_dir=str(prepared), val_fraction=0.1, **overrides
    )


def shard_of_each_image(prepared, size: int = 32) -> dict[str, int]:
    """Digest of each stored image (as the pipeline prepares it) -> the shard file holding it."""
    import tensorflow as tf

    from tl_keras.data.images import decode
    from tl_keras.data.pipeline import Pipeline

    p = Pipeline(image_size=size, batch_size=1)
    files = sorted((prepared / "tf_flowers" / "3.0.1").glob("tf_flowers-train.tfrecord-*"))
    assert len(files) == SHARDS
    owner = {}
    for k, path in enumerate(files):
        for rec in tf.data.TFRecordDataset(str(path)):
            raw = tf.io.parse_single_example(rec, {"image": tf.io.FixedLenFeature([], tf.string)})
            owner[digest(prepare(decode(raw["image"]), p).numpy().astype(np.float32))] = k
    return owner


def test_tfds_validation_is_the_stratified_split_of_tfds_order(prepared):
    data = load_data(tfds_config(prepared))
    builder = tfds.builder("tf_flowers", data_dir=str(prepared))
    stored = list(builder.as_dataset("train", shuffle_files=False, as_supervised=True))
    labels = [int(y) for _, y in stored]  # TFDS's order: what tl_keras always indexed by
    _, val_idx = data_lib.stratified_split(labels, 0.1, 0)
    assert data.num_val == len(val_idx) == 5 and data.num_train == 35
    expected = [
        digest(prepare(stored[i][0], data.pipeline).numpy().astype(np.float32)) for i in val_idx
    ]
    assert digests(data.val) == expected


def test_tfds_epochs_stream_from_the_shards_as_a_function_of_seed_and_epoch(prepared, tmp_path):
    data = load_data(tfds_config(prepared))
    everything = sorted(digests(data.train_in_order.map(lambda x: (x, x))))
    run = digests(data.train_epochs(0, 3))  # three epochs in a row
    n = data.num_train
    epochs = [run[e * n : (e + 1) * n] for e in range(3)]
    for order in epochs:
        assert sorted(order) == everything  # every training image, each once
    assert epochs[0] != epochs[1] != epochs[2]
    # Epoch 2 alone, in a bundle loaded afresh, is epoch 2 after epochs 0 and 1, bit for bit.
    assert digests(load_data(tfds_config(prepared)).train_epochs(2, 1)) == epochs[2]
    # A cache changes how images are loaded, not the order: bitwise the same batches.
    cached = load_data(tfds_config(prepared, cache="memory"))
    assert digests(cached.train_epochs(0, 3)) == run
    assert digests(cached.val) == digests(data.val)


def test_tfds_epoch_reads_the_shard_files_as_it_goes(prepared, tmp_path):
    import shutil

    import tensorflow as tf

    copy = tmp_path / "tfds"
    shutil.copytree(prepared, copy)
    data = load_data(tfds_config(copy, cache="none"))  # ('auto' holds so few in memory)
    next(iter(data.train))  # reads
    for shard in (copy / "tf_flowers" / "3.0.1").glob("tf_flowers-train.tfrecord-*"):
        shard.unlink()
    with pytest.raises(tf.errors.NotFoundError):
        batches(data.train_epochs(1, 1))  # nothing was held in memory


def test_tfds_workers_share_each_epoch_by_shard_file(prepared):
    data = load_data(tfds_config(prepared, batch_size=4))
    owner = shard_of_each_image(prepared)
    everything = sorted(digests(data.train_in_order.map(lambda x: (x, x))))
    shared = data.sharded(2)
    assert shared.steps_per_epoch == 9  # 35 images: 17 and 18 per worker, in batches of 2
    for epoch in (0, 1):
        seen = [digests(shared.train_epochs(epoch, 1, worker=w)) for w in (0, 1)]
        assert sorted(seen[0] + seen[1]) == everything  # together: every image exactly once
        assert sorted(map(len, seen)) == [17, 18]
        for w in (0, 1):
            assert len(list(shared.train_epochs(epoch, 1, worker=w))) == 9  # the same steps
            # A worker reads its own files: its half of the epoch spans at most 2 of the 3.
            assert len({owner[d] for d in seen[w]}) <= 2


def test_tfds_split_and_check_are_remembered(prepared, tmp_path, monkeypatch, caplog):
    import shutil

    copy = tmp_path / "tfds"
    shutil.copytree(prepared, copy)
    first = load_data(tfds_config(copy))
    passes = []
    real = tfds_stream.TfdsSplit._decode_pass
    monkeypatch.setattr(
        tfds_stream.TfdsSplit, "_decode_pass", lambda self: passes.append(1) or real(self)
    )
    with caplog.at_level(logging.INFO, logger="tl_keras"):
        again = load_data(tfds_config(copy))
    assert passes == [] and "labels and decode check remembered" in caplog.text
    assert digests(again.val) == digests(first.val)
    assert digests(again.train_epochs(1, 1)) == digests(first.train_epochs(1, 1))
    shard = next((copy / "tf_flowers" / "3.0.1").glob("tf_flowers-train.tfrecord-*"))
    os.utime(shard, ns=(time.time_ns(), time.time_ns()))  # a shard rewritten: check again
    load_data(tfds_config(copy))
    assert passes == [1]


# --- the remembered check of a folder --------------------------------------------------------------
def aged(root):
    """Files last written a minute ago: a tree at rest (see check.RACY_S)."""
    old = time.time_ns() - 60 * 10**9
    for folder, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(folder, name), ns=(old, old))


def test_folder_decode_check_is_remembered_and_redone_for_what_changed(tmp_path, caplog):
    root = make_folder(tmp_path / "d", {"ant": 6, "bee": 6})
    aged(root)
    # cache='none': a cache is filled by decoding every image ('auto' would, for so few)
    cfg = tiny_data_config(root, val_fraction=0.0, max_skipped_fraction=0.1, cache="none")
    caplog.set_level(logging.INFO, logger="tl_keras")
    first = load_data(cfg)
    assert first.report.num_skipped == 0 and "remembered" not in caplog.text
    # Garbage in a file, with its size and time put back: a check that re-read the file would
    # skip it; the remembered one does not read it at all.
    victim = root / "ant" / "ant_00.png"
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    caplog.clear()
    again = load_data(cfg)
    assert again.report.num_skipped == 0
    assert "the decode check of 12 of 12 images is remembered" in caplog.text
    # Touched (a new time): decoded again, and now skipped; a new file is decoded too.
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    new = root / "bee" / "bee_new.png"
    new.write_bytes(encode(solid(1)))
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    caplog.clear()
    third = load_data(cfg)
    assert "the decode check of 11 of 13 images is remembered" in caplog.text
    assert [s["item"] for s in third.report.skipped] == [os.path.join("ant", "ant_00.png")]
    assert third.num_train == 12


def test_decode_check_shows_progress(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(check_lib, "Progress", functools.partial(Progress, quiet_s=0, every_s=0))
    root = make_folder(tmp_path / "d", {"ant": 3, "bee": 3})
    with caplog.at_level(logging.INFO, logger="tl_keras"):
        load_data(tiny_data_config(root, val_fraction=0.0))
    assert "[decode check] 6 / 6 images (100%) in" in caplog.text


# --- cache = "memory" ------------------------------------------------------------------------------
def test_memory_cache_refuses_what_would_not_fit(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", {"ant": 6, "bee": 6})
    # 12 images of 32 x 32 x 3 bytes = 36,864 bytes decoded; 40,000 bytes "available".
    monkeypatch.setattr(check_lib, "available_memory", lambda: 40_000)
    with pytest.raises(DataError) as e:
        load_data(tiny_data_config(root, cache="memory"))
    assert str(e.value) == (
        "cache='memory' needs about 37 kB for 12 images at 32x32 (train 8 + val 4), but only "
        "40 kB of memory is available (the cache may take 70% of it); use cache='file' "
        "(decoded once to <workdir>/data/cache and read back from disk) or cache='none'"
    )
    monkeypatch.setattr(check_lib, "available_memory", lambda: 60_000)  # fits: loads
    assert load_data(tiny_data_config(root, cache="memory")).num_train == 8


def test_auto_cache_keeps_a_small_set_in_memory_and_reads_a_large_one_from_its_files(
    tmp_path, monkeypatch, caplog
):
    """cache='auto' (the default): the same batches bitwise as cache='none', read from a uint8
    store while the decoded images take at most AUTO_MEMORY_MAX (and fit), else from the files;
    never the memory cache's refusal."""
    root = make_folder(tmp_path / "d", {"ant": 6, "bee": 6})
    plain = load_data(tiny_data_config(root, cache="none"))
    assert Pipeline.__dataclass_fields__["cache"].default == "auto"
    with caplog.at_level(logging.INFO, logger="tl_keras"):
        auto = load_data(tiny_data_config(root))
    assert auto.pipeline.cache == "memory" and auto.report.pipeline["cache"] == "memory"
    assert all(images.store is not None for images in auto.images.values())
    assert "data: cache: memory (auto: the decoded images take about 37 kB" in caplog.text
    for ours, theirs in (
        (auto.train_epochs(0, 2), plain.train_epochs(0, 2)),
        (auto.val, plain.val),
    ):
        for a, b in zip(batches(ours), batches(theirs), strict=True):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])

    monkeypatch.setattr(check_lib, "AUTO_MEMORY_MAX", 36_863)  # one byte short of the 12 images
    large = load_data(tiny_data_config(root))
    assert large.pipeline.cache == "none"
    assert all(images.store is None for images in large.images.values())
    monkeypatch.setattr(check_lib, "AUTO_MEMORY_MAX", 2**30)
    monkeypatch.setattr(check_lib, "available_memory", lambda: 40_000)  # 70% of it is too little
    assert load_data(tiny_data_config(root)).pipeline.cache == "none"


# --- arrays ----------------------------------------------------------------------------------------
def test_npz_images_are_memory_mapped_not_loaded(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 20, 20, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y)
    data = load_data(tiny_data_config(tmp_path / "a.npz", val_fraction=0.25))
    split = list_npz(str(tmp_path / "a.npz")).splits["train"]
    assert isinstance(split.items, np.memmap)

    in_memory = from_arrays(tiny_data_config("", val_fraction=0.25), x, y)
    for a, b in zip(
        batches(data.train_epochs(0, 2)), batches(in_memory.train_epochs(0, 2)), strict=True
    ):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
