"""Per-variable learning-rate multipliers (tl_keras.training.lr_multipliers)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tl_keras.recipe import layer_decay_multipliers  # noqa: E402
from tl_keras.training import lr_multipliers as tlo  # noqa: E402
from tl_keras.training.lr_multipliers import (  # noqa: E402
    LRMultiplierOptimizer,
    variable_multipliers,
    with_lr_multipliers,
)


def _variables(*values):
    return [
        keras.Variable(np.asarray(v, dtype="float32"), name=f"v{i}") for i, v in enumerate(values)
    ]


def _nested_model(name: str = "outer") -> keras.Model:
    """A transfer-learning shaped model: a functional base model nested inside an outer one."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Conv2D(4, 3, name="top_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    outer_in = keras.Input((8, 8, 3))
    y = keras.layers.Dense(3, name="head")(backbone(outer_in))
    return keras.Model(outer_in, y, name=name)


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n)


# --- pure helpers ----------------------------------------------------------------------------


def test_layer_decay_multipliers_top_block_gets_one():
    result = layer_decay_multipliers(["stem", "block1", "block2", "head"], 0.5)
    assert result == {"stem": 0.125, "block1": 0.25, "block2": 0.5, "head": 1.0}
    assert layer_decay_multipliers([], 0.7) == {}
    assert layer_decay_multipliers(["a", "b"], 1.0) == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5, math.nan, math.inf])
def test_layer_decay_multipliers_rejects_bad_decay(decay):
    with pytest.raises(ValueError, match="decay"):
        layer_decay_multipliers(["a", "b"], decay)


def test_layer_decay_multipliers_rejects_repeated_block():
    with pytest.raises(ValueError, match="'a' more than once"):
        layer_decay_multipliers(["a", "b", "a"], 0.5)


def test_variable_paths_of_nested_base_model_have_no_prefix():
    # The fact the multiplier keys rely on: a functional base model builds its layers when it is
    # constructed, so its variables' paths do not start with the base model's name.
    paths = [v.path for v in _nested_model().trainable_variables]
    assert paths == [
        "stem/kernel",
        "stem/bias",
        "stem_bn/gamma",
        "stem_bn/beta",
        "top_conv/kernel",
        "top_conv/bias",
        "head/kernel",
        "head/bias",
    ]


def test_variable_multipliers_nested_most_specific_wins():
    model = _nested_model()
    result = variable_multipliers(model, {"backbone": 0.1, "top_conv": 0.5}, default=2.0)
    assert result == {
        "stem/kernel": 0.1,
        "stem/bias": 0.1,
        "stem_bn/gamma": 0.1,
        "stem_bn/beta": 0.1,
        "top_conv/kernel": 0.5,
        "top_conv/bias": 0.5,
        "head/kernel": 2.0,
        "head/bias": 2.0,
    }


def test_variable_multipliers_skips_frozen_layers():
    model = _nested_model()
    model.get_layer("backbone").get_layer("stem").trainable = False
    result = variable_multipliers(model, {"stem": 0.1, "head": 1.0})
    assert "stem/kernel" not in result
    assert set(result) == {v.path for v in model.trainable_variables}


def test_variable_multipliers_unknown_layer():
    with pytest.raises(ValueError, match=r"\['nope'\] not found"):
        variable_multipliers(_nested_model(), {"nope": 0.5})


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "x", None])
def test_variable_multipliers_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        variable_multipliers(_nested_model(), {"head": bad})
    with pytest.raises(ValueError, match="default"):
        variable_multipliers(_nested_model(), {}, default=bad)


# --- with_lr_multipliers: validation --------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -0.1, math.nan, -math.inf, math.inf, "fast", True])
def test_with_lr_multipliers_rejects_bad_multiplier(bad):
    with pytest.raises(ValueError, match=r"'head/kernel'.*" + repr(bad).replace("(", r"\(")):
        with_lr_multipliers(keras.optimizers.Adam(), {"head/kernel": bad})


def test_with_lr_multipliers_rejects_built_and_wrappers():
    optimizer = keras.optimizers.SGD()
    optimizer.build(_variables([1.0]))
    with pytest.raises(ValueError, match="already built"):
        with_lr_multipliers(optimizer, {})
    with pytest.raises(ValueError, match="inner optimizer"):
        with_lr_multipliers(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()), {})
    with pytest.raises(TypeError, match="with_lr_multipliers"):
        LRMultiplierOptimizer(learning_rate=0.1)


def test_with_lr_multipliers_keeps_class_and_config():
    original = keras.optimizers.AdamW(learning_rate=3e-3, weight_decay=0.02, beta_1=0.8)
    original.exclude_from_weight_decay(var_names=["bias"])
    optimizer = with_lr_multipliers(original, {"a": 0.5})
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert isinstance(optimizer, LRMultiplierOptimizer)
    assert type(optimizer).__name__ == "LRMultiplierAdamW"
    assert optimizer is not original and not original.built
    expected = dict(original.get_config(), base_optimizer="AdamW", lr_multipliers={"a": 0.5})
    assert optimizer.get_config() == expected
    assert optimizer._exclude_from_weight_decay_pattern.pattern == "bias"
    # Re-wrapping replaces the multipliers instead of stacking a second subclass.
    again = with_lr_multipliers(optimizer, {"b": 2.0})
    assert type(again) is type(optimizer) and again.lr_multipliers == {"b": 2.0}
    # By name, too.
    assert isinstance(with_lr_multipliers("rmsprop", {}), keras.optimizers.RMSprop)


# --- the effective step sizes ----------------------------------------------------------------


def test_sgd_step_is_lr_times_multiplier_times_gradient():
    lr = 0.1
    variables = _variables([1.0, -2.0, 3.0], [0.5, 0.25])
    grads = [np.array([0.3, -1.7, 2.5], "float32"), np.array([4.0, -0.01], "float32")]
    before = [v.numpy() for v in variables]
    optimizer = with_lr_multipliers(keras.optimizers.SGD(lr), {"v1": 0.25})
    optimizer.apply(grads, variables)
    np.testing.assert_array_equal(variables[0].numpy(), before[0] - grads[0] * np.float32(lr))
    scaled_lr = np.float32(lr) * np.float32(0.25)
    np.testing.assert_array_equal(variables[1].numpy(), before[1] - grads[1] * scaled_lr)


def test_adam_first_step_is_lr_times_multiplier():
    lr = 1e-2
    grads = [np.array([0.05, 5.0, -200.0], "float32")] * 2
    variables = _variables([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    optimizer = with_lr_multipliers(keras.optimizers.Adam(lr), {"v0": 1.0, "v1": 0.3})
    optimizer.apply(grads, variables)
    # Adam's first step is lr * g / (|g| + eps'), i.e. lr * sign(g) whatever the gradient's size.
    np.testing.assert_allclose(variables[0].numpy(), -lr * np.sign(grads[0]), rtol=1e-3)
    np.testing.assert_allclose(variables[1].numpy(), -0.3 * lr * np.sign(grads[1]), rtol=1e-3)


def test_adam_multiplier_is_not_gradient_scaling():
    rng = np.random.default_rng(0)
    grad_steps = [rng.normal(size=4).astype("float32") for _ in range(5)]

    def run(optimizer, grad_scale):
        variables = _variables(np.zeros(4), np.zeros(4))
        for g in grad_steps:
            optimizer.apply([g, g * np.float32(grad_scale)], variables)
        return [v.numpy() for v in variables]

    # Scaling v1's gradients by 0.1 under plain Adam changes (almost) nothing ...
    plain = run(keras.optimizers.Adam(1e-2), grad_scale=0.1)
    np.testing.assert_allclose(plain[1], plain[0], rtol=1e-3)
    # ... while a multiplier of 0.1 gives steps exactly 10x smaller, at every step.
    scaled = run(with_lr_multipliers(keras.optimizers.Adam(1e-2), {"v1": 0.1}), grad_scale=1.0)
    np.testing.assert_allclose(scaled[1], 0.1 * scaled[0], rtol=1e-5)
    assert np.all(np.abs(scaled[0]) > 1e-3)


def test_adamw_weight_decay_follows_multiplier():
    lr, wd = 0.1, 0.5
    variables = _variables([1.0, -2.0], [1.0, -2.0])
    optimizer = with_lr_multipliers(
        keras.optimizers.AdamW(lr, weight_decay=wd), {"v0": 1.0, "v1": 0.2}
    )
    # With zero gradients Adam's own step is 0, which leaves the decoupled decay lr * wd * w.
    optimizer.apply([np.zeros(2, "float32")] * 2, variables)
    w0 = np.array([1.0, -2.0])
    np.testing.assert_allclose(variables[0].numpy(), w0 * (1 - lr * wd), rtol=1e-6)
    np.testing.assert_allclose(variables[1].numpy(), w0 * (1 - 0.2 * lr * wd), rtol=1e-6)
    # The optimizer's own learning rate is untouched outside the decay.
    assert float(optimizer.learning_rate) == pytest.approx(lr)


def test_schedule_base_lr_in_graph_mode():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.1, 0.01])
    variables = _variables([1.0], [1.0])
    optimizer = with_lr_multipliers(keras.optimizers.SGD(schedule), {"v1": 0.5})
    optimizer.build(variables)
    grad = np.array([2.0], "float32")

    @tf.function
    def step():
        optimizer.apply([grad, grad], variables)

    expected = [1.0, 1.0]
    for lr in (0.1, 0.01):  # step 0 uses schedule(0), step 1 uses schedule(1)
        step()
        expected = [expected[0] - lr * 2.0, expected[1] - 0.5 * lr * 2.0]
        np.testing.assert_allclose([variables[0].numpy()[0], variables[1].numpy()[0]], expected)
    assert int(optimizer.iterations) == 2


def test_unmatched_multiplier_warns_at_build():
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.1), {"v0": 0.5, "gone/kernel": 0.1})
    with pytest.warns(UserWarning, match="gone/kernel"):
        optimizer.build(_variables([1.0]))


# --- model.fit and saving --------------------------------------------------------------------


def test_fit_applies_half_multiplier_to_one_layer():
    x, y = _data()
    keras.utils.set_random_seed(1)
    plain, scaled = _nested_model("plain"), _nested_model("scaled")
    scaled.set_weights(plain.get_weights())
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.5)
    multipliers = variable_multipliers(scaled, {"top_conv": 0.5})
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    plain.compile(keras.optimizers.Adam(schedule), loss)
    scaled.compile(with_lr_multipliers(keras.optimizers.Adam(schedule), multipliers), loss)
    before = {v.path: v.numpy() for v in plain.trainable_variables}
    # One full-batch step, so both models see exactly the same gradients.
    for model in (plain, scaled):
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for p_var, s_var in zip(plain.trainable_variables, scaled.trainable_variables, strict=True):
        d_plain = p_var.numpy() - before[p_var.path]
        d_scaled = s_var.numpy() - before[s_var.path]
        factor = 0.5 if p_var.path.startswith("top_conv/") else 1.0
        np.testing.assert_allclose(d_scaled, factor * d_plain, rtol=1e-4, atol=1e-9)
        assert np.abs(d_plain).max() > 0
    assert int(scaled.optimizer.iterations) == 1


def test_save_load_keeps_multipliers(tmp_path, monkeypatch):
    x, y = _data()
    keras.utils.set_random_seed(2)
    model = _nested_model()
    multipliers = variable_multipliers(model, {"backbone": 0.1, "head": 1.0})
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, 20)
    optimizer = with_lr_multipliers(keras.optimizers.Adam(schedule), multipliers)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)

    # As in a fresh process: no generated subclass exists until the file asks for one.
    monkeypatch.setattr(tlo, "_subclasses", {})
    loaded = keras.models.load_model(path)
    restored = loaded.optimizer
    assert isinstance(restored, LRMultiplierOptimizer)
    assert isinstance(restored, keras.optimizers.Adam)
    assert type(restored) is not type(optimizer)  # regenerated, not the cached class
    assert restored.lr_multipliers == multipliers
    assert [v.path for v in loaded.trainable_variables] == list(multipliers)
    assert restored._lr_scales == tuple(multipliers.values())
    assert isinstance(restored.get_config()["learning_rate"], dict)
    for a, b in zip(optimizer.variables, restored.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Training on from both gives the same weights: the multipliers are active after loading.
    for m in (model, loaded):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_serialize_deserialize_roundtrip():
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.05, momentum=0.9), {"a/kernel": 0.3})
    config = keras.optimizers.serialize(optimizer)
    assert config["registered_name"] == "tl_keras>LRMultiplierOptimizer"
    copy = keras.optimizers.deserialize(config)
    assert type(copy) is type(optimizer)
    assert copy.get_config() == optimizer.get_config()


def test_sequential_paths_change_on_load_but_multipliers_follow(tmp_path):
    # Keras names a Sequential model's variables "sequential/dense/kernel" when built inside it,
    # but "dense/kernel" after loading; the multipliers must still reach the same variables.
    x = np.random.default_rng(3).normal(size=(8, 4)).astype("float32")
    y = np.zeros((8, 2), "float32")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="body"), keras.layers.Dense(2, name="out")],
        name="seq",
    )
    multipliers = variable_multipliers(model, {"body": 0.25})
    assert multipliers["seq/body/kernel"] == 0.25
    model.compile(with_lr_multipliers(keras.optimizers.SGD(0.1), multipliers), "mse")
    model.fit(x, y, batch_size=8, verbose=0)
    model.save(tmp_path / "seq.keras")
    loaded = keras.models.load_model(tmp_path / "seq.keras")
    assert loaded.trainable_variables[0].path == "body/kernel"
    assert loaded.optimizer._lr_scales == (0.25, 0.25, 1.0, 1.0)
    assert loaded.optimizer.lr_multipliers["body/kernel"] == 0.25
    before = [v.numpy() for v in loaded.trainable_variables]
    loaded.fit(x, y, batch_size=8, verbose=0)
    model.fit(x, y, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.array_equal(before[0], loaded.trainable_variables[0].numpy())


def test_suffix_matching_is_unambiguous_only():
    variables = [
        keras.Variable(np.zeros(1, "float32"), name=n) for n in ("kernel", "bias", "kernel")
    ]
    optimizer = with_lr_multipliers(keras.optimizers.SGD(0.1), {"outer/kernel": 0.5})
    # Two variables end in "kernel": no guess is made, the key is reported as unused.
    with pytest.warns(UserWarning, match="outer/kernel"):
        optimizer.build(variables)
    assert optimizer._lr_scales == (1.0, 1.0, 1.0)
