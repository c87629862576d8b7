"""Mixed precision and XLA: each a flag, each giving a correct result on the CPU."""

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tl_keras.errors import WorkdirError
from tl_keras.training import distribute, runner


def two_phases(**overrides):
    values = dict(epochs_fe=2, epochs_ft=1, dropout=0.0, feature_cache="off")
    return tiny_config(**{**values, **overrides})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return runner.train(two_phases(), str(tmp_path_factory.mktemp("float32")))


def predictions(model, reference):
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    return np.asarray(model(images)), np.asarray(reference.model(images))


def test_xla_gives_the_same_run(reference, tmp_path):
    xla = runner.train(two_phases(jit_compile="on"), str(tmp_path))
    assert xla.model.jit_compile is True
    for a, b in zip(xla.history.records, reference.history.records, strict=True):
        for key in ("loss", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["epoch"], key)
    got, want = predictions(xla.model, reference)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.shared
def test_mixed_bfloat16_forward_pass_matches_float32(shared_weights, shapes_dir):
    """Real ImageNet weights under both policies give nearly the same answers.

    (A random base is too badly conditioned for this: bfloat16 rounding moves its outputs by up
    to 0.3, which says nothing about the policy.)
    """
    from tl_keras.data.sources import load_image_folder
    from tl_keras.model.classifier import build_model

    kwargs = dict(
        image_size=64, weights=shared_weights, alpha=0.25, head_units=16, dropout=0.0, seed=0
    )
    ref = build_model("mobilenet", 3, **kwargs)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_model("mobilenet", 3, **kwargs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(ref.get_weights())
    data = load_image_folder(shapes_dir, image_size=64, batch_size=36, val_fraction=0.0, seed=0)
    images = next(iter(data.train))[0].numpy()
    got, want = np.asarray(mixed(images)), np.asarray(ref(images))
    assert got.dtype == np.float32  # the softmax computes in float32
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    # bfloat16 keeps 8 mantissa bits; over MobileNet's 28 layers the pooled features move by
    # about 15% (measured), and the classifier's answers by little: 97% the same class, a mean
    # probability change of 0.02 (measured). Float32 variables and softmax are what make this so.
    assert all(w.dtype == "float32" for w in mixed.weights)
    assert np.abs(got - want).mean() < 0.05
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_mixed_bfloat16_trains(tmp_path):
    mixed = runner.train(two_phases(precision="mixed_bfloat16", epochs_fe=3), str(tmp_path))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    assert mixed.model.get_layer("head_dense").dtype_policy.name == "mixed_bfloat16"
    assert mixed.model.get_layer("predictions").dtype_policy.name == "float32"
    losses = [r["loss"] for r in mixed.history.records]
    assert all(np.isfinite(losses)) and losses[2] < losses[0]  # it learns
    assert all(np.isfinite(r["val_loss"]) for r in mixed.history.records)


def test_a_later_phase_refuses_another_precision(tmp_path):
    runner.train(two_phases(), str(tmp_path), phase="fe")
    with pytest.raises(WorkdirError, match="precision: saved 'float32', given 'mixed_bfloat16'"):
        runner.train(two_phases(precision="mixed_bfloat16"), str(tmp_path), phase="ft")


def test_mixed_means_bfloat16_without_a_gpu():
    assert distribute.precision_policy("mixed") == "mixed_bfloat16"
    assert distribute.precision_policy("float32") == "float32"
