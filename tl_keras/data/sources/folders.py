"""The image-folder source: one sub-folder of images per class (or train/ val/ test/ folders of
those), listed without decoding an image.

The layout is checked as it is listed (class folders, the same classes in every split, no empty
class) and every problem is a `DataError` naming the folder, the field that named it, and what
to do.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tl_keras.data.bundle import DataReport, RawData, shown, skipped_text
from tl_keras.data.check import checked_split
from tl_keras.data.images import IMAGE_EXTENSIONS, Images, Names
from tl_keras.data.pipeline import Pipeline, eval_dataset
from tl_keras.data.settings import DataSettings
from tl_keras.errors import DataError

log = logging.getLogger("tl_keras")

# Sub-folder names that make data_dir a split layout (train/ val/ test/) rather than classes.
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


@dataclasses.dataclass
class FolderListing:
    """An image-folder tree: image paths, integer labels, class names and ignored files."""

    root: str
    files: list[str]
    labels: list[int]
    class_names: list[str]
    ignored: list[str]


def where(root: str, field: str) -> str:
    """A path as messages name it: the field that gave it, and the folder it is relative to."""
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
            f"{where(root, field)} is not a folder; point it at a folder with one sub-folder of "
            "images per class"
        )
    found = _subfolders(root)
    loose = [n for n in os.listdir(root) if _is_image(n) and not n.startswith(".")]
    if not found:
        if loose:
            raise DataError(
                f"{where(root, field)} holds {len(loose)} images but no class sub-folders; put "
                "each class's images in a sub-folder named after the class"
            )
        raise DataError(
            f"{where(root, field)} is empty; it needs one sub-folder of images per class"
        )
    if class_names is None:
        names = found
        if len(names) < 2:
            raise DataError(
                f"{where(root, field)} has 1 class folder ({names[0]!r}); a classifier needs at "
                "least 2 sub-folders, one per class"
            )
    else:
        names = list(class_names)
        extra, missing = sorted(set(found) - set(names)), sorted(set(names) - set(found))
        if extra:
            raise DataError(
                f"{where(root, field)} has class folder(s) {shown(extra)} that the training "
                f"data does not have (its classes: {shown(names)}); its labels would be "
                "meaningless: remove or rename them"
            )
        if missing:
            raise DataError(
                f"{where(root, field)} has no folder for class(es) {shown(missing)} of the "
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
            f"class folder(s) {shown(empty)} in {where(root, field)} contain no images "
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
            f"{where(root, field)}: {len(images) - len(usable)} of {len(images)} images are unreadable "
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


def source(settings: DataSettings, workdir: str | None = None) -> RawData:
    """Lists an image-folder tree (`data_dir`, with `val_dir` / `test_dir`, or its train/ val/
    test/ folders) as a source: paths and labels, nothing decoded."""
    root, val_dir, test_dir = settings.data_dir, settings.val_dir, settings.test_dir
    if os.path.isdir(root):
        found = _subfolders(root)
        split_names = {n for names in SPLIT_FOLDERS.values() for n in names}
        if found and set(found) <= split_names:  # train/ val/ test/, each a class tree
            if "train" not in found:
                raise DataError(
                    f"{where(root, 'data_dir')} has {', '.join(found)}/ but no train/ folder; "
                    "point data_dir at the training images"
                )
            val_found = [n for n in SPLIT_FOLDERS["val"] if n in found]
            if len(val_found) > 1:
                raise DataError(
                    f"{where(root, 'data_dir')} has both val/ and validation/; keep one"
                )
            val_dir = val_dir or (os.path.join(root, val_found[0]) if val_found else "")
            test_dir = test_dir or (os.path.join(root, "test") if "test" in found else "")
            root = os.path.join(root, "train")
            log.info(
                "data: %s has train/ val/ test/ folders: using them as the splits",
                settings.data_dir,
            )
    train = list_image_folder(root)
    raw = RawData(
        {"train": _images_from_listing(train), "val": None, "test": None},
        train.class_names,
        source=settings.data_dir,
        where={"train": where(root, "data_dir")},
        ignored=list(train.ignored),
    )
    for split, folder, field in (("val", val_dir, "val_dir"), ("test", test_dir, "test_dir")):
        if folder:
            listing = list_image_folder(folder, class_names=train.class_names, field=field)
            raw.splits[split] = _images_from_listing(listing)
            raw.where[split] = where(folder, field)
            raw.ignored += [os.path.join(folder, f) for f in listing.ignored]
    return raw
