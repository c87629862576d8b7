"""A TFDS split read from its prepared files as `tf.data` asks for it, never held in memory.

`TfdsSplit.open()` makes one pass over the split (TFDS's own `as_dataset`, images left encoded)
that reads every label and decodes every image once, in parallel with progress: the decode
check. What it learns (labels, which images decode and their sizes, and where each example sits
in the shard files) is remembered under the user's cache folder, keyed by the shard files' names,
sizes and times, so a second run on the same prepared data reads nothing before training. Only
those arrays stay in memory (a few bytes per image).

An example's index is its position in TFDS's order of the split (`as_dataset(shuffle_files=False)`,
what tl_keras always read), so labels, the stratified validation split and the augmentation keys
(seed, epoch, index) are the same as when the whole split was read into memory.

Each training epoch reads the shard files themselves, by file (`epoch_stream`):

1. the files are permuted with a key from (seed, epoch);
2. read interleaved, a block of 64 records from each open file in turn (in a fixed order, so
   the stream is a pure function of the key);
3. each record's index is looked up (file offset + record number), records of other splits or
   unreadable ones dropped;
4. shuffled in windows of a fixed number of records (about 64 MiB of encoded images), each
   window by a key from (seed, epoch, window number).

So the order is a pure function of (seed, epoch) without holding the split; it is not a uniform
permutation (an example moves by about a third of the split between epochs, not a half), and it
depends on the shard layout. With a cache the same order is computed from the index table alone
(no file read), so cached and decoded batches stay bitwise equal. Under multi-worker training
each worker reads only the files that hold its contiguous part of the epoch's order.

Where the split has no readable TFRecord shards (another file format, or `tfds.testing.mock_data`),
the same steps run on `as_dataset`'s own stream, by data: each worker reads the whole stream and
keeps its part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras import io
from tl_keras.data import images as images_lib
from tl_keras.data.images import AUTOTUNE, FILE_STREAM, WINDOW_STREAM, Images, fold
from tl_keras.progress import Progress

log = logging.getLogger("tl_keras")

_INDEX_VERSION = 1
_CYCLE = 16  # shard files read at once, one record from each in turn
_WINDOW_BYTES = 64 << 20  # encoded images a shuffle window holds
_WINDOW_MIN, _WINDOW_MAX, _WINDOW_DATA = 256, 8192, 1024
_PASS_BATCH = 1024
_BLOCK = 64  # records read from a shard file at a time (the interleave's unit)


@dataclasses.dataclass
class SplitIndex:
    """What one pass over a split learns: per example (in TFDS's order), its label, whether it
    decodes and its size; and where each example sits in the shard files."""

    labels: np.ndarray  # int32
    ok: np.ndarray  # bool
    hw: np.ndarray  # int32, N x 2 (0 for unreadable)
    reasons: dict[int, str]  # index -> why it cannot be decoded
    g_of_fm: np.ndarray | None  # file-major position (shard order) -> index; None: by data
    seconds: float = 0.0
    remembered: bool = False


class TfdsSplit:
    """One split spec of a prepared TFDS data set.

    Args:
      builder: the prepared `tfds` builder.
      name: the data set's name, for messages.
      spec: the split spec ('train', 'train[:80%]', ...).
      image_key, label_key: its supervised keys.
      cache_dir: where what the pass learns is remembered (None: not remembered).
    """

    def __init__(self, builder, *, name: str, spec: str, image_key: str, label_key: str, cache_dir):
        self.builder, self.name, self.spec = builder, name, spec
        self.image_key, self.label_key = image_key, label_key
        self.cache_dir = cache_dir
        self.files = self._shard_files()
        self.window = _WINDOW_DATA
        if self.files:
            sizes = sum(os.path.getsize(f) for f, _, _, _ in self.files)
            records = sum(count for _, _, _, count in self.files)
            per_record = sizes / max(records, 1)
            self.window = int(
                np.clip(_WINDOW_BYTES // max(per_record, 1), _WINDOW_MIN, _WINDOW_MAX)
            )
        self.index: SplitIndex | None = None
        self._plain: tf.data.Dataset | None = None

    # --- what is read -------------------------------------------------------------------------
    def _shard_files(self) -> list[tuple[str, int, int, int]] | None:
        """(path, skip, take, records in the file) of each TFRecord shard, or None (by data)."""
        import tensorflow_datasets as tfds

        try:
            if self.builder.info.file_format != tfds.core.file_adapters.FileFormat.TFRECORD:
                return None
            instructions = self.builder.info.splits[self.spec].file_instructions
            files = [
                (os.fspath(f.filename), f.skip, f.take, f.examples_in_shard) for f in instructions
            ]
        except Exception:  # no metadata (tfds.testing.mock_data), or a format TFDS reads itself
            return None
        if not files or not all(os.path.isfile(f) for f, _, _, _ in files):
            return None
        return files

    def _as_dataset(self, decoders: Any, *, ids: bool = False) -> tf.data.Dataset:
        import tensorflow_datasets as tfds

        config = tfds.ReadConfig(try_autocache=False, add_tfds_id=ids)
        return self.builder.as_dataset(
            split=self.spec, shuffle_files=False, decoders=decoders, read_config=config
        )

    def _encoded(self, *, ids: bool = False) -> tf.data.Dataset:
        """The split's examples, images left encoded, in TFDS's order. Made once per split and
        reused by every stream (one `as_dataset` call), with TFDS's ids when `ids`."""
        import tensorflow_datasets as tfds

        if ids:
            return self._as_dataset({self.image_key: tfds.decode.SkipDecoding()}, ids=True)
        if self._plain is None:
            self._plain = self._as_dataset({self.image_key: tfds.decode.SkipDecoding()})
        return self._plain

    def stamp(self) -> str | None:
        """The identity of what is read: the shard files' names, sizes and times, the spec."""
        if not self.files:
            return None
        import tensorflow_datasets as tfds

        files = []
        for path, skip, take, _ in self.files:
            st = os.stat(path)
            files.append([os.path.abspath(path), st.st_size, st.st_mtime_ns, skip, take])
        return json.dumps(
            [_INDEX_VERSION, tfds.__version__, tf.__version__, self.name, self.spec, files]
        )

    def name_of(self, g: int) -> str:
        return f"{self.name}[{self.spec}] example {g}"

    @property
    def origin(self) -> str:
        return os.fspath(self.builder.data_dir)

    # --- the pass -----------------------------------------------------------------------------
    def open(self) -> SplitIndex:
        """Reads every label and decodes every image once (or recalls an earlier pass)."""
        stamp = self.stamp()
        path = None
        if stamp and self.cache_dir:
            key = hashlib.sha256(stamp.encode()).hexdigest()[:32]
            path = os.path.join(self.cache_dir, "tfds", f"{key}.npz")
            self.index = _read_index(path)
            if self.index is not None:
                return self.index
        start = time.perf_counter()
        self.index = self._decode_pass()
        self.index.seconds = time.perf_counter() - start
        if path:
            _write_index(path, self.index)
        return self.index

    def _decode_pass(self) -> SplitIndex:
        by_file = self.files is not None
        ds = self._encoded(ids=by_file)
        total = int(ds.cardinality())
        key, label_key = self.image_key, self.label_key

        def probe(g, ex):
            out = {"g": g, "label": ex[label_key], "hw": tf.shape(images_lib.decode(ex[key]))[:2]}
            if by_file:
                out["id"] = ex["tfds_id"]
            return out

        parts: dict[str, list] = {"g": [], "label": [], "hw": [], "id": []}
        stream = ds.enumerate().map(probe, num_parallel_calls=AUTOTUNE, deterministic=False)
        with Progress("decode check", total if total >= 0 else None) as progress:
            passes = images_lib.untuned(stream.ignore_errors().batch(_PASS_BATCH))
            for batch in passes.as_numpy_iterator():
                for k, v in batch.items():
                    parts[k].append(v)
                progress.update(len(batch["g"]))
        got = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        n = total if total >= 0 else (int(got["g"].max()) + 1 if len(got["g"]) else 0)
        labels, ok = np.zeros(n, np.int32), np.zeros(n, bool)
        hw, ids = np.zeros((n, 2), np.int32), np.empty(n, object)
        g = got["g"].astype(np.int64)
        labels[g], ok[g], hw[g] = got["label"], True, got["hw"]
        if by_file:
            ids[g] = got["id"]
        reasons = self._unreadable(np.flatnonzero(~ok), labels, ids) if not ok.all() else {}
        g_of_fm = self._file_positions(ids) if by_file else None
        return SplitIndex(labels, ok, hw, reasons, g_of_fm)

    def _unreadable(self, failed: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> dict:
        """Labels and reasons of the examples the pass could not decode (a second, rare pass)."""
        wanted = tf.constant(failed, tf.int64)
        by_file = self.files is not None
        ds = self._encoded(ids=by_file).enumerate()
        ds = ds.filter(lambda g, ex: tf.reduce_any(tf.equal(wanted, g)))
        reasons = {}
        for g, ex in ds:
            g = int(g)
            labels[g] = int(ex[self.label_key])
            if by_file:
                ids[g] = ex["tfds_id"].numpy()
            try:
                images_lib.decode(ex[self.image_key])
                reasons[g] = "decoding failed once, then succeeded: the data may be changing"
            except (tf.errors.OpError, ValueError) as e:
                reasons[g] = images_lib.tf_error_text(e)
        return reasons

    def _file_positions(self, ids: np.ndarray) -> np.ndarray:
        """index -> file-major position, from TFDS's ids ('<shard file>__<record>'), inverted."""
        offsets = np.cumsum([0] + [take for _, _, take, _ in self.files])
        which = {os.path.basename(f).encode(): k for k, (f, _, _, _) in enumerate(self.files)}
        g_of_fm = np.full(offsets[-1], -1, np.int64)
        for g, tfds_id in enumerate(ids):
            name, record = tfds_id.rsplit(b"__", 1)
            k = which[name.rsplit(b"/", 1)[-1]]
            g_of_fm[offsets[k] + int(record) - self.files[k][1]] = g
        if (g_of_fm < 0).any():
            raise ValueError(f"TFDS ids of {self.name}[{self.spec}] do not cover its shard files")
        return g_of_fm

    # --- streams ------------------------------------------------------------------------------
    def _local_of_id(self, images: Images) -> np.ndarray:
        local = np.full(len(self.index.labels), -1, np.int32)
        local[images.ids] = np.arange(len(images), dtype=np.int32)
        return local

    def ordered_stream(self, images: Images) -> tf.data.Dataset:
        """(index, encoded image) of the split's images in ascending index order."""
        local = tf.constant(self._local_of_id(images))
        key = self.image_key
        ds = self._encoded().enumerate()
        ds = ds.map(lambda g, ex: (tf.gather(local, g), ex[key]))
        return ds.filter(lambda i, raw: i >= 0)

    def epoch_stream(
        self,
        images: Images,
        key: tf.Tensor,
        *,
        worker: int = 0,
        workers: int = 1,
        payload: bool = True,
    ) -> tf.data.Dataset:
        """A worker's part of an epoch: (index, encoded image), or indices alone when `payload`
        is False (the same order, from the index table: no file is read)."""
        local = self._local_of_id(images)
        lo, hi = images_lib.worker_range(len(images), worker, workers)
        if self.files is None:
            ds = self._by_data(local, payload).skip(lo).take(hi - lo)
        else:
            ds = self._by_file(local, key, lo, hi, payload)
        return _window_shuffle(ds, key, self.window)

    def _by_data(self, local: np.ndarray, payload: bool) -> tf.data.Dataset:
        table, key = tf.constant(local), self.image_key
        if payload:
            ds = self._encoded().enumerate().map(lambda g, ex: (tf.gather(table, g), ex[key]))
            return ds.filter(lambda i, raw: i >= 0)
        ds = tf.data.Dataset.range(len(local)).map(lambda g: tf.gather(table, g))
        return ds.filter(lambda i: i >= 0)

    def _by_file(self, local, key, lo: int, hi: int, payload: bool) -> tf.data.Dataset:
        local_fm = local[self.index.g_of_fm]
        member = local_fm >= 0
        takes = np.array([take for _, _, take, _ in self.files], np.int64)
        offsets = np.concatenate([[0], np.cumsum(takes)[:-1]]).astype(np.int64)
        members = np.add.reduceat(member.astype(np.int64), offsets)
        rank = np.cumsum(member, dtype=np.int64) - 1  # members before each position, file order
        first_rank = np.concatenate([[0], np.cumsum(members)[:-1]]).astype(np.int64)
        table, rank_t = tf.constant(local_fm), tf.constant(rank)
        offsets_t, first_t = tf.constant(offsets), tf.constant(first_rank)
        paths = tf.constant([f for f, _, _, _ in self.files])
        skips, takes_t = (
            tf.constant([sk for _, sk, _, _ in self.files], tf.int64),
            tf.constant(takes),
        )
        # The epoch's file order, and from each file the members of [lo, hi) of that order.
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(takes), dtype=tf.int64), seed=fold(key, FILE_STREAM)
        )
        count = tf.gather(tf.constant(members), order)
        first = tf.cumsum(count) - count
        start = tf.clip_by_value(lo - first, 0, count)
        stop = tf.clip_by_value(hi - first, 0, count)
        files = tf.data.Dataset.from_tensor_slices((order, start, stop))
        files = files.filter(lambda f, s, e: e > s)

        def blocks(f, s, e):  # a file's records, _BLOCK at a time, with their place in it
            if payload:
                raw = tf.data.TFRecordDataset(tf.gather(paths, f))
                raw = raw.skip(tf.gather(skips, f)).take(tf.gather(takes_t, f))
            else:
                raw = tf.data.Dataset.range(tf.gather(takes_t, f))
            return raw.batch(_BLOCK).enumerate().map(lambda b, recs: (f, s, e, b * _BLOCK, recs))

        def members_of(f, s, e, at, recs):  # the block's records of this split, in [s, e)
            fm = tf.gather(offsets_t, f) + at + tf.range(tf.shape(recs, out_type=tf.int64)[0])
            i, r = tf.gather(table, fm), tf.gather(rank_t, fm) - tf.gather(first_t, f)
            keep = (i >= 0) & (r >= s) & (r < e)
            if not payload:
                return tf.boolean_mask(i, keep)
            raw = tf.io.parse_example(tf.boolean_mask(recs, keep), parse)[self.image_key]
            return tf.boolean_mask(i, keep), raw

        parse = {self.image_key: tf.io.FixedLenFeature([], tf.string)}
        ds = files.interleave(
            blocks,
            cycle_length=min(_CYCLE, max(len(takes), 1)),
            block_length=1,
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
        return ds.map(members_of, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch()


def _window_shuffle(ds: tf.data.Dataset, key: tf.Tensor, window: int) -> tf.data.Dataset:
    """Shuffles each run of `window` elements by a key from (key, window number)."""

    def shuffle(w, batch):
        first = tf.nest.flatten(batch)[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(first)[0]), seed=fold(key, WINDOW_STREAM, w)
        )
        return tf.nest.map_structure(lambda t: tf.gather(t, order), batch)

    return ds.batch(window).enumerate().map(shuffle).unbatch()


# --- what a pass learned, remembered -------------------------------------------------------------
def _read_index(path: str) -> SplitIndex | None:
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            g_of_fm = f["g_of_fm"]
            return SplitIndex(
                labels=f["labels"],
                ok=f["ok"],
                hw=f["hw"],
                reasons={int(k): v for k, v in json.loads(str(f["reasons"])).items()},
                g_of_fm=g_of_fm if len(g_of_fm) else None,
                remembered=True,
            )
    except Exception as e:  # damaged: check again
        log.warning("data: ignoring the unreadable decode-check record %s (%s)", path, e)
        return None


def _write_index(path: str, index: SplitIndex) -> None:
    try:
        with io.atomic_path(path) as tmp:
            np.savez(
                tmp,
                labels=index.labels,
                ok=index.ok,
                hw=index.hw,
                reasons=np.array(json.dumps({str(k): v for k, v in index.reasons.items()})),
                g_of_fm=index.g_of_fm if index.g_of_fm is not None else np.zeros(0, np.int64),
            )
    except OSError as e:  # a read-only cache folder costs a check next time, not the run
        log.warning("data: could not remember the decode check in %s (%s)", path, e)


__all__ = ["SplitIndex", "TfdsSplit"]
