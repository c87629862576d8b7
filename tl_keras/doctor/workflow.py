"""The data doctor on a real data set: content hashes, the frozen base's features, the checks.

    python -m tl_keras.doctor --data_dir=photos/ --workdir=runs/b0 [--backbone=... any config flag]

`doctor_workdir(config, workdir)` is what the command does: load the data as training would
(same split), build the pretrained base, and `examine`. `train` runs `examine` itself before the
first phase of a new run and logs its one summary line: with config `doctor = "auto"` only what
must be known before training (exact and near duplicates, above all across splits, and the
class balance), leaving label errors and outliers to the command (`deferred_for`); `"full"`
runs every check before training; `"off"` skips it. What `examine` does:

1. **Hashes.** The SHA-256 of every image's content, as listed (file bytes; encoded bytes from
   TFDS; pixels for arrays): exact copies, and the data's manifest hash (of every image's split,
   class and hash) that the model card records.
2. **Features** of every image of train, validation and test from the frozen pretrained base,
   at the model's input size. Train and validation go through `training.features.compute`, the
   pass feature extraction reuses: when `fe` trains on cached features (the default path),
   training pays nothing extra for them. Test features and 16 px grey thumbnails (for edited or
   grey copies) take a second, shorter pass. Everything is kept in
   `<workdir>/doctor/features.npz` under a key of the base's weights, the input size, the resize
   settings and every image's content hash: a changed file changes the key, so stale features
   are never reused (the log says how many images changed).
3. **The checks** (`tl_keras.doctor.analysis.diagnose`). One blocked pass over all pairs is
   quadratic: above `MAX_DIAGNOSED` images they run on a seeded sample of that many (every image
   with an exact copy included, so exact duplicates are all found), and the report's limits say
   so. A random base (`weights = "none"`) gives features that say nothing about the data: then
   only exact copies and the class balance are checked, and the report says that too.
4. **The report** under `<workdir>/doctor/`: `report.json`, `report.md` and `thumbnails.png`
   (`tl_keras.doctor.report`; the figure only when nothing was deferred).

Deferred checks lose nothing but time to the answer: the command on the same workdir finds the
features cached (same key) and runs everything in seconds, without a second feature pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from typing import Any

import numpy as np

from tl_keras import config as config_lib
from tl_keras import doctor as doctor_lib
from tl_keras import io
from tl_keras.doctor import analysis
from tl_keras.doctor import report as report_lib
from tl_keras.doctor.thresholds import Thresholds
from tl_keras.errors import DataError
from tl_keras.model.forward import forward

log = logging.getLogger("tl_keras")

FOLDER = "doctor"
CACHE_FILE = "features.npz"
MAX_DIAGNOSED = 20_000  # images the all-pairs checks run on (20k: ~10 s on 2 cores)
THUMBNAIL_SIZE = 16  # px, grey: what an edited or grey copy keeps
SPLITS = ("train", "val", "test")
_CACHE_VERSION = 1
COMMAND = "python -m tl_keras.doctor --workdir={workdir}"  # runs what training deferred


def deferred_for(mode: str) -> tuple[str, ...]:
    """The checks the doctor leaves for later before training, under config `doctor = mode`.

    'auto': label errors and outliers (`analysis.DEFERRABLE`): they change nothing training
    does, and the probe behind label errors is most of the checks' time on a large base; 'full':
    none. ('off' runs no doctor at all.)
    """
    if mode not in doctor_lib.MODES:
        raise ValueError(f"doctor mode {mode!r} is not one of {doctor_lib.MODES}")
    return analysis.DEFERRABLE if mode == "auto" else ()


@dataclasses.dataclass
class DoctorResult:
    """What `examine` found and wrote.

    Attributes:
      report: the JSON report (`analysis.diagnose`'s, plus 'data' and 'features').
      summary: the one log line.
      paths: name -> file written ('report', 'text', 'figure').
      seconds: time of each step ('hashes', 'features', 'diagnose', 'report').
    """

    report: dict[str, Any]
    summary: str
    paths: dict[str, str]
    seconds: dict[str, float]


@dataclasses.dataclass
class _Listed:
    """Every image of the data set, split after split, in the datasets' order."""

    splits: list[str]
    names: list[str]
    labels: np.ndarray
    hashes: list[str]
    counts: dict[str, int]


def before_training(spec, data, model, outdir: str, *, workdir: str | None = None) -> dict:
    """The doctor before a new run's first phase (the runner calls it): `examine` with the checks
    config `doctor` leaves for later deferred; returns what run.json records of it: the summary,
    the report, the manifest hash, which checks ran and which wait for `python -m tl_keras.doctor`
    (`later`), or why it was skipped.

    Args:
      spec: the run's `RunSpec` (its run section's `doctor`: 'auto', 'full' or 'off').
      data: the loaded `DataBundle`; one that does not list its images is not examined.
      model: the classifier whose frozen base gives the features.
      outdir: where `doctor/` goes (the run's workdir, or its staged replacement).
      workdir: the workdir the run ends in, when `outdir` is a staged replacement of it (the
        command that runs the deferred checks names it); default `outdir`.
    """
    if spec.run.doctor == "off":
        log.info("doctor: off (doctor='off'): the data was not examined before training")
        return {"skipped": "doctor='off'"}
    if data.images is None:
        log.info("doctor: skipped: this DataBundle does not list its images")
        return {"skipped": "the data bundle does not list its images"}
    result = examine(
        spec, data, model, outdir, deferred=deferred_for(spec.run.doctor), shown_workdir=workdir
    )
    report = result.report
    record = {
        "summary": result.summary,
        "report": f"{FOLDER}/{report_lib.REPORT_FILE}",
        "manifest_sha256": report["data"]["manifest_sha256"],
        "checks": report["checks"],
        "deferred": report["deferred"],
    }
    if report.get("later"):
        record["later"] = report["later"]
    return record


def doctor_workdir(config, workdir: str, *, data=None, deferred=()) -> DoctorResult:
    """Examines the data a config names with its pretrained base (`python -m tl_keras.doctor`).

    Args:
      config: a `Config` (or what `config.check` made of it): data_dir, splits, backbone,
        weights, image size.
      workdir: where `doctor/` goes (its features cache is reused by later runs there).
      data: a ready `DataBundle`; default: load what the config names.
      deferred: checks to leave for later (`deferred_for`); default: every check.

    Returns:
      The `DoctorResult`.

    Raises:
      ConfigError, BackboneError, DataError, WorkdirError: bad input, before anything is written.
    """
    from tl_keras.data import sources
    from tl_keras.workdir import Workdir, nothing_left_if_refused

    spec = config if isinstance(config, config_lib.Checked) else config_lib.check(config)
    wd = Workdir(workdir)
    with nothing_left_if_refused(wd.path):  # a refusal leaves no folder it made
        wd.ensure_writable()
        if data is None:
            data = sources.load(spec.data, workdir=wd.path)
        model = None
        if spec.model.weights is not None:  # only the base's features matter: the head is unused
            model = spec.model.build(data.num_classes)
        return examine(spec, data, model, wd.path, deferred=deferred)


def examine(
    spec, data, model, workdir: str, *, deferred=(), shown_workdir: str | None = None
) -> DoctorResult:
    """Hashes, features, checks and report of a loaded data set (the step before training).

    Args:
      spec: the run's settings: its `config.check` (or its decided `RunSpec`); their model
        and run sections.
      data: its `DataBundle` (with `images`, as `tl_keras.data` builds it).
      model: the classifier whose frozen base gives the features; None (or a random base,
        `spec.model.weights is None`) = hashes and balance only.
      workdir: where `doctor/` goes.
      deferred: checks of `analysis.DEFERRABLE` to leave for later (no figure is drawn then).
      shown_workdir: the workdir the log line and report.md name in the command that runs the
        deferred checks (a run staged elsewhere names its final workdir); default `workdir`.

    Returns:
      The `DoctorResult` (also logged as one line).
    """
    seconds: dict[str, float] = {}
    folder = os.path.join(workdir, FOLDER)
    start = time.perf_counter()
    listed = list_images(data)
    seconds["hashes"] = time.perf_counter() - start
    start = time.perf_counter()
    feats, feature_info = None, {"computed": False}
    if model is not None and spec.model.weights is not None:
        feats, feature_info = image_features(model, data, listed, folder=folder, spec=spec)
    seconds["features"] = time.perf_counter() - start
    start = time.perf_counter()
    report = _diagnose(spec, data, listed, feats, deferred)
    seconds["diagnose"] = time.perf_counter() - start
    report["data"] = {
        "source": data.source,
        "images": listed.counts,
        "manifest_sha256": manifest_hash(listed, data.class_names),
    }
    report["features"] = {
        **feature_info,
        "backbone": spec.model.backbone.name,
        "weights": spec.model.weights,
        "image_size": spec.model.image_size,
    }
    later = COMMAND.format(workdir=shown_workdir or workdir) if report["deferred"] else ""
    start = time.perf_counter()
    paths = report_lib.write_report(
        report, folder, data=data, figure=not report["deferred"], later=later
    )
    seconds["report"] = time.perf_counter() - start
    report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    if later:
        report["later"] = later
    io.atomic_write_json(paths["report"], report)
    hint = f"; the rest: {later}" if later else ""
    log.info("%s; report: %s%s", report["summary"], paths["text"], hint)
    return DoctorResult(report, report["summary"], paths, seconds)


# --- 1. hashes ------------------------------------------------------------------------------------
def list_images(data) -> _Listed:
    """Every image of every split with its label, name and content hash, in dataset order."""
    if data.images is None:
        raise DataError(
            "the doctor needs the data's image list; this DataBundle has none (build it with "
            "tl_keras.data, or set doctor='off')"
        )
    splits, names, labels, hashes, counts = [], [], [], [], {}
    for split in SPLITS:
        images = data.images.get(split)
        if images is None or not len(images):
            continue
        counts[split] = len(images)
        splits += [split] * len(images)
        names += _names(images)
        labels.append(np.asarray(images.labels, np.int64))
        hashes += _hashes(images, data)
    return _Listed(splits, names, np.concatenate(labels), hashes, counts)


def _names(images) -> list[str]:
    if images.kind == "files":  # the path as listed: a user can open or move it
        return [str(images.items[j]) for j in images.ids]
    return [str(n) for n in images.names]


def _hashes(images, data) -> list[str]:
    """Each image's content hash: its file's bytes, its array's values, or (a TFDS split, read
    as a stream) its decoded pixels at the model's size, one pass in the dataset's order."""
    if images.kind == "files":
        return [_file_hash(images.items[j]) for j in images.ids]
    if images.kind == "array":
        return [analysis.content_hash(np.asarray(images.items[j])) for j in images.ids]
    from tl_keras.data.pipeline import eval_dataset

    return [
        analysis.content_hash(np.asarray(x, np.uint8))
        for x, _ in eval_dataset(images, data.num_classes, data.pipeline).unbatch()
    ]


def _file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_hash(listed: _Listed, class_names) -> str:
    """SHA-256 of the sorted (split, class, content hash) lines: the labelled data, whatever the
    file names or listing order."""
    lines = sorted(
        f"{s}\t{class_names[y]}\t{h}\n"
        for s, y, h in zip(listed.splits, listed.labels, listed.hashes, strict=True)
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# --- 2. features ------------------------------------------------------------------------------------
def image_features(model, data, listed: _Listed, *, folder: str, spec) -> tuple[dict, dict]:
    """Features and thumbnails of every listed image, from the content-keyed cache or computed.

    Returns:
      ({'features': N x D, 'thumbnails': N x 256}, what happened: computed or reused, seconds).
    """
    from tl_keras.training import features as features_lib

    path = os.path.join(folder, CACHE_FILE)
    key = _feature_key(features_lib.cache_key(model, data), spec, listed)
    cached = _read_cache(path, key, listed)
    if cached is not None:
        return cached, {"computed": False, "reused": path}
    start = time.perf_counter()
    mode = spec.run.feature_cache if spec.run.feature_cache != "off" else "memory"
    arrays, _, _ = features_lib.compute(model, data, mode=mode, workdir=os.path.dirname(folder))
    parts = [arrays["train"], arrays["val"]]
    if data.test is not None and listed.counts.get("test"):
        extractor = features_lib.feature_extractor(model)
        parts.append(
            np.concatenate(
                [
                    np.asarray(x, np.float32)
                    for _, x in forward(extractor, data.test, fold_batchnorm=True)
                ]
            )
        )
    out = {
        "features": np.concatenate([p for p in parts if len(p)]).astype(np.float32),
        "thumbnails": thumbnails(data),
    }
    if len(out["features"]) != len(listed.labels):
        raise DataError(
            f"the feature pass gave {len(out['features'])} rows for {len(listed.labels)} listed "
            "images; the data changed while it was read: run again"
        )
    os.makedirs(folder, exist_ok=True)
    with io.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, key=np.array(key), hashes=np.array(listed.hashes), **out)
    return out, {"computed": True, "seconds": round(time.perf_counter() - start, 3)}


def _feature_key(base_key: str, spec, listed: _Listed) -> str:
    h = hashlib.sha256(f"{_CACHE_VERSION}\0{base_key}\0{spec.model.image_size}\0".encode())
    c = spec.data
    h.update(f"{c.resize_mode}\0{c.resize_method}\0".encode())
    for split, hash_ in zip(listed.splits, listed.hashes, strict=True):
        h.update(f"{split}\t{hash_}\n".encode())
    return h.hexdigest()


def _read_cache(path: str, key: str, listed: _Listed) -> dict | None:
    """The cached arrays when their key is this one; None (and a log line saying why) if not."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) == key:
                return {"features": f["features"], "thumbnails": f["thumbnails"]}
            old = set(f["hashes"].tolist())
    except (OSError, ValueError, KeyError) as e:
        log.info("doctor: %s is unreadable (%s): recomputing the features", path, e)
        return None
    changed = sum(h not in old for h in listed.hashes)
    why = (
        f"{changed} of {len(listed.hashes)} images are new or changed"
        if changed
        else "the base, the image size, the resize settings or the split changed"
    )
    log.info("doctor: the cached features in %s are stale (%s): recomputing them", path, why)
    return None


def _images_only(dataset):
    return dataset.map(lambda x, y: x)


def thumbnails(data) -> np.ndarray:
    """16 x 16 grey thumbnails (area-averaged) of every image, train, val then test."""
    import tensorflow as tf

    def shrink(x):
        grey = tf.image.rgb_to_grayscale(x)
        return tf.reshape(tf.image.resize(grey, (THUMBNAIL_SIZE,) * 2, method="area"), [-1, 256])

    parts = []
    for ds in (data.train_in_order, data.val, data.test):
        if ds is None:
            continue
        if isinstance(ds.element_spec, tuple):
            ds = _images_only(ds)
        parts += list(ds.map(shrink).as_numpy_iterator())
    return np.concatenate(parts).astype(np.float32)


# --- 3. the checks -----------------------------------------------------------------------------------
def _diagnose(spec, data, listed: _Listed, feats: dict | None, deferred=()) -> dict[str, Any]:
    n = len(listed.labels)
    keep = np.arange(n)
    extra = []
    if feats is not None and n > MAX_DIAGNOSED:
        keep = scale_sample(listed.hashes, MAX_DIAGNOSED, seed=spec.run.seed)
        extra.append(
            f"{n} images: near-duplicates, label errors and outliers were checked on a seeded "
            f"sample of {len(keep)} (all pairs of more would take minutes; every image with an "
            "exact copy is in it); exact copies and balance on every image"
        )
    no_features = None
    if feats is None:
        no_features = [
            "weights='none': a random base's features say nothing about the images, so only exact "
            "copies (content hashes) and the class balance are checked; use pretrained weights "
            "for near-duplicates, label errors and outliers"
        ]
    report = analysis.diagnose(
        None if feats is None else feats["features"][keep],
        listed.labels[keep],
        splits=[listed.splits[i] for i in keep],
        paths=[listed.names[i] for i in keep],
        hashes=[listed.hashes[i] for i in keep],
        class_names=data.class_names,
        thumbnails=None if feats is None else feats["thumbnails"][keep],
        seed=spec.run.seed,
        extra_limits=extra,
        no_features=no_features,
        deferred=deferred,
    )
    if len(keep) < n:  # the balance of every image, not of the sample
        report["balance"] = analysis.class_balance(
            listed.labels, listed.splits, data.class_names, Thresholds()
        )
        report["summary"] = analysis.summary_line(report)
    return report


def scale_sample(hashes: list[str], size: int, *, seed: int) -> np.ndarray:
    """Indices of a seeded sample of `size` images that holds every image with an exact copy."""
    _, inverse, counts = np.unique(np.asarray(hashes), return_inverse=True, return_counts=True)
    copies = np.flatnonzero(counts[inverse] > 1)
    rest = np.setdiff1d(np.arange(len(hashes)), copies)
    fill = max(0, size - len(copies))
    chosen = np.random.default_rng(seed).choice(rest, min(fill, len(rest)), replace=False)
    return np.sort(np.concatenate([copies, chosen]).astype(np.int64))


__all__ = [
    "DoctorResult",
    "before_training",
    "deferred_for",
    "doctor_workdir",
    "examine",
    "list_images",
    "manifest_hash",
]
