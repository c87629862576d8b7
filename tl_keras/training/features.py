"""Cached features for feature extraction: run the frozen base once, train the head on its output.

In `fe` the base is frozen and in inference mode, so every epoch recomputes the same features:
the forward pass through the base is nearly all of the cost. (TensorFlow's old image-retraining
script called these cached "bottlenecks".) Here the pooled features of the training and
validation images are computed once, and the head trains on them:

* **The same training as the live path.** Each epoch visits the examples in the same order
  (`data.epoch_permutation(seed, epoch)`), in the same batches, with the same label smoothing;
  the head is made of the model's own layer objects, and it is compiled with the model's own
  optimizer instance, so the model's checkpoints carry the optimizer state and a resumed run
  continues exactly. Only what the base computes differs: cached features come from the base in
  true inference mode. (Under `fit`, Keras runs EfficientNet's stochastic-depth dropout even in
  frozen blocks; the cached path does not. MobileNets have none, and their cached and live
  paths agree to float precision: tests/test_features.py.)
* **Only when valid.** Any augmentation, MixUp or CutMix changes the images every epoch, so the
  live path runs instead, with a log line saying why. A phase that trains any part of the base
  always runs live.
* **Never stale.** A cache is keyed by a digest of the base's actual weights (so of the backbone,
  width and weights file), the image size and preprocessing, and the exact images of each split
  with their resize settings. In memory it lives for the process; with `feature_cache = "file"`
  it is stored under `<workdir>/cache/features/` (written atomically) and reused by later runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from tl_keras import io
from tl_keras.progress import Progress

if TYPE_CHECKING:
    import keras

log = logging.getLogger("tl_keras")

# --feature_cache: keep features in this process, also in files under the workdir, or never.
# TensorFlow is imported inside the functions, so `tl_keras.config` validates against MODES
# without it.
MODES = ("memory", "file", "off")
_MEMORY: dict[str, dict[str, np.ndarray]] = {}  # key -> {"train": ..., "val": ...}; one process


def why_not_cached(phase, pipeline) -> str | None:
    """Returns why a phase cannot train on cached features, or None when it can."""
    if phase.trains_base:
        return f"phase {phase.name!r} trains part of the base"
    if pipeline is None:
        return "the data source gives no per-example access (a custom DataBundle)"
    if pipeline.augment != "none" or pipeline.mixup or pipeline.cutmix:
        return (
            f"augmentation changes the images every epoch (augment={pipeline.augment!r}, "
            f"mixup={pipeline.mixup:g}, cutmix={pipeline.cutmix:g})"
        )
    return None


def head_model(model: keras.Model) -> keras.Model:
    """The model's head alone (its own layer objects): pooled features in, probabilities out."""
    import keras

    from tl_keras.model.classifier import FEATURE_LAYER, HEAD_LAYERS

    features = keras.Input(
        shape=(model.get_layer(FEATURE_LAYER).output.shape[-1],), name="features"
    )
    x = features
    for name in HEAD_LAYERS:
        if name in [layer.name for layer in model.layers]:
            x = model.get_layer(name)(x)
    return keras.Model(features, x, name="head")


def feature_extractor(model: keras.Model) -> keras.Model:
    """image -> pooled features, the base in inference mode (preprocessing included)."""
    import keras

    from tl_keras.model.classifier import FEATURE_LAYER

    return keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output, name="features")


def _digest_base(model: keras.Model) -> str:
    import keras

    from tl_keras.model.classifier import FEATURE_LAYER

    h = hashlib.sha256()
    for layer in model.layers:  # the preprocessing and the base, up to the pooled features
        for w in layer.weights:
            h.update(w.path.encode())
            h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
        if layer.name == FEATURE_LAYER:
            break
    return h.hexdigest()


def cache_key(model: keras.Model, data) -> str:
    """Identifies the features: the base's weights, the input size, and each split's images."""
    h = hashlib.sha256()
    h.update(_digest_base(model).encode())
    h.update(str(model.inputs[0].shape).encode())
    h.update(str(data.feature_source_key).encode())
    return h.hexdigest()[:24]


def compute(
    model: keras.Model, data, *, mode: str, workdir: str | None
) -> tuple[dict[str, np.ndarray], float, bool]:
    """Returns the pooled features of the train (index order) and val splits.

    Returns:
      ({'train': N x D, 'val': M x D (empty without validation)}, seconds spent, reused or not).
    """
    key = cache_key(model, data)
    path = (
        os.path.join(workdir, "cache", "features", f"{key}.npz")
        if workdir and mode == "file"
        else None
    )
    if key in _MEMORY:
        return _MEMORY[key], 0.0, True
    if path and os.path.isfile(path):
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        _MEMORY[key] = arrays
        return arrays, 0.0, True
    start = time.perf_counter()
    extractor = feature_extractor(model)
    import tensorflow as tf

    from tl_keras.training import distribute
    from tl_keras.training.callbacks import CountImages

    distribute.enable_multi_worker_fit(extractor, tf.distribute.get_strategy())
    total = data.num_train + (data.num_val if data.val is not None else 0)
    with Progress("feature pass", total=total) as progress:
        counted = [CountImages(progress)]
        train = extractor.predict(data.train_in_order, verbose=0, callbacks=counted)
        arrays = {"train": np.asarray(train, np.float32)}
        dim = arrays["train"].shape[-1]
        arrays["val"] = (
            np.asarray(
                extractor.predict(data.val.map(lambda x, y: x), verbose=0, callbacks=counted),
                np.float32,
            )
            if data.val is not None
            else np.zeros((0, dim), np.float32)
        )
    seconds = time.perf_counter() - start
    _MEMORY.clear()  # one entry: a process trains one model at a time
    _MEMORY[key] = arrays
    if path:
        with io.atomic_path(path) as tmp:
            np.savez(tmp, **arrays)
    return arrays, seconds, False


def feature_bundle(data, features: dict[str, np.ndarray]):
    """A DataBundle over cached features: the live path's order, batches and targets."""
    import tensorflow as tf

    from tl_keras.data import augment, pipeline

    p = data.pipeline
    train = tf.constant(features["train"])
    labels = tf.constant(data.train_labels, tf.int32)
    k = data.num_classes
    n = len(data.train_labels)
    smooth = augment.batch_fn(mixup=0.0, cutmix=0.0, label_smoothing=p.label_smoothing)

    def make_epoch(epoch):
        # The live path's batches (the epoch's permutation, cut every batch_size), gathered a
        # batch at a time: one gather per batch instead of one dataset element per image.
        order = tf.data.Dataset.from_tensor_slices(pipeline.epoch_permutation(n, p.seed, epoch))
        ds = order.batch(p.batch_size).map(
            lambda i: (tf.gather(train, i), tf.one_hot(tf.gather(labels, i), k))
        )
        if smooth is not None:
            key = tf.stack([tf.constant(p.seed, tf.int64), tf.cast(epoch, tf.int64)])
            ds = ds.enumerate().map(lambda b, xy: smooth(xy[0], xy[1], key))
        return ds

    val = None
    if data.val is not None:
        val_labels = np.concatenate([y.numpy() for _, y in data.val], axis=0)
        val = tf.data.Dataset.from_tensor_slices((features["val"], val_labels)).batch(p.batch_size)
    return dataclasses.replace(data, make_train_epoch=make_epoch, val=val)


__all__ = ["MODES", "compute", "feature_bundle", "head_model", "why_not_cached"]
