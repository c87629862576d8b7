"""Data sources: image folders, TensorFlow Datasets, arrays (`.npz` or in memory), and the
synthetic shapes, each listed into a `RawData` that `tl_keras.data.pipeline.assemble` turns into
a `DataBundle`.

`load_data(config)` is the entry point: `data_dir` names an image-folder tree
(`data_dir=photos/`), a TFDS name (`data_dir=tfds:tf_flowers`), arrays (`data_dir=arrays.npz`, or
`from_arrays(...)` in a notebook) or `synthetic`. Listing never decodes an image; it checks the
layout (class folders, splits, label ranges) and fails with a `DataError` naming the path or
value and what to do.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras.data.pipeline import (
    IMAGE_EXTENSIONS,
    DataBundle,
    DataReport,
    Images,
    Names,
    Pipeline,
    RawData,
    assemble,
    checked_split,
    eval_dataset,
    shown,
    skipped_text,
)
from tl_keras.errors import DataError, did_you_mean

log = logging.getLogger("tl_keras")


# Sub-folder names that make data_dir a split layout (train/ val/ test/) rather than classes.
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


TFDS_PREFIX = "tfds:"


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
                f"{_where(root, field)} has class folder(s) {shown(extra)} that the training "
                f"data does not have (its classes: {shown(names)}); its labels would be "
                "meaningless: remove or rename them"
            )
        if missing:
            raise DataError(
                f"{_where(root, field)} has no folder for class(es) {shown(missing)} of the "
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
            f"class folder(s) {shown(empty)} in {_where(root, field)} contain no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
        )
    return FolderListing(root, files, labels, names, ignored)


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
        "files",
        listing.files,
        np.asarray(listing.labels, np.int32),
        listing.files,
        origin=listing.root,
    )
    usable, check = checked_split(images, "eval", dataclasses.replace(p, cache="none"), report)
    if len(usable) == 0 or (len(images) - len(usable)) > p.max_skipped_fraction * len(images):
        raise DataError(
            f"{_where(root, field)}: {len(images) - len(usable)} of {len(images)} images are unreadable "
            f"(e.g. {skipped_text(report)}); fix or remove them"
        )
    report.images["eval"] = len(usable)
    kept = dataclasses.replace(
        listing, files=list(usable.names), labels=[int(v) for v in usable.labels]
    )
    return eval_dataset(usable, len(listing.class_names), p), kept, report


def _images_from_listing(listing: FolderListing) -> Images:
    files, root = listing.files, listing.root
    names = Names(lambda j: os.path.relpath(files[j], root), np.arange(len(files)))
    labels = np.asarray(listing.labels, np.int32)
    return Images("files", files, labels, names, origin=root)


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


def _tfds_split(builder, name: str, spec: str, field: str, keys: tuple[str, str]) -> Images:
    """A split spec as `Images` of kind 'tfds': its labels and decode check, never its images."""
    from tl_keras.data.check import cache_root
    from tl_keras.data.tfds_stream import TfdsSplit

    try:
        split = TfdsSplit(
            builder,
            name=name,
            spec=spec,
            image_key=keys[0],
            label_key=keys[1],
            cache_dir=cache_root(),
        )
        index = split.open()
    except Exception as e:
        if missing := _missing_module_error(e, name, "read"):
            raise missing from None
        splits = ", ".join(builder.info.splits) or "unknown"
        raise DataError(
            f"{field}={spec!r} is not a split of TFDS {name} ({_first_line(e)}); its splits: "
            f"{splits}; slices look like 'train[:80%]'"
        ) from None
    if not len(index.labels):
        raise DataError(f"{field}={spec!r} of TFDS {name} has no examples")
    if index.remembered:
        log.info(
            "data: TFDS %s[%s]: labels and decode check remembered from an earlier run", name, spec
        )
    ids = np.arange(len(index.labels), dtype=np.int64)
    return Images("tfds", split, index.labels, Names(split.name_of, ids), origin=split.origin)


def _tfds_source(config) -> RawData:
    """Lists a TFDS image-classification data set: its labels, and each split's decode check."""
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
    class_names = [str(n) for n in features[keys[1]].names]
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
        raw.splits[split] = _tfds_split(builder, name, spec, field, keys) if spec else None
        raw.where[split] = f"{field}={spec!r}"
        if spec:
            raw.check_seconds += raw.splits[split].items.index.seconds
    return raw


# --- arrays ----------------------------------------------------------------------------------------
def _pixel_range(x: np.ndarray, xname: str) -> tuple[float, float]:
    """(smallest, largest) pixel, a block of images at a time (a memory-mapped array is read
    through once, never copied whole)."""
    lo, hi = np.inf, -np.inf
    step = max(1, (64 << 20) // max(x[0].nbytes, 1))
    for start in range(0, len(x), step):
        block = np.asarray(x[start : start + step])
        if x.dtype.kind == "f" and not np.isfinite(block).all():
            raise DataError(f"{xname} contains NaN or infinite values")
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi


def _array_split(
    x: Any, y: Any, field: str, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Checks one (images, labels) pair; returns N x H x W x C images (the caller's array, or a
    view of it: never a copy) and int32 labels."""
    xname, yname = f"x_{field}", f"y_{field}"
    x, y = (x if isinstance(x, np.ndarray) else np.asarray(x)), np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]  # N x H x W grayscale
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or not len(x):
        raise DataError(
            f"{xname} has shape {x.shape}; images must be N x H x W x C with C in 1, 3, 4 "
            "(or N x H x W grayscale), N > 0"
        )
    if x.dtype.kind not in "uif":
        raise DataError(f"{xname} has dtype {x.dtype}; use uint8 (or numbers in 0..255)")
    lo, hi = _pixel_range(x, xname) if x.dtype != np.uint8 else (0, 255)
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
    return x, y.astype(np.int32)  # other dtypes become uint8 as they are read (images.as_uint8)


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


def check_class_names(names: Sequence[str], source: str) -> None:
    """Refuses class names that labels.txt, CSV files and run.json cannot carry one to a line.

    A name is data, never a path here, so '/' or '..' is harmless; an empty name, a duplicate,
    or a control character (a newline would split labels.txt) is not.

    Raises:
      DataError: naming the first bad name.
    """
    seen = set()
    for i, name in enumerate(names):
        if not name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name) or name in seen:
            why = "a duplicate" if name in seen else "empty or holds a control character"
            raise DataError(
                f"class name {i} of {source}, {name[:60]!r}, is {why}; class names must be "
                "distinct, printable and on one line. Rename it"
            )
        seen.add(name)


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
      config: a `Config` or its `RunSpec` (image size, batch size, augmentation,
        val_fraction, seed...).
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
    config, size = _settings(config)
    p = Pipeline.from_config(config, image_size=size, workdir=workdir)
    return assemble(raw, p, val_fraction=config.val_fraction)


def _npz_member(path: str, zf, name: str) -> np.ndarray:
    """One array of a .npz file: memory-mapped when stored uncompressed (`np.savez`), so the
    images are read from disk as batches need them; read whole when compressed."""
    import zipfile

    info = zf.getinfo(f"{name}.npy")
    if info.compress_type == zipfile.ZIP_STORED and name.startswith("x_"):
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)  # the member's local header: its name and extra field lengths
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little")
            start += int.from_bytes(local[28:30], "little")
            f.seek(start)
            version = np.lib.format.read_magic(f)
            header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                version, np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = header(f)
            if not dtype.hasobject:
                order = "F" if fortran else "C"
                return np.memmap(path, dtype, "r", offset=f.tell(), shape=shape, order=order)
    with zf.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        names = [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]
        return {name: _npz_member(path, zf, name) for name in names}


def _npz_source(path: str) -> RawData:
    if not os.path.isfile(path):
        raise DataError(f"{_where(path, 'data_dir')} is not a file")
    try:
        arrays = _read_npz(path)
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


def _settings(config) -> tuple[Any, int]:
    """The config, and the input size it resolves to (a `RunSpec` has worked it out already)."""
    from tl_keras import config as config_lib

    if isinstance(config, config_lib.RunSpec):
        return config.config, config.image_size
    return config_lib.filled(config), config_lib.input_size(config)  # 'auto': manual defaults


def load_data(config, *, workdir: str | None = None) -> DataBundle:
    """Loads the data a config names, at the image size of its backbone.

    Args:
      config: a `tl_keras.config.Config` (or its `RunSpec`); `data_dir` is an image-folder
        tree, 'tfds:NAME', a .npz file or 'synthetic'.
      workdir: where 'synthetic' data is drawn (under <workdir>/data) and cache='file' caches.

    Returns:
      The bundle: training epochs, validation (and test) datasets, class names, and a report of
      what was loaded and skipped.

    Raises:
      DataError: the data cannot be used; the message says why and what to do.
    """
    from tl_keras.data import synthetic

    config, size = _settings(config)
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
    check_class_names(raw.class_names, raw.source)
    given_val = raw.splits.get("val") is not None
    if given_val and config.val_fraction > 0:
        log.info("data: validation data given (%s); val_fraction is not used", raw.where["val"])
    return assemble(
        raw,
        Pipeline.from_config(config, image_size=size, workdir=workdir),
        val_fraction=0.0 if given_val else config.val_fraction,
    )
