"""Fine-tuning the top of the base on its frozen bottom's outputs, computed in one pass.

A fine-tuning phase that unfreezes only the top blocks (`blocks:K`, the recipe's choice for
EfficientNet-Lite0 below its own resolution) leaves the bottom of the base frozen and in inference
mode. Keras's `fit` still runs the whole model at every step. Here, before the first epoch, the
frozen bottom runs once over the augmented training images of every epoch the phase will train
(epoch e's images are exactly the ones the live path would draw for epoch e, in its order) and over
the validation images; each epoch then trains the top alone (the model's own layer objects, so
the same weights, with the model's own optimizer) on that epoch's outputs, in that epoch's batches.

What changes, and what does not:

* **The same batches and targets** as the live path: the images, their augmentation, the order,
  the batches and the label smoothing are the live path's, epoch by epoch. The bottom runs in
  true inference mode: EfficientNet's stochastic depth, which Keras's `fit` applies even in frozen
  blocks, is off there (as for cached features, `tl_keras.training.features`). MobileNets have
  none: their weights after a phase agree with the live path's to float precision
  (tests/test_bottom_views.py).
* **Where it is used**: a phase that trains part of the base with a frozen bottom, on one
  replica, in a run without a time budget (whose plan and re-plan time the live step; a resumed
  budgeted run stays live, as its uninterrupted run was), without MixUp or
  CutMix (they mix whole images), on a data bundle the package assembled, with `feature_cache` not
  'off', and when the outputs fit in `MAX_BYTES` (else the live path, with a log line saying why).
* **What it saves**: a training step of the top on the bottom's outputs plus the bottom's one pass
  cost less than Keras's step over the whole model. EfficientNet-Lite0, flowers at 128 px, top 9
  of 18 blocks: docs/benchmarks.md ("Fine-tuning the top on the frozen bottom's outputs").
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from tl_keras.model.forward import forward
from tl_keras.progress import Progress
from tl_keras.training import features, frozen_val

log = logging.getLogger("tl_keras")

ENABLED = True  # tests and benchmarks turn it off to compare with the live path
MAX_BYTES = 1024 * 2**20  # the bottom's outputs for every epoch and the validation set


def why_not(
    phase, data, *, replicas: int, feature_cache: str, budgeted: bool = False
) -> str | None:
    """Why a phase cannot train on its frozen bottom's outputs, or None when it may (the model
    must still have a frozen bottom: `make_views`). `budgeted`: the run has a time budget, whose
    plan and re-plan time the live step; a resumed budgeted run stays live too, so that it trains
    what the uninterrupted run trains."""
    if not ENABLED or not phase.trains_base:
        return "off" if not ENABLED else "the phase trains no part of the base"
    if feature_cache == "off":
        return "feature_cache='off'"
    if budgeted:
        return "a time budget times the live step"
    p = data.pipeline
    if p is None or data.train_order is None or data.train_labels is None:
        return "the data source gives no per-example access (a custom DataBundle)"
    if data.make_train_epoch is not data.assembled_epoch:
        return "the training epochs are not the ones the package assembled"
    if p.mixup or p.cutmix:
        return f"MixUp / CutMix mix whole images (mixup={p.mixup:g}, cutmix={p.cutmix:g})"
    if replicas != 1:
        return f"{replicas} replicas"
    return None


@dataclasses.dataclass(frozen=True)
class Views:
    """The frozen bottom's outputs: `train[j]` for global epoch `first_epoch + j` (rows in the
    training images' index order); the validation callback on the validation images' outputs
    (or None); the top that trains on them (uncompiled)."""

    train: np.ndarray
    first_epoch: int
    validation: frozen_val.FrozenBottomValidation | None
    top: object


def row_bytes(top) -> int:
    """Bytes of the bottom's output for one image."""
    return sum(int(np.prod(t.shape[1:])) * np.dtype(t.dtype).itemsize for t in top.inputs)


def make_views(model, data, *, first_epoch: int, epochs: int, on_start=None) -> Views | str | None:
    """The bottom's outputs for global epochs first_epoch .. first_epoch + epochs - 1 (0-based,
    each over that epoch's augmented training images) and the validation images; why not, in
    words; or None where the model has no frozen bottom below the layers that train.
    `on_start` is called once the pass is sure to run, before it starts."""
    parts = frozen_val.split(model)
    if parts is None:
        return None
    bottom, top = parts
    in_top = {id(w) for w in top.weights}
    if not any("kernel" in w.name for w in model.weights if id(w) not in in_top):
        return None  # only weightless layers or statistics below (e.g. a base's own rescaling)
    if len(top.inputs) != 1:
        return "the frozen bottom hands more than one tensor to the layers that train"
    need = row_bytes(top) * (epochs * data.num_train + data.num_val)
    if need > MAX_BYTES:
        return (
            f"its outputs for {epochs} epoch(s) of {data.num_train} images would take "
            f"{need / 2**20:.0f} MiB (more than {MAX_BYTES / 2**20:.0f} MiB)"
        )
    if on_start is not None:
        on_start()

    # One trace for every batch size (an epoch's short last batch, the validation split's),
    # BatchNorm folded into the convolutions (`tl_keras.model.fold`).
    def step(batches):
        return forward(bottom, batches, progress=progress, fold_batchnorm=True)

    shape = tuple(top.inputs[0].shape[1:])
    train = np.empty((epochs, data.num_train, *shape), np.float32)
    total = epochs * data.num_train + data.num_val
    with Progress("frozen blocks' pass", total) as progress:
        for j in range(epochs):
            epoch = tf.constant(first_epoch + j, tf.int64)
            order = data.train_order(epoch, 0, 1).batch(8192)
            order = np.concatenate([np.asarray(i) for i in order])
            done = 0
            for _, rows in step(data.make_train_epoch(epoch)):
                train[j, order[done : done + len(rows)]] = rows
                done += len(rows)
            if done != data.num_train:
                raise RuntimeError(
                    f"epoch {first_epoch + j} gave {done} of {data.num_train} images"
                )
        validation = None
        if data.val is not None:
            validation = frozen_val.FrozenBottomValidation(bottom, top, data.val)
            val = np.concatenate([r for _, r in step(data.val)])
            validation.cached = features.val_dataset(data, val)
    return Views(train, first_epoch, validation, top)


def views_bundle(data, views: Views):
    """A DataBundle over the views: epoch e trains on `views.train[e - first_epoch]` in epoch
    e's order and batches, with the live path's targets (label smoothing)."""
    train, first = views.train, views.first_epoch
    bundle = features.rows_bundle(data, lambda e, i: train[e - first][i], train.shape[2:])
    val = None if views.validation is None else views.validation.cached
    return dataclasses.replace(bundle, val=val)


__all__ = ["ENABLED", "MAX_BYTES", "Views", "make_views", "views_bundle", "why_not"]
