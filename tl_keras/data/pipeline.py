"""How a listed data source becomes batches the model trains on: decode, check, cache, epochs.

Every source (`tl_keras.data.sources`) ends as a `RawData` of `Images` per split; `assemble` turns
it into a `DataBundle`: batched datasets of (image, one-hot label) pairs, images as float32 raw
0..255 pixels at the model's input size (preprocessing is inside the model), and the class names
in label order. Labels are one-hot so label smoothing, MixUp and CutMix need no special case.

1. split off validation when no separate validation data is given (seeded, stratified, before
   any file is read);
2. decode every image once on the host, with the decoder training uses: a file that cannot be
   decoded is skipped, logged and counted (`DataBundle.report`, saved in each phase's
   `summary.json`), never met for the first time inside `fit`; with `cache` on, the same pass
   keeps the decoded, resized images;
3. per epoch: the order is a pure function of (seed, epoch); parallel decode and resize, then
   augmentation (training only; its randomness is also a pure function of seed, epoch and the
   example or batch index, see `tl_keras.data.augment`), batch, MixUp / CutMix / label smoothing,
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
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras import io
from tl_keras.data import augment as augment_lib
from tl_keras.errors import DataError, DataTypeError

log = logging.getLogger("tl_keras")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


AUTOTUNE = tf.data.AUTOTUNE


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
    # For cached features (tl_keras.training.features): the pipeline's settings, the training labels in
    # index order, the training images in index order (unaugmented), and the identity of the
    # train and validation images with their resize settings.
    pipeline: Pipeline | None = None
    train_labels: np.ndarray | None = None
    train_in_order: tf.data.Dataset | None = None
    feature_source_key: tuple[str, str] | None = None
    train_images: Images | None = None  # for `with_training`: new epochs, no new decoding

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

    def with_training(self, **settings: Any) -> DataBundle:
        """The same data with other training-only settings (`augment.TRAINING_ONLY`), decoded once."""
        if set(settings) - set(augment_lib.TRAINING_ONLY) or self.train_images is None:
            raise ValueError(f"only {augment_lib.TRAINING_ONLY}, on a bundle from `assemble`")
        p = dataclasses.replace(self.pipeline, **settings)
        epoch_fn = train_epoch_fn(self.train_images, self.num_classes, p)
        return (
            self
            if p == self.pipeline
            else dataclasses.replace(self, pipeline=p, make_train_epoch=epoch_fn)
        )


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
    def from_config(cls, config, *, image_size: int, workdir: str | None = None) -> Pipeline:
        """The pipeline a `Config` describes, at `image_size` (its resolved input size)."""
        return cls(
            image_size=image_size,
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

    For inference on new files (`tl_keras.inference.predict`): the same decoder, resize mode, resize
    method and rounding as the pipeline `p` (build it with `Pipeline.from_config(run_config, image_size=...)`).

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


def checked_split(
    images: Images, split: str, p: Pipeline, report: DataReport
) -> tuple[Images, _Check]:
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
            manifest = io.read_json(manifest_path)
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
        with io.atomic_path(npy) as tmp:
            np.save(tmp, prepared)
        io.atomic_write_json(  # written last: its presence means the cache is complete
            manifest_path,
            {
                "kept": kept.tolist(),
                "skipped": sorted(check.reasons.items()),
                "sizes": [[list(k), v] for k, v in check.sizes.items()],
            },
        )
        prepared = np.load(npy, mmap_mode="r")
    return Images("prepared", prepared, usable.labels, usable.names), check


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


def shown(items: Sequence[str]) -> str:
    items = list(items)
    return ", ".join(items[:_SHOWN]) + (
        f" ... ({len(items)} in all)" if len(items) > _SHOWN else ""
    )


def skipped_text(report: DataReport) -> str:
    return shown([f"{s['item']} ({s['reason']})" for s in report.skipped])


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
            f"class(es) {shown(few)} in {raw.where['train']} have fewer than 2 images, so they "
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
        f"{what} data ({raw.where[split]}) has no images of class(es) {shown(missing)}"
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
        splits[split], check = checked_split(images, split, p, report)
        sizes.update(check.sizes)
    report.image_sizes = _size_summary(sizes)
    if report.num_skipped > p.max_skipped_fraction * listed:
        raise DataError(
            f"{report.num_skipped} of {listed} images in {raw.source} cannot be decoded, more than "
            f"max_skipped_fraction={p.max_skipped_fraction:g} allows: {skipped_text(report)}. "
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
        train_images=splits["train"],
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
            skipped_text(r),
        )
    if r.ignored_files:
        log.info(
            "data: ignored %d file(s) outside the class folders or without an image extension "
            "(%s): %s",
            len(r.ignored_files),
            ", ".join(IMAGE_EXTENSIONS),
            shown(r.ignored_files),
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


# --- labelled data in memory ---------------------------------------------------------------------
def labelled_batches(dataset: Any, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Batches of (images, labels) from a `tf.data.Dataset` (batched or not) or an (images,
    labels) pair of arrays (images as float32), for evaluation and export checks.

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
        return dataset.as_numpy_iterator()
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = np.asarray(dataset[0], np.float32), np.asarray(dataset[1])
        if len(images) != len(labels):
            raise DataError(
                f"got {len(images)} images but {len(labels)} labels; they must line up one to one"
            )
        return (
            (images[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        )
    raise DataTypeError(
        "the data must be a tf.data.Dataset of (images, labels) or an (images, labels) pair of "
        f"arrays; got {type(dataset).__name__}"
    )


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
