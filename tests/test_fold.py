"""BatchNormalization folded into the convolution before it (`tl_keras.model.fold`): the same
outputs as Keras's inference call to float precision, on every family's graph, from the model's
variables as they are when a pass starts, changing none of them."""

import gc
import weakref

import keras
import numpy as np
import pytest

from tl_keras.model import efficientnet_lite, fold
from tl_keras.model import forward as forward_lib
from tl_keras.model.classifier import build_model

SIZE = 32


def _random_statistics(model, seed=0):
    """ImageNet-like BatchNorm: statistics and affine far from a fresh layer's 0 / 1."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.2, 2.0, n))
            if layer.scale:
                layer.gamma.assign(rng.normal(1, 0.3, n))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, n))


def _images(n=5, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def _pass(model, images, **kwargs):
    return np.concatenate([out for _, out in forward_lib.forward(model, [images], **kwargs)])


@pytest.mark.parametrize(
    "name, build, pairs",
    [
        ("tiny classifier", lambda: build_model("tiny", 3, image_size=SIZE, weights=None), 5),
        ("mobilenet", lambda: build_model("mobilenet", 3, image_size=SIZE, weights=None,
                                          alpha=0.25), 27),
        ("efficientnet_lite0", lambda: efficientnet_lite.build(SIZE), 49),
        ("mobilenet_v3_small", lambda: keras.applications.MobileNetV3Small(
            input_shape=(SIZE, SIZE, 3), include_top=False, weights=None), 34),
    ],
)  # fmt: skip
def test_folded_pass_is_keras_inference_to_float_precision(name, build, pairs):
    model = build()
    _random_statistics(model)
    plan = fold.pairs(model)
    found = sum(1 for step in fold._steps(plan) if step[0] == "conv")
    assert found == pairs  # every conv + BN of the family (V3's hard-swish convs stay as they are)
    before = [np.array(w) for w in model.weights]
    images = _images()
    expected = np.asarray(model(images, training=False))
    got = _pass(model, images, fold_batchnorm=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert not np.array_equal(got, expected) or name == "tiny classifier"  # folded, not Keras's
    for w, b in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(np.array(w), b)  # a pass changes no variable


def test_each_pass_folds_the_variables_it_starts_with():
    """Between two passes the model trains (here: its BatchNorm statistics and a kernel move):
    the second pass is the changed model's, not the first pass's folding."""
    model = build_model("tiny", 3, image_size=SIZE, weights=None)
    _random_statistics(model, seed=0)
    images = _images()
    first = _pass(model, images, fold_batchnorm=True)
    _random_statistics(model, seed=1)
    conv = next(
        layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Conv2D)
    )
    conv.kernel.assign(np.array(conv.kernel) * 1.5)
    second = _pass(model, images, fold_batchnorm=True)
    expected = np.asarray(model(images, training=False))
    assert not np.allclose(first, second)
    np.testing.assert_allclose(second, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert forward_lib._TRACED[model]["folded_step"].experimental_get_tracing_count() == 1


def test_what_does_not_fold_runs_as_keras_runs_it():
    inputs = keras.Input((SIZE, SIZE, 3))
    shared = keras.layers.Conv2D(4, 3, use_bias=False, name="two_readers")(inputs)
    a = keras.layers.BatchNormalization(name="bn_a")(shared)
    activated = keras.layers.Conv2D(4, 3, activation="relu", name="activated")(inputs)
    b = keras.layers.BatchNormalization(name="bn_b")(activated)
    own = keras.layers.Conv2D(4, 3, padding="same", name="own")(inputs)
    c = keras.layers.BatchNormalization(name="bn_c")(own)
    pooled = [keras.layers.GlobalAveragePooling2D()(t) for t in (a, shared, b, c)]
    model = keras.Model(inputs, keras.layers.Concatenate()(pooled))
    _random_statistics(model)
    plan = fold.pairs(model)
    folded = {step[1].name for step in fold._steps(plan) if step[0] == "conv"}
    assert folded == {"own"}  # its output read twice, an activation before the BN: left alone
    images = _images()
    expected = np.asarray(model(images, training=False))
    # Folding reorders float32 sums: judge each output against the largest, not only its own size.
    np.testing.assert_allclose(
        _pass(model, images, fold_batchnorm=True),
        expected,
        rtol=1e-5,
        atol=1e-5 * np.abs(expected).max(),
    )
    assert fold.folded_call(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])) is None


def test_the_kept_folded_pass_keeps_no_model_alive():
    model = build_model("tiny", 3, image_size=SIZE, weights=None)
    _pass(model, _images(), fold_batchnorm=True)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
