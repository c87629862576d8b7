"""class_weight="balanced" really weights the training loss: one SGD step through `train` moves
the head exactly as the gradient of the class-weighted mean cross-entropy says."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tl_keras import config as config_lib
from tl_keras.errors import ConfigError, DataError
from tl_keras.training.class_weight import balanced_class_weights, class_weights

COUNTS = (18, 6, 3)  # 6:1 between the largest and the smallest class


def test_balanced_weights_match_scikit_learn():
    utils = pytest.importorskip("sklearn.utils")
    y = np.array([0] * 90 + [1] * 9 + [2])
    ours = balanced_class_weights(y, 3)
    theirs = utils.class_weight.compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert np.allclose([ours[c] for c in range(3)], theirs)
    assert balanced_class_weights(np.array([0, 0]), 2) == {0: 1.0, 1: 0.0}
    assert class_weights("none", y, 3) is None
    with pytest.raises(DataError, match="needs the training labels"):
        class_weights("balanced", None, 3)


def test_an_unknown_setting_is_refused():
    with pytest.raises(ConfigError, match="class_weight='inverse' is not allowed: one of none"):
        config_lib.validate(config_lib.Config(class_weight="inverse"))


def imbalanced_arrays():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), COUNTS)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3)).astype(np.uint8)
    images[..., 0] = (labels * 100)[:, None, None]  # something for the head to learn
    return images, labels


def one_step(mode: str, workdir: str):
    """One full-batch SGD step of fe through `train`; returns the head before and after."""
    from tl_keras.data.sources import from_arrays
    from tl_keras.training.runner import train
    from tl_keras.training.start import build_initial_model

    images, labels = imbalanced_arrays()
    cfg = tiny_config(
        data_dir="",
        val_fraction=0.0,
        batch_size=len(labels),
        epochs_fe=1,
        epochs_ft=0,
        dropout=0.0,
        optimizer="sgd",
        lr=0.5,
        class_weight=mode,
    )
    data = from_arrays(cfg, images, labels)
    keras.utils.set_random_seed(cfg.seed)
    initial = build_initial_model(cfg.model, data)  # the same model train builds first
    result = train(cfg, workdir, phase="fe", data=data)
    return initial, result.model, data


def expected_step(model, data, weights: dict[int, float] | None, lr: float):
    """w - lr * grad of mean_i(weight(y_i) * CE_i) at the initial head, by hand."""
    from tl_keras.training.features import feature_extractor, head_model

    x = np.concatenate([b for b in data.train_in_order.as_numpy_iterator()])
    feats = feature_extractor(model).predict(x, verbose=0)
    head = head_model(model)
    y = tf.one_hot(data.train_labels, data.num_classes)
    w = tf.constant([1.0 if weights is None else weights[int(c)] for c in data.train_labels])
    with tf.GradientTape() as tape:
        p = head(feats, training=True)
        ce = -tf.reduce_sum(y * tf.math.log(p), axis=-1)
        loss = tf.reduce_mean(w * ce)
    grads = tape.gradient(loss, head.trainable_variables)
    return {
        v.path: v.numpy() - lr * g.numpy()
        for v, g in zip(head.trainable_variables, grads, strict=True)
    }


@pytest.mark.parametrize("mode", ["balanced", "none"])
def test_the_step_follows_the_class_weighted_gradient(mode, tmp_path):
    initial, trained, data = one_step(mode, str(tmp_path / mode))
    weights = balanced_class_weights(data.train_labels, 3) if mode == "balanced" else None
    assert weights is None or weights[2] == pytest.approx(27 / (3 * 3))
    expected = expected_step(initial, data, weights, lr=0.5)
    unweighted = expected_step(initial, data, None, lr=0.5)
    got = {v.path: v.numpy() for v in trained.trainable_variables if v.path in expected}
    assert set(got) == set(expected) and len(got) == 4  # two Dense layers: kernels and biases
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6)
    bias = "predictions/bias"
    moved = np.abs(expected[bias] - unweighted[bias]).max()
    assert (moved > 1e-3) == (mode == "balanced")  # the weighting really changes the step
