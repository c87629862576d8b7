"""Per-phase learning-rate schedules, by name.

`make_schedule(schedule, base_lr=..., steps_per_epoch=..., epochs=...)` builds the recipe's
`LRSchedule` (its name and settings) for one phase: what to give the optimizer (a float or a
Keras `LearningRateSchedule`, which Keras evaluates at the optimizer's step counter) plus the
callbacks the schedule needs. `lr_at_epoch` computes, in plain Python, the rate the same schedule
uses at the first step of an epoch, for tests and plots; `LRRecorder` records the rate actually
used.

Schedules (`SCHEDULES`):

- `constant`: `base_lr` (after the optional linear warm-up).
- `cosine`: linear warm-up from 0 to `base_lr` over `warmup_epochs`, then cosine decay to
  `base_lr * min_lr_ratio`, reached at the end of the last epoch (the step after the last one).
- `step`: `base_lr * gamma ** (epoch // step_every)`, never below `base_lr * min_lr_ratio`.
- `plateau`: `base_lr`, multiplied by `plateau_factor` by `keras.callbacks.ReduceLROnPlateau`
  after `plateau_patience` epochs without improvement of `plateau_monitor`, down to
  `base_lr * min_lr_ratio`. That callback assigns a new float to the optimizer, which is refused
  when the optimizer's learning rate is a schedule, so this schedule returns a float.

Only built-in Keras schedules are returned, so saved models load without this package. Steps are
optimizer steps: the rate for step `s` is `schedule(s)`, where `s` counts from 0 within the phase
(one `fit` call with a freshly compiled optimizer).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import keras
import numpy as np

from tl_keras.recipe import LRSchedule

__all__ = [
    "SCHEDULES",
    "LRRecorder",
    "ScheduleSpec",
    "current_lr",
    "lr_at_epoch",
    "make_schedule",
    "has_settable_length",
    "set_length",
    "settable_length",
]

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule

# `ReduceLROnPlateau`'s default; fixed here so that `lr_at_epoch` can reproduce its decisions.
PLATEAU_MIN_DELTA = 1e-4


@dataclasses.dataclass(frozen=True)
class _Params:
    base_lr: float
    steps_per_epoch: int
    epochs: int
    warmup_epochs: float
    min_lr_ratio: float
    step_every: int
    gamma: float
    plateau_patience: int
    plateau_factor: float
    plateau_monitor: str

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_epochs * self.steps_per_epoch))

    @property
    def min_lr(self) -> float:
        return self.base_lr * self.min_lr_ratio

    @property
    def decay_steps(self) -> int:
        return max(1, self.total_steps - self.warmup_steps)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _params(
    schedule: LRSchedule,
    *,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    plateau_monitor: str,
) -> _Params:
    name, warmup_epochs, min_lr_ratio = schedule.name, schedule.warmup_epochs, schedule.min_lr_ratio
    step_every, gamma = schedule.step_every, schedule.gamma
    plateau_patience, plateau_factor = schedule.plateau_patience, schedule.plateau_factor
    if name not in SCHEDULES:
        raise ValueError(
            f"Unknown learning-rate schedule {name!r}; allowed: {', '.join(sorted(SCHEDULES))}."
        )

    def fail(what: str, value: object, allowed: str) -> None:
        raise ValueError(f"{what} must be {allowed}; received {value!r}.")

    if not (_is_number(base_lr) and math.isfinite(base_lr) and base_lr > 0):
        fail("base_lr", base_lr, "a finite number > 0")
    if not (_is_int(steps_per_epoch) and steps_per_epoch >= 1):
        fail("steps_per_epoch", steps_per_epoch, "an integer >= 1")
    if not (_is_int(epochs) and epochs >= 1):
        fail("epochs", epochs, "an integer >= 1")
    if not (_is_number(warmup_epochs) and 0 <= warmup_epochs < epochs):
        fail("warmup_epochs", warmup_epochs, f"a number >= 0 and < epochs ({epochs})")
    if not (_is_number(min_lr_ratio) and 0 <= min_lr_ratio <= 1):
        fail("min_lr_ratio", min_lr_ratio, "a number in [0, 1]")
    if not (_is_int(step_every) and step_every >= 1):
        fail("step_every", step_every, "an integer >= 1 (epochs between decays)")
    if not (_is_number(gamma) and 0 < gamma <= 1):
        fail("gamma", gamma, "a number in (0, 1]")
    if not (_is_int(plateau_patience) and plateau_patience >= 0):
        fail("plateau_patience", plateau_patience, "an integer >= 0")
    if not (_is_number(plateau_factor) and 0 < plateau_factor < 1):
        fail("plateau_factor", plateau_factor, "a number in (0, 1)")
    if not (isinstance(plateau_monitor, str) and plateau_monitor):
        fail("plateau_monitor", plateau_monitor, "a metric name such as 'val_loss'")
    if warmup_epochs > 0 and name not in ("constant", "cosine"):
        raise ValueError(
            f"Schedule {name!r} has no warm-up; received warmup_epochs={warmup_epochs!r}. "
            "Use warmup_epochs=0, or the 'cosine' or 'constant' schedule."
        )
    return _Params(
        base_lr=float(base_lr),
        steps_per_epoch=int(steps_per_epoch),
        epochs=int(epochs),
        warmup_epochs=float(warmup_epochs),
        min_lr_ratio=float(min_lr_ratio),
        step_every=int(step_every),
        gamma=float(gamma),
        plateau_patience=int(plateau_patience),
        plateau_factor=float(plateau_factor),
        plateau_monitor=plateau_monitor,
    )


# --- constant -------------------------------------------------------------------------------


def _warmup_then_cosine(p: _Params, alpha: float) -> keras.optimizers.schedules.CosineDecay:
    # Keras' CosineDecay: linear from `initial_learning_rate` to `warmup_target` over
    # `warmup_steps`, then cosine from `warmup_target` to `warmup_target * alpha` over
    # `decay_steps`. Without warm-up, `warmup_target=None` decays from `initial_learning_rate`.
    if p.warmup_steps > 0:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=p.decay_steps,
            alpha=alpha,
            warmup_target=p.base_lr,
            warmup_steps=p.warmup_steps,
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=p.base_lr, decay_steps=p.decay_steps, alpha=alpha
    )


def settable_length(learning_rate: object) -> bool:
    """Holds a cosine schedule's decay length (`decay_steps`) in a variable, which the traced
    train step reads, so that `set_length` changes the schedule's length without tracing the
    train step again (the time budget's plan and re-plan: a trace of the whole model costs about
    an epoch on the flowers). Call before the train step is first traced; the rates are the
    same, bitwise (the length is cast to the rate's dtype either way), and the schedule's config
    still names the length as a number, so a saved model loads with Keras alone.

    Returns:
      Whether the length is now settable (a `CosineDecay`, the cosine and warm-up schedules).
    """
    if not isinstance(learning_rate, keras.optimizers.schedules.CosineDecay):
        return False
    if isinstance(learning_rate.decay_steps, keras.Variable):
        return True
    length = keras.Variable(
        float(learning_rate.decay_steps), dtype="float32", trainable=False, name="decay_steps"
    )
    learning_rate.decay_steps = length

    def get_config() -> dict:
        config = type(learning_rate).get_config(learning_rate)
        config["decay_steps"] = int(round(float(length.numpy())))
        return config

    learning_rate.get_config = get_config
    return True


def has_settable_length(learning_rate: object) -> bool:
    """Whether `settable_length` made this schedule's length a variable."""
    return isinstance(learning_rate, keras.optimizers.schedules.CosineDecay) and isinstance(
        learning_rate.decay_steps, keras.Variable
    )


def set_length(current: object, new: object) -> bool:
    """Gives `current` (made `settable_length`) the length of `new`, when they differ in
    nothing else; False (nothing changed) otherwise: the caller builds the optimizer anew."""
    if not (has_settable_length(current) and type(new) is keras.optimizers.schedules.CosineDecay):
        return False
    mine, theirs = current.get_config(), new.get_config()
    if {k: v for k, v in mine.items() if k != "decay_steps"} != {
        k: v for k, v in theirs.items() if k != "decay_steps"
    }:
        return False
    current.decay_steps.assign(float(new.decay_steps))
    return True


def _cosine_lr_at_step(p: _Params, step: int, alpha: float) -> float:
    warmup = p.warmup_steps
    if warmup > 0 and step < warmup:
        return p.base_lr * step / warmup
    done = min(step - warmup, p.decay_steps) / p.decay_steps
    return p.base_lr * ((1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * done)) + alpha)


def _build_constant(p: _Params) -> tuple[LearningRate, list[keras.callbacks.Callback]]:
    if p.warmup_steps == 0:
        return p.base_lr, []
    # A cosine that decays to `alpha=1.0` of its start is flat: warm-up, then constant.
    return _warmup_then_cosine(p, alpha=1.0), []


def _constant_lr(p: _Params, epoch: int, monitor_values: Sequence[float] | None) -> float:
    return _cosine_lr_at_step(p, epoch * p.steps_per_epoch, alpha=1.0)


# --- cosine ---------------------------------------------------------------------------------


def _build_cosine(p: _Params) -> tuple[LearningRate, list[keras.callbacks.Callback]]:
    return _warmup_then_cosine(p, alpha=p.min_lr_ratio), []


def _cosine_lr(p: _Params, epoch: int, monitor_values: Sequence[float] | None) -> float:
    return _cosine_lr_at_step(p, epoch * p.steps_per_epoch, alpha=p.min_lr_ratio)


# --- step -----------------------------------------------------------------------------------


def _step_value(p: _Params, k: int) -> float:
    return max(p.base_lr * p.gamma**k, p.min_lr)


def _build_step(p: _Params) -> tuple[LearningRate, list[keras.callbacks.Callback]]:
    drops = [k for k in range(1, p.epochs) if k * p.step_every < p.epochs]
    if not drops:
        return p.base_lr, []
    # PiecewiseConstantDecay returns values[i + 1] for steps > boundaries[i]; the boundary is the
    # last step of the epoch before the drop, so the new rate starts with the epoch.
    boundaries = [k * p.step_every * p.steps_per_epoch - 1 for k in drops]
    values = [_step_value(p, k) for k in [0, *drops]]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values), []


def _step_lr(p: _Params, epoch: int, monitor_values: Sequence[float] | None) -> float:
    return _step_value(p, min(epoch, p.epochs - 1) // p.step_every)


# --- plateau --------------------------------------------------------------------------------


def _build_plateau(p: _Params) -> tuple[LearningRate, list[keras.callbacks.Callback]]:
    callback = keras.callbacks.ReduceLROnPlateau(
        monitor=p.plateau_monitor,
        factor=p.plateau_factor,
        patience=p.plateau_patience,
        min_delta=PLATEAU_MIN_DELTA,
        min_lr=p.min_lr,
    )
    return p.base_lr, [callback]


def _plateau_lr(p: _Params, epoch: int, monitor_values: Sequence[float] | None) -> float:
    # Mirrors ReduceLROnPlateau.on_epoch_end (mode "min", cooldown 0) for the epochs before
    # `epoch`; without monitored values nothing can be reduced.
    lr = p.base_lr
    if monitor_values is None:
        return lr
    if len(monitor_values) < epoch:
        raise ValueError(
            f"monitor_values must hold one value per finished epoch: {epoch} needed for epoch "
            f"{epoch}, received {len(monitor_values)}."
        )
    best: float | None = None
    wait = 0
    for value in monitor_values[:epoch]:
        if best is None or value + PLATEAU_MIN_DELTA < best:
            best = value
            wait = 0
            continue
        wait += 1
        # As in Keras, the wait only restarts when the rate could still be reduced.
        if wait >= p.plateau_patience and lr > np.float32(p.min_lr):
            lr = max(lr * p.plateau_factor, p.min_lr)
            wait = 0
    return lr


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """How to build a schedule and how to predict its value per epoch.

    Attributes:
        build: Validated parameters -> (learning rate for the optimizer, callbacks).
        lr_at_epoch: (parameters, epoch, monitored values or None) -> learning rate at the first
            step of that epoch.
        description: One line for help texts.
    """

    build: Callable[[_Params], tuple[LearningRate, list[keras.callbacks.Callback]]]
    lr_at_epoch: Callable[[_Params, int, Sequence[float] | None], float]
    description: str


SCHEDULES: dict[str, ScheduleSpec] = {
    "constant": ScheduleSpec(
        _build_constant, _constant_lr, "base_lr throughout, after an optional linear warm-up"
    ),
    "cosine": ScheduleSpec(
        _build_cosine,
        _cosine_lr,
        "linear warm-up, then cosine decay to base_lr * min_lr_ratio at the end",
    ),
    "step": ScheduleSpec(
        _build_step, _step_lr, "base_lr * gamma ** (epoch // step_every), floored at min_lr"
    ),
    "plateau": ScheduleSpec(
        _build_plateau,
        _plateau_lr,
        "base_lr, times plateau_factor after plateau_patience epochs without improvement",
    ),
}


def make_schedule(
    schedule: LRSchedule,
    *,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    plateau_monitor: str = "val_loss",
) -> tuple[LearningRate, list[keras.callbacks.Callback]]:
    """Build the learning rate and callbacks for one training phase.

    Args:
        schedule: The recipe's `LRSchedule`: its `name` (one of `SCHEDULES`: "constant",
            "cosine", "step", "plateau") and settings. `warmup_epochs`: linear warm-up from 0 to
            `base_lr` ("constant" and "cosine" only; may be fractional, rounded to whole steps),
            < `epochs`. `min_lr_ratio`: floor as a fraction of `base_lr`: where "cosine" ends,
            and the lowest rate "step" and "plateau" go to; ignored by "constant". `step_every`,
            `gamma`: "step" multiplies the rate by `gamma`, in (0, 1], every `step_every`
            epochs. `plateau_patience`, `plateau_factor`: "plateau" multiplies it by
            `plateau_factor`, in (0, 1), after `plateau_patience` epochs without improvement.
        base_lr: Peak learning rate, > 0.
        steps_per_epoch: Optimizer steps per epoch, >= 1.
        epochs: Epochs in the phase, >= 1.
        plateau_monitor: "plateau": metric to watch; it must be in the epoch logs (e.g.
            "val_loss" needs validation data, else Keras warns and never reduces).

    Returns:
        `(learning_rate, callbacks)`: a float or `LearningRateSchedule` to pass as the
        optimizer's `learning_rate`, and callbacks to pass to `fit` (empty except for "plateau").

    Raises:
        ValueError: If the name is unknown (the message lists the allowed names) or a setting is
            out of range.
    """
    params = _params(
        schedule,
        base_lr=base_lr,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        plateau_monitor=plateau_monitor,
    )
    return SCHEDULES[schedule.name].build(params)


def lr_at_epoch(
    schedule: LRSchedule,
    epoch: int,
    *,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    monitor_values: Sequence[float] | None = None,
) -> float:
    """Learning rate at the first optimizer step of `epoch`, computed in plain Python.

    This is what `LRRecorder` records for that epoch, up to float32 rounding. `epoch == epochs`
    gives the rate after the last step, e.g. the final `base_lr * min_lr_ratio` of "cosine".

    Args:
        schedule: As for `make_schedule`.
        epoch: 0-based epoch index, in [0, epochs].
        base_lr: As for `make_schedule`.
        steps_per_epoch: As for `make_schedule`.
        epochs: As for `make_schedule`.
        monitor_values: "plateau" only: the monitored value at the end of each epoch (lower is
            better), at least `epoch` of them. Without them "plateau" returns `base_lr`.

    Returns:
        The learning rate as a Python float.

    Raises:
        ValueError: If the name is unknown, a setting is out of range, `epoch` is outside
            [0, epochs], or too few `monitor_values` are given.
    """
    params = _params(
        schedule,
        base_lr=base_lr,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        plateau_monitor="val_loss",
    )
    if not (_is_int(epoch) and 0 <= epoch <= epochs):
        raise ValueError(f"epoch must be an integer in [0, {epochs}]; received {epoch!r}.")
    return float(SCHEDULES[schedule.name].lr_at_epoch(params, int(epoch), monitor_values))


def current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    """The optimizer's learning rate now: a schedule is evaluated at its current step, i.e. the
    rate the next step will use; for a float, the current value of its variable."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class LRRecorder(keras.callbacks.Callback):
    """Records the learning rate the optimizer actually uses, once per epoch.

    The rate is read when the first batch of each epoch begins: after every callback's
    `on_epoch_begin` (e.g. `LearningRateScheduler`) and before the step that uses it. For a
    schedule it is the schedule's value at the optimizer's current step; for a float, the
    current value, which `ReduceLROnPlateau` changes only at epoch ends. `lrs` is reset when a
    `fit` begins, like Keras' `History`.

    Args:
        per_step: Also record the rate of every step in `step_lrs`.

    Attributes:
        lrs: One learning rate per epoch (Python floats).
        step_lrs: One learning rate per step, if `per_step`.
    """

    def __init__(self, per_step: bool = False):
        super().__init__()
        self.per_step = per_step
        self.lrs: list[float] = []
        self.step_lrs: list[float] = []
        self._epoch_pending = False

    def on_train_begin(self, logs=None):
        self.lrs = []
        self.step_lrs = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_pending = True

    def on_train_batch_begin(self, batch, logs=None):
        if not (self._epoch_pending or self.per_step):
            return
        lr = current_lr(self.model.optimizer)
        if self._epoch_pending:
            self.lrs.append(lr)
            self._epoch_pending = False
        if self.per_step:
            self.step_lrs.append(lr)
