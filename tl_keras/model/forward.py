"""The forward pass over a data set: one function, one calling convention.

    for batch, outputs in forward(model, batches, progress=progress):
        ...

Every pass of a model over many images goes through `forward`: calibration's validation pass,
the doctor's test features, feature extraction's cached features, evaluate, predict and the
export's parity check. It runs the model in inference mode (`training=False`) through one traced
function, batch after batch, and hands each batch back with the model's outputs, so a caller
keeps what it needs beside them (the labels, the file of each image, the images themselves).

* **No Keras predict loop**: the model is called directly, so the pass needs no distribution
  machinery and reads the same on every worker of a multi-worker run.
* **What the model is**: a classifier (probabilities out), its feature extractor (pooled
  features out), its served form with test-time augmentation and the temperature
  (`tl_keras.model.served.inference_model`), or any callable from images to outputs (an
  exported artifact's runner, a test's stub), which is called as it is.
* **What comes out**: one array a batch, or a list of them where the model has several outputs
  (the frozen bottom of a base cut between blocks, `tl_keras.training.frozen_val`).
* **What a batch is**: an image batch, or a tuple whose first element is the image batch and
  whose rest the caller wants back (`(images, labels)`, `(images, indices)`).
* **Progress**: an open `tl_keras.progress.Progress` counts each batch's images; the caller
  opens and closes it, so one count can span several passes (fe's train and val splits).
* **One trace a model**: a Keras model's traced function is kept beside it (weakly: it goes
  with the model) and traced once, at its first batch with the batch size left open, so a
  split's short last batch and the next pass over the same model (the doctor's feature pass
  reads the train, then the val split) trace nothing again. Its outputs are the fixed-size
  graph's, bitwise (`tests/test_features.py`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np


def forward(
    model, batches: Iterable, *, progress=None, fold_batchnorm: bool = False
) -> Iterator[tuple[Any, np.ndarray]]:
    """Yields each batch, in order, with the model's outputs for its images.

    Args:
      model: a Keras model, called as `model(images, training=False)` inside one traced
        function; or any callable `images -> outputs`, called as it is.
      batches: an iterable of image batches, or of tuples `(images, ...)` (a `tf.data.Dataset`
        of batched pairs, `tl_keras.data.pipeline.labelled_batches`, a generator).
      progress: a `Progress` advanced by each batch's images; None = no progress lines.
      fold_batchnorm: run a Keras model with each BatchNormalization folded into the
        convolution before it (`tl_keras.model.fold`), as of its variables when the pass
        starts: faster, equal to float precision, not bitwise. For the passes whose outputs
        train something (cached features, the frozen bottom's outputs), not for results.

    Yields:
      (the batch as `batches` gave it, the outputs as a numpy array in the model's dtype; a
      list of arrays where the model gives a list).
    """
    step = None
    for batch in batches:
        images = batch[0] if isinstance(batch, tuple) else batch
        if step is None:
            step = _compiled(model, images, fold_batchnorm)
        outputs = step(images)
        outputs = (
            [np.asarray(o) for o in outputs] if isinstance(outputs, list) else np.asarray(outputs)
        )
        if progress is not None:
            progress.update(len(images))
        yield batch, outputs


# Keras model -> its traced inference functions ("step"; "folded_step" and its `fold.Folded`).
# Weak keys: an entry goes with its model, and the functions reach the model only through a
# weak reference, so they keep no model alive.
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model, images, fold_batchnorm: bool = False):
    """`model(x, training=False)` as one traced function for a Keras model, traced at `images`'
    shape with an open batch size (folded, where asked and where anything folds: its folded
    weights filled from the model's now); any other callable as it is."""
    import keras

    if not isinstance(model, keras.Layer):
        return model
    import tensorflow as tf

    from tl_keras.model import fold

    kept = _TRACED.setdefault(model, {})
    folded = None
    if fold_batchnorm:
        if "folded" not in kept:
            kept["folded"] = fold.folded_call(model)
        folded = kept["folded"]
    key = "folded_step" if folded is not None else "step"
    step = kept.get(key)
    if step is None:
        ref = weakref.ref(model)
        call = folded if folded is not None else (lambda x: ref()(x, training=False))
        step = kept[key] = tf.function(call, reduce_retracing=True, autograph=folded is None)
    if folded is not None:
        folded.refresh()  # the model may have trained since the last pass
    step.get_concrete_function(tf.TensorSpec([None, *images.shape[1:]], tf.as_dtype(images.dtype)))
    return step


__all__ = ["forward"]
