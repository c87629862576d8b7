"""Data sources into tf.data pipelines the model can train on.

Three sources, one result: an image-folder tree (`data_dir=photos/`), a TensorFlow Datasets name
(`data_dir=tfds:tf_flowers`) or arrays (`data_dir=arrays.npz`, or `from_arrays(...)` in a
notebook) all become a `DataBundle`: batched datasets of (image, one-hot label) pairs, images as
float32 raw 0..255 pixels at the model's input size (preprocessing is inside the model), and the
class names in label order. Labels are one-hot so label smoothing, MixUp and CutMix need no
special case.

How a source becomes batches:

1. list it (file paths, encoded TFDS images, or arrays) and split off validation when no separate
   validation data is given (seeded, stratified, before any file is read, so the split does not
   depend on which files turn out unreadable);
2. decode every image once on the host, with the decoder training uses: a file that cannot be
   decoded is skipped, logged and counted (`DataBundle.report`, saved in each phase's
   `summary.json`), never met for the first time inside `fit`; with `cache` on, the same pass
   keeps the decoded, resized images;
3. per epoch: the order is a pure function of (seed, epoch); parallel decode and resize, then
   augmentation (training only; its randomness is also a pure function of seed, epoch and the
   example or batch index, see `tl_keras.augment`), batch, MixUp / CutMix / label smoothing,
   prefetch.

Every problem with the data is a `DataError` naming the path or value and what to do, raised
before training starts; the README's "Bad data" table lists each case.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras import augment as augment_lib
from tl_keras import io_utils
from tl_keras.errors import DataError, did_you_mean

log = logging.getLogger("tl_keras")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Sub-folder names that make data_dir a split layout (train/ val/ test/) rather than classes.
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
AUTOTUNE = tf.data.AUTOTUNE
TFDS_PREFIX = "tfds:"
# Independent random streams under one (seed, epoch) key.
_EXAMPLE_STREAM, _BATCH_STREAM = 1, 2
_CACHE_VERSION = 1
_SHOWN = 5  # file names shown in a log line or an error before "..."


# --- what the runner gets ------------------------------------------------------------------------
@dataclasses.dataclass
class DataReport:
    """What was loaded, and what was left out and why: logged, and saved with every phase.

    Attributes:
      source: the data source, as given.
      class_names: label index to class name.
      images: images used per split ('train', 'val', 'test').
      per_class: images per class per split, in label order.
      skipped: files that could not be decoded: {'split', 'item', 'reason'} each.
      ignored_files: files without an image extension in the class folders (README.txt...).
      image_sizes: the decoded sizes: distinct count, smallest, largest, most common.
      decode_check_s: seconds spent decoding every image once before training.
      pipeline: image size, resize, cache and augmentation settings.
    """

    source: str
    class_names: list[str]
    images: dict[str, int] = dataclasses.field(default_factory=dict)
    per_class: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    ignored_files: list[str] = dataclasses.field(default_factory=list)
    image_sizes: dict[str, Any] = dataclasses.field(default_factory=dict)
    decode_check_s: float = 0.0
    pipeline: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the `data` entry of each phase's summary.json)."""
        out = dataclasses.asdict(self)
        out["num_skipped"] = self.num_skipped
        out["num_ignored_files"] = len(self.ignored_files)
        out["ignored_files"] = self.ignored_files[:50]
        out["decode_check_s"] = round(self.decode_check_s, 3)
        return out


@dataclasses.dataclass
class DataBundle:
    """Datasets of one data source, and what the runner needs to know about them.

    The training order is a pure function of (seed, global epoch): `train_epochs(first, n)`
    replays exactly the batches an uninterrupted run would have seen from epoch `first` on, so a
    phase started in a new process, or a resumed run, trains on the same sequence. Augmentation
    keeps this: its randomness is a pure function of (seed, epoch, example or batch index).

    Attributes:
      make_train_epoch: global epoch (int64 scalar tensor, 0-based) -> that epoch's batches.
      val: the validation split (batched, fixed order, never augmented), or None.
      class_names: label index to class name.
      num_train: number of training images.
      num_val: number of validation images.
      batch_size: images per batch.
      source: a short description for logs and the saved config.
      test: the held-out test split (batched, fixed order, never augmented), or None.
      num_test: number of test images.
      report: what was loaded, skipped and ignored (see `DataReport`).
    """

    make_train_epoch: Callable[[tf.Tensor], tf.data.Dataset]
    val: tf.data.Dataset | None
    class_names: list[str]
    num_train: int
    num_val: int
    batch_size: int
    source: str = ""
    test: tf.data.Dataset | None = None
    num_test: int = 0
    report: DataReport | None = None
    # For cached features (tl_keras.features): the pipeline's settings, the training labels in
    # index order, the training images in index order (unaugmented), and the identity of the
    # train and validation images with their resize settings.
    pipeline: Pipeline | None = None
    train_labels: np.ndarray | None = None
    train_in_order: tf.data.Dataset | None = None
    feature_source_key: tuple[str, str] | None = None

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


# --- the settings of a pipeline --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How images become batches (the data fields of a `Config`, see there for their meaning)."""

    image_size: int
    batch_size: int
    seed: int = 0
    resize_method: str = "bilinear"
    resize_mode: str = "stretch"
    cache: str = "none"
    cache_dir: str | None = None
    max_skipped_fraction: float = 0.05
    augment: str = "none"
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0

    @classmethod
    def from_config(cls, config, *, workdir: str | None = None) -> Pipeline:
        from tl_keras import backbones

        return cls(
            image_size=config.image_size or backbones.get(config.backbone).default_size,
            batch_size=config.batch_size,
            seed=config.seed,
            resize_method=config.resize_method,
            resize_mode=config.resize_mode,
            cache=config.cache,
            cache_dir=os.path.join(workdir, "data", "cache") if workdir else None,
            max_skipped_fraction=config.max_skipped_fraction,
            augment=config.augment,
            mixup=config.mixup,
            cutmix=config.cutmix,
            label_smoothing=config.label_smoothing,
        )

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("seed", "cache_dir")}


# --- a split before decoding -----------------------------------------------------------------------
@dataclasses.dataclass
class Images:
    """The images of one split before decoding.

    Attributes:
      kind: 'files' (paths), 'bytes' (encoded images, from TFDS), 'array' (uint8 N x H x W x C
        pixels) or 'prepared' (uint8 N x S x S x 3, already at the model's size: a cache).
      items: the paths, encoded images or array.
      labels: int32 class index of each image.
      names: a name per image for messages (a path relative to the data folder, ...).
    """

    kind: str
    items: Any
    labels: np.ndarray
    names: Sequence[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> Images:
        idx = np.asarray(idx, dtype=np.int64)
        if self.kind in ("array", "prepared"):
            items = self.items[idx]
        else:
            items = [self.items[i] for i in idx]
        return Images(self.kind, items, self.labels[idx], [self.names[i] for i in idx])


@dataclasses.dataclass
class RawData:
    """A listed source: its splits (val/test may be None), class names and ignored files."""

    splits: dict[str, Images | None]
    class_names: list[str]
    source: str
    where: dict[str, str]  # split -> where it came from, for messages ('val_dir=...', ...)
    ignored: list[str] = dataclasses.field(default_factory=list)


# --- decoding --------------------------------------------------------------------------------------
def _decode(raw: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF/WebP -> uint8 RGB (grayscale replicated, alpha dropped)."""
    image = tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8)
    return tf.ensure_shape(image, (None, None, 3))


def _prepare(image: tf.Tensor, p: Pipeline) -> tf.Tensor:
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


def _raw_loader(images: Images) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """index -> encoded image bytes, or None for sources that are already pixels."""
    if images.kind == "files":
        paths = tf.constant(list(images.items), tf.string)
        return lambda i: tf.io.read_file(tf.gather(paths, i))
    if images.kind == "bytes":
        blobs = tf.constant(list(images.items), tf.string)
        return lambda i: tf.gather(blobs, i)
    return None


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    channels = image.shape[-1]
    if channels == 1:
        return tf.tile(image, [1, 1, 3])
    return image[..., :3]  # RGBA: alpha dropped, as decode_image(channels=3) does


def _image_loader(images: Images, p: Pipeline) -> Callable[[tf.Tensor], tf.Tensor]:
    """index -> uint8 S x S x 3 image at the model's size."""
    raw = _raw_loader(images)
    if raw is not None:
        return lambda i: _prepare(_decode(raw(i)), p)
    if images.kind == "array":
        pixels = tf.constant(images.items)
        return lambda i: _prepare(_to_rgb(tf.gather(pixels, i)), p)
    shape = (p.image_size, p.image_size, 3)
    if isinstance(images.items, np.memmap):  # a file cache: read the rows asked for
        store = images.items

        def read(i):
            out = tf.numpy_function(lambda j: np.asarray(store[j]), [i], tf.uint8, stateful=False)
            return tf.ensure_shape(out, shape)

        return read
    pixels = tf.constant(images.items)
    return lambda i: tf.gather(pixels, i)


def load_image_file(path: str, p: Pipeline) -> np.ndarray:
    """Reads one image file exactly as training and evaluation do: float32 0..255, S x S x 3.

    For inference on new files (`tl_keras.predict`): the same decoder, resize mode, resize
    method and rounding as the pipeline `p` (build it with `Pipeline.from_config(run_config)`).

    Raises:
      DataError: the file is missing, not a file, or not an image TensorFlow can decode.
    """
    if not os.path.isfile(path):
        raise DataError("no such file" if not os.path.exists(path) else "not a file")
    try:
        image = _prepare(_decode(tf.io.read_file(path)), p)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise DataError(f"not a readable image ({_tf_error_text(e)[:120]})") from None
    return image.numpy().astype(np.float32)


# --- datasets --------------------------------------------------------------------------------------
def epoch_permutation(n: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The order of `n` items in a given epoch: a pure function of (seed, epoch)."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)


def _fold(key: tf.Tensor, *data) -> tf.Tensor:
    for d in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(d, tf.int64))
    return key


def eval_dataset(images: Images, num_classes: int, p: Pipeline) -> tf.data.Dataset:
    """Batches of (float32 image, one-hot label) in the split's fixed order, never augmented."""
    load = _image_loader(images, p)
    labels = tf.constant(images.labels, tf.int32)
    ds = tf.data.Dataset.range(len(images)).map(
        lambda i: (tf.cast(load(i), tf.float32), tf.one_hot(tf.gather(labels, i), num_classes)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(p.batch_size).prefetch(AUTOTUNE)


def train_epoch_fn(
    images: Images, num_classes: int, p: Pipeline
) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """Returns epoch -> that epoch's shuffled, augmented batches.

    Every random choice (order, per-image augmentation, per-batch MixUp / CutMix) is keyed by
    (seed, epoch) and the example's index or the batch's position, and nothing else.
    """
    load = _image_loader(images, p)
    labels = tf.constant(images.labels, tf.int32)
    n = len(images)
    per_example = augment_lib.example_fn(p.augment, p.image_size)
    per_batch = augment_lib.batch_fn(
        mixup=p.mixup, cutmix=p.cutmix, label_smoothing=p.label_smoothing
    )

    def make_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        key = tf.stack([tf.constant(p.seed, tf.int64), tf.cast(epoch, tf.int64)])

        def example(i):
            image = load(i)  # uint8: the geometric warps are cheaper on it
            if per_example is None:
                image = tf.cast(image, tf.float32)
            else:
                image = per_example(image, _fold(key, _EXAMPLE_STREAM, i))
            return image, tf.one_hot(tf.gather(labels, i), num_classes)

        order = tf.data.Dataset.from_tensor_slices(epoch_permutation(n, p.seed, epoch))
        ds = order.map(example, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(p.batch_size)
        if per_batch is not None:
            ds = ds.enumerate().map(
                lambda b, xy: per_batch(xy[0], xy[1], _fold(key, _BATCH_STREAM, b)),
                num_parallel_calls=AUTOTUNE,
                deterministic=True,
            )
        return ds

    return make_epoch


# --- the decode check (and cache fill) --------------------------------------------------------------
def _tf_error_text(e: Exception) -> str:
    """A TensorFlow error message without its '{{function_node ...}}' and '[Op:...]' wrapping."""
    text = getattr(e, "message", None) or str(e)
    text = text.split("}} ", 1)[-1].split(" [Op:", 1)[0].strip()
    if text.startswith("Unknown image file format"):
        return "not an image TensorFlow can decode (unknown format)"
    if text.startswith("Input is empty"):
        return "empty file"
    return text.splitlines()[0][:200] if text else type(e).__name__


def _why_unreadable(raw: Callable, i: int) -> str:
    try:
        _decode(raw(tf.constant(i, tf.int64)))
    except (tf.errors.OpError, ValueError) as e:
        return _tf_error_text(e)
    return "decoding failed once, then succeeded: the file may be changing"


@dataclasses.dataclass
class _Check:
    ok: np.ndarray  # bool per image
    reasons: dict[int, str]  # index -> why it cannot be decoded
    sizes: collections.Counter  # (height, width) -> images
    prepared: np.ndarray | None  # uint8 N_ok x S x S x 3 when a cache is filled
    seconds: float


def _check_images(images: Images, p: Pipeline, *, keep: bool) -> _Check:
    """Decodes every image once, in parallel, with the decoder training uses."""
    start = time.perf_counter()
    n, s = len(images), p.image_size
    raw = _raw_loader(images)
    if raw is None:  # arrays: pixels already, checked by `_array_split`
        sizes = collections.Counter({tuple(images.items.shape[1:3]): n})
        prepared = None
        if keep:
            load = _image_loader(images, p)
            ds = tf.data.Dataset.range(n).map(load, num_parallel_calls=AUTOTUNE).batch(256)
            prepared = np.concatenate(list(ds.as_numpy_iterator()))
        return _Check(np.ones(n, bool), {}, sizes, prepared, time.perf_counter() - start)

    def probe(i):
        image = _decode(raw(i))
        out = {"index": i, "hw": tf.shape(image)[:2]}
        if keep:
            out["image"] = _prepare(image, p)
        return out

    ok = np.zeros(n, bool)
    sizes: collections.Counter = collections.Counter()
    prepared = np.zeros((n, s, s, 3), np.uint8) if keep else None
    # Order does not matter here (each result carries its index), so let the fastest finish first.
    ds = tf.data.Dataset.range(n).map(probe, num_parallel_calls=AUTOTUNE, deterministic=False)
    for batch in ds.ignore_errors().batch(256).as_numpy_iterator():
        ok[batch["index"]] = True
        sizes.update(map(tuple, batch["hw"].tolist()))
        if keep:
            prepared[batch["index"]] = batch["image"]
    reasons = {int(i): _why_unreadable(raw, int(i)) for i in np.flatnonzero(~ok)}
    if keep and not ok.all():
        prepared = prepared[ok]
    return _Check(ok, reasons, sizes, prepared, time.perf_counter() - start)


def _cache_key(images: Images, p: Pipeline) -> str:
    """Changes whenever the images, their labels or the way they are resized change."""
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_VERSION, images.kind, p.image_size, p.resize_mode]).encode())
    h.update(p.resize_method.encode())
    h.update(np.asarray(images.labels, np.int32).tobytes())
    if images.kind == "files":
        for path in images.items:
            st = os.stat(path)
            h.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    elif images.kind == "bytes":
        for blob in images.items:
            h.update(hashlib.sha256(blob).digest())
    else:
        h.update(str(images.items.shape).encode())
        h.update(np.ascontiguousarray(images.items).tobytes())
    return h.hexdigest()[:24]


def _checked(images: Images, split: str, p: Pipeline, report: DataReport) -> tuple[Images, _Check]:
    """Returns the split without its unreadable images (a cache when one is asked for).

    With cache='file', a cache written by an earlier run on the same files and settings is
    reused, decode check included.
    """
    folder = manifest_path = npy = None
    if p.cache == "file":
        if not p.cache_dir:
            raise DataError("cache='file' needs a workdir (the cache goes to <workdir>/data/cache)")
        folder = os.path.join(p.cache_dir, f"{split}-{_cache_key(images, p)}")
        manifest_path = os.path.join(folder, "manifest.json")
        npy = os.path.join(folder, "images.npy")
        if os.path.isfile(manifest_path) and os.path.isfile(npy):
            manifest = io_utils.read_json(manifest_path)
            kept = np.asarray(manifest["kept"], np.int64)
            for i, reason in manifest["skipped"]:
                report.skipped.append({"split": split, "item": images.names[i], "reason": reason})
            sizes = collections.Counter({tuple(k): v for k, v in manifest["sizes"]})
            check = _Check(np.isin(np.arange(len(images)), kept), {}, sizes, None, 0.0)
            stored = np.load(npy, mmap_mode="r")
            log.info("data: %s: reusing the file cache %s", split, folder)
            return Images(
                "prepared", stored, images.labels[kept], list(np.asarray(images.names)[kept])
            ), check
    check = _check_images(images, p, keep=p.cache != "none")
    report.decode_check_s += check.seconds
    for i, reason in sorted(check.reasons.items()):
        report.skipped.append({"split": split, "item": images.names[i], "reason": reason})
    kept = np.flatnonzero(check.ok)
    usable = images if check.ok.all() else images.subset(kept)
    if p.cache == "none":
        return usable, check
    prepared = check.prepared
    if p.cache == "file":
        os.makedirs(folder, exist_ok=True)
        with io_utils.atomic_path(npy) as tmp:
            np.save(tmp, prepared)
        io_utils.atomic_write_json(  # written last: its presence means the cache is complete
            manifest_path,
            {
                "kept": kept.tolist(),
                "skipped": sorted(check.reasons.items()),
                "sizes": [[list(k), v] for k, v in check.sizes.items()],
            },
        )
        prepared = np.load(npy, mmap_mode="r")
    return Images("prepared", prepared, usable.labels, usable.names), check


def folder_dataset(
    root: str, p: Pipeline, *, field: str = "data_dir"
) -> tuple[tf.data.Dataset, FolderListing, DataReport]:
    """A whole image-folder tree as one fixed-order, unaugmented dataset (e.g. to evaluate on).

    Unreadable files are skipped and reported exactly as in training (more than
    `p.max_skipped_fraction` of them is an error).

    Returns:
      (batches of (float32 image, one-hot label), the listing with `files` narrowed to the images
      kept, in dataset order, and the report of what was skipped).

    Raises:
      DataError: as `list_image_folder`, or too many unreadable files.
    """
    listing = list_image_folder(root, field=field)
    report = DataReport(
        source=root, class_names=list(listing.class_names), ignored_files=list(listing.ignored)
    )
    images = Images(
        "files", list(listing.files), np.asarray(listing.labels, np.int32), list(listing.files)
    )
    usable, check = _checked(images, "eval", dataclasses.replace(p, cache="none"), report)
    if len(usable) == 0 or (len(images) - len(usable)) > p.max_skipped_fraction * len(images):
        raise DataError(
            f"{_where(root, field)}: {len(images) - len(usable)} of {len(images)} images are unreadable "
            f"(e.g. {_skipped_text(report)}); fix or remove them"
        )
    report.images["eval"] = len(usable)
    kept = dataclasses.replace(
        listing, files=list(usable.names), labels=[int(v) for v in usable.labels]
    )
    return eval_dataset(usable, len(listing.class_names), p), kept, report


# --- assembling a bundle ---------------------------------------------------------------------------
def stratified_split(
    labels: Sequence[int], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices so each class keeps `val_fraction` of its items for validation.

    Deterministic for a seed, and independent of file-system listing order (callers sort).
    Every class with at least 2 items lands in both parts.

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


def _shown(items: Sequence[str]) -> str:
    items = list(items)
    return ", ".join(items[:_SHOWN]) + (
        f" ... ({len(items)} in all)" if len(items) > _SHOWN else ""
    )


def _skipped_text(report: DataReport) -> str:
    return _shown([f"{s['item']} ({s['reason']})" for s in report.skipped])


def _size_summary(sizes: collections.Counter) -> dict[str, Any]:
    if not sizes:
        return {}
    by_area = sorted(sizes, key=lambda hw: (hw[0] * hw[1], hw))
    fmt = "{}x{}".format
    return {
        "distinct": len(sizes),
        "smallest": fmt(*by_area[0]),
        "largest": fmt(*by_area[-1]),
        "most_common": fmt(*sizes.most_common(1)[0][0]),
    }


def _hold_out_validation(raw: RawData, val_fraction: float, seed: int) -> None:
    train = raw.splits["train"]
    counts = np.bincount(train.labels, minlength=len(raw.class_names))
    few = [f"{raw.class_names[k]} ({counts[k]})" for k in range(len(counts)) if counts[k] < 2]
    if few:
        raise DataError(
            f"class(es) {_shown(few)} in {raw.where['train']} have fewer than 2 images, so they "
            "cannot be in both training and validation; add images, or set val_fraction=0 to "
            "train without validation"
        )
    train_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
    raw.splits["train"], raw.splits["val"] = train.subset(train_idx), train.subset(val_idx)
    raw.where["val"] = f"val_fraction={val_fraction:g} of {raw.where['train']}"


def _check_every_class(images: Images, split: str, raw: RawData, report: DataReport) -> None:
    counts = np.bincount(images.labels, minlength=len(raw.class_names))
    missing = [raw.class_names[k] for k in range(len(counts)) if counts[k] == 0]
    if not missing:
        return
    skipped = [s["item"] for s in report.skipped if s["split"] == split]
    because = f" ({len(skipped)} unreadable file(s) were skipped)" if skipped else ""
    what = {"train": "training", "val": "validation", "test": "test"}[split]
    raise DataError(
        f"{what} data ({raw.where[split]}) has no images of class(es) {_shown(missing)}"
        f"{because}; every class needs {what} images, or its {what} figures say nothing about "
        "it. Add images of those classes"
        + (
            ", or leave the validation data unset to hold out val_fraction of the training data"
            if split == "val"
            else ""
        )
    )


def assemble(raw: RawData, p: Pipeline, *, val_fraction: float) -> DataBundle:
    """Checks a listed source, decodes it once, and builds its datasets.

    Raises:
      DataError: too many unreadable files, a class missing from a split, or a bad cache setting.
    """
    if raw.splits.get("val") is None and val_fraction > 0:
        _hold_out_validation(raw, val_fraction, p.seed)
    report = DataReport(raw.source, list(raw.class_names), ignored_files=list(raw.ignored))
    report.pipeline = p.describe()
    sizes: collections.Counter = collections.Counter()
    splits: dict[str, Images] = {}
    listed = 0
    for split, images in raw.splits.items():
        if images is None:
            continue
        listed += len(images)
        splits[split], check = _checked(images, split, p, report)
        sizes.update(check.sizes)
    report.image_sizes = _size_summary(sizes)
    if report.num_skipped > p.max_skipped_fraction * listed:
        raise DataError(
            f"{report.num_skipped} of {listed} images in {raw.source} cannot be decoded, more than "
            f"max_skipped_fraction={p.max_skipped_fraction:g} allows: {_skipped_text(report)}. "
            "Is this the right folder? Remove or re-save those files, or raise max_skipped_fraction"
        )
    for split, images in splits.items():
        _check_every_class(images, split, raw, report)
        report.images[split] = len(images)
        report.per_class[split] = np.bincount(
            images.labels, minlength=len(raw.class_names)
        ).tolist()
    _log_report(report, p)
    k = len(raw.class_names)
    val, test = splits.get("val"), splits.get("test")
    return DataBundle(
        make_train_epoch=train_epoch_fn(splits["train"], k, p),
        val=eval_dataset(val, k, p) if val is not None and len(val) else None,
        class_names=list(raw.class_names),
        num_train=len(splits["train"]),
        num_val=len(val) if val is not None else 0,
        batch_size=p.batch_size,
        source=raw.source,
        test=eval_dataset(test, k, p) if test is not None else None,
        num_test=len(test) if test is not None else 0,
        report=report,
        pipeline=p,
        train_labels=np.asarray(splits["train"].labels, np.int32),
        train_in_order=eval_dataset(splits["train"], k, p).map(lambda x, y: x),
        feature_source_key=(
            _cache_key(splits["train"], p),
            _cache_key(val, p) if val is not None and len(val) else "",
        ),
    )


def _log_report(r: DataReport, p: Pipeline) -> None:
    counts = " / ".join(f"{n} {split}" for split, n in r.images.items())
    log.info(
        "data: %s: %d classes, %s images (every image decoded once in %.1fs)",
        r.source,
        len(r.class_names),
        counts,
        r.decode_check_s,
    )
    if r.skipped:
        log.warning(
            "data: SKIPPED %d image file(s) that cannot be decoded (listed in each phase's "
            "summary.json under 'data'): %s",
            r.num_skipped,
            _skipped_text(r),
        )
    if r.ignored_files:
        log.info(
            "data: ignored %d file(s) outside the class folders or without an image extension "
            "(%s): %s",
            len(r.ignored_files),
            ", ".join(IMAGE_EXTENSIONS),
            _shown(r.ignored_files),
        )
    if r.image_sizes.get("distinct", 1) > 1:
        log.info(
            "data: mixed image sizes (%d distinct, %s to %s); all become %dx%d RGB (resize_mode=%s, "
            "resize_method=%s)",
            r.image_sizes["distinct"],
            r.image_sizes["smallest"],
            r.image_sizes["largest"],
            p.image_size,
            p.image_size,
            p.resize_mode,
            p.resize_method,
        )
    extras = [
        f"{k} {getattr(p, k):g}" for k in ("mixup", "cutmix", "label_smoothing") if getattr(p, k)
    ]
    log.info(
        "data: training augmentation: %s (%s)%s; cache: %s",
        p.augment,
        augment_lib.get(p.augment).description,
        "".join(f", {e}" for e in extras),
        p.cache,
    )


# --- image folders ---------------------------------------------------------------------------------
@dataclasses.dataclass
class FolderListing:
    """An image-folder tree: image paths, integer labels, class names and ignored files."""

    root: str
    files: list[str]
    labels: list[int]
    class_names: list[str]
    ignored: list[str]


def _where(root: str, field: str) -> str:
    rel = "" if os.path.isabs(root) else f" (relative to the current directory {os.getcwd()})"
    return f"{field}={root!r}{rel}"


def _subfolders(root: str) -> list[str]:
    return sorted(
        d
        for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_folder(
    root: str, *, class_names: Sequence[str] | None = None, field: str = "data_dir"
) -> FolderListing:
    """Lists an image-folder tree: one sub-folder per class, images inside (any depth).

    Hidden files and folders (.DS_Store, ._x.jpg) are left out; other files without an image
    extension are ignored and reported.

    Args:
      root: the folder.
      class_names: the classes it must have (a validation or test folder must match training).
      field: the config field that named the folder, for messages.

    Returns:
      The listing: files sorted, classes sorted by name (or in `class_names` order).

    Raises:
      DataError: the folder is missing or empty, has fewer than two classes, a class folder
        without images, or classes other than `class_names`.
    """
    if not os.path.isdir(root):
        raise DataError(
            f"{_where(root, field)} is not a folder; point it at a folder with one sub-folder of "
            "images per class"
        )
    found = _subfolders(root)
    loose = [n for n in os.listdir(root) if _is_image(n) and not n.startswith(".")]
    if not found:
        if loose:
            raise DataError(
                f"{_where(root, field)} holds {len(loose)} images but no class sub-folders; put "
                "each class's images in a sub-folder named after the class"
            )
        raise DataError(
            f"{_where(root, field)} is empty; it needs one sub-folder of images per class"
        )
    if class_names is None:
        names = found
        if len(names) < 2:
            raise DataError(
                f"{_where(root, field)} has 1 class folder ({names[0]!r}); a classifier needs at "
                "least 2 sub-folders, one per class"
            )
    else:
        names = list(class_names)
        extra, missing = sorted(set(found) - set(names)), sorted(set(names) - set(found))
        if extra:
            raise DataError(
                f"{_where(root, field)} has class folder(s) {_shown(extra)} that the training "
                f"data does not have (its classes: {_shown(names)}); its labels would be "
                "meaningless: remove or rename them"
            )
        if missing:
            raise DataError(
                f"{_where(root, field)} has no folder for class(es) {_shown(missing)} of the "
                "training data; every class needs images here too"
            )
    files: list[str] = []
    labels: list[int] = []
    ignored = [  # files beside the class folders belong to no class
        n
        for n in sorted(os.listdir(root))
        if os.path.isfile(os.path.join(root, n)) and not n.startswith(".")
    ]
    empty: list[str] = []
    for label, name in enumerate(names):
        images: list[str] = []
        others = 0
        for folder, dirs, entries in os.walk(os.path.join(root, name)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for entry in entries:
                if entry.startswith("."):
                    continue
                path = os.path.join(folder, entry)
                if _is_image(entry):
                    images.append(path)
                else:
                    others += 1
                    ignored.append(os.path.relpath(path, root))
        if not images:
            empty.append(f"{name} ({f'{others} other files' if others else 'empty'})")
        files += sorted(images)
        labels += [label] * len(images)
    if empty:
        raise DataError(
            f"class folder(s) {_shown(empty)} in {_where(root, field)} contain no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
        )
    return FolderListing(root, files, labels, names, ignored)


def _images_from_listing(listing: FolderListing) -> Images:
    names = [os.path.relpath(f, listing.root) for f in listing.files]
    return Images("files", listing.files, np.asarray(listing.labels, np.int32), names)


def _folder_source(config) -> RawData:
    root, val_dir, test_dir = config.data_dir, config.val_dir, config.test_dir
    if os.path.isdir(root):
        found = _subfolders(root)
        split_names = {n for names in SPLIT_FOLDERS.values() for n in names}
        if found and set(found) <= split_names:  # train/ val/ test/, each a class tree
            if "train" not in found:
                raise DataError(
                    f"{_where(root, 'data_dir')} has {', '.join(found)}/ but no train/ folder; "
                    "point data_dir at the training images"
                )
            val_found = [n for n in SPLIT_FOLDERS["val"] if n in found]
            if len(val_found) > 1:
                raise DataError(
                    f"{_where(root, 'data_dir')} has both val/ and validation/; keep one"
                )
            val_dir = val_dir or (os.path.join(root, val_found[0]) if val_found else "")
            test_dir = test_dir or (os.path.join(root, "test") if "test" in found else "")
            root = os.path.join(root, "train")
            log.info(
                "data: %s has train/ val/ test/ folders: using them as the splits", config.data_dir
            )
    train = list_image_folder(root)
    raw = RawData(
        {"train": _images_from_listing(train), "val": None, "test": None},
        train.class_names,
        source=config.data_dir,
        where={"train": _where(root, "data_dir")},
        ignored=list(train.ignored),
    )
    for split, folder, field in (("val", val_dir, "val_dir"), ("test", test_dir, "test_dir")):
        if folder:
            listing = list_image_folder(folder, class_names=train.class_names, field=field)
            raw.splits[split] = _images_from_listing(listing)
            raw.where[split] = _where(folder, field)
            raw.ignored += [os.path.join(folder, f) for f in listing.ignored]
    return raw


def load_image_folder(
    root: str,
    *,
    image_size: int,
    batch_size: int,
    val_fraction: float,
    seed: int,
    **pipeline: Any,
) -> DataBundle:
    """Loads an image-folder tree with a seeded, stratified train/validation split.

    Args:
      root: one sub-folder of images per class.
      image_size, batch_size, seed: as in `Config`.
      val_fraction: fraction of each class held out for validation.
      **pipeline: other `Pipeline` settings (augment, resize_mode, cache...).
    """
    from tl_keras.config import Config

    config = Config(data_dir=root, val_fraction=val_fraction)
    raw = _folder_source(config)
    p = Pipeline(image_size=image_size, batch_size=batch_size, seed=seed, **pipeline)
    return assemble(raw, p, val_fraction=val_fraction)


# --- TensorFlow Datasets ---------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


# pip names of modules TFDS builders import lazily, where they differ from the module's name.
_PIP_NAMES = {"cv2": "opencv-python", "PIL": "pillow", "skimage": "scikit-image"}


def _missing_module(e: BaseException) -> str | None:
    """The top-level module an ImportError in `e`'s chain could not find, else None.

    TFDS re-raises a failed lazy import as a new ImportError (its `.name` lost, the original as
    its cause) or wraps it, so the causes are searched and the message read as a last resort.
    Only `raise ... from` causes: an ImportError merely being handled when another error struck
    (`__context__`) did not cause it.
    """
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ImportError):
            name = e.name
            if not name:
                found = re.search(r"No module named '([\w.]+)'", str(e))
                name = found.group(1) if found else None
            if name:
                return name.split(".")[0]
        e = e.__cause__
    return None


def _missing_module_error(e: BaseException, name: str, step: str) -> DataError | None:
    """A DataError naming the module TFDS lacks to `step` data set `name`, and the pip command."""
    module = _missing_module(e)
    if module is None:
        return None
    return DataError(
        f"TFDS cannot {step} {name!r}: the Python module {module!r} is not installed "
        f"({_first_line(e)}). This is not a network problem: install it with "
        f"pip install {_PIP_NAMES.get(module, module)} and run again"
    )


def _tfds_builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        base = name.split(":")[0].split("/")[0]
        known = tfds.list_builders(with_community_datasets=False)
        raise DataError(
            f"data_dir='tfds:{name}': {base!r} is not a TFDS data set{did_you_mean(base, known)}; "
            "see https://www.tensorflow.org/datasets/catalog/overview or "
            "tensorflow_datasets.list_builders() for the names"
        ) from None
    except Exception as e:
        raise _missing_module_error(e, name, "open") or DataError(
            f"data_dir='tfds:{name}' cannot be opened ({_first_line(e)})"
        ) from None


def _tfds_split(builder, name: str, spec: str, field: str, image_key: str) -> Images:
    import tensorflow_datasets as tfds

    try:
        ds = builder.as_dataset(
            split=spec,
            as_supervised=True,
            shuffle_files=False,
            decoders={image_key: tfds.decode.SkipDecoding()},  # keep the encoded bytes
        )
    except Exception as e:
        if missing := _missing_module_error(e, name, "read"):
            raise missing from None
        splits = ", ".join(builder.info.splits) or "unknown"
        raise DataError(
            f"{field}={spec!r} is not a split of TFDS {name} ({_first_line(e)}); its splits: "
            f"{splits}; slices look like 'train[:80%]'"
        ) from None
    blobs: list[bytes] = []
    labels: list[int] = []
    for images, targets in ds.batch(1024).as_numpy_iterator():
        blobs += list(images)
        labels += targets.tolist()
    if not blobs:
        raise DataError(f"{field}={spec!r} of TFDS {name} has no examples")
    names = [f"{name}[{spec}] example {i}" for i in range(len(blobs))]
    return Images("bytes", blobs, np.asarray(labels, np.int32), names)


def _tfds_source(config) -> RawData:
    """Reads a TFDS image-classification data set (its encoded images) into memory."""
    name = config.data_dir[len(TFDS_PREFIX) :].strip()
    if not name:
        raise DataError("data_dir='tfds:' names no data set; use e.g. data_dir='tfds:tf_flowers'")
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, config.tfds_data_dir)
    keys = builder.info.supervised_keys
    features = builder.info.features
    if not (
        isinstance(keys, tuple)
        and len(keys) == 2
        and all(isinstance(k, str) for k in keys)
        and isinstance(features[keys[0]], tfds.features.Image)
        and isinstance(features[keys[1]], tfds.features.ClassLabel)
    ):
        raise DataError(
            f"TFDS {name} is not an image-classification data set: its supervised keys are "
            f"{keys!r}, tl_keras needs (image, class label)"
        )
    image_key, label_key = keys
    class_names = [str(n) for n in features[label_key].names]
    try:
        builder.download_and_prepare()
    except Exception as e:
        if missing := _missing_module_error(e, name, "download and prepare"):
            raise missing from None
        where = config.tfds_data_dir or os.path.expanduser("~/tensorflow_datasets")
        raise DataError(
            f"TFDS could not download or prepare {name!r} into {where} ({_first_line(e)}). "
            'If this machine is offline: on one with internet, run python -c "import '
            f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR')"
            '.download_and_prepare()", copy DIR here and pass --tfds_data_dir=DIR '
            "(tfds_data_dir in a config file)"
        ) from None
    raw = RawData({}, class_names, source=config.data_dir, where={})
    for split, spec, field in (
        ("train", config.train_split, "train_split"),
        ("val", config.val_split, "val_split"),
        ("test", config.test_split, "test_split"),
    ):
        raw.splits[split] = _tfds_split(builder, name, spec, field, image_key) if spec else None
        raw.where[split] = f"{field}={spec!r}"
    return raw


# --- arrays ----------------------------------------------------------------------------------------
def _array_split(
    x: Any, y: Any, field: str, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Checks one (images, labels) pair; returns uint8 N x H x W x C and int32 labels."""
    xname, yname = f"x_{field}", f"y_{field}"
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]  # N x H x W grayscale
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or not len(x):
        raise DataError(
            f"{xname} has shape {x.shape}; images must be N x H x W x C with C in 1, 3, 4 "
            "(or N x H x W grayscale), N > 0"
        )
    if x.dtype.kind not in "uif":
        raise DataError(f"{xname} has dtype {x.dtype}; use uint8 (or numbers in 0..255)")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{xname} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{xname} has values in [{lo:g}, {hi:g}]; pixels must be raw 0..255")
    if x.dtype.kind == "f" and hi <= 1.0:
        raise DataError(
            f"{xname} looks scaled to [0, 1] (largest value {hi:g}); tl_keras wants raw 0..255 "
            "pixels (the model preprocesses them): multiply by 255"
        )
    if y.ndim == 2:  # one-hot
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise DataError(
                f"{yname} is 2-D but not one-hot (each row one 1, the rest 0); pass class indices"
            )
        if num_classes is not None and y.shape[1] != num_classes:
            raise DataError(f"{yname} has {y.shape[1]} columns for {num_classes} classes")
        y = y.argmax(axis=1)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{yname} has shape {y.shape} for {len(x)} images in {xname}; give one class index "
            "per image"
        )
    if y.dtype.kind not in "ui" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise DataError(f"{yname} has dtype {y.dtype}; labels must be integer class indices")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= (num_classes if num_classes is not None else np.inf)))
    if len(bad):
        i = int(bad[0])
        allowed = f"[0, {num_classes})" if num_classes is not None else "0 or more"
        raise DataError(
            f"{yname}[{i}] = {y[i]} is out of range: labels must be class indices in {allowed}"
            + (f" for the {num_classes} class_names" if num_classes is not None else "")
            + f" ({len(bad)} label(s) out of range)"
        )
    if x.dtype != np.uint8:
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return x, y.astype(np.int32)


def arrays_source(
    x_train: Any,
    y_train: Any,
    *,
    x_val: Any = None,
    y_val: Any = None,
    x_test: Any = None,
    y_test: Any = None,
    class_names: Sequence[str] | None = None,
    source: str = "arrays",
) -> RawData:
    """Checks arrays and lists them as a source (see `from_arrays`)."""
    k = len(class_names) if class_names is not None else None
    if k is not None and k < 2:
        raise DataError(f"class_names has {k} name(s); a classifier needs at least 2 classes")
    pairs = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    checked: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    for split, (x, y) in pairs.items():
        if (x is None) != (y is None):
            raise DataError(f"x_{split} and y_{split} come together: give both or neither")
        checked[split] = None if x is None else _array_split(x, y, split, k)
    if class_names is None:
        k = 1 + max(int(pair[1].max()) for pair in checked.values() if pair is not None)
        if k < 2:
            raise DataError("y_train has one class (every label is 0); a classifier needs 2")
        class_names = [str(i) for i in range(k)]
    splits: dict[str, Images | None] = {}
    for split, pair in checked.items():
        if pair is None:
            splits[split] = None
            continue
        x, y = pair
        splits[split] = Images("array", x, y, [f"x_{split}[{i}]" for i in range(len(y))])
    where = {s: f"x_{s}/y_{s}" for s in splits}
    return RawData(splits, [str(n) for n in class_names], source=source, where=where)


def from_arrays(
    config,
    x_train: Any,
    y_train: Any,
    *,
    x_val: Any = None,
    y_val: Any = None,
    x_test: Any = None,
    y_test: Any = None,
    class_names: Sequence[str] | None = None,
    workdir: str | None = None,
) -> DataBundle:
    """Builds a `DataBundle` from in-memory arrays (notebooks, tests).

    Args:
      config: a `Config` (image size, batch size, augmentation, val_fraction, seed...).
      x_train: uint8 (or 0..255 numbers) N x H x W x C images, C in 1, 3, 4; or N x H x W.
      y_train: class indices (N,), or one-hot (N, K).
      x_val, y_val: validation arrays; default: hold out `config.val_fraction` of train.
      x_test, y_test: held-out test arrays, or None.
      class_names: the name of each class index; default '0', '1', ...
      workdir: needed only for `cache='file'`.

    Raises:
      DataError: shapes, value range, or labels out of range, naming the array and the fix.

    Example:
      >>> data = from_arrays(cfg, x, y, class_names=["cat", "dog"])
      >>> result = tl_keras.train(cfg, "runs/arrays", data=data)
    """
    raw = arrays_source(
        x_train,
        y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        class_names=class_names,
    )
    p = Pipeline.from_config(config, workdir=workdir)
    return assemble(raw, p, val_fraction=config.val_fraction)


def _npz_source(path: str) -> RawData:
    if not os.path.isfile(path):
        raise DataError(f"{_where(path, 'data_dir')} is not a file")
    try:
        npz = np.load(path, allow_pickle=False)
        arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise DataError(
            f"{_where(path, 'data_dir')} is not a readable .npz file ({_first_line(e)})"
        ) from None
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise DataError(
            f"{path} has arrays {', '.join(sorted(arrays)) or 'none'} but not {', '.join(missing)}; "
            "a .npz source holds x_train, y_train, optionally x_val, y_val, x_test, y_test and "
            "class_names"
        )
    known = {"x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "class_names"}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise DataError(
            f"{path} has array(s) {', '.join(unknown)} that tl_keras would ignore; it reads "
            f"{', '.join(sorted(known))} (rename or remove the others)"
        )
    names = arrays.get("class_names")
    return arrays_source(
        arrays["x_train"],
        arrays["y_train"],
        x_val=arrays.get("x_val"),
        y_val=arrays.get("y_val"),
        x_test=arrays.get("x_test"),
        y_test=arrays.get("y_test"),
        class_names=None if names is None else [str(n) for n in names.tolist()],
        source=path,
    )


# --- the entry point -------------------------------------------------------------------------------
def source_kind(data_dir: str) -> str:
    """'synthetic', 'tfds', 'npz' or 'folder': what a data_dir value names."""
    if data_dir == "synthetic":
        return "synthetic"
    if data_dir.startswith(TFDS_PREFIX):
        return "tfds"
    if data_dir.lower().endswith(".npz"):
        return "npz"
    return "folder"


def _check_fields_apply(config, kind: str) -> None:
    """Refuses source fields that the chosen source would silently ignore."""
    from tl_keras.config import FIELDS

    by_kind = {
        "tfds": ("tfds_data_dir", "train_split", "val_split", "test_split"),
        "folder": ("val_dir", "test_dir"),
    }
    allowed = by_kind.get("folder" if kind == "synthetic" else kind, ())
    for owner, names in by_kind.items():
        for name in names:
            if name not in allowed and getattr(config, name) != FIELDS[name].default:
                use = "data_dir='tfds:NAME'" if owner == "tfds" else "an image-folder data_dir"
                raise DataError(
                    f"{name}={getattr(config, name)!r} applies only to {use}, and data_dir="
                    f"{config.data_dir!r} is a {kind} source; remove it"
                )


def load_data(config, *, workdir: str | None = None) -> DataBundle:
    """Loads the data a config names, at the image size of its backbone.

    Args:
      config: a `tl_keras.config.Config`; `data_dir` is an image-folder tree, 'tfds:NAME', a
        .npz file or 'synthetic'.
      workdir: where 'synthetic' data is drawn (under <workdir>/data) and cache='file' caches.

    Returns:
      The bundle: training epochs, validation (and test) datasets, class names, and a report of
      what was loaded and skipped.

    Raises:
      DataError: the data cannot be used; the message says why and what to do.
    """
    from tl_keras import synthetic

    data_dir = config.data_dir
    if not data_dir:
        raise DataError(
            "no data given: set data_dir to an image-folder tree, 'tfds:NAME', a .npz file, or "
            "'synthetic'"
        )
    kind = source_kind(data_dir)
    _check_fields_apply(config, kind)
    if kind == "tfds":
        raw = _tfds_source(config)
    elif kind == "npz":
        raw = _npz_source(data_dir)
    else:
        if kind == "synthetic":
            if workdir is None:
                raise DataError("data_dir='synthetic' needs a workdir to draw the images into")
            root = synthetic.make_shapes(
                os.path.join(workdir, "data", "synthetic"),
                images_per_class=config.synthetic_images_per_class,
                seed=config.seed,
            )
            config = dataclasses.replace(config, data_dir=root)
        raw = _folder_source(config)
    given_val = raw.splits.get("val") is not None
    if given_val and config.val_fraction > 0:
        log.info("data: validation data given (%s); val_fraction is not used", raw.where["val"])
    return assemble(
        raw,
        Pipeline.from_config(config, workdir=workdir),
        val_fraction=0.0 if given_val else config.val_fraction,
    )
