"""Data sources into tf.data pipelines the model can train on.

Every source returns a `DataBundle`: batched datasets of (image, one-hot label) pairs, images as
float32 raw 0..255 pixels at the model's input size (preprocessing is inside the model), plus the
class names in label order. Labels are one-hot so label smoothing, MixUp and CutMix need no
special case.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tl_keras.errors import DataError

log = logging.getLogger("tl_keras")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class DataBundle:
    """Datasets of one data source, and what the runner needs to know about them.

    The training order is a pure function of (seed, global epoch): `train_epochs(first, n)`
    replays exactly the batches an uninterrupted run would have seen from epoch `first` on, so a
    phase started in a new process, or a resumed run, trains on the same sequence.

    Attributes:
      make_train_epoch: global epoch (int64 scalar tensor, 0-based) -> that epoch's batches.
      val: the validation split (batched, fixed order), or None.
      class_names: label index to class name.
      num_train: number of training images.
      num_val: number of validation images.
      batch_size: images per batch.
      source: a short description for logs and the saved config.
    """

    make_train_epoch: Callable[[tf.Tensor], tf.data.Dataset]
    val: tf.data.Dataset | None
    class_names: list[str]
    num_train: int
    num_val: int
    batch_size: int
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_train / self.batch_size)

    def train_epochs(self, first_epoch: int, num_epochs: int) -> tf.data.Dataset:
        """Returns the batches of epochs first_epoch .. first_epoch + num_epochs - 1, in order.

        Pass it to `fit(..., initial_epoch=first_epoch, steps_per_epoch=self.steps_per_epoch)`.
        """
        epochs = tf.data.Dataset.range(first_epoch, first_epoch + num_epochs)
        return epochs.flat_map(self.make_train_epoch).prefetch(AUTOTUNE)

    @property
    def train(self) -> tf.data.Dataset:
        """One epoch of training batches (epoch 0's order), for quick use in notebooks."""
        return self.train_epochs(0, 1)


def list_image_folder(root: str) -> tuple[list[str], list[int], list[str]]:
    """Lists an image-folder tree: one sub-folder per class, images inside (any depth).

    Returns:
      (file paths, integer labels, class names), classes sorted by name, files sorted.

    Raises:
      DataError: the folder is missing or has fewer than two classes with images.
    """
    if not os.path.isdir(root):
        raise DataError(
            f"data_dir={root!r} is not a folder; point it at a folder with one sub-folder of "
            "images per class (or use data_dir='synthetic' for the built-in shapes)"
        )
    class_names = sorted(
        d
        for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for label, name in enumerate(class_names):
        found = []
        for folder, _, names in os.walk(os.path.join(root, name)):
            found += [
                os.path.join(folder, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)
            ]
        if not found:
            empty.append(name)
        files += sorted(found)
        labels += [label] * len(found)
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(empty)} in {root!r} contain no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
        )
    if len(class_names) < 2:
        raise DataError(
            f"data_dir={root!r} has {len(class_names)} class folder(s); a classifier needs at "
            "least 2 sub-folders, one per class"
        )
    return files, labels, class_names


def stratified_split(
    labels: Sequence[int], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices so each class keeps `val_fraction` of its items for validation.

    Deterministic for a seed, and independent of file-system listing order (callers sort).

    Returns:
      (train indices, validation indices), each sorted.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction)) if val_fraction > 0 else 0
        if val_fraction > 0:
            n_val = min(max(n_val, 1), len(idx) - 1)  # every class in both splits
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def _decode(path: tf.Tensor, image_size: int) -> tf.Tensor:
    raw = tf.io.read_file(path)
    image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), method="bilinear")
    image.set_shape((image_size, image_size, 3))
    return image


def epoch_permutation(n: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The order of `n` items in a given epoch: a pure function of (seed, epoch)."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)


def files_dataset(
    files: Sequence[str],
    labels: Sequence[int],
    num_classes: int,
    *,
    image_size: int,
    batch_size: int,
) -> tf.data.Dataset:
    """Builds a batched dataset of (float32 0..255 image, one-hot label), in the given order."""
    ds = tf.data.Dataset.from_tensor_slices((list(files), np.asarray(labels, np.int32)))
    ds = ds.map(
        lambda p, y: (_decode(p, image_size), tf.one_hot(y, num_classes)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size)


def epoch_files_fn(
    files: Sequence[str],
    labels: Sequence[int],
    num_classes: int,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """Returns epoch -> that epoch's shuffled batches of the given files."""
    files_t = tf.constant(list(files))
    labels_t = tf.constant(np.asarray(labels, np.int32))
    n = len(files)

    def make_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.data.Dataset.from_tensor_slices(epoch_permutation(n, seed, epoch))
        ds = order.map(
            lambda i: (
                _decode(tf.gather(files_t, i), image_size),
                tf.one_hot(tf.gather(labels_t, i), num_classes),
            ),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
        return ds.batch(batch_size)

    return make_epoch


def load_image_folder(
    root: str, *, image_size: int, batch_size: int, val_fraction: float, seed: int
) -> DataBundle:
    """Loads an image-folder tree with a seeded, stratified train/validation split."""
    files, labels, class_names = list_image_folder(root)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    files_a, labels_a = np.asarray(files), np.asarray(labels)
    common = dict(num_classes=len(class_names), image_size=image_size, batch_size=batch_size)
    make_train = epoch_files_fn(files_a[train_idx], labels_a[train_idx], seed=seed, **common)
    val = (
        files_dataset(files_a[val_idx], labels_a[val_idx], **common).prefetch(AUTOTUNE)
        if len(val_idx)
        else None
    )
    log.info(
        "data: %s: %d classes, %d train / %d validation images",
        root,
        len(class_names),
        len(train_idx),
        len(val_idx),
    )
    return DataBundle(
        make_train, val, class_names, len(train_idx), len(val_idx), batch_size, source=root
    )


def load_data(config, *, workdir: str | None = None) -> DataBundle:
    """Loads the data a config names, at the image size of its backbone.

    Args:
      config: a `tl_keras.config.Config`.
      workdir: where 'synthetic' data is drawn (under <workdir>/data).

    Raises:
      DataError: the data cannot be used; the message says why and what to do.
    """
    from tl_keras import backbones, synthetic

    image_size = config.image_size or backbones.get(config.backbone).default_size
    root = config.data_dir
    if not root:
        raise DataError(
            "no data given: set data_dir (an image-folder tree) or data_dir='synthetic'"
        )
    if root == "synthetic":
        if workdir is None:
            raise DataError("data_dir='synthetic' needs a workdir to draw the images into")
        root = synthetic.make_shapes(
            os.path.join(workdir, "data", "synthetic"),
            images_per_class=config.synthetic_images_per_class,
            seed=config.seed,
        )
    return load_image_folder(
        root,
        image_size=image_size,
        batch_size=config.batch_size,
        val_fraction=config.val_fraction,
        seed=config.seed,
    )
