"""Learning-rate range test (tl_keras.training.lr_finder)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tl_keras.training.lr_finder import LRFinderResult, find_lr  # noqa: E402
from tl_keras.training.lr_suggest import SUGGEST_RULES, suggest_lr, suggestions  # noqa: E402


def _data(n=64, seed=0):
    """A learnable 3-class problem on 8x8x3 inputs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    y = (x[:, :4, :4, 0].mean(axis=(1, 2)) > 0).astype("int64") + (x[..., 1].mean((1, 2)) > 0)
    return x, y


def _dataset(batch_size=16):
    x, y = _data()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def _model(optimizer) -> keras.Model:
    # BatchNormalization and Dropout: non-trainable statistics and RNG state that training moves.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dropout(0.2, name="drop"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(3, name="head"),
        ]
    )
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _snapshot(model):
    optimizer = model.optimizer
    return {
        "optimizer": optimizer,
        "built": optimizer.built,
        "schedule": optimizer._learning_rate,
        "optimizer_vars": [(v, v.numpy()) for v in optimizer.variables],
        "model_vars": [(v, v.numpy()) for v in model.variables],
        "train_function": model.train_function,
    }


def _assert_unchanged(model, snap):
    optimizer = model.optimizer
    assert optimizer is snap["optimizer"]
    assert optimizer.built == snap["built"]
    assert optimizer._learning_rate is snap["schedule"]
    assert model.train_function is snap["train_function"]
    assert [v for v, _ in snap["optimizer_vars"]] == list(optimizer.variables)
    for variable, value in snap["optimizer_vars"]:
        assert np.array_equal(variable.numpy(), value), variable.path
    assert [v for v, _ in snap["model_vars"]] == list(model.variables)
    for variable, value in snap["model_vars"]:
        assert np.array_equal(variable.numpy(), value), variable.path


def test_fresh_optimizer_with_schedule_left_untouched():
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=50)
    model = _model(keras.optimizers.Adam(schedule))
    snap = _snapshot(model)
    assert not snap["built"]
    result = find_lr(model, _dataset(), num_steps=12, max_lr=1.0, divergence_factor=1e9)
    assert len(result.lrs) == 12
    _assert_unchanged(model, snap)
    # And training afterwards starts from step 0 of the schedule.
    model.fit(_dataset(), epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 4


def test_trained_optimizer_left_untouched_bitwise():
    model = _model(keras.optimizers.Adam(1e-3))
    model.fit(_dataset(), epochs=1, shuffle=False, verbose=0)
    snap = _snapshot(model)
    assert snap["built"] and int(model.optimizer.iterations) == 4
    result = find_lr(model, _dataset(), num_steps=10, max_lr=1.0, divergence_factor=1e9)
    assert len(result.lrs) == 10
    # The test really trained: the model's losses were not all equal.
    assert len(set(result.losses)) > 1
    _assert_unchanged(model, snap)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)


def test_lrs_grow_exponentially_and_smoothing_is_bias_corrected():
    model = _model(keras.optimizers.SGD(0.01))
    kwargs = {"min_lr": 1e-5, "max_lr": 1e-1, "smoothing": 0.9, "divergence_factor": 1e9}
    result = find_lr(model, _dataset(), num_steps=9, **kwargs)
    lrs = np.asarray(result.lrs)
    assert len(lrs) == 9  # 4 batches per pass: the dataset was iterated again
    np.testing.assert_allclose(lrs[[0, -1]], [1e-5, 1e-1])
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], 10**0.5, rtol=1e-12)
    avg, expected = 0.0, []
    for i, loss in enumerate(result.losses):
        avg = 0.9 * avg + 0.1 * loss
        expected.append(avg / (1 - 0.9 ** (i + 1)))
    np.testing.assert_allclose(result.smoothed_losses, expected, rtol=1e-12)
    assert result.smoothed_losses[0] == result.losses[0]
    assert not result.diverged


def test_stops_on_divergence():
    model = _model(keras.optimizers.SGD(0.01))
    result = find_lr(model, _dataset(), min_lr=1e-3, max_lr=1e6, num_steps=60)
    assert result.diverged
    assert len(result.lrs) < 60
    last = result.smoothed_losses[-1]
    best_before = min(result.smoothed_losses[:-1])
    assert not math.isfinite(result.losses[-1]) or last > 4.0 * best_before


def test_non_repeatable_dataset_stops_when_exhausted():
    x, y = _data()
    batches = ((x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16))
    result = find_lr(_model(keras.optimizers.SGD(0.01)), batches, num_steps=10, max_lr=0.1)
    assert len(result.lrs) == 4


def test_suggestion_in_range_and_plot(tmp_path):
    model = _model(keras.optimizers.Adam(1e-3))
    result = find_lr(model, _dataset(), min_lr=1e-5, max_lr=10.0, num_steps=30)
    assert result.suggestion is not None
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert result.suggestion_method in ("valley", "min/10")
    assert set(result.suggestions) == set(SUGGEST_RULES)
    path = tmp_path / "lr_find.png"
    fig = result.plot(path)
    assert isinstance(fig, Figure)
    assert fig.axes[0].get_xscale() == "log"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["lr_find.png"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_suggest_rules():
    lrs = list(np.logspace(-5, 0, 11))
    # Falls, fastest between 1e-3.5 and 1e-2.5, bottoms out, then rises.
    smoothed = [2.0, 1.98, 1.95, 1.9, 1.6, 1.2, 1.0, 0.95, 0.9, 1.5, 5.0]
    suggestion, method = suggest_lr(lrs, smoothed, "steepest")
    assert method == "steepest" and suggestion == lrs[4]
    # Minimum in the first steps: no descent to speak of, so min-loss lr / 10 ...
    coarse = [1e-6, 1e-4, 1e-2, 1.0]
    for rule in SUGGEST_RULES:
        assert suggest_lr(coarse, [1.0, 0.9, 2.0, 9.0], rule) == (pytest.approx(1e-5), "min/10")
        # ... never below the first lr; values after a non-finite one are ignored.
        suggestion, method = suggest_lr(lrs, [1.0, 2.0, 4.0, math.nan, 0.1] + [0.0] * 6, rule)
        assert method == "min/10" and suggestion == lrs[0]
        assert suggest_lr(lrs[:1], [1.0], rule) == (None, None)
    with pytest.raises(ValueError, match="suggest='steep' is unknown; use one of valley, steepest"):
        suggest_lr(lrs, smoothed, "steep")


def synthetic_range_test(early_dip: bool) -> tuple[list[float], list[float]]:
    """A smoothed loss curve whose right answer is known: flat at 1.6 up to 1e-5, falling
    steadily (linearly in log lr) to 0.4 at 1e-2, then diverging. The middle of the fall,
    1e-3.5 = 3.2e-4, is the rate to pick, and its middle third, 1e-4 .. 1e-3, a right answer. With `early_dip`, the flat start has one noisy step
    (a 0.06 drop and back near 9e-7), what misled the old rule on the shared flowers."""
    lrs = np.logspace(-7, 0, 100)
    x = np.log10(lrs)
    loss = np.where(x < -5, 1.6, np.where(x < -2, 1.6 - 0.4 * (x + 5), 0.4 + 4 * (x + 2) ** 2))
    loss = loss + 0.002 * np.sin(7 * x)  # a little wobble, as real curves have
    if early_dip:
        i = int(np.argmin(np.abs(lrs - 9e-7)))
        loss[i : i + 2] -= 0.06
    return list(lrs), list(loss)


@pytest.mark.parametrize("early_dip", [False, True])
def test_valley_finds_the_middle_of_the_fall(early_dip):
    lrs, loss = synthetic_range_test(early_dip)
    suggestion, method = suggest_lr(lrs, loss)  # the default rule
    assert method == "valley"
    # In the middle third of the fall, 1e-4 .. 1e-3 (the exact middle is 3.2e-4).
    assert 1e-4 <= suggestion <= 1e-3, suggestion
    assert suggestions(lrs, loss)["valley"] == suggestion


def test_steepest_is_fooled_by_one_noisy_early_step():
    """Why 'valley' is the default: the old rule picks the noise, three decades too low."""
    lrs, loss = synthetic_range_test(early_dip=True)
    suggestion, method = suggest_lr(lrs, loss, "steepest")
    assert method == "steepest" and suggestion < 2e-6
    clean = suggest_lr(*synthetic_range_test(early_dip=False), "steepest")[0]
    assert 1e-5 <= clean <= 1e-2  # without the dip it lands in the fall


def test_works_with_lr_multiplier_optimizer():
    from tl_keras.training.lr_multipliers import variable_multipliers, with_lr_multipliers

    model = _model(keras.optimizers.Adam(1e-3))
    multipliers = variable_multipliers(model, {"conv": 0.1})
    model.compile(with_lr_multipliers(keras.optimizers.Adam(1e-3), multipliers), model.loss)
    snap = _snapshot(model)
    result = find_lr(model, _dataset(), num_steps=8, max_lr=1.0, divergence_factor=1e9)
    assert len(result.lrs) == 8
    _assert_unchanged(model, snap)


def test_mixed_precision_loss_scale_optimizer_left_untouched():
    # Under mixed_float16, compile wraps the optimizer in a LossScaleOptimizer with its own state.
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=50)
        model = _model(keras.optimizers.Adam(schedule))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    model.fit(_dataset(), epochs=1, shuffle=False, verbose=0)
    snap = _snapshot(model)
    result = find_lr(model, _dataset(), num_steps=6, max_lr=1.0, divergence_factor=1e9)
    assert len(result.lrs) == 6 and all(math.isfinite(v) for v in result.losses)
    _assert_unchanged(model, snap)
    assert model.optimizer.inner_optimizer._learning_rate is schedule


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_lr": 0.0}, "min_lr"),
        ({"max_lr": 1e-8}, "max_lr"),
        ({"num_steps": 1}, "num_steps"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"divergence_factor": 1.0}, "divergence_factor"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        find_lr(_model("sgd"), _dataset(), **kwargs)


def test_requires_compiled_and_built_model():
    model = keras.Sequential([keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compiled"):
        find_lr(model, _dataset())
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="not built"):
        find_lr(model, _dataset())


def test_result_plot_without_path_and_empty():
    fig = LRFinderResult(lrs=[], losses=[], smoothed_losses=[], suggestion=None).plot()
    assert isinstance(fig, Figure)
