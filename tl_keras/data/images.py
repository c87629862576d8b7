"""The images of a split before decoding, how one is loaded, and in which order an epoch visits them.

Only what must be in memory is: the file list (paths), a TFDS split's labels and index table, or
the arrays the caller already holds (a `.npz` is memory-mapped); pixels are read, decoded and
resized per batch as `tf.data` asks for them. A cache (`cache = "memory"` or `"file"`) replaces
only *how* an image is loaded (a row of a uint8 store instead of a decode), never the order, so
cached and decoded batches are bitwise equal.

The order of an epoch is a pure function of (seed, epoch):

* image files and arrays (random access): a permutation of the split, `epoch_permutation`;
* a TFDS split read from its shard files: the shard files permuted, read interleaved, and
  shuffled in windows (`tl_keras.data.tfds_stream`). Not a uniform permutation, since a TFRecord
  file can only be read in order, but the same for the same (seed, epoch) in any process.

Under multi-worker training each worker takes its own contiguous range of the epoch's order
(`worker_range`), so it reads only its own files (images, or TFDS shards) and the workers
together see every image exactly once; every worker runs the same number of steps
(`worker_steps`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


AUTOTUNE = tf.data.AUTOTUNE


def untuned(ds: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset without tf.data's autotuning thread: every pipeline the package iterates.

    Each iterator of a dataset with autotuning on (tf.data's default) runs a thread that
    re-optimises the pipeline at 0.02 x (2^k - 1) s of its life (..., 20 s, 41 s, 82 s, then
    every 60 s), sleeping in between. Deleting the iterator joins that thread, and in
    TensorFlow 2.21 the wake-up meant to end its sleep can be lost: the cancellation callback
    notifies before the iterator counts as cancelled (`CancellationManager` sets that after
    every callback and child has run), so the thread checks, finds it still running, and
    sleeps out the rest of its period (`Model::OptimizeLoop`). The deletion then waits, the
    process idle, until the next optimisation time: up to 60 s after a fine-tuning phase's
    last epoch (issue 24; benchmarks/bench_stall.py reproduces it without a model), and
    seconds at the start of a validation pass, where Keras drops the iterator it made at the
    end of the previous one.

    Without the thread, `AUTOTUNE` parallelism is what tf.data uses when it does not tune (the
    number of cores, at most 16) and `prefetch(AUTOTUNE)` still grows its buffer as it is read.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


# Independent random streams under one (seed, epoch) key.
EXAMPLE_STREAM, BATCH_STREAM, FILE_STREAM, WINDOW_STREAM = 1, 2, 3, 4


_GATHER_BATCH = 256  # rows one numpy gather reads from an array or a cache store


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
class Names(Sequence):
    """A name per image, made when asked for (a million names are not kept as strings).

    Args:
      name_of: source position -> name.
      ids: the source position of each image.
    """

    def __init__(self, name_of: Callable[[int], str], ids: np.ndarray):
        self._name_of, self._ids = name_of, np.asarray(ids, np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._name_of(int(self._ids[i]))

    def subset(self, idx: np.ndarray) -> Names:
        return Names(self._name_of, self._ids[np.asarray(idx, np.int64)])


def _subset_names(names: Sequence[str], idx: np.ndarray) -> Sequence[str]:
    if isinstance(names, Names):
        return names.subset(idx)
    return [names[i] for i in idx]


@dataclasses.dataclass
class Images:
    """The images of one split before decoding.

    Attributes:
      kind: 'files' (paths), 'tfds' (a TFDS split, `tl_keras.data.tfds_stream.TfdsSplit`) or
        'array' (uint8, or 0..255 numbers, N x H x W x C: in memory or memory-mapped).
      items: the paths, the TFDS split, or the array: the whole source, of which `ids` picks.
      labels: int32 class index of each image.
      names: a name per image for messages (a path relative to the data folder, ...).
      ids: each image's position in `items` (ascending); None = all of them, in order.
      store: a cache of the prepared (S x S x 3 uint8) images: an array or a memory-mapped
        file, or None.
      rows: each image's row in `store`.
      origin: the folder (or TFDS data folder) the images come from: what the remembered
        decode check is kept for.
    """

    kind: str
    items: Any
    labels: np.ndarray
    names: Sequence[str]
    ids: np.ndarray | None = None
    store: Any = None
    rows: np.ndarray | None = None
    origin: str = ""

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int32)
        if self.ids is None:
            self.ids = np.arange(len(self.labels), dtype=np.int64)
        self.ids = np.asarray(self.ids, np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> Images:
        idx = np.asarray(idx, dtype=np.int64)
        return dataclasses.replace(
            self,
            labels=self.labels[idx],
            names=_subset_names(self.names, idx),
            ids=self.ids[idx],
            rows=None if self.rows is None else self.rows[idx],
        )

    def cached(self, store: Any, rows: np.ndarray) -> Images:
        """The same images, loaded from the rows of a store of prepared images."""
        return dataclasses.replace(self, store=store, rows=np.asarray(rows, np.int64))

    @property
    def streamed(self) -> bool:
        """True when the images come in the source's own order (a TFDS split), not by index."""
        return self.kind == "tfds"


# --- decoding --------------------------------------------------------------------------------------
def decode(raw: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF/WebP -> uint8 RGB (grayscale replicated, alpha dropped)."""
    image = tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8)
    return tf.ensure_shape(image, (None, None, 3))


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


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    channels = image.shape[-1]
    if channels == 1:
        return tf.tile(image, [1, 1, 3])
    return image[..., :3]  # RGBA: alpha dropped, as decode_image(channels=3) does


def as_uint8(x: np.ndarray) -> np.ndarray:
    """Array pixels as uint8 (numbers in 0..255 rounded), without copying what is uint8."""
    if x.dtype == np.uint8:
        return np.asarray(x)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def tf_error_text(e: Exception) -> str:
    """A TensorFlow error message without its '{{function_node ...}}' and '[Op:...]' wrapping."""
    text = getattr(e, "message", None) or str(e)
    text = text.split("}} ", 1)[-1].split(" [Op:", 1)[0].strip()
    if text.startswith("Unknown image file format"):
        return "not an image TensorFlow can decode (unknown format)"
    if text.startswith("Input is empty"):
        return "empty file"
    return text.splitlines()[0][:200] if text else type(e).__name__


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
        image = prepare(decode(tf.io.read_file(path)), p)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise DataError(f"not a readable image ({tf_error_text(e)[:120]})") from None
    return image.numpy().astype(np.float32)


# --- loading ---------------------------------------------------------------------------------------
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


# --- orders ----------------------------------------------------------------------------------------
def epoch_permutation(n: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The order of `n` items in a given epoch: a pure function of (seed, epoch)."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)


def fold(key: tf.Tensor, *data) -> tf.Tensor:
    for d in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(d, tf.int64))
    return key


def epoch_key(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])


def worker_range(n: int, worker: int, workers: int) -> tuple[int, int]:
    """The contiguous part [lo, hi) of an epoch's n images that a worker takes (sizes differ by
    at most 1)."""
    return n * worker // workers, n * (worker + 1) // workers


def worker_steps(n: int, batch_size: int, workers: int) -> int:
    """Steps per epoch when `workers` share each global batch of `batch_size`.

    Each worker's batches hold batch_size / workers images; its last batch takes all that is
    left (at most one more than the others), so every worker runs the same number of steps and
    no image is dropped. One worker: ceil(n / batch_size), as always.
    """
    if workers == 1:
        return math.ceil(n / batch_size)
    return max(1, math.ceil((n // workers) / (batch_size // workers)))


def worker_batches(
    ds: tf.data.Dataset, *, n: int, batch_size: int, workers: int, worker: int
) -> tf.data.Dataset:
    """Cuts a worker's part of an epoch into `worker_steps` batches (see there)."""
    if workers == 1:
        return ds.batch(batch_size)
    local = batch_size // workers
    steps = worker_steps(n, batch_size, workers)
    lo, hi = worker_range(n, worker, workers)
    head = (steps - 1) * local
    return ds.take(head).batch(local).concatenate(ds.skip(head).batch(max(hi - lo - head, 1)))


def random_order(images: Images, p: Pipeline, epoch: tf.Tensor, worker: int, workers: int):
    """A worker's part of the epoch's permutation of a random-access split (indices)."""
    lo, hi = worker_range(len(images), worker, workers)
    order = epoch_permutation(len(images), p.seed, epoch)
    return tf.data.Dataset.from_tensor_slices(order[lo:hi])


def epoch_order(
    images: Images,
    p: Pipeline,
    epoch: tf.Tensor,
    *,
    worker: int = 0,
    workers: int = 1,
    payload: bool = True,
) -> tf.data.Dataset:
    """The indices a worker visits in an epoch, in order. For a TFDS split read from its files
    and not cached, (index, encoded image) pairs, unless `payload` is False."""
    if images.streamed:
        return images.items.epoch_stream(
            images,
            epoch_key(p.seed, epoch),
            worker=worker,
            workers=workers,
            payload=payload and images.store is None,
        )
    return random_order(images, p, epoch, worker, workers)


def in_order(images: Images) -> tf.data.Dataset:
    """Every index of the split in ascending order (with the encoded image for a streamed TFDS
    split without a cache): the fixed order of validation, test and feature passes."""
    if images.streamed and images.store is None:
        return images.items.ordered_stream(images)
    return tf.data.Dataset.range(len(images))


__all__ = [
    "AUTOTUNE",
    "IMAGE_EXTENSIONS",
    "Images",
    "Names",
    "Pipeline",
    "decode",
    "epoch_order",
    "epoch_permutation",
    "in_order",
    "load",
    "load_image_file",
    "prepare",
    "untuned",
    "worker_batches",
    "worker_range",
    "worker_steps",
]
