"""Per-phase learning-rate schedules (tl_keras.training.schedules)."""

from __future__ import annotations

import dataclasses
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tl_keras.recipe import LRSchedule  # noqa: E402
from tl_keras.training.schedules import SCHEDULES, LRRecorder, lr_at_epoch, make_schedule  # noqa: E402

SPE = 4  # steps per epoch
SCHEDULE_FIELDS = {f.name for f in dataclasses.fields(LRSchedule)}


def _split(name, kwargs):
    """The `LRSchedule` named `name` with the schedule settings among `kwargs`, and the rest."""
    settings = {k: v for k, v in kwargs.items() if k in SCHEDULE_FIELDS}
    return LRSchedule(name, **settings), {k: v for k, v in kwargs.items() if k not in settings}


def make(name, **kwargs):
    schedule, rest = _split(name, kwargs)
    return make_schedule(schedule, **rest)


def rate_at(name, epoch, **kwargs):
    schedule, rest = _split(name, kwargs)
    return lr_at_epoch(schedule, epoch, **rest)


def _value(lr, step: int) -> float:
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return float(keras.ops.convert_to_numpy(lr(step)))
    return float(lr)


def _expected(name, epochs, **kwargs):
    return [
        rate_at(name, e, steps_per_epoch=SPE, epochs=epochs, **kwargs) for e in range(epochs + 1)
    ]


def test_registry_names():
    assert set(SCHEDULES) == {"constant", "cosine", "step", "plateau"}


@pytest.mark.parametrize("call", [make, lambda n, **kw: rate_at(n, 0, **kw)])
def test_unknown_name_lists_allowed(call):
    with pytest.raises(ValueError, match="'linear'.*constant, cosine, plateau, step"):
        call("linear", base_lr=0.1, steps_per_epoch=SPE, epochs=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"base_lr": 0.0}, "base_lr"),
        ({"base_lr": math.nan}, "base_lr"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"epochs": 2.5}, "epochs"),
        ({"warmup_epochs": 3}, "warmup_epochs"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"gamma": 0.0}, "gamma"),
        ({"step_every": 0}, "step_every"),
        ({"plateau_factor": 1.0}, "plateau_factor"),
    ],
)
def test_bad_parameters(kwargs, match):
    params = {"base_lr": 0.1, "steps_per_epoch": SPE, "epochs": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        make("cosine", **params)


@pytest.mark.parametrize("name", ["step", "plateau"])
def test_warmup_only_where_supported(name):
    with pytest.raises(ValueError, match="no warm-up"):
        make(name, base_lr=0.1, steps_per_epoch=SPE, epochs=5, warmup_epochs=1)


def test_constant():
    lr, callbacks = make("constant", base_lr=0.01, steps_per_epoch=SPE, epochs=3)
    assert lr == 0.01 and callbacks == []
    assert _expected("constant", 3, base_lr=0.01) == [0.01] * 4


def test_constant_with_warmup_rises_then_stays():
    kwargs = {"base_lr": 0.01, "warmup_epochs": 2}
    lr, _ = make("constant", steps_per_epoch=SPE, epochs=5, **kwargs)
    expected = _expected("constant", 5, **kwargs)
    np.testing.assert_allclose(expected, [0.0, 0.005, 0.01, 0.01, 0.01, 0.01])
    steps = range(0, 5 * SPE + 1)
    np.testing.assert_allclose(
        [_value(lr, s) for s in steps],
        [0.01 * min(s / (2 * SPE), 1.0) for s in steps],
        rtol=1e-6,
        atol=1e-9,
    )


def test_cosine_warmup_linear_then_decays_to_min():
    kwargs = {"base_lr": 0.1, "warmup_epochs": 2, "min_lr_ratio": 0.1}
    epochs = 8
    lr, callbacks = make("cosine", steps_per_epoch=SPE, epochs=epochs, **kwargs)
    assert callbacks == []
    expected = _expected("cosine", epochs, **kwargs)
    # Warm-up: equal increments from 0, reaching base_lr when it ends.
    np.testing.assert_allclose(expected[:3], [0.0, 0.05, 0.1])
    warm_steps = [_value(lr, s) for s in range(2 * SPE + 1)]
    np.testing.assert_allclose(np.diff(warm_steps), 0.1 / (2 * SPE), rtol=1e-5)
    # Then strictly decreasing, halfway at the middle of the decay, min_lr at the very end.
    assert all(a > b for a, b in zip(expected[2:], expected[3:], strict=False))
    np.testing.assert_allclose(expected[5], 0.01 + 0.09 * 0.5)
    assert expected[-1] == pytest.approx(0.01)
    assert _value(lr, epochs * SPE) == pytest.approx(0.01)
    assert _value(lr, epochs * SPE + 100) == pytest.approx(0.01)  # and stays there
    # The Keras schedule and the pure-Python prediction agree at every epoch start.
    np.testing.assert_allclose(
        [_value(lr, e * SPE) for e in range(epochs + 1)], expected, rtol=1e-6, atol=1e-9
    )


def test_cosine_without_warmup_starts_at_base():
    lr, _ = make("cosine", base_lr=0.1, steps_per_epoch=SPE, epochs=4)
    assert _value(lr, 0) == pytest.approx(0.1)
    assert _value(lr, 4 * SPE) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(
        [_value(lr, e * SPE) for e in range(5)],
        _expected("cosine", 4, base_lr=0.1),
        rtol=1e-6,
        atol=1e-9,
    )


def test_step_halves_every_n_epochs():
    kwargs = {"base_lr": 0.1, "step_every": 2, "gamma": 0.5}
    lr, callbacks = make("step", steps_per_epoch=SPE, epochs=7, **kwargs)
    assert callbacks == []
    per_epoch = [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]
    np.testing.assert_allclose(_expected("step", 7, **kwargs)[:7], per_epoch)
    for epoch, value in enumerate(per_epoch):
        # Every step of the epoch uses the epoch's value; the drop happens exactly at its start.
        for step in range(epoch * SPE, (epoch + 1) * SPE):
            assert _value(lr, step) == pytest.approx(value), (epoch, step)


def test_step_floors_at_min_lr_and_no_drop_is_a_float():
    kwargs = {"base_lr": 0.1, "step_every": 1, "gamma": 0.1, "min_lr_ratio": 0.05}
    lr, _ = make("step", steps_per_epoch=SPE, epochs=4, **kwargs)
    np.testing.assert_allclose([_value(lr, e * SPE) for e in range(4)], [0.1, 0.01, 0.005, 0.005])
    np.testing.assert_allclose(_expected("step", 4, **kwargs)[:4], [0.1, 0.01, 0.005, 0.005])
    lr, _ = make("step", base_lr=0.1, steps_per_epoch=SPE, epochs=3, step_every=3)
    assert lr == 0.1


def _compiled_model(lr=0.01):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(lr), "mse")
    return model


def test_plateau_reduces_after_patience():
    kwargs = {"base_lr": 0.1, "plateau_patience": 2, "plateau_factor": 0.5, "min_lr_ratio": 0.2}
    lr, callbacks = make(
        "plateau", steps_per_epoch=SPE, epochs=10, plateau_monitor="loss", **kwargs
    )
    assert lr == 0.1
    [callback] = callbacks
    assert isinstance(callback, keras.callbacks.ReduceLROnPlateau)
    model = _compiled_model(lr)
    callback.set_model(model)
    callback.on_train_begin()
    # Improves, then stalls for 2 epochs (reduce), improves, stalls for 4 (reduce, then floor).
    monitored = [1.0, 0.9, 0.9, 0.95, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6]
    actual = [0.1]
    for epoch, value in enumerate(monitored):
        callback.on_epoch_end(epoch, {"loss": value})
        actual.append(float(model.optimizer.learning_rate))
    expected = [
        rate_at("plateau", e, steps_per_epoch=SPE, epochs=10, monitor_values=monitored, **kwargs)
        for e in range(11)
    ]
    np.testing.assert_allclose(expected, [0.1] * 4 + [0.05] * 3 + [0.025] * 2 + [0.02] * 2)
    np.testing.assert_allclose(actual, expected, rtol=1e-6)
    # Without monitored values nothing can be predicted beyond base_lr.
    assert rate_at("plateau", 5, steps_per_epoch=SPE, epochs=10, **kwargs) == 0.1


def _fit_data(n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5], [0.0]], "float32")


def test_lr_recorder_records_schedule_values_used_in_fit():
    x, y = _fit_data()
    epochs, spe = 4, 2
    kwargs = {"base_lr": 0.05, "warmup_epochs": 1, "min_lr_ratio": 0.1}
    lr, callbacks = make("cosine", steps_per_epoch=spe, epochs=epochs, **kwargs)
    model = _compiled_model()
    model.compile(keras.optimizers.SGD(lr), "mse")
    recorder = LRRecorder(per_step=True)
    model.fit(x, y, batch_size=8, epochs=epochs, callbacks=[*callbacks, recorder], verbose=0)
    expected = [
        rate_at("cosine", e, steps_per_epoch=spe, epochs=epochs, **kwargs) for e in range(epochs)
    ]
    np.testing.assert_allclose(recorder.lrs, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        recorder.step_lrs, [_value(lr, s) for s in range(epochs * spe)], rtol=1e-6
    )
    assert recorder.step_lrs[0] == 0.0 and max(recorder.step_lrs) == pytest.approx(0.05)


def test_lr_recorder_with_plateau_records_rate_of_each_epoch():
    # A rate too small to change the loss: every epoch after the first is a plateau.
    x, y = _fit_data()
    kwargs = {"base_lr": 1e-9, "plateau_patience": 1, "plateau_factor": 0.5}
    lr, callbacks = make("plateau", steps_per_epoch=2, epochs=4, plateau_monitor="loss", **kwargs)
    model = _compiled_model(lr)
    recorder = LRRecorder()
    # The recorder goes last: it must still report the rate used during each epoch, not the
    # one ReduceLROnPlateau sets at the epoch's end.
    history = model.fit(
        x, y, batch_size=8, epochs=4, shuffle=False, callbacks=[*callbacks, recorder], verbose=0
    )
    np.testing.assert_allclose(recorder.lrs, [1e-9, 1e-9, 5e-10, 2.5e-10], rtol=1e-6)
    expected = [
        rate_at(
            "plateau",
            e,
            steps_per_epoch=2,
            epochs=4,
            monitor_values=history.history["loss"],
            **kwargs,
        )
        for e in range(4)
    ]
    np.testing.assert_allclose(recorder.lrs, expected, rtol=1e-6)
