"""A time budget that holds, at run time: measure what an epoch costs, keep to the plan.

With `time_budget`, a phase whose length the recipe decides measures itself before it trains:
a few real training steps and validation batches on the phase's own compiled model (the same
traced functions `fit` then reuses), after which every variable the steps touched (weights,
optimizer state, dropout RNG states) is put back exactly, so the run that follows is the run
that would have happened without the measurement. The plan itself is pure arithmetic
(`tl_keras.recipe.budget_plan`: `plan_epochs` turns the cost into epochs); `BudgetGuard` stops the phase at an epoch's end if the clock says the next epoch would
end past `GUARD` times the budget (a slow, shared machine), and `report` writes what the run used
into `run.json`.

Durations are `time.monotonic` differences: a wall clock that jumps cannot break the budget.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tl_keras.model.classifier import get_rng_state, set_rng_state
from tl_keras.recipe.budget_plan import EpochCost, checkpoint_share

log = logging.getLogger("tl_keras")

PROBE_STEPS = 8  # training steps timed (after the first, which traces the graph)
GUARD = 1.0  # stop at an epoch's end when the next (and the run's end) would end past this share
# Per epoch: the phase's own callbacks (history, log line, NaN guard, early stopping's copy of the
# best weights), which the measurement does not run: about 0.02 s measured for a head epoch on
# 2 CPU cores (0.05 made a few-shot fe that fills its budget use 0.68 of it).
CALLBACKS_S = 0.02
TRAIN_FORWARDS = 3.0  # a training step of the whole model costs about three forward passes


@dataclasses.dataclass
class Clock:
    """The run's time budget and when the run started (monotonic seconds)."""

    budget_s: float
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def report(self) -> dict:
        """What the run used, for `run.json`."""
        used = self.elapsed_s
        return {
            "budget_s": round(self.budget_s, 2),
            "used_s": round(used, 2),
            "used_share": round(used / self.budget_s, 3),
        }


class _Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.train, self.test, self.epochs = [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._e = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(time.monotonic() - self._e)

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        self.train.append(time.monotonic() - self._t)

    def on_test_batch_begin(self, batch, logs=None):
        self._v = time.monotonic()

    def on_test_batch_end(self, batch, logs=None):
        self.test.append(time.monotonic() - self._v)


def _snapshot(model: keras.Model) -> tuple[list, list, dict]:
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    weights = [np.array(v) for v in model.weights]
    slots = [np.array(v) for v in optimizer.variables]
    return weights, slots, get_rng_state(model)


def _restore(model: keras.Model, snapshot: tuple[list, list, dict]) -> None:
    weights, slots, rng = snapshot
    for variable, value in zip(model.weights, weights, strict=True):
        variable.assign(value)
    for variable, value in zip(model.optimizer.variables, slots, strict=True):
        variable.assign(value)
    set_rng_state(model, rng)


def forward_rate(model: keras.Model, images) -> float:
    """Images per second of the model's compiled forward pass (inference mode) on one batch:
    traced once, then timed over two calls. What the time budget's first estimates (the fe
    feature pass, a fine-tuning epoch, calibration's validation pass) are made of."""
    forward = tf.function(lambda x: model(x, training=False))
    forward(images)  # traces
    start = time.monotonic()
    for _ in range(2):
        np.asarray(forward(images))
    return 2 * len(images) / max(time.monotonic() - start, 1e-9)


def measure_epoch_cost(
    model: keras.Model,
    data,
    *,
    first_epoch: int,
    save_model: keras.Model | None = None,
    checkpoint_every: float = 0.0,
) -> EpochCost:
    """What one epoch of the compiled model's phase costs, measured and then undone.

    Runs `PROBE_STEPS + 1` training steps (the first traces the train function `fit` reuses)
    and two validation batches, times the steady ones, and times one save of `save_model` (a
    checkpoint: the whole model, also when `model` is its head on cached features), of which an
    epoch pays its share under `checkpoint_every` (`checkpoint_share`). Every variable is
    restored afterwards, bitwise.
    """
    steps = min(PROBE_STEPS + 1, data.steps_per_epoch)
    snapshot = _snapshot(model)
    timer = _Timer()
    try:
        model.fit(
            data.train_epochs(first_epoch, 1).take(steps),
            validation_data=data.val.take(2) if data.val is not None else None,
            epochs=1,
            steps_per_epoch=steps,
            shuffle=False,
            callbacks=[timer],
            verbose=0,
        )
        save_s = _time_save(save_model or model)
    finally:
        _restore(model, snapshot)
    step_s = statistics.median(timer.train[1:] or timer.train)
    # The first train step and the first validation batch include tracing: what a recompile
    # for a new schedule length costs again.
    trace_s = max(0.0, timer.train[0] - step_s) + (timer.test[0] if timer.test else 0.0)
    val_batches = math.ceil(data.num_val / data.batch_size) if data.val is not None else 0
    # A validation batch costs about a third of a training step (forward only) when there is
    # only one batch to time beside the traced one.
    val_batch_s = statistics.median(timer.test[1:]) if len(timer.test) > 1 else step_s / 3
    # Calibration's forward pass traces a forward graph once: what the first validation batch
    # paid over the others (the train step's trace is paid inside the phase, not at its end).
    eval_trace_s = max(0.0, timer.test[0] - val_batch_s) if timer.test else 0.0
    train_s, val_s = step_s * data.steps_per_epoch, val_batch_s * val_batches
    return EpochCost(
        train_s=train_s,
        val_s=val_s,
        overhead_s=save_s * checkpoint_share(train_s + val_s, checkpoint_every) + CALLBACKS_S,
        trace_s=trace_s,
        save_s=save_s,
        eval_trace_s=eval_trace_s,
    )


def measure_head_epoch_cost(
    model: keras.Model,
    data,
    *,
    first_epoch: int,
    save_model: keras.Model,
    checkpoint_every: float = 0.0,
) -> EpochCost:
    """What one epoch of a head on cached features costs: two whole epochs (the first traces),
    with validation, timed and then undone bitwise. A head epoch runs in one call (its
    `steps_per_execution` is the epoch), so steps cannot be timed one by one; whole epochs of a
    head cost milliseconds."""
    snapshot = _snapshot(model)
    timer = _Timer()
    try:
        model.fit(
            data.train_epochs(first_epoch, 2),
            validation_data=data.val,
            epochs=2,
            steps_per_epoch=data.steps_per_epoch,
            shuffle=False,
            callbacks=[timer],
            verbose=0,
        )
        save_s = _time_save(save_model)
    finally:
        _restore(model, snapshot)
    epoch_s = timer.epochs[-1]  # validation included: the head's epoch is one block
    return EpochCost(
        train_s=epoch_s,
        overhead_s=save_s * checkpoint_share(epoch_s, checkpoint_every) + CALLBACKS_S,
        trace_s=max(0.0, timer.epochs[0] - epoch_s),
        save_s=save_s,
        eval_trace_s=max(0.0, timer.epochs[0] - epoch_s),  # a head's one block: as measured
    )


def _time_save(model: keras.Model) -> float:
    """Seconds one save of the model takes (what an epoch's checkpoint and a phase's end cost)."""
    with tempfile.TemporaryDirectory(prefix="tl_keras-budget-") as folder:
        start = time.monotonic()
        model.save(f"{folder}/probe.keras")
        return time.monotonic() - start


class BudgetGuard(keras.callbacks.Callback):
    """Stops a phase at an epoch's end when the next epoch and the run's end (`reserve_s`) would
    end past GUARD x the budget. The next epoch is taken to last as long as the one that ended
    (the first, which includes tracing, at most as long as the plan measured)."""

    def __init__(self, clock: Clock, reserve_s: float):
        super().__init__()
        self.clock, self.reserve_s = clock, reserve_s
        self.planned_epoch_s: float | None = None  # the plan's measured epoch, when planned
        self.stopped_at: int | None = None
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        epoch_s = time.monotonic() - self._start
        if self._first and self.planned_epoch_s is not None:  # the first epoch traces: not a rate
            epoch_s = min(epoch_s, self.planned_epoch_s)
        self._first = False
        end = self.clock.elapsed_s + epoch_s + self.reserve_s
        if epoch + 1 >= self.params.get("epochs", math.inf) or self.model.stop_training:
            return  # the phase ends here anyway
        if end > GUARD * self.clock.budget_s:
            self.stopped_at = epoch + 1
            self.model.stop_training = True
            log.warning(
                "time budget: epoch %d took %.1fs; another would end at %.0fs of the %.0fs "
                "budget, so the phase stops here",
                epoch + 1,
                epoch_s,
                end,
                self.clock.budget_s,
            )
