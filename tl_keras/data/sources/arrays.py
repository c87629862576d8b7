"""The arrays source: images and labels in memory (`from_arrays` in a notebook) or in a `.npz`
file (`data_dir=arrays.npz`), checked before anything is built.

Images are N x H x W x C (C in 1, 3, 4) or N x H x W, raw 0..255 pixels; labels are class
indices or one-hot rows. Nothing is copied: a split is the caller's array or a view of it, and
an uncompressed `.npz` member is memory-mapped, so a data set larger than memory is read a batch
at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_keras.data.bundle import RawData
from tl_keras.data.images import Images
from tl_keras.data.settings import DataSettings
from tl_keras.data.sources.folders import where
from tl_keras.errors import DataError, first_line


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


def npz_source(settings: DataSettings, workdir: str | None = None) -> RawData:
    """The .npz source of `data_dir=arrays.npz` (see `list_npz`)."""
    return list_npz(settings.data_dir)


def list_npz(path: str) -> RawData:
    """Lists a .npz file of arrays: its images memory-mapped when stored uncompressed, never
    copied whole.

    Raises:
      DataError: not a readable .npz, without x_train / y_train, with arrays it would ignore,
        or arrays that are not images and labels (see `arrays_source`).
    """
    if not os.path.isfile(path):
        raise DataError(f"{where(path, 'data_dir')} is not a file")
    try:
        arrays = _read_npz(path)
    except Exception as e:
        raise DataError(
            f"{where(path, 'data_dir')} is not a readable .npz file ({first_line(e)})"
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
