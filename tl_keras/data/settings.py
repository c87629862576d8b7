"""The data section of a run: where the images come from and how they become batches.

Two frozen values, each validated when made (a `ConfigError` naming the value and what is
allowed), neither importing TensorFlow, so `tl_keras.config` composes and checks them in
milliseconds:

* `DataSettings`: the source (`data_dir` and its splits), the held-out fraction and the seed, and
  how every image is read (size, resize, cache, the unreadable share allowed). Nothing in it is
  left to the recipe, so a run knows it before the recipe card exists: the data is listed, split
  and decode-checked from it once (`tl_keras.data.sources.load`).
* `Augmentation`: the training-only settings (`augment.TRAINING_ONLY`), some of which the recipe
  decides: the training batches are built once from the decided value
  (`tl_keras.data.bundle.DataBundle.for_training`). Its default is no augmentation at all: the
  data as it is, which is what a bundle's training epochs are until a run says otherwise.

The names a field may take live here, beside the check that uses them.
"""

from __future__ import annotations

import dataclasses
import math

from tl_keras.data import augment
from tl_keras.errors import did_you_mean, refused

RESIZE_METHODS = (
    "bilinear",
    "nearest",
    "bicubic",
    "area",
    "lanczos3",
    "lanczos5",
    "gaussian",
    "mitchellcubic",
)
RESIZE_MODES = ("stretch", "crop", "pad", "crop_or_pad")
CACHE_MODES = ("auto", "none", "memory", "file")

# Source fields that apply to one kind of source only: another kind refuses them when they are
# not at their defaults (`tl_keras.data.sources`), rather than ignore them silently.
SOURCE_ONLY_FIELDS = {
    "tfds": ("tfds_data_dir", "train_split", "val_split", "test_split"),
    "folder": ("val_dir", "test_dir"),
}


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What training batches get on top of the images (see `tl_keras.data.augment`).

    Attributes:
      augment: the per-image preset: 'none', 'light' or 'strong'.
      mixup: MixUp alpha; 0 = off.
      cutmix: CutMix factor in (0, 1]; 0 = off.
      label_smoothing: smoothing of the training targets, in [0, 1).
    """

    augment: str = "none"
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        augment.get(self.augment)  # raises ConfigError listing the presets
        if not (math.isfinite(self.mixup) and self.mixup >= 0):
            raise refused("mixup", self.mixup, "use 0 (off) or a positive alpha, e.g. 0.2")
        if not 0.0 <= self.cutmix <= 1.0:
            raise refused("cutmix", self.cutmix, "use 0 (off) or a factor in (0, 1], e.g. 1.0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise refused(
                "label_smoothing", self.label_smoothing, "use a value in [0, 1), e.g. 0.1"
            )

    @property
    def unaugmented(self) -> Augmentation:
        """The same targets without changing the images (a phase that does not augment: its
        images are the data's own, so a head can train on cached features)."""
        return dataclasses.replace(self, augment="none", mixup=0.0, cutmix=0.0)


NO_AUGMENTATION = (
    Augmentation()
)  # the data as it is: a bundle's training batches until a run decides


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Where the data comes from and how each image is read (see `Config` for each field).

    Attributes:
      data_dir: an image-folder tree, 'tfds:NAME', a .npz file or 'synthetic'.
      image_size: the square size images are read at: the model's input size, decided.
      batch_size: images per batch (the global batch).
      seed: seed of the validation split and of every epoch's order.
      val_dir, test_dir: separate image-folder trees ('' = none).
      tfds_data_dir, train_split, val_split, test_split: a TFDS source's folder and splits.
      val_fraction: share of each class held out for validation when none is given.
      synthetic_images_per_class: images per class of data_dir='synthetic'.
      resize_method, resize_mode: how an image reaches `image_size`.
      cache: 'auto', 'none', 'memory' or 'file' (decoded, resized images); 'auto' is 'memory'
        where they are small (`tl_keras.data.check.resolve_cache`), else 'none'.
      max_skipped_fraction: largest share of unreadable images skipped before it is an error.
    """

    data_dir: str
    image_size: int
    seed: int
    batch_size: int = 32
    val_dir: str = ""
    test_dir: str = ""
    tfds_data_dir: str = ""
    train_split: str = "train"
    val_split: str = ""
    test_split: str = ""
    val_fraction: float = 0.2
    synthetic_images_per_class: int = 60
    resize_method: str = "bilinear"
    resize_mode: str = "stretch"
    cache: str = "auto"
    max_skipped_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise refused("val_fraction", self.val_fraction, "use a fraction in [0, 1), e.g. 0.2")
        if self.batch_size < 1:
            raise refused("batch_size", self.batch_size, "use a positive number of images, e.g. 32")
        if self.synthetic_images_per_class < 2:
            raise refused(
                "synthetic_images_per_class", self.synthetic_images_per_class, "use at least 2"
            )
        if self.resize_method not in RESIZE_METHODS:
            raise refused(
                "resize_method",
                self.resize_method,
                f"one of {', '.join(RESIZE_METHODS)}"
                f"{did_you_mean(self.resize_method, RESIZE_METHODS)}",
            )
        if self.resize_mode not in RESIZE_MODES:
            raise refused("resize_mode", self.resize_mode, f"one of {', '.join(RESIZE_MODES)}")
        if self.cache not in CACHE_MODES:
            raise refused("cache", self.cache, f"one of {', '.join(CACHE_MODES)}")
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise refused(
                "max_skipped_fraction",
                self.max_skipped_fraction,
                "use a fraction in [0, 1], e.g. 0.05",
            )


def default(name: str):
    """A `DataSettings` field's default: the one home of the data fields' defaults (`Config`
    takes them from here)."""
    return DataSettings.__dataclass_fields__[name].default


__all__ = [
    "CACHE_MODES",
    "NO_AUGMENTATION",
    "RESIZE_METHODS",
    "RESIZE_MODES",
    "SOURCE_ONLY_FIELDS",
    "Augmentation",
    "DataSettings",
    "default",
]
