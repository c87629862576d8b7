"""The decode check: every image decoded once before training, in parallel, with progress, and
remembered; and the caches it fills.

A file that cannot be decoded is skipped, logged and counted before `fit` could meet it. The
check of an image folder is remembered in a manifest under the user's cache folder
(`cache_root()`), one per folder, keyed by each file's path, size and modification time: a second
run on an unchanged tree decodes nothing, and after a change exactly the new and changed files
are decoded again. (A file modified less than `RACY_S` seconds before a check is not remembered
as checked: a file system's clock may not tell a later write in the same tick apart.) A TFDS
split remembers its check with its index (`tl_keras.data.tfds_stream`); arrays are pixels
already and need none.

With `cache = "memory"` or `"file"` (or `"auto"`, the default, where it resolves to memory:
`resolve_cache`) the same pass keeps the resized images, in an array or in a
memory-mapped file under `<workdir>/data/cache/`, row by row as they are decoded. `memory` first
checks that the decoded images fit in the memory available (`refuse_memory_cache`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import time

import numpy as np
import tensorflow as tf

from tl_keras import io
from tl_keras.data.images import AUTOTUNE, Images, decode, tf_error_text, untuned
from tl_keras.data.pipeline import Pipeline, load, prepare
from tl_keras.errors import DataError
from tl_keras.io import available_memory, cache_root
from tl_keras.progress import Progress

log = logging.getLogger("tl_keras")

_CACHE_VERSION = 2
_MANIFEST_VERSION = 1
RACY_S = 2.0  # files modified this recently before a check are checked again next time
# cache='memory' may take at most this share of the memory available when loading starts: the
# rest is for TensorFlow, the model, its batches and everything else on the machine.
MEMORY_SHARE = 0.7
# cache='auto' keeps the decoded images in memory up to this size (and MEMORY_SHARE): a training
# epoch then gathers rows of uint8 instead of decoding every file again, the same pixels bitwise
# (benchmarks/bench_cache.py; docs/benchmarks.md). Larger sets are read from their files each
# epoch, as cache='none' does; cache='memory' or 'file' asks for a cache whatever the size.
AUTO_MEMORY_MAX = 2**30
_CHECK_BATCH = 256


# --- memory --------------------------------------------------------------------------------------
def _size(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _memory_need(counts: dict[str, int], p: Pipeline) -> int:
    """Bytes of the splits' decoded images as a uint8 cache holds them."""
    return sum(counts.values()) * p.image_size * p.image_size * 3


def _fits(need: int, available: int | None) -> bool:
    """Whether a memory cache of `need` bytes stays within MEMORY_SHARE of what is available
    (unknown: assumed to fit)."""
    return available is None or need <= MEMORY_SHARE * available


def resolve_cache(counts: dict[str, int], p: Pipeline) -> Pipeline:
    """The pipeline with cache='auto' decided from the splits' image counts: 'memory' when the
    decoded images take at most `AUTO_MEMORY_MAX` and `MEMORY_SHARE` of the memory available
    now, else 'none'. Any other cache is returned as given."""
    if p.cache != "auto":
        return p
    need, available = _memory_need(counts, p), available_memory()
    small = need <= AUTO_MEMORY_MAX and _fits(need, available)
    log.info(
        "data: cache: %s (auto: the decoded images take about %s; memory up to %s)",
        "memory" if small else "none",
        _size(need),
        _size(AUTO_MEMORY_MAX),
    )
    return dataclasses.replace(p, cache="memory" if small else "none")


def refuse_memory_cache(counts: dict[str, int], p: Pipeline) -> None:
    """Raises when the decoded images of `cache='memory'` would not fit in the memory available.

    Raises:
      DataError: one line with the estimate, what is available, and `cache='file'` instead.
    """
    images = sum(counts.values())
    need = _memory_need(counts, p)
    available = available_memory()
    if _fits(need, available):
        return
    splits = " + ".join(f"{split} {n:,}" for split, n in counts.items())
    raise DataError(
        f"cache='memory' needs about {_size(need)} for {images:,} images at "
        f"{p.image_size}x{p.image_size} ({splits}), but only {_size(available)} of memory is "
        f"available (the cache may take {MEMORY_SHARE:.0%} of it); use cache='file' (decoded once "
        "to <workdir>/data/cache and read back from disk) or cache='none'"
    )


# --- the remembered check of a folder ------------------------------------------------------------
def _path_keys(paths) -> np.ndarray:
    """A 64-bit key per path (blake2b): a manifest of a million files stays a few arrays."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(os.fsencode(p), digest_size=8).digest(), "little")
            for p in paths
        ),
        np.uint64,
        count=len(paths),
    )


@dataclasses.dataclass
class _Stamps:
    keys: np.ndarray  # uint64 per file
    sizes: np.ndarray  # int64
    mtimes: np.ndarray  # int64, ns


def _stamp(paths) -> _Stamps:
    sizes, mtimes = np.zeros(len(paths), np.int64), np.zeros(len(paths), np.int64)
    for k, path in enumerate(paths):
        try:
            st = os.stat(path)
            sizes[k], mtimes[k] = st.st_size, st.st_mtime_ns
        except OSError:
            sizes[k], mtimes[k] = -1, -1  # gone: decoding it says why
    return _Stamps(_path_keys([os.path.abspath(p) for p in paths]), sizes, mtimes)


class Manifest:
    """The remembered decode check of the files under one folder.

    Rows (sorted by key): path key, size, mtime, whether it decodes, height, width; and the
    reason of each file that does not.
    """

    FIELDS = ("keys", "sizes", "mtimes", "ok", "hw")

    def __init__(self, folder: str):
        real = os.path.realpath(os.path.abspath(folder))
        digest = hashlib.sha256(real.encode()).hexdigest()[:32]
        self.path = os.path.join(cache_root(), "decode_check", f"{digest}.npz")
        self.rows = self._read()

    def _read(self) -> dict | None:
        if not os.path.isfile(self.path):
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                if meta != self._meta():
                    return None  # another TensorFlow decodes differently: check again
                rows = {k: f[k] for k in self.FIELDS}
                rows["reasons"] = {int(k): v for k, v in json.loads(str(f["reasons"])).items()}
                return rows
        except Exception as e:
            log.warning("data: ignoring the unreadable decode-check manifest %s (%s)", self.path, e)
            return None

    @staticmethod
    def _meta() -> dict:
        return {"version": _MANIFEST_VERSION, "tensorflow": tf.__version__}

    def recall(self, stamps: _Stamps) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """(known, ok, hw, reasons by position) for files whose size and time are unchanged."""
        n = len(stamps.keys)
        known, ok, hw = np.zeros(n, bool), np.zeros(n, bool), np.zeros((n, 2), np.int32)
        reasons: dict[int, str] = {}
        if self.rows is None or not len(self.rows["keys"]):
            return known, ok, hw, reasons
        rows = self.rows
        at = np.clip(np.searchsorted(rows["keys"], stamps.keys), 0, len(rows["keys"]) - 1)
        known = (
            (rows["keys"][at] == stamps.keys)
            & (rows["sizes"][at] == stamps.sizes)
            & (rows["mtimes"][at] == stamps.mtimes)
        )
        ok[known], hw[known] = rows["ok"][at[known]], rows["hw"][at[known]]
        for k in np.flatnonzero(known & ~ok):
            reasons[int(k)] = rows["reasons"].get(int(at[k]), "cannot be decoded")
        return known, ok, hw, reasons

    def remember(self, stamps: _Stamps, ok, hw, reasons: dict[int, str], started_ns: int) -> None:
        """Adds these files' results (merged with what another split wrote meanwhile)."""
        settled = (stamps.sizes >= 0) & (stamps.mtimes < started_ns - int(RACY_S * 1e9))
        new = {
            "keys": stamps.keys,
            "sizes": stamps.sizes,
            "mtimes": stamps.mtimes,
            "ok": ok,
            "hw": hw,
        }
        new = {k: v[settled] for k, v in new.items()}
        new_reasons = [reasons.get(int(k), "") for k in np.flatnonzero(settled)]
        old = self._read() or {k: np.zeros((0, 2) if k == "hw" else 0) for k in self.FIELDS}
        keep = ~np.isin(old["keys"], new["keys"])
        old_reasons = [old.get("reasons", {}).get(int(k), "") for k in np.flatnonzero(keep)]
        merged = {
            k: np.concatenate([old[k][keep].astype(new[k].dtype), new[k]]) for k in self.FIELDS
        }
        order = np.argsort(merged["keys"], kind="stable")
        merged = {k: v[order] for k, v in merged.items()}
        why = [(old_reasons + new_reasons)[j] for j in order]
        merged["reasons"] = np.array(json.dumps({str(r): w for r, w in enumerate(why) if w}))
        merged["meta"] = np.array(json.dumps(self._meta()))
        try:
            with io.atomic_path(self.path) as tmp:
                np.savez(tmp, **merged)
        except OSError as e:  # a read-only cache folder costs a check next time, not the run
            log.warning("data: could not remember the decode check in %s (%s)", self.path, e)


# --- decoding ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Check:
    """The result of the decode check of one split."""

    ok: np.ndarray  # bool per image
    reasons: dict[int, str]  # index -> why it cannot be decoded
    sizes: collections.Counter  # (height, width) -> images
    seconds: float
    remembered: int = 0  # images whose check was recalled, not decoded


def _why_unreadable(path: str) -> str:
    try:
        decode(tf.io.read_file(path))
    except (tf.errors.OpError, ValueError) as e:
        return tf_error_text(e)
    return "decoding failed once, then succeeded: the file may be changing"


def _decode_files(
    images: Images, todo: np.ndarray, p: Pipeline, store
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes images `todo` of a file split in parallel (filling `store` rows when given).

    Returns:
      (ok, hw) for every image of the split (False / 0 where not decoded).
    """
    n = len(images)
    ok, hw = np.zeros(n, bool), np.zeros((n, 2), np.int32)
    paths = tf.constant([images.items[j] for j in images.ids[todo]], tf.string)
    where = tf.constant(todo)

    def probe(k):
        image = decode(tf.io.read_file(paths[k]))
        out = {"index": tf.gather(where, k), "hw": tf.shape(image)[:2]}
        if store is not None:
            out["image"] = prepare(image, p)
        return out

    # Order does not matter here (each result carries its index), so let the fastest finish first.
    ds = tf.data.Dataset.range(len(todo)).map(
        probe, num_parallel_calls=AUTOTUNE, deterministic=False
    )
    with Progress("decode check", len(todo)) as progress:
        for batch in untuned(ds.ignore_errors().batch(_CHECK_BATCH)).as_numpy_iterator():
            ok[batch["index"]], hw[batch["index"]] = True, batch["hw"]
            if store is not None:
                store[batch["index"]] = batch["image"]
            progress.update(len(batch["index"]))
    return ok, hw


def _check_files(images: Images, p: Pipeline, store) -> Check:
    start, started_ns = time.perf_counter(), time.time_ns()
    paths = [images.items[j] for j in images.ids]
    stamps = _stamp(paths)
    manifest = Manifest(images.origin or os.path.dirname(os.path.commonpath(paths) or "."))
    known, ok, hw, reasons = manifest.recall(stamps)
    todo = np.arange(len(images)) if store is not None else np.flatnonzero(~known)
    if len(todo):
        got_ok, got_hw = _decode_files(images, todo, p, store)
        ok[todo], hw[todo] = got_ok[todo], got_hw[todo]
        for k in todo[~got_ok[todo]]:
            reasons[int(k)] = _why_unreadable(paths[k])
        for k in todo[got_ok[todo]]:
            reasons.pop(int(k), None)
        manifest.remember(stamps, ok, hw, reasons, started_ns)
    sizes = collections.Counter(map(tuple, hw[ok].tolist()))
    remembered = len(images) - len(todo)
    return Check(ok, reasons, sizes, time.perf_counter() - start, remembered)


def _check_tfds(images: Images, p: Pipeline, store) -> Check:
    """A TFDS split's check was made when it was listed; a cache is filled by one more pass."""
    start = time.perf_counter()
    index = images.items.index
    ok = index.ok[images.ids]
    reasons = {k: index.reasons[int(g)] for k, g in enumerate(images.ids) if not ok[k]}
    sizes = collections.Counter(map(tuple, index.hw[images.ids][ok].tolist()))
    if store is not None:
        usable = images.subset(np.flatnonzero(ok))
        _fill(load(usable.items.ordered_stream(usable), usable, p), store, np.flatnonzero(ok))
    remembered = len(images) if index.remembered and store is None else 0
    return Check(ok, reasons, sizes, time.perf_counter() - start, remembered)


def _fill(ds: tf.data.Dataset, store, rows: np.ndarray) -> None:
    """Writes (index, image) pairs into store rows `rows[index]`, with progress."""
    with Progress("cache fill", len(rows)) as progress:
        for i, image in untuned(ds.batch(_CHECK_BATCH)).as_numpy_iterator():
            store[rows[i]] = image
            progress.update(len(i))


def check_images(images: Images, p: Pipeline, store=None) -> Check:
    """Decodes every image of a split once (recalling what an earlier check learned)."""
    if images.kind == "files":
        return _check_files(images, p, store)
    if images.kind == "tfds":
        return _check_tfds(images, p, store)
    start = time.perf_counter()  # arrays: pixels already, checked when listed
    if store is not None:
        _fill(load(tf.data.Dataset.range(len(images)), images, p), store, np.arange(len(images)))
    sizes = collections.Counter({tuple(images.items.shape[1:3]): len(images)})
    return Check(np.ones(len(images), bool), {}, sizes, time.perf_counter() - start)


# --- caches ----------------------------------------------------------------------------------------
def cache_key(images: Images, p: Pipeline) -> str:
    """Changes whenever the images, their labels or the way they are resized change."""
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_VERSION, images.kind, p.image_size, p.resize_mode]).encode())
    h.update(p.resize_method.encode())
    h.update(np.asarray(images.labels, np.int32).tobytes())
    h.update(np.asarray(images.ids, np.int64).tobytes())
    if images.kind == "files":
        for j in images.ids:
            path = images.items[j]
            try:
                st = os.stat(path)
                stamp = f"{st.st_size}\0{st.st_mtime_ns}"
            except OSError:  # removed since it was listed: the decode check skips it
                stamp = "missing"
            h.update(f"{os.path.abspath(path)}\0{stamp}\n".encode())
    elif images.kind == "tfds":
        stamp = images.items.stamp()
        h.update((stamp or f"{images.items.name}[{images.items.spec}]").encode())
        if stamp is None:  # read by data, no files to go by: the labels at least
            h.update(images.items.index.labels.tobytes())
    elif isinstance(images.items, np.memmap) and images.items.filename:
        st = os.stat(images.items.filename)  # a memory-mapped .npz member: the file says it
        h.update(
            f"{images.items.filename}\0{st.st_size}\0{st.st_mtime_ns}\0{images.items.offset}".encode()
        )
    else:
        h.update(str(images.items.shape).encode())
        for start in range(0, len(images.items), 1024):
            h.update(np.ascontiguousarray(images.items[start : start + 1024]).tobytes())
    return h.hexdigest()[:24]


def _reuse_file_cache(
    images: Images, split: str, folder: str, report, p: Pipeline
) -> tuple[Images, Check] | None:
    manifest_path, npy = os.path.join(folder, "manifest.json"), os.path.join(folder, "images.npy")
    if not (os.path.isfile(manifest_path) and os.path.isfile(npy)):
        return None
    try:  # a cache is only a shortcut: a damaged one (truncated, edited) is rebuilt
        manifest = io.read_json(manifest_path)
        kept = np.asarray(manifest["kept"], np.int64)
        skipped = [(images.names[i], str(r)) for i, r in manifest["skipped"]]
        sizes = collections.Counter({tuple(k): int(v) for k, v in manifest["sizes"]})
        stored = np.load(npy, mmap_mode="r")
        if kept.ndim != 1 or stored.shape[1:] != (p.image_size, p.image_size, 3):
            raise ValueError(f"{len(kept)} images listed, {stored.shape} stored")
        if len(kept) and (kept.min() < 0 or kept.max() >= len(images)):
            raise ValueError(f"kept indices outside the {len(images)} images listed")
        subset = images.subset(kept)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        log.warning("data: the file cache %s is damaged (%s): rebuilding it", folder, e)
        return None
    report.skipped += [{"split": split, "item": n, "reason": r} for n, r in skipped]
    check = Check(np.isin(np.arange(len(images)), kept), {}, sizes, 0.0)
    log.info("data: %s: reusing the file cache %s", split, folder)
    return subset.cached(stored, kept), check


def checked_split(images: Images, split: str, p: Pipeline, report) -> tuple[Images, Check]:
    """Returns the split without its unreadable images (read from a cache when one is asked for).

    With cache='file', a cache written by an earlier run on the same files and settings is
    reused, decode check included.
    """
    folder = npy = None
    store = None
    shape = (len(images), p.image_size, p.image_size, 3)
    if p.cache == "file":
        if not p.cache_dir:
            raise DataError("cache='file' needs a workdir (the cache goes to <workdir>/data/cache)")
        folder = os.path.join(p.cache_dir, f"{split}-{cache_key(images, p)}")
        reused = _reuse_file_cache(images, split, folder, report, p)
        if reused is not None:
            return reused
        os.makedirs(folder, exist_ok=True)
        npy = os.path.join(folder, "images.npy")
        with io.atomic_path(npy) as tmp:
            store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            check = check_images(images, p, store)
            store.flush()
            del store
    else:
        if p.cache == "memory":
            store = np.zeros(shape, np.uint8)
        check = check_images(images, p, store)
    report.decode_check_s += check.seconds
    for i, reason in sorted(check.reasons.items()):
        report.skipped.append({"split": split, "item": images.names[i], "reason": reason})
    if check.remembered:
        log.info(
            "data: %s: the decode check of %d of %d images is remembered from an earlier run "
            "(unchanged since)",
            split,
            check.remembered,
            len(images),
        )
    kept = np.flatnonzero(check.ok)
    usable = images if check.ok.all() else images.subset(kept)
    if p.cache == "none":
        return usable, check
    if p.cache == "file":
        io.atomic_write_json(  # written last: its presence means the cache is complete
            os.path.join(folder, "manifest.json"),
            {
                "kept": kept.tolist(),
                "skipped": sorted(check.reasons.items()),
                "sizes": [[list(k), v] for k, v in check.sizes.items()],
            },
        )
        store = np.load(npy, mmap_mode="r")
    return usable.cached(store, kept), check


__all__ = ["Check", "Manifest", "available_memory", "cache_key", "cache_root", "checked_split"]
