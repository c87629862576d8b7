"""The `DataBundle` a run trains on, and how a listed source becomes one: split, check, cache.

Every source (`tl_keras.data.sources`) ends as a `RawData` of `Images` per split; `assemble` turns
it into a `DataBundle`: batched datasets of (image, one-hot label) pairs, images as float32 raw
0..255 pixels at the model's input size (preprocessing is inside the model), and the class names
in label order. Labels are one-hot so label smoothing, MixUp and CutMix need no special case.
Nothing holds the data set: images are read, decoded and resized as `tf.data` asks for them
(`tl_keras.data.images`), unless a cache is asked for; the datasets themselves are built by
`tl_keras.data.pipeline`.

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
   (`DataBundle.sharded`). A bundle's training epochs start unaugmented; a run builds the
   augmented ones once, from its decided `Augmentation` (`DataBundle.for_training`).

Every problem with the data is a `DataError` naming the path or value and what to do, raised
before training starts; the README's "Bad data" table lists each case.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras import _failpoints
from tl_keras.data.check import cache_key, checked_split, refuse_memory_cache, resolve_cache
from tl_keras.data.images import (
    AUTOTUNE,
    IMAGE_EXTENSIONS,
    Images,
    epoch_order,
    untuned,
    worker_steps,
)
from tl_keras.data.pipeline import Pipeline, eval_dataset, shard_epoch_fn
from tl_keras.data.settings import Augmentation
from tl_keras.errors import DataError
from tl_keras.progress import say

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
    train_images: Images | None = None  # for `for_training`: new epochs, no new decoding
    # The epoch function `assemble` built: a bundle whose `make_train_epoch` is another (a
    # user's own map over it) is never rebuilt by `for_training`.
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
        """Whether `for_training` may build other training epochs: the bundle came from
        `assemble` and its epochs are still the ones it built (not replaced by hand)."""
        return self.train_images is not None and self.make_train_epoch is self.assembled_epoch

    def for_training(self, augmentation: Augmentation) -> DataBundle:
        """The same data with training batches that get `augmentation`: only the epoch function
        is new (nothing is listed or decoded again). A bundle that is not `rebuildable` (a
        user's own epochs) is returned as it is.
        """
        if not self.rebuildable:
            return self
        p = dataclasses.replace(self.pipeline, **dataclasses.asdict(augmentation))
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


# The package's epoch functions are plain TensorFlow (no Python branch on a tensor): `flat_map`
# traces them as written, with every map they build, instead of having autograph rewrite each
# first (about a tenth of a tiny run's CPU). A user's own `make_train_epoch` is converted as usual.
@tf.autograph.experimental.do_not_convert
def _call_shard(make, worker: int, workers: int, epoch: tf.Tensor) -> tf.data.Dataset:
    return make(epoch, worker, workers)


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
    counts = {s: len(im) for s, im in raw.splits.items() if im is not None}
    if p.cache == "memory":  # as asked; 'auto' picks memory only where it fits
        refuse_memory_cache(counts, p)
    p = resolve_cache(counts, p)
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
        return epoch_order(train, p.seed, epoch, worker=worker, workers=workers, payload=False)

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
