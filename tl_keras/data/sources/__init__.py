"""Data sources: one reader module per kind of source, and `load`, which dispatches on `data_dir`.

    folders.py    an image-folder tree (one sub-folder per class, or train/ val/ test/ of those)
    tfds.py       a TensorFlow Datasets name, `tfds:NAME`, streamed from its shard files
    arrays.py     arrays in memory (`from_arrays`) or in a .npz file
    synthetic.py  the three-class shapes the quickstart draws itself (then read as a folder)

Each reader lists its source into a `RawData` (paths or arrays and labels, never a decoded
image), checking its layout and failing with a `DataError` that names the path or value and
what to do; `tl_keras.data.bundle.assemble` then splits, decode-checks and batches it.

`load(settings)` takes the run's data section (`tl_keras.data.settings.DataSettings`);
`load_data(config)` and `from_arrays(config, ...)` are the public calls, taking a `Config` (or
a run's spec) and reading its data section from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tl_keras.data.bundle import DataBundle, RawData, assemble
from tl_keras.data.pipeline import Pipeline
from tl_keras.data.settings import (
    NO_AUGMENTATION,
    SOURCE_ONLY_FIELDS,
    Augmentation,
    DataSettings,
    default,
)
from tl_keras.data.sources import arrays, folders, synthetic, tfds
from tl_keras.data.sources.arrays import arrays_source
from tl_keras.data.sources.folders import folder_dataset, list_image_folder
from tl_keras.errors import DataError

log = logging.getLogger("tl_keras")

# What `data_dir` names -> the reader that lists it: (settings, workdir) -> RawData.
READERS: dict[str, Callable[[DataSettings, str | None], RawData]] = {
    "folder": folders.source,
    "tfds": tfds.source,
    "npz": arrays.npz_source,
    "synthetic": synthetic.source,
}


def source_kind(data_dir: str) -> str:
    """'synthetic', 'tfds', 'npz' or 'folder': what a data_dir value names."""
    if data_dir == "synthetic":
        return "synthetic"
    if data_dir.startswith(tfds.PREFIX):
        return "tfds"
    if data_dir.lower().endswith(".npz"):
        return "npz"
    return "folder"


def load(
    settings: DataSettings,
    *,
    augmentation: Augmentation = NO_AUGMENTATION,
    workdir: str | None = None,
) -> DataBundle:
    """Loads the data a data section names: listed, split, decode-checked, batched.

    Args:
      settings: the data section; `data_dir` is an image-folder tree, 'tfds:NAME', a .npz file
        or 'synthetic'.
      augmentation: what the training batches get (default: nothing, the data as it is).
      workdir: where 'synthetic' data is drawn (under <workdir>/data) and cache='file' caches.

    Returns:
      The bundle: training epochs, validation (and test) datasets, class names, and a report of
      what was loaded and skipped.

    Raises:
      DataError: the data cannot be used; the message says why and what to do.
    """
    if not settings.data_dir:
        raise DataError(
            "no data given: set data_dir to an image-folder tree, 'tfds:NAME', a .npz file, or "
            "'synthetic'"
        )
    kind = source_kind(settings.data_dir)
    _check_fields_apply(settings, kind)
    raw = READERS[kind](settings, workdir)
    check_class_names(raw.class_names, raw.source)
    given_val = raw.splits.get("val") is not None
    if given_val and settings.val_fraction > 0:
        log.info("data: validation data given (%s); val_fraction is not used", raw.where["val"])
    return assemble(
        raw,
        Pipeline.from_settings(settings, augmentation, workdir=workdir),
        val_fraction=0.0 if given_val else settings.val_fraction,
    )


def _check_fields_apply(settings: DataSettings, kind: str) -> None:
    """Refuses source fields that the chosen source would silently ignore."""
    allowed = SOURCE_ONLY_FIELDS.get("folder" if kind == "synthetic" else kind, ())
    for owner, names in SOURCE_ONLY_FIELDS.items():
        for name in names:
            if name not in allowed and getattr(settings, name) != default(name):
                use = "data_dir='tfds:NAME'" if owner == "tfds" else "an image-folder data_dir"
                raise DataError(
                    f"{name}={getattr(settings, name)!r} applies only to {use}, and data_dir="
                    f"{settings.data_dir!r} is a {kind} source; remove it"
                )


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


# --- the public calls: a Config (or a run's spec) in -----------------------------------------------
def _sections(config) -> tuple[DataSettings, Augmentation]:
    """The data section and the augmentation of a `Config`, a run's spec, or a `DataSettings`."""
    if isinstance(config, DataSettings):
        return config, NO_AUGMENTATION
    return config.data, getattr(config, "augmentation", NO_AUGMENTATION)


def load_data(config, *, workdir: str | None = None) -> DataBundle:
    """Loads the data a config names, at the image size of its backbone.

    Args:
      config: a `tl_keras.config.Config` (a setting it leaves to the recipe takes its fixed
        default), a run's spec, or a `DataSettings`; `data_dir` is an image-folder tree,
        'tfds:NAME', a .npz file or 'synthetic'.
      workdir: where 'synthetic' data is drawn (under <workdir>/data) and cache='file' caches.

    Returns:
      The bundle: training epochs, validation (and test) datasets, class names, and a report of
      what was loaded and skipped.

    Raises:
      DataError: the data cannot be used; the message says why and what to do.
    """
    settings, augmentation = _sections(config)
    return load(settings, augmentation=augmentation, workdir=workdir)


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
      config: a `Config` or a run's spec (image size, batch size, augmentation,
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
    settings, augmentation = _sections(config)
    p = Pipeline.from_settings(settings, augmentation, workdir=workdir)
    return assemble(raw, p, val_fraction=settings.val_fraction)


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
    raw = folders.source(
        DataSettings(data_dir=root, image_size=image_size, seed=seed, val_fraction=val_fraction)
    )
    p = Pipeline(image_size=image_size, batch_size=batch_size, seed=seed, **pipeline)
    return assemble(raw, p, val_fraction=val_fraction)


__all__ = [
    "READERS",
    "check_class_names",
    "folder_dataset",
    "from_arrays",
    "list_image_folder",
    "load",
    "load_data",
    "load_image_folder",
    "source_kind",
]
