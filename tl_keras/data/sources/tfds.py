"""The TensorFlow Datasets source: `data_dir='tfds:NAME'`, its splits streamed from their shard
files (`tl_keras.data.tfds_stream`), their labels and decode check remembered.

Only image-classification data sets ((image, class label) supervised keys) are accepted. A data
set that is not prepared is downloaded and prepared by TFDS; offline, the error says how to
prepare it elsewhere and point `tfds_data_dir` at it. A module a TFDS builder lacks is named
with its pip command, never mistaken for a network problem.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from tl_keras.data.bundle import RawData
from tl_keras.data.images import Images, Names
from tl_keras.data.settings import DataSettings
from tl_keras.errors import DataError, did_you_mean, first_line

log = logging.getLogger("tl_keras")

PREFIX = "tfds:"  # data_dir='tfds:NAME'


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
        f"({first_line(e)}). This is not a network problem: install it with "
        f"pip install {_PIP_NAMES.get(module, module)} and run again"
    )


def _builder(name: str, data_dir: str):
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
            f"data_dir='tfds:{name}' cannot be opened ({first_line(e)})"
        ) from None


def _split(builder, name: str, spec: str, field: str, keys: tuple[str, str]) -> Images:
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
            f"{field}={spec!r} is not a split of TFDS {name} ({first_line(e)}); its splits: "
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


def source(settings: DataSettings, workdir: str | None = None) -> RawData:
    """Lists a TFDS image-classification data set: its labels, and each split's decode check."""
    name = settings.data_dir[len(PREFIX) :].strip()
    if not name:
        raise DataError("data_dir='tfds:' names no data set; use e.g. data_dir='tfds:tf_flowers'")
    import tensorflow_datasets as tfds

    builder = _builder(name, settings.tfds_data_dir)
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
        where = settings.tfds_data_dir or os.path.expanduser("~/tensorflow_datasets")
        raise DataError(
            f"TFDS could not download or prepare {name!r} into {where} ({first_line(e)}). "
            'If this machine is offline: on one with internet, run python -c "import '
            f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR')"
            '.download_and_prepare()", copy DIR here and pass --tfds_data_dir=DIR '
            "(tfds_data_dir in a config file)"
        ) from None
    raw = RawData({}, class_names, source=settings.data_dir, where={})
    for split, spec, field in (
        ("train", settings.train_split, "train_split"),
        ("val", settings.val_split, "val_split"),
        ("test", settings.test_split, "test_split"),
    ):
        raw.splits[split] = _split(builder, name, spec, field, keys) if spec else None
        raw.where[split] = f"{field}={spec!r}"
        if spec:
            raw.check_seconds += raw.splits[split].items.index.seconds
    return raw
