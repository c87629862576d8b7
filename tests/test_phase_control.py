"""Phase control: the switch from fe to ft when validation stalls, and rollback to the best
weights of the previous phase when the next one makes validation worse."""

import json
import logging
import math
import pathlib

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tl_keras.training import runner
from tl_keras.training.callbacks import BestWeights
from tl_keras.training.history import KeptEpoch
from tl_keras.training.results import Snapshot, is_worse
from tl_keras.training.rollback import decide_rollback


# --- the decision, as plain data -----------------------------------------------------------------
def test_is_worse_follows_the_metric_direction():
    assert is_worse(0.7, 0.8, "val_accuracy") and not is_worse(0.8, 0.8, "val_accuracy")
    assert is_worse(1.2, 1.0, "val_loss") and not is_worse(0.9, 1.0, "val_loss")
    assert is_worse(math.nan, 1.0, "val_loss") and is_worse(None, 0.5, "val_accuracy")


def test_decide_rollback_keeps_the_better_weights_and_the_next_reference():
    ref = Snapshot("fe", 3, "val_accuracy", 0.80)
    ft_best = Snapshot("ft", 5, "val_accuracy", 0.78)
    decision, nxt = decide_rollback("ft", 0.75, ref, ft_best)
    assert decision.rolled_back and decision.kept == "fe epoch 3" and nxt is ref
    assert "restored and kept the weights of fe epoch 3" in decision.message()
    assert "0.7500 at the end of ft is worse than 0.8000, the best of fe (epoch 3)" in (
        decision.message()
    )
    better = Snapshot("ft", 6, "val_accuracy", 0.86)
    decision, nxt = decide_rollback("ft", 0.85, ref, better)
    assert not decision.rolled_back and decision.kept == "ft (its end)" and nxt is better
    assert decision.to_dict()["reference"] == {
        "phase": "fe",
        "epoch": 3,
        "monitor": "val_accuracy",
        "value": 0.80,
    }


def test_best_weights_keeps_the_best_epoch_not_the_last():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    for monitor, values, best_epoch in [
        ("val_accuracy", [0.5, 0.7, float("nan"), 0.6], 2),
        ("val_loss", [1.0, 0.4, 0.9, 0.4], 2),  # a tie is not an improvement
    ]:
        callback = BestWeights("ft", monitor)
        callback.set_model(model)
        seen = []
        for epoch, value in enumerate(values):
            model.set_weights([np.full((2, 1), epoch, "float32"), np.zeros(1, "float32")])
            seen.append(model.get_weights())
            callback.on_epoch_end(epoch, {monitor: value})
        assert callback.best.epoch == best_epoch and callback.best.value == values[best_epoch - 1]
        for a, b in zip(callback.best.weights, seen[best_epoch - 1], strict=True):
            np.testing.assert_array_equal(a, b)


# --- rollback in real runs -----------------------------------------------------------------------
class Wreck(keras.callbacks.Callback):
    """At the end of the n-th fit it sees, flips and scales the classifier: validation worsens."""

    def __init__(self, nth_fit: int):
        super().__init__()
        self.nth_fit, self.fits = nth_fit, 0

    def on_train_end(self, logs=None):
        self.fits += 1
        if self.fits == self.nth_fit:
            kernel = self.model.get_layer("predictions").kernel
            kernel.assign(-50.0 * kernel)


def _weights(path):
    return keras.models.load_model(str(path), compile=False).get_weights()


def _assert_bitwise_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture
def log_lines():
    """The tl_keras log lines (the logger may not propagate once a CLI set it up)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("tl_keras")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_rollback_restores_the_previous_phase_best_weights_bitwise(tmp_path, log_lines):
    cfg = tiny_config(rollback="val_loss")  # fe 1 epoch: its best epoch is its end
    result = runner.train(cfg, str(tmp_path), callbacks=[Wreck(nth_fit=2)])  # ft gets wrecked
    fe_weights = _weights(tmp_path / "fe" / "model.keras")
    _assert_bitwise_equal(result.model.get_weights(), fe_weights)
    _assert_bitwise_equal(_weights(tmp_path / "ft" / "model.keras"), fe_weights)
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["rollback"]["rolled_back"] is True
    assert summary["rollback"]["kept"] == "fe epoch 1"
    assert summary["rollback"]["end_value"] > summary["rollback"]["reference"]["value"]
    assert summary["rollback_reference"]["phase"] == "fe"
    assert any(
        line.startswith("[ft] rollback: val_loss") and "kept the weights of fe epoch 1" in line
        for line in log_lines
    ), log_lines
    # The history keeps what ft did; the model is fe's best, and the history marks it.
    assert [r["phase"] for r in result.history.records] == ["fe", "ft"]
    assert result.history.kept == [KeptEpoch("ft", 1, "rollback")]


def test_rollback_across_processes_uses_the_saved_best_weights(tmp_path, log_lines):
    """`--phase=ft` in its own process: fe's best weights come from fe/best_weights.npz."""
    cfg = tiny_config(rollback="val_loss", epochs_fe=2)
    runner.train(cfg, str(tmp_path), phase="fe")
    fe = json.loads((tmp_path / "fe" / "summary.json").read_text())
    best = fe["rollback_reference"]
    assert best["phase"] == "fe" and best["monitor"] == "val_loss" and best["epoch"] in (1, 2)
    with np.load(tmp_path / "fe" / "best_weights.npz") as f:
        saved = [f[f"arr_{i}"] for i in range(len(f.files))]
    if best["epoch"] == 2:  # fe's best is its end: the file holds fe's model
        _assert_bitwise_equal(saved, _weights(tmp_path / "fe" / "model.keras"))
    result = runner.train(cfg, str(tmp_path), phase="ft", callbacks=[Wreck(nth_fit=1)])
    decision = result.phases[0].rollback
    assert decision.rolled_back and decision.kept == f"fe epoch {best['epoch']}"
    _assert_bitwise_equal(result.model.get_weights(), saved)
    _assert_bitwise_equal(_weights(tmp_path / "ft" / "model.keras"), saved)
    assert any(line.startswith("[ft] rollback: ") for line in log_lines), log_lines


def test_fe_switches_to_ft_when_validation_stops_improving(tmp_path, log_lines):
    # A rate too small to move any weight: val_loss never improves after fe's first epoch.
    cfg = tiny_config(lr=1e-30, epochs_fe=6, epochs_ft=1, fe_switch_patience=1, ft_lr_factor=10)
    result = runner.train(cfg, str(tmp_path))
    assert [(s.phase, s.first, s.last) for s in result.history.spans()] == [
        ("fe", 1, 2),
        ("ft", 3, 3),
    ]
    assert result.phases[0].stopped_early and not result.phases[1].stopped_early
    assert any(
        line.startswith("[fe] val_loss stopped improving for 1 epochs: switching to the next")
        for line in log_lines
    ), log_lines
    run = json.loads(pathlib.Path(tmp_path, "run.json").read_text())
    assert run["phases"]["fe"]["stopped_early"] and run["phases"]["ft"]["first_epoch"] == 3
