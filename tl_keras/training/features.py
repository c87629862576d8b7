"""Cached features for feature extraction: run the frozen base once, train the head on its output.

In `fe` the base is frozen and in inference mode, so every epoch recomputes the same features:
the forward pass through the base is nearly all of the cost. (TensorFlow's old image-retraining
script called these cached "bottlenecks".) Here the pooled features of the training and
validation images are computed once, and the head trains on them:

* **The same training as the live path.** Each epoch visits the examples in the same order
  (`data.epoch_permutation(seed, epoch)`), in the same batches, with the same label smoothing;
  the head is made of the model's own layer objects, and it is compiled with the model's own
  optimizer instance, so the model's checkpoints carry the optimizer state and a resumed run
  continues exactly. Only what the base computes differs: cached features come from the base in
  true inference mode. (Under `fit`, Keras runs EfficientNet's stochastic-depth dropout even in
  frozen blocks; the cached path does not. MobileNets have none, and their cached and live
  paths agree to float precision: tests/test_features.py.)
* **Only when valid.** Any augmentation, MixUp or CutMix changes the images every epoch, so the
  live path runs instead, with a log line saying why. A phase that trains any part of the base
  always runs live.
* **Never stale.** A cache is keyed by a digest of the base's actual weights (so of the backbone,
  width and weights file), the image size and preprocessing, and the exact images of each split
  with their resize settings. In memory it lives for the process; with `feature_cache = "file"`
  it is written under `<workdir>/cache/features/<key>/` in shards of `SHARD_ROWS` rows as the
  pass goes (the folder atomically) and read back memory-mapped, batch by batch: features that
  do not fit in memory still train at cached speed. Later runs reuse it.
* **Shared by workers.** Under multi-worker training each worker trains the head on its own part
  of each epoch's order, exactly as the live path splits it (`DataBundle.sharded`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import time
from typing import TYPE_CHECKING

import numpy as np

from tl_keras import io
from tl_keras.model.forward import forward
from tl_keras.progress import Progress

if TYPE_CHECKING:
    import keras

log = logging.getLogger("tl_keras")

# --feature_cache: keep features in this process, also in files under the workdir, or never.
# TensorFlow is imported inside the functions, so `tl_keras.config` validates against MODES
# without it.
MODES = ("memory", "file", "off")
SHARD_ROWS = 8192  # feature rows per shard file (feature_cache='file')
_MEMORY: dict[str, dict] = {}  # key -> {"train": rows, "val": rows}; one process


def why_not_cached(phase, pipeline) -> str | None:
    """Returns why a phase cannot train on cached features, or None when it can."""
    if phase.trains_base:
        return f"phase {phase.name!r} trains part of the base"
    if pipeline is None:
        return "the data source gives no per-example access (a custom DataBundle)"
    if pipeline.augment != "none" or pipeline.mixup or pipeline.cutmix:
        return (
            f"augmentation changes the images every epoch (augment={pipeline.augment!r}, "
            f"mixup={pipeline.mixup:g}, cutmix={pipeline.cutmix:g})"
        )
    return None


def head_model(model: keras.Model) -> keras.Model:
    """The model's head alone (its own layer objects): pooled features in, probabilities out."""
    import keras

    from tl_keras.model.classifier import FEATURE_LAYER, HEAD_LAYERS

    features = keras.Input(
        shape=(model.get_layer(FEATURE_LAYER).output.shape[-1],), name="features"
    )
    x = features
    for name in HEAD_LAYERS:
        if name in [layer.name for layer in model.layers]:
            x = model.get_layer(name)(x)
    return keras.Model(features, x, name="head")


def feature_extractor(model: keras.Model) -> keras.Model:
    """image -> pooled features, the base in inference mode (preprocessing included)."""
    import keras

    from tl_keras.model.classifier import FEATURE_LAYER

    return keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output, name="features")


def _digest_base(model: keras.Model) -> str:
    import keras

    from tl_keras.model.classifier import FEATURE_LAYER

    h = hashlib.sha256()
    for layer in model.layers:  # the preprocessing and the base, up to the pooled features
        for w in layer.weights:
            h.update(w.path.encode())
            h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
        if layer.name == FEATURE_LAYER:
            break
    return h.hexdigest()


def cache_key(model: keras.Model, data) -> str:
    """Identifies the features: the base's weights, the input size, and each split's images."""
    source = data.feature_source_key
    h = hashlib.sha256()
    h.update(_digest_base(model).encode())
    h.update(str(model.inputs[0].shape).encode())
    h.update(str(source() if callable(source) else source).encode())
    return h.hexdigest()[:24]


class ShardedRows:
    """Feature rows stored as `.npy` shards of `SHARD_ROWS` rows, memory-mapped: rows are read
    from disk as batches ask for them, so features larger than memory train just as well.

    Args:
      folder: the cache entry's folder.
      split: 'train' or 'val'.
      count: rows.
      dim: values per row.
    """

    def __init__(self, folder: str, split: str, count: int, dim: int):
        self.shape = (count, dim)
        shards = math.ceil(count / SHARD_ROWS)
        self._shards = [
            np.load(os.path.join(folder, _shard_name(split, k)), mmap_mode="r")
            for k in range(shards)
        ]

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The rows `idx`, in that order, as one float32 array."""
        idx = np.asarray(idx, np.int64)
        out = np.empty((len(idx), self.shape[1]), np.float32)
        shard, row = np.divmod(idx, SHARD_ROWS)
        for k in np.unique(shard):
            at = shard == k
            out[at] = self._shards[k][row[at]]
        return out


def _shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.npy"


def _take(rows, idx: np.ndarray) -> np.ndarray:
    return rows.take(idx) if isinstance(rows, ShardedRows) else rows[idx]


class _Sink:
    """Where the feature pass puts each batch of rows: arrays in memory, or shard files."""

    def __init__(self, folder: str | None, split: str):
        self.folder, self.split = folder, split
        self.parts: list[np.ndarray] = []
        self.buffered = self.count = self.shards = 0

    def add(self, rows: np.ndarray) -> None:
        self.parts.append(rows)
        self.buffered += len(rows)
        self.count += len(rows)
        if self.folder and self.buffered >= SHARD_ROWS:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        rows = np.concatenate(self.parts) if self.parts else np.zeros((0, 0), np.float32)
        while len(rows) >= SHARD_ROWS or (final and len(rows)):
            np.save(
                os.path.join(self.folder, _shard_name(self.split, self.shards)), rows[:SHARD_ROWS]
            )
            rows, self.shards = rows[SHARD_ROWS:], self.shards + 1
        self.parts, self.buffered = [rows] if len(rows) else [], len(rows)

    def result(self, dim: int) -> np.ndarray | None:
        if self.folder:
            self._flush(final=True)
            return None
        return np.concatenate(self.parts) if self.parts else np.zeros((0, dim), np.float32)


def _feature_pass(extractor, data, folder: str | None) -> dict[str, np.ndarray | None]:
    """Runs the frozen base over the train (index order) and val images once, a batch at a time,
    with progress; each batch's features go to memory or, with `folder`, to shard files."""
    dim = int(extractor.outputs[0].shape[-1])
    sources = {"train": data.train_in_order}
    if data.val is not None:
        sources["val"] = data.val.map(lambda x, y: x)
    total = data.num_train + (data.num_val if data.val is not None else 0)
    out, counts = {}, {}
    with Progress("feature pass", total) as progress:
        for split, images in sources.items():
            sink = _Sink(folder, split)
            for _, rows in forward(extractor, images, progress=progress, fold_batchnorm=True):
                sink.add(np.asarray(rows, np.float32))
            out[split], counts[split] = sink.result(dim), sink.count
    out.setdefault("val", None if folder else np.zeros((0, dim), np.float32))
    counts.setdefault("val", 0)
    out["counts"], out["dim"] = counts, dim
    return out


def _load_file_cache(folder: str, data=None) -> dict[str, ShardedRows] | None:
    """The stored features, or None when there are none or they are damaged (a cache is only a
    shortcut: a damaged one is removed, with a warning, and computed again)."""
    index_path = os.path.join(folder, "index.json")
    if not os.path.isfile(index_path):
        return None
    try:
        index = io.read_json(index_path)
        stored = {
            split: ShardedRows(folder, split, int(index["counts"][split]), int(index["dim"]))
            for split in ("train", "val")
        }
        for split, rows in stored.items():
            if rows.shape[0] != sum(len(s) for s in rows._shards) or any(
                s.shape[1:] != (rows.shape[1],) for s in rows._shards
            ):
                raise ValueError(f"{split}: the shards do not hold {rows.shape[0]} rows")
        if data is not None and (len(stored["train"]), len(stored["val"])) != (
            data.num_train,
            data.num_val,
        ):
            raise ValueError(f"{len(stored['train'])} + {len(stored['val'])} rows")
        return stored
    except Exception as e:  # json, numpy and shape refusals alike
        log.warning("the feature cache %s is damaged (%s): computing it again", folder, e)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def compute(
    model: keras.Model, data, *, mode: str, workdir: str | None
) -> tuple[dict, float, bool]:
    """Returns the pooled features of the train (index order) and val splits.

    With mode='file' and a workdir they are written under `<workdir>/cache/features/<key>/` in
    shards as the pass goes (never all in memory) and read back memory-mapped.

    Returns:
      ({'train': N x D rows, 'val': M x D rows (empty without validation)}: arrays, or
      `ShardedRows` from files; seconds spent; reused or not).
    """
    key = cache_key(model, data)
    folder = os.path.join(workdir, "cache", "features", key) if workdir and mode == "file" else None
    if key in _MEMORY:
        return _MEMORY[key], 0.0, True
    if folder and (stored := _load_file_cache(folder, data)) is not None:
        _MEMORY.clear()
        _MEMORY[key] = stored
        return stored, 0.0, True
    start = time.perf_counter()
    extractor = feature_extractor(model)
    if folder is None:
        result = _feature_pass(extractor, data, None)
        features = {"train": result["train"], "val": result["val"]}
    else:
        with io.atomic_path(folder) as tmp:
            os.makedirs(tmp)
            result = _feature_pass(extractor, data, tmp)
            io.atomic_write_json(  # last: a folder with its index is complete
                os.path.join(tmp, "index.json"), {"counts": result["counts"], "dim": result["dim"]}
            )
        features = _load_file_cache(folder)
    seconds = time.perf_counter() - start
    _MEMORY.clear()  # one entry: a process trains one model at a time
    _MEMORY[key] = features
    return features, seconds, False


def feature_bundle(data, features: dict):
    """A DataBundle over cached features: the live path's order, batches and targets."""
    train = features["train"]
    return rows_bundle(data, lambda epoch, i: _take(train, i), train.shape[1:], features.get("val"))


def rows_bundle(data, take, row_shape: tuple, val_rows=None):
    """A DataBundle over rows computed beforehand, one per training image (cached features, a
    frozen bottom's outputs): each epoch visits them in the live path's order and batches, with
    the live path's targets (label smoothing).

    Args:
      data: the live bundle (its order, labels and batch size).
      take: `take(epoch, idx)` -> the rows of training images `idx` (NumPy, float32) for that
        global epoch.
      row_shape: the shape of one row.
      val_rows: the validation images' rows in the split's order (an array or `ShardedRows`),
        or None for no validation.
    """
    import tensorflow as tf

    from tl_keras.data import augment, images

    p = data.pipeline
    labels = tf.constant(data.train_labels, tf.int32)
    k = data.num_classes
    n = len(data.train_labels)
    smooth = augment.batch_fn(mixup=0.0, cutmix=0.0, label_smoothing=p.label_smoothing)
    plain = tf.autograph.experimental.do_not_convert

    def order(epoch, worker, workers):
        if data.train_order is not None:  # the images' own order (a TFDS split's stream too)
            return data.train_order(epoch, worker, workers)
        lo, hi = images.worker_range(n, worker, workers)
        return tf.data.Dataset.from_tensor_slices(images.epoch_permutation(n, p.seed, epoch)[lo:hi])

    # Plain TensorFlow: traced as written, not rewritten by autograph first (tl_keras.data.bundle).
    @plain
    def make_epoch(epoch, worker=0, workers=1):
        # The live path's batches (the epoch's order, cut as the live path cuts it), gathered a
        # batch at a time: one gather per batch instead of one dataset element per image.
        ds = images.worker_batches(
            order(epoch, worker, workers),
            n=n,
            batch_size=p.batch_size,
            workers=workers,
            worker=worker,
        )
        e = tf.cast(epoch, tf.int64)
        ds = ds.map(
            lambda i: (_gather(take, [e, i], row_shape), tf.one_hot(tf.gather(labels, i), k))
        )
        if smooth is not None:
            key = images.epoch_key(p.seed, epoch)
            ds = ds.enumerate().map(lambda b, xy: smooth(xy[0], xy[1], key))
        return ds

    return dataclasses.replace(
        data,
        make_train_epoch=plain(lambda epoch: make_epoch(epoch)),
        make_shard_epoch=make_epoch,
        val=None if val_rows is None or data.val is None else val_dataset(data, val_rows),
    )


def _gather(take, args: list, row_shape: tuple):
    """Rows from NumPy inside a tf.data map: `take(*args)` -> float32 rows of `row_shape`."""
    import tensorflow as tf

    out = tf.numpy_function(take, args, tf.float32, stateful=False)
    return tf.ensure_shape(out, (None, *row_shape))


def val_dataset(data, rows):
    """The validation split as (rows, one-hot label) batches: `rows` in the split's order (an
    array or `ShardedRows`), batched as the live split is."""
    import tensorflow as tf

    from tl_keras.data import images

    labels = data.val_labels
    if labels is None:  # a bundle built by hand: read its labels once
        labels = np.concatenate([y.numpy() for _, y in data.val], axis=0).argmax(-1)
    y = tf.constant(np.asarray(labels, np.int32))
    shape, k = tuple(rows.shape[1:]), data.num_classes
    plain = tf.autograph.experimental.do_not_convert

    def take(i):
        return _take(rows, i)

    return images.untuned(  # Keras iterates it again every epoch (see `untuned`)
        tf.data.Dataset.range(len(labels))
        .batch(data.pipeline.batch_size)
        .map(plain(lambda i: (_gather(take, [i], shape), tf.one_hot(tf.gather(y, i), k))))
    )


__all__ = [
    "MODES",
    "ShardedRows",
    "compute",
    "feature_bundle",
    "head_model",
    "rows_bundle",
    "val_dataset",
    "why_not_cached",
]
