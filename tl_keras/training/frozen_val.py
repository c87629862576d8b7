"""A fine-tuning phase's validation, cheaper than Keras's pass: the frozen bottom once a phase.

A fine-tuning phase that unfreezes only the top of the base (`blocks:K`) leaves the bottom
frozen: no weight of it trains and its BatchNorm layers run in inference mode. Validation images
are never augmented and validation calls the model with training=False, so what the frozen
bottom makes of the validation set is the same at every epoch of the phase. Here it is computed
once, at the first epoch's end, and each epoch's validation runs only the model's top (the
trainable layers and the head, the same layer objects, so the same weights) on it, through
Keras's own `evaluate` with the phase's loss and metrics: the same `val_loss` and
`val_accuracy`, to float precision, that `fit(validation_data=...)` reports (tests/test_frozen_val.py).

On EfficientNet-Lite0 at 128 px with its top 9 blocks training, an epoch's validation then
costs a third of Keras's pass over the whole model, and a default flowers run 0.94x the CPU-s
with every weight bitwise the same (benchmarks/bench_ft_epoch.py, bench_run_breakdown.py;
docs/benchmarks.md). Calibration reuses the last phase's (`tl_keras.training.calibrate`).

A phase that trains the whole base has no frozen bottom. Its validation is then one pass of the
whole model an epoch with each BatchNorm folded into its convolution (`tl_keras.model.fold`: the
statistics are frozen, and validation runs in inference mode), scored by Keras's `evaluate` on
the pass's outputs with the phase's loss and metrics (`FoldedValidation`). Where the final
weights are the last epoch's, bitwise, calibration reuses that pass's outputs instead of running
the model again. On MobileNet-0.25's default flowers run (128 px, 584 validation images) an
epoch's validation takes about 0.95x Keras's, and calibration 0.30 CPU-s instead of 1.97
(benchmarks/bench_run_breakdown.py; docs/benchmarks.md).

Either is used only where it changes no number beyond float precision: a phase that trains the
base, with validation data, on one replica, without a time budget (whose plan and re-plan time
the full validation pass), and, for the frozen bottom, when its outputs fit in `MAX_BYTES`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras.src.ops.function import make_node_key  # how a model names its own calls

from tl_keras.data.images import untuned
from tl_keras.model.classifier import get_base
from tl_keras.model.forward import forward

log = logging.getLogger("tl_keras")

ENABLED = True  # tests and benchmarks turn it off to compare with Keras's validation pass
MAX_BYTES = 512 * 2**20  # the frozen bottom's outputs on the validation set, kept in memory


def _constant(layer, parents_constant: bool) -> bool:
    """Whether a layer's output on fixed inputs stays fixed through training: its inputs do, and
    no weight of it can change (none trains, and a trainable layer updates no statistics)."""
    if not parents_constant or layer.trainable_weights:
        return False
    return not (layer.trainable and layer.non_trainable_weights)


def _own_node(model: keras.Model, layer):
    """The layer's one call in the model's graph (sub-models built from the graph add calls to
    its layers, outside it); None when the model calls it more than once."""
    own = [n for i, n in enumerate(layer._inbound_nodes) if make_node_key(layer, i) in model._nodes]
    return own[0] if len(own) == 1 else None


def frozen_cut(base: keras.Model) -> list | None:
    """The tensors where the base's frozen bottom hands over to its trainable top, in the
    base's graph; None when nothing below the top is frozen (or the whole base is)."""
    constant: dict[int, bool] = {}
    nodes = {}
    for layer in base.layers:  # in topological order
        node = nodes[id(layer)] = _own_node(base, layer)
        if node is None:
            return None  # a layer called twice: not a plain graph
        parents = [t._keras_history.operation for t in node.input_tensors]
        constant[id(layer)] = _constant(layer, all(constant[id(p)] for p in parents))
    cut: dict[int, object] = {}
    for layer in base.layers:
        if constant[id(layer)]:
            continue
        for t in nodes[id(layer)].input_tensors:
            if constant[id(t._keras_history.operation)]:
                cut.setdefault(id(t), t)
    inputs = {id(t) for t in base.inputs}
    if not cut or all(k in inputs for k in cut):  # nothing frozen, or nothing trains
        return None
    return list(cut.values())


def _chain(model: keras.Model, base: keras.Model):
    """The model's layers before and after its base when the model is one chain (input ->
    [preprocess] -> base -> head), else None."""
    layers = model.layers
    for previous, layer in zip(layers, layers[1:], strict=False):
        node = _own_node(model, layer)
        if node is None or len(node.input_tensors) != 1:
            return None
        if node.input_tensors[0]._keras_history.operation is not previous:
            return None
    i = layers.index(base)
    return layers[1:i], layers[i + 1 :]


def _folded_pass(model: keras.Model, val: tf.data.Dataset) -> tf.data.Dataset:
    """The model's outputs on the validation images, BatchNorm folded (a list of outputs
    becomes a tuple), with the labels, in the validation split's own batches."""
    parts, labels = [], []
    for (_, y), out in forward(model, val, fold_batchnorm=True):
        parts.append(out if isinstance(out, list) else [out])
        labels.append(np.asarray(y))
    columns = tuple(np.concatenate(c) for c in zip(*parts, strict=True))
    x = columns if len(columns) > 1 else columns[0]
    ds = tf.data.Dataset.from_tensor_slices((x, np.concatenate(labels)))
    return untuned(ds.batch(len(labels[0])))


class FrozenBottomValidation(keras.callbacks.Callback):
    """Puts `val_*` in each epoch's logs from the top alone, on the frozen bottom's outputs.

    It must run first at an epoch's end, before any callback that reads the validation metrics.
    """

    def __init__(self, bottom, top: keras.Model, val: tf.data.Dataset):
        super().__init__()
        self.bottom, self.top, self.val = bottom, top, val
        self.cached = None

    def dataset(self) -> tf.data.Dataset:
        """The frozen bottom's outputs on the validation set, with the labels, batched as the
        validation split is: the top's input (computed on first use)."""
        if self.cached is None:
            self.cached = _folded_pass(self.bottom, self.val)
        return self.cached

    def on_epoch_end(self, epoch, logs=None):
        scores = self.top.evaluate(self.dataset(), verbose=0, return_dict=True)
        if logs is not None:
            logs.update({f"val_{k}": float(v) for k, v in scores.items()})

    def reusable(self, model: keras.Model):
        """(a model, its inputs) whose answers are `model`'s on the validation split: the top on
        the cached outputs of the frozen blocks (the top is the model's own layers)."""
        return self.top, self.dataset()


class FoldedValidation(keras.callbacks.Callback):
    """Puts `val_*` in each epoch's logs from one BatchNorm-folded pass of the whole model,
    scored by `scorer` (Keras's `evaluate` of the identity on the pass's outputs).

    It must run first at an epoch's end, before any callback that reads the validation metrics.
    """

    def __init__(self, model: keras.Model, scorer: keras.Model, val: tf.data.Dataset):
        super().__init__()
        self.classifier, self.scorer, self.val = model, scorer, val
        self.outputs: tf.data.Dataset | None = None  # the last pass's (outputs, labels)
        self.weights_then: list[np.ndarray] = []  # the model's weights at that pass

    def on_epoch_end(self, epoch, logs=None):
        self.outputs = _folded_pass(self.classifier, self.val)
        self.weights_then = [np.array(w.numpy()) for w in self.classifier.weights]  # copies
        scores = self.scorer.evaluate(self.outputs, verbose=0, return_dict=True)
        if logs is not None:
            logs.update({f"val_{k}": float(v) for k, v in scores.items()})

    def reusable(self, model: keras.Model):
        """(the identity, the last pass's outputs) when `model`'s weights are bitwise those of
        that pass; None when they changed since (best or averaged weights, early stopping's
        restore): then the model's answers need a pass of their own."""
        if self.outputs is None or len(model.weights) != len(self.weights_then):
            return None
        for now, then in zip(model.weights, self.weights_then, strict=True):
            if not np.array_equal(now.numpy(), then):
                return None
        return self.scorer, self.outputs


def _scorer(model: keras.Model) -> keras.Model:
    """The identity on the model's outputs: Keras's `evaluate` of it scores given outputs with
    the loss and metrics it is compiled with."""
    outputs = keras.Input(shape=model.outputs[0].shape[1:], dtype=model.outputs[0].dtype)
    return keras.Model(outputs, keras.layers.Identity()(outputs), name="validation_outputs")


def split(model: keras.Model):
    """(bottom, top) for a classifier whose base has a frozen bottom, else None.

    `bottom` is a Keras model from images to the frozen bottom's outputs (the layers before the
    base, then the base up to its cut; call it in inference mode); `top` is a Keras model from
    those outputs to the classifier's output. Both are made of the model's own layer objects
    (the same weights). Uncompiled.
    """
    base = get_base(model)
    cut = frozen_cut(base)
    chain = _chain(model, base) if cut is not None else None
    if chain is None:
        return None
    before, after = chain
    one = lambda ts: ts[0] if len(ts) == 1 else ts  # noqa: E731
    base_bottom = keras.Model(base.inputs, one(cut))
    base_top = keras.Model(one(cut), one(base.outputs))
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype) for t in cut]
    y = base_top(one(inputs))
    for layer in after:
        y = layer(y)
    top = keras.Model(inputs, y, name="validation_top")

    # A model, not a function of the images: `forward` traces it once and folds its BatchNorm.
    images = keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype)
    x = images
    for layer in before:
        x = layer(x)
    bottom = keras.Model(images, base_bottom(x), name="frozen_bottom")
    return bottom, top


def for_phase(
    model: keras.Model, val, *, num_val: int, compile_top: Callable[[keras.Model], None]
) -> FrozenBottomValidation | FoldedValidation | None:
    """The validation callback of a phase that trains the base, or None where it has no
    validation data: the frozen bottom's where the base has one whose outputs fit in
    `MAX_BYTES`, else the folded pass of the whole model.

    Args:
      model: the classifier, its trainability set for the phase.
      val: the validation batches (images, labels), or None.
      num_val: how many validation images.
      compile_top: compiles a model with the phase's loss and metrics.
    """
    if not ENABLED or val is None:
        return None
    parts = split(model)
    if parts is not None:
        bottom, top = parts
        size = sum(int(np.prod(t.shape[1:])) * np.dtype(t.dtype).itemsize for t in top.inputs)
        if size * num_val <= MAX_BYTES:
            compile_top(top)
            return FrozenBottomValidation(bottom, top, val)
    scorer = _scorer(model)
    compile_top(scorer)
    return FoldedValidation(model, scorer, val)
