"""How a listed data source becomes batches the model trains on: check, cache, epochs.

Every source (`tl_keras.data.sources`) ends as a `RawData` of `Images` per split; `assemble` turns
it into a `DataBundle`: batched datasets of (image, one-hot label) pairs, images as float32 raw
0..255 pixels at the model's input size (preprocessing is inside the model), and the class names
in label order. Labels are one-hot so label smoothing, MixUp and CutMix need no special case.
Nothing holds the data set: images are read, decoded and resized as `tf.data` asks for them
(`tl_keras.data.images`), unless a cache is asked for.

1. split off validation when no separate validation data is given (seeded, stratified, before
   any file is read, so the split does not depend on which files turn out unreadable);
2. decode every image once on the host, with the decoder training uses (`tl_keras.data.check`):
   a file that cannot be decoded is skipped, logged and counted (`DataBundle.report`, saved in
   each phase's `summary.json`), never met for the first time inside `fit`. The check is
   remembered, so a later run on the same files decodes only what changed; with `cache` on, the
   same pass keeps the decoded, resized images;
3. per epoch: the order is a pure function of (seed, epoch); parallel read, decode and resize,
   then augmentation (training only; its randomness is also a pure function of seed, epoch and
   the example or batch index, see `tl_keras.data.augment`), batch, MixUp / CutMix / label
   smoothing, prefetch. Under multi-worker training each worker builds only its own part
   (`DataBundle.sharded`).

Every problem with the data is a `DataError` naming the path or value and what to do, raised
before training starts; the README's "Bad data" table lists each case.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras import _failpoints
from tl_keras.data import augment as augment_lib
from tl_keras.data.check import cache_key, checked_split, refuse_memory_cache
from tl_keras.data.images import (
    AUTOTUNE,
    BATCH_STREAM,
    EXAMPLE_STREAM,
    IMAGE_EXTENSIONS,
    Images,
    Names,
    Pipeline,
    epoch_key,
    epoch_order,
    epoch_permutation,
    fold,
    in_order,
    load,
    load_image_file,
    untuned,
    worker_batches,
    worker_steps,
)
from tl_keras.errors import DataError, DataTypeError
from tl_keras.progress import Progress, say

log = logging.getLogger("tl_keras")

_SHOWN = 5  # file names shown in a log line or an error before "..."


@dataclasses.dataclass
class RawData:
    """A listed source: its splits (val/test may be None), class names and ignored files."""

    splits: dict[str, Images | None]
    class_names: list[str]
    source: str
    where: dict[str, str]  # split -> where it came from, for messages ('val_dir=...', ...)
    ignored: list[str] = dataclasses.field(default_factory=list)
    check_seconds: float = 0.0  # decode-check time spent while listing (a TFDS split's pass)


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
      make_shard_epoch: (epoch, worker, workers) -> that worker's part of the epoch (see
        `sharded`); None for a bundle that cannot be split by worker (one built by hand).
      workers: how many workers share each epoch (1; `sharded` sets it).
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
    # For cached features (tl_keras.training.features): the pipeline's settings, the training
    # labels in index order, the training images in index order (unaugmented), the validation
    # labels in the validation dataset's order, each epoch's order of training indices
    # ((epoch, worker, workers) -> indices, the images' own order), and the identity of the
    # train and validation images with their resize settings (or a function computing it).
    pipeline: Pipeline | None = None
    train_labels: np.ndarray | None = None
    train_in_order: tf.data.Dataset | None = None
    feature_source_key: tuple[str, str] | Callable[[], tuple[str, str]] | None = None
    val_labels: np.ndarray | None = None
    train_order: Callable[[tf.Tensor, int, int], tf.data.Dataset] | None = None
    make_shard_epoch: Callable[[tf.Tensor, int, int], tf.data.Dataset] | None = None
    workers: int = 1
    # The image files the datasets read, to name the ones that changed if a read fails later.
    files: tuple[str, ...] = ()
    # Each split's images as checked (unreadable ones left out), in the order of its dataset:
    # what the data doctor hashes and names.
    images: dict[str, Images] | None = None
    # The validation and test images in their datasets' order, for reports that name an image
    # (evaluate's confident mistakes): their files for image folders, else the source's name of
    # each image (`x_train[12]`, `tf_flowers[train] example 17`). Split name -> list.
    image_files: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    image_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    train_images: Images | None = None  # for `with_training`: new epochs, no new decoding
    # The epoch function `assemble` built: a bundle whose `make_train_epoch` is another (a
    # user's own map over it) is never rebuilt by `with_training`.
    assembled_epoch: Callable[[tf.Tensor], tf.data.Dataset] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def steps_per_epoch(self) -> int:
        return worker_steps(self.num_train, self.batch_size, self.workers)

    def sharded(self, workers: int) -> DataBundle:
        """The same data, each epoch split between `workers` (multi-worker training).

        Worker w builds only its contiguous part of each epoch's order (so it reads only its own
        files) in batches of batch_size / workers, and every worker runs `steps_per_epoch`
        steps: the workers together see every training image exactly once per epoch.

        Raises:
          DataError: fewer training images than workers, or a batch size they cannot share.
        """
        if workers == 1:
            return dataclasses.replace(self, workers=1)
        if self.batch_size % workers:
            raise DataError(
                f"batch_size={self.batch_size} is the global batch and must split evenly over "
                f"the {workers} workers; use a multiple of {workers}"
            )
        if self.num_train < workers:
            raise DataError(
                f"{self.num_train} training image(s) cannot be shared by {workers} workers"
            )
        return dataclasses.replace(self, workers=workers)

    def train_epochs(
        self, first_epoch: int, num_epochs: int, *, worker: int = 0
    ) -> tf.data.Dataset:
        """Returns the batches of epochs first_epoch .. first_epoch + num_epochs - 1, in order
        (worker `worker`'s part of them when the bundle is `sharded`).

        Pass it to `fit(..., initial_epoch=first_epoch, steps_per_epoch=self.steps_per_epoch)`.
        """
        epochs = tf.data.Dataset.range(first_epoch, first_epoch + num_epochs)
        if self.workers > 1:
            make = functools.partial(_call_shard, self.make_shard_epoch, worker, self.workers)
        else:
            make = self.make_train_epoch
        return untuned(epochs.flat_map(make).prefetch(AUTOTUNE))  # lives a whole phase

    @property
    def train(self) -> tf.data.Dataset:
        """One epoch of training batches (epoch 0's order), for quick use in notebooks."""
        return self.train_epochs(0, 1)

    @property
    def rebuildable(self) -> bool:
        """Whether `with_training` may rebuild the training epochs: the bundle came from
        `assemble` and its epochs are still the ones it built (not replaced by hand)."""
        return self.train_images is not None and self.make_train_epoch is self.assembled_epoch

    def with_training(self, **settings: Any) -> DataBundle:
        """The same data with other training-only settings (`augment.TRAINING_ONLY`), decoded once."""
        if set(settings) - set(augment_lib.TRAINING_ONLY) or not self.rebuildable:
            raise ValueError(f"only {augment_lib.TRAINING_ONLY}, on a bundle from `assemble`")
        p = dataclasses.replace(self.pipeline, **settings)
        if p == self.pipeline:
            return self
        make_shard_epoch = shard_epoch_fn(self.train_images, self.num_classes, p)
        make_epoch = functools.partial(_call_shard, make_shard_epoch, 0, 1)
        return dataclasses.replace(  # a worker's part stays its part (`workers` is kept)
            self,
            pipeline=p,
            make_train_epoch=make_epoch,
            make_shard_epoch=make_shard_epoch,
            assembled_epoch=make_epoch,
        )


def _call_shard(make, worker: int, workers: int, epoch: tf.Tensor) -> tf.data.Dataset:
    return make(epoch, worker, workers)


# --- datasets --------------------------------------------------------------------------------------
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

        order = epoch_order(images, p, epoch, worker=worker, workers=workers)
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
      DataError: too many unreadable files, a class missing from a split, a bad cache setting,
        or a memory cache that would not fit.
    """
    _failpoints.hit("data_listed")
    if raw.splits.get("val") is None and val_fraction > 0:
        _hold_out_validation(raw, val_fraction, p.seed)
    if p.cache == "memory":
        refuse_memory_cache({s: len(im) for s, im in raw.splits.items() if im is not None}, p)
    report = DataReport(raw.source, list(raw.class_names), ignored_files=list(raw.ignored))
    report.pipeline = p.describe()
    report.decode_check_s = raw.check_seconds
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
    return _bundle(splits, raw, p, report)


def _bundle(splits: dict[str, Images], raw: RawData, p: Pipeline, report: DataReport) -> DataBundle:
    k = len(raw.class_names)
    train, val, test = splits["train"], splits.get("val"), splits.get("test")
    val = val if val is not None and len(val) else None
    make_shard_epoch = shard_epoch_fn(train, k, p)

    @functools.cache
    def source_key() -> tuple[str, str]:
        return cache_key(train, p), cache_key(val, p) if val is not None else ""

    def train_order(epoch, worker: int = 0, workers: int = 1) -> tf.data.Dataset:
        return epoch_order(train, p, epoch, worker=worker, workers=workers, payload=False)

    files, names = {}, {}
    for split, images in (("val", val), ("test", test)):
        if images is not None and images.kind == "files":
            files[split] = [str(images.items[j]) for j in images.ids]
        elif images is not None:
            names[split] = list(images.names)

    make_epoch = functools.partial(_call_shard, make_shard_epoch, 0, 1)
    return DataBundle(
        make_train_epoch=make_epoch,
        assembled_epoch=make_epoch,
        val=eval_dataset(val, k, p) if val is not None else None,
        class_names=list(raw.class_names),
        num_train=len(train),
        num_val=len(val) if val is not None else 0,
        batch_size=p.batch_size,
        source=raw.source,
        test=eval_dataset(test, k, p) if test is not None else None,
        num_test=len(test) if test is not None else 0,
        report=report,
        pipeline=p,
        train_labels=np.asarray(train.labels, np.int32),
        train_in_order=eval_dataset(train, k, p).map(lambda x, y: x),
        feature_source_key=source_key,
        val_labels=None if val is None else np.asarray(val.labels, np.int32),
        train_order=train_order,
        make_shard_epoch=make_shard_epoch,
        files=tuple(
            str(images.items[j])
            for images in splits.values()
            if images.kind == "files"
            for j in images.ids
        ),
        images=dict(splits),
        image_files=files,
        image_names=names,
        train_images=train,
    )


def _log_report(r: DataReport, p: Pipeline) -> None:
    counts = " / ".join(f"{n} {split}" for split, n in r.images.items())
    say(
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


# What other modules import from here (some of it lives in tl_keras.data.images / .check).
__all__ = [
    "IMAGE_EXTENSIONS",
    "DataBundle",
    "DataReport",
    "Images",
    "Names",
    "Pipeline",
    "RawData",
    "assemble",
    "checked_split",
    "class_indices",
    "epoch_permutation",
    "eval_dataset",
    "labelled_batches",
    "load_image_file",
    "shard_epoch_fn",
    "stratified_split",
    "train_epoch_fn",
]
