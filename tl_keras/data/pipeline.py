"""How images become batches: the `Pipeline` (its settings) and the datasets it builds.

A `Pipeline` says how the images of a split are read (size, resize, cache) and what training
batches get on top (augmentation, MixUp / CutMix, label smoothing); `Pipeline.from_settings`
makes one from a run's data section (`tl_keras.data.settings`). Here an image is read its way (`prepare`, `load`: decoded,
resized and rounded to whole pixels, so a cached image and a fresh one are bitwise equal), and
the datasets are built: batches of (float32 image, one-hot label), a split in its fixed order,
never augmented (`eval_dataset`), or each epoch's shuffled, augmented training batches, a pure
function of (seed, epoch) (`shard_epoch_fn`).
`tl_keras.data.bundle` puts them together into the `DataBundle` a run trains on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras.data import augment as augment_lib
from tl_keras.data.images import (
    AUTOTUNE,
    BATCH_STREAM,
    EXAMPLE_STREAM,
    Images,
    as_uint8,
    decode,
    epoch_key,
    epoch_order,
    fold,
    in_order,
    tf_error_text,
    to_rgb,
    untuned,
    worker_batches,
)
from tl_keras.data.settings import NO_AUGMENTATION, Augmentation, DataSettings, default
from tl_keras.errors import DataError, DataTypeError
from tl_keras.progress import Progress

_GATHER_BATCH = 256  # rows one numpy gather reads from an array or a cache store


# --- the settings of a pipeline --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How images become batches (the data fields of a `Config`, see there for their meaning).

    Its fields are a `DataSettings`'s reading fields and an `Augmentation`'s, their defaults
    taken from there (the one home of each), and where cache='file' keeps its store.
    `from_settings` makes a run's.
    """

    image_size: int
    batch_size: int
    seed: int = 0
    resize_method: str = default("resize_method")
    resize_mode: str = default("resize_mode")
    cache: str = default("cache")
    cache_dir: str | None = None
    max_skipped_fraction: float = default("max_skipped_fraction")
    augment: str = NO_AUGMENTATION.augment
    mixup: float = NO_AUGMENTATION.mixup
    cutmix: float = NO_AUGMENTATION.cutmix
    label_smoothing: float = NO_AUGMENTATION.label_smoothing

    @classmethod
    def from_settings(
        cls,
        settings: DataSettings,
        augmentation: Augmentation = NO_AUGMENTATION,
        *,
        workdir: str | None = None,
    ) -> Pipeline:
        """How `settings`' images become batches, with `augmentation` on the training batches.

        Args:
          settings: the run's data settings (their reading fields and batch size).
          augmentation: the training-only settings (default: none).
          workdir: where cache='file' keeps its store (<workdir>/data/cache).
        """
        # Each field that is one of the settings': their values, not copies of their names (the
        # other fields are `augmentation`'s and cache_dir).
        reading = {f.name for f in dataclasses.fields(cls)} & set(settings.__dataclass_fields__)
        return cls(
            **{name: getattr(settings, name) for name in sorted(reading)},
            cache_dir=os.path.join(workdir, "data", "cache") if workdir else None,
            **dataclasses.asdict(augmentation),
        )

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("seed", "cache_dir")}


# --- reading an image the pipeline's way ---------------------------------------------------------
def prepare(image: tf.Tensor, p: Pipeline) -> tf.Tensor:
    """Any-size uint8 RGB -> uint8 S x S x 3 as `resize_mode` / `resize_method` say.

    The result is rounded to whole pixel values, so a cached image and a freshly decoded one
    are bitwise equal and a cache can hold uint8 (a quarter of float32).
    """
    s = p.image_size
    if p.resize_mode == "crop_or_pad":
        out = tf.image.resize_with_crop_or_pad(image, s, s)
    elif p.resize_mode == "pad":
        out = tf.image.resize_with_pad(image, s, s, method=p.resize_method)
    else:
        if p.resize_mode == "crop":  # the centred square, then resize: the aspect is kept
            h, w = tf.shape(image)[0], tf.shape(image)[1]
            side = tf.minimum(h, w)
            image = tf.image.crop_to_bounding_box(
                image, (h - side) // 2, (w - side) // 2, side, side
            )
        out = tf.image.resize(image, (s, s), method=p.resize_method)
    out = tf.clip_by_value(tf.round(tf.cast(out, tf.float32)), 0.0, 255.0)
    return tf.ensure_shape(tf.cast(out, tf.uint8), (s, s, 3))


def load_image_file(path: str, p: Pipeline) -> np.ndarray:
    """Reads one image file exactly as training and evaluation do: float32 0..255, S x S x 3.

    For inference on new files (`tl_keras.inference.predict`): the same decoder, resize mode, resize
    method and rounding as the pipeline `p` (`tl_keras.data.pipeline.Pipeline`).

    Raises:
      DataError: the file is missing, not a file, or not an image TensorFlow can decode.
    """
    if not os.path.isfile(path):
        raise DataError("no such file" if not os.path.exists(path) else "not a file")
    try:
        image = prepare(decode(tf.io.read_file(path)), p)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise DataError(f"not a readable image ({tf_error_text(e)[:120]})") from None
    return image.numpy().astype(np.float32)


def _rows_loader(store: Any, rows: np.ndarray, shape) -> Callable[[tf.Tensor], tf.Tensor]:
    """A batch of indices -> those images' rows of an array (read by numpy: never a TF copy)."""

    def read(idx):
        return as_uint8(store[rows[idx]])

    def gather(idx):
        out = tf.numpy_function(read, [idx], tf.uint8, stateful=False)
        return tf.ensure_shape(out, (None, *shape))

    return gather


def load(ds: tf.data.Dataset, images: Images, p: Pipeline) -> tf.data.Dataset:
    """Indices (or, for a streamed TFDS split, (index, encoded image)) -> (index, uint8 S x S x 3).

    The order is kept. Files are read and decoded in parallel; arrays and caches are read a batch
    of rows at a time.
    """
    parallel = dict(num_parallel_calls=AUTOTUNE, deterministic=True)
    if images.store is not None:
        s = p.image_size
        gather = _rows_loader(images.store, images.rows, (s, s, 3))
        return ds.batch(_GATHER_BATCH).map(lambda i: (i, gather(i))).unbatch()
    if images.kind == "files":
        paths = tf.constant(list(images.items), tf.string)
        ids = tf.constant(images.ids)

        def read(i):
            return i, prepare(decode(tf.io.read_file(tf.gather(paths, tf.gather(ids, i)))), p)

        return ds.map(read, **parallel)
    if images.kind == "tfds":
        return ds.map(lambda i, raw: (i, prepare(decode(raw), p)), **parallel)
    x = images.items
    gather = _rows_loader(x, images.ids, x.shape[1:])
    ds = ds.batch(_GATHER_BATCH).map(lambda i: (i, gather(i))).unbatch()
    return ds.map(lambda i, image: (i, prepare(to_rgb(image), p)), **parallel)


# --- datasets --------------------------------------------------------------------------------------
# Plain TensorFlow (no Python branch on a tensor): its maps are traced as written, not rewritten by
# autograph first (`do_not_convert` holds for every function traced while it runs).
@tf.autograph.experimental.do_not_convert
def eval_dataset(images: Images, num_classes: int, p: Pipeline) -> tf.data.Dataset:
    """Batches of (float32 image, one-hot label) in the split's fixed order, never augmented."""
    labels = tf.constant(images.labels, tf.int32)
    ds = load(in_order(images), images, p).map(
        lambda i, image: (
            tf.cast(image, tf.float32),
            tf.one_hot(tf.gather(labels, i), num_classes),
        ),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if not (images.streamed and images.store is None):  # a stream holds what it holds
        # Its length, which reading rows a block at a time hides: without it, Keras learns the
        # number of validation batches by running out, and says so ("Your input ran out of
        # data; interrupting training") after the first epoch of every phase on images.
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(images)))
    return untuned(ds.batch(p.batch_size).prefetch(AUTOTUNE))


def shard_epoch_fn(
    images: Images, num_classes: int, p: Pipeline
) -> Callable[[tf.Tensor, int, int], tf.data.Dataset]:
    """Returns (epoch, worker, workers) -> that worker's shuffled, augmented batches of the epoch.

    Every random choice (order, per-image augmentation, per-batch MixUp / CutMix) is keyed by
    (seed, epoch) and the example's index or the batch's position, and nothing else. One worker
    (the default) gets the whole epoch.
    """
    labels = tf.constant(images.labels, tf.int32)
    per_example = augment_lib.example_fn(p.augment, p.image_size)
    per_batch = augment_lib.batch_fn(
        mixup=p.mixup, cutmix=p.cutmix, label_smoothing=p.label_smoothing
    )

    def make_epoch(epoch: tf.Tensor, worker: int = 0, workers: int = 1) -> tf.data.Dataset:
        key = epoch_key(p.seed, epoch)

        def example(i, image):  # uint8 image: the geometric warps are cheaper on it
            if per_example is None:
                image = tf.cast(image, tf.float32)
            else:
                image = per_example(image, fold(key, EXAMPLE_STREAM, i))
            return image, tf.one_hot(tf.gather(labels, i), num_classes)

        order = epoch_order(images, p.seed, epoch, worker=worker, workers=workers)
        ds = load(order, images, p).map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = worker_batches(
            ds, n=len(images), batch_size=p.batch_size, workers=workers, worker=worker
        )
        if per_batch is not None:
            ds = ds.enumerate().map(
                lambda b, xy: per_batch(
                    xy[0], xy[1], fold(key, BATCH_STREAM, b * workers + worker)
                ),
                num_parallel_calls=AUTOTUNE,
                deterministic=True,
            )
        return ds

    return make_epoch


def train_epoch_fn(
    images: Images, num_classes: int, p: Pipeline
) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """Returns epoch -> that epoch's shuffled, augmented batches (one worker)."""
    make = shard_epoch_fn(images, num_classes, p)
    return lambda epoch: make(epoch, 0, 1)


# --- labelled data in memory ---------------------------------------------------------------------
def labelled_batches(
    dataset: Any, batch_size: int, *, progress: str | None = None
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Batches of (images, labels) from a `tf.data.Dataset` (batched or not) or an (images,
    labels) pair of arrays (images as float32), for evaluation and export checks. A dataset is
    read a batch at a time, never whole; with `progress`, the pass logs its counts under that
    label (`tl_keras.progress`).

    Raises:
      DataTypeError: neither a dataset of (images, labels) pairs nor a pair of arrays.
      DataError: images and labels of different lengths.
    """
    if isinstance(dataset, tf.data.Dataset):
        spec = dataset.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise DataTypeError(f"the dataset must yield (images, labels) pairs; it yields {spec}")
        if spec[0].shape.rank == 3:
            dataset = dataset.batch(batch_size)
        return _counted(dataset.as_numpy_iterator(), progress)
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = np.asarray(dataset[0], np.float32), np.asarray(dataset[1])
        if len(images) != len(labels):
            raise DataError(
                f"got {len(images)} images but {len(labels)} labels; they must line up one to one"
            )
        return _counted(
            (
                (images[i : i + batch_size], labels[i : i + batch_size])
                for i in range(0, len(images), batch_size)
            ),
            progress,
        )
    raise DataTypeError(
        "the data must be a tf.data.Dataset of (images, labels) or an (images, labels) pair of "
        f"arrays; got {type(dataset).__name__}"
    )


def _counted(batches: Iterable, label: str | None) -> Iterable:
    if label is None:
        yield from batches
        return
    with Progress(label) as progress:
        for images, labels in batches:
            yield images, labels
            progress.update(len(images))


def class_indices(labels: Any, count: int, num_classes: int | None = None) -> np.ndarray:
    """Labels as class indices: one-hot (or soft) rows become their argmax.

    Args:
      labels: class indices, shaped (N,) or (N, 1), or one-hot rows (N, classes).
      count: the number of images they label.
      num_classes: when given, the indices must lie in [0, num_classes) and one-hot rows must
        have that many columns.

    Raises:
      DataError: not one label per image, or (with `num_classes`) out of range.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        if num_classes is not None and labels.shape[1] != num_classes:
            raise DataError(
                f"labels are one-hot over {labels.shape[1]} classes but the data has "
                f"{num_classes} class names"
            )
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1).astype(np.int64)
    top = np.inf if num_classes is None else num_classes
    if len(labels) != count or (len(labels) and not 0 <= labels.min() <= labels.max() < top):
        allowed = "class indices" if num_classes is None else f"class indices in [0, {num_classes})"
        raise DataError(
            f"labels must be one per image, {allowed} or one-hot rows; "
            f"got shape {np.shape(labels)} for {count} images"
        )
    return labels


__all__ = [
    "Pipeline",
    "class_indices",
    "eval_dataset",
    "labelled_batches",
    "load",
    "load_image_file",
    "prepare",
    "shard_epoch_fn",
    "train_epoch_fn",
]
