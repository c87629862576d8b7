"""BatchNormalization folded into the convolution before it, for a pass in inference mode.

In inference mode a BatchNormalization layer is a fixed per-channel affine map,
`y = x * s + t` with `s = gamma / sqrt(moving_variance + epsilon)` and
`t = beta - moving_mean * s`. After a convolution without activation it folds into that
convolution: the kernel scaled by `s` along its output channels and `t` as its bias. The pass
then skips two elementwise passes over every activation map, and TensorFlow fuses the
convolution, its bias and the activation after it into one kernel. On a 2-core CPU at 128 px,
batch 32, a pass takes 0.91x Keras's time on EfficientNet-Lite0 and 0.82x on MobileNet-0.25
(`benchmarks/bench_fold.py`; docs/benchmarks.md, "BatchNorm folded into the frozen passes").

`folded_call(model)` returns a function of the images that runs the model's graph with every
such pair folded, reading the layers' current variables at each call (so a model that trains
between two passes is folded anew, and nothing is copied or changed); None where the model has
no pair to fold. Its outputs equal `model(x, training=False)` to float precision, not bitwise: a
scaled kernel rounds differently (tests/test_fold.py). Used for the passes whose outputs are
inputs to training, not results: the frozen base's features (feature extraction's cache and the
data doctor), the frozen bottom's outputs (`tl_keras.training.bottom_views`), and fine-tuning's
validation passes (`tl_keras.training.frozen_val`), whose outputs calibration reuses.
Evaluation, prediction and export's parity check run the model as a user's own call would.

What folds: a `Conv2D` (one group) or `DepthwiseConv2D` with no activation, channels last, in
float32, whose output goes only to a channels-last float32 `BatchNormalization`, inside a
functional model or a functional model nested in one (a `keras.applications` base in the
classifier). Anything else runs as Keras runs it.
"""

from __future__ import annotations

import weakref

import keras

_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _functional(model) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def _own_nodes(model) -> dict[int, object]:
    """id(layer) -> the layer's one node in this model's graph (layers called twice are left
    out: they fold nowhere)."""
    nodes: dict[int, list] = {}
    for depth_nodes in model._nodes_by_depth.values():
        for node in depth_nodes:
            if node.operation is not None and not node.is_input:
                nodes.setdefault(id(node.operation), []).append(node)
    return {k: v[0] for k, v in nodes.items() if len(v) == 1}


def _foldable_conv(layer) -> bool:
    if not isinstance(layer, _CONVS) or layer.data_format != "channels_last":
        return False
    if getattr(layer, "groups", 1) != 1 or layer.activation is not keras.activations.linear:
        return False
    return layer.compute_dtype == "float32" and layer.kernel.dtype == "float32"


def _foldable_bn(layer, node) -> bool:
    if not isinstance(layer, keras.layers.BatchNormalization) or len(node.input_tensors) != 1:
        return False
    last = len(node.input_tensors[0].shape) - 1
    return layer.axis in (-1, last) and layer.compute_dtype == "float32"


def pairs(model) -> dict[int, tuple]:
    """id(layer) -> ("conv", conv, bn) for a convolution whose BatchNormalization folds into it,
    ("bn",) for that BatchNormalization, ("nested", plan) for a nested functional model with
    pairs of its own. Empty where nothing folds."""
    if not _functional(model):
        return {}
    nodes = _own_nodes(model)
    consumers: dict[int, int] = {}
    for node in nodes.values():
        for t in node.input_tensors:
            consumers[id(t)] = consumers.get(id(t), 0) + 1
    for t in model.outputs:
        consumers[id(t)] = consumers.get(id(t), 0) + 1
    plan: dict[int, tuple] = {}
    for layer in model.layers:
        node = nodes.get(id(layer))
        if node is None:
            continue
        if _functional(layer):
            inner = pairs(layer)
            if inner:
                plan[id(layer)] = ("nested", inner)
            continue
        if not _foldable_bn(layer, node):
            continue
        x = node.input_tensors[0]
        conv = x._keras_history.operation
        if id(conv) not in nodes or not _foldable_conv(conv) or consumers.get(id(x)) != 1:
            continue
        plan[id(conv)] = ("conv", conv, layer)
        plan[id(layer)] = ("bn",)
    return plan


def _fold_weights(conv, bn):
    """The scaled kernel and the bias that make `conv` then `bn` (inference mode) one
    convolution, from their current variables."""
    from keras import ops

    scale = ops.rsqrt(bn.moving_variance + bn.epsilon)
    if bn.scale:
        scale = scale * bn.gamma
    bias = -bn.moving_mean * scale
    if bn.center:
        bias = bias + bn.beta
    if conv.use_bias:
        bias = bias + conv.bias * scale
    kernel = conv.kernel
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        k = kernel.shape  # (kh, kw, channels, multiplier): output channel c * multiplier + m
        return kernel * ops.reshape(scale, (1, 1, k[2], k[3])), bias
    return kernel * scale, bias


def _folded_conv(conv, kernel, bias, x):
    from keras import ops

    if isinstance(conv, keras.layers.DepthwiseConv2D):
        y = ops.depthwise_conv(
            x,
            kernel,
            strides=conv.strides,
            padding=conv.padding,
            data_format=conv.data_format,
            dilation_rate=conv.dilation_rate,
        )
    else:
        y = conv.convolution_op(x, kernel)
    return y + bias


class Folded:
    """A model's inference pass with its pairs folded. The folded kernels and biases live in
    variables of their own, filled from the model's by `refresh()`: call it before each pass
    (the model may have trained since the last), not inside one."""

    def __init__(self, model, plan: dict):
        import tensorflow as tf

        self._model, self.plan = weakref.ref(model), plan  # a kept pass keeps no model alive
        self.pairs = [step[1:] for step in _steps(plan) if step[0] == "conv"]
        self.folded = {}
        for conv, bn in self.pairs:
            kernel, bias = _fold_weights(conv, bn)
            self.folded[id(conv)] = (
                tf.Variable(kernel, trainable=False, name=f"{conv.name}_folded_kernel"),
                tf.Variable(bias, trainable=False, name=f"{conv.name}_folded_bias"),
            )

        self._refresh = tf.function(self._assign, autograph=False)  # one call, not 4 ops a pair

    def refresh(self) -> None:
        """Folds the model's current variables again."""
        self._refresh()

    def _assign(self) -> None:
        for conv, bn in self.pairs:
            kernel, bias = _fold_weights(conv, bn)
            k, b = self.folded[id(conv)]
            k.assign(kernel)
            b.assign(bias)

    def __call__(self, x):
        return self._run(self._model(), self.plan, x)

    def _run(self, model, plan: dict, inputs):
        """The functional model's graph on `inputs` in inference mode, pairs folded."""
        from keras.src.models.functional import operation_fn, unpack_singleton

        def op_fn(op):
            step = plan.get(id(op))
            if step is None:
                return operation_fn(op, training=False)
            if step[0] == "conv":
                kernel, bias = self.folded[id(op)]
                return lambda x, **_: _folded_conv(op, kernel, bias, x)
            if step[0] == "bn":
                return lambda x, **_: x
            return lambda x, **_: self._run(op, step[1], x)

        inputs = model._standardize_inputs(inputs)
        return unpack_singleton(model._run_through_graph(inputs, operation_fn=op_fn))


def _steps(plan: dict):
    for step in plan.values():
        if step[0] == "nested":
            yield from _steps(step[1])
        else:
            yield step


def folded_call(model) -> Folded | None:
    """`x -> model(x, training=False)` with each BatchNormalization folded into its convolution,
    as of the model's variables now (`Folded.refresh` folds them again); None where nothing
    folds (call the model as it is)."""
    plan = pairs(model)
    return Folded(model, plan) if plan else None


__all__ = ["Folded", "folded_call", "pairs"]
