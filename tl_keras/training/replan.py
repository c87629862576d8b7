"""The time budget's re-plan after a phase's first real epoch.

A phase whose epochs the time budget planned (`tl_keras.training.budget`) was planned from a
few timed steps before it started; on a shared machine a real epoch runs a few percent off that
estimate, and the budget guard then cuts the phase short in the middle of its schedule. So the
phase's `fit` runs up to a ceiling (`budget_plan.replan_ceiling`), and `EpochReplan`, at the end
of its first real epoch (the first whose wall can be told apart from the tracing it paid once:
the first epoch of a phase that trains images, the second of a head on cached features or
of a phase with one or two validation batches), takes
that epoch's wall without its tracing (`budget_plan.steady_epoch_s`) against what is left
before the phase's deadline and sets the phase's epochs again (`budget_plan.replan_epochs`).
A new length gets a learning-rate schedule of that length, built as the phase's own would have
been (a cosine still ends at the phase's last epoch; under a warm-up of at least one epoch the
first epoch ran exactly as it would have under the new length). A cosine whose length the phase
holds in a variable (`schedules.settable_length`, set before the budget's measurement first
traced the train step) takes the new length in place, with no new trace; any other schedule is
given to the optimizer anew and the train step traced again for it (about an epoch's time on
the flowers, which the re-plan then pays for). The phase then stops at its new last epoch.

A second look comes halfway through the phase, from the mean wall of the epochs run since the
first (at least `MIDWAY_EPOCHS` of them), where a new length is free (the settable cosine): one
epoch is a noisy clock on a shared machine, and a phase of whole epochs planned from a slow one
ends an epoch early (flowers, MobileNet-0.25: a first epoch of 8.6 s among later ones of 7.5-8.0 s
left a run at 0.876 of its budget; issue 24). From that epoch on the rate follows the cosine of
the new length, so the schedule bends there, a little (at most a few percent of the rate), and a
run whose length changed midway is no longer the run of any given length.

It runs before the phase's checkpoint (`EpochCheckpoint`), so the checkpoint of the epoch it
re-planned at already holds the new schedule, and the runner writes the new length into
`recipe.json` at once (`on_change`): a resumed run keeps the saved plan (it never re-plans).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import keras

from tl_keras.recipe import Phase
from tl_keras.recipe.budget_plan import (
    FE_FILL_CAP,
    EpochCost,
    PhasePlan,
    phase_time_s,
    replan_ceiling,
    replan_epochs,
    steady_epoch_s,
)
from tl_keras.training import schedules

log = logging.getLogger("tl_keras")

MIDWAY_EPOCHS = 2  # epochs timed after the first re-plan before the second look, at least


class EpochReplan(keras.callbacks.Callback):
    """Re-plans a budgeted phase after its first real epoch and once more halfway (a second
    look, where a new length is free), then stops it at its last epoch.

    Args:
      setup: the phase's `PhaseSetup` (its `phase` and `window` are updated on a re-plan).
      plan: the time budget's plan of the phase (its deadline, ceiling and retrace cost).
      retarget: callbacks whose idea of the phase's length follows the re-plan: each gets its
        `window` (a `PhaseWindow`) or its epoch count (`epochs`, `phase_epochs`) updated, and
        early stopping its patience when the plan keeps the best epoch.
      on_change: called with the re-planned `Phase` and the phase's epochs run when its
        length changed.
      make_schedule: (phase) -> the learning rate of a phase of that length, as the phase's
        optimizer was built with (`optim.phase_learning_rate`).
    """

    def __init__(
        self,
        setup,
        plan: PhasePlan,
        *,
        retarget: list = (),
        on_change: Callable[[Phase, int], None] | None = None,
        make_schedule: Callable[[Phase], object] | None = None,
    ):
        super().__init__()
        self.setup, self.plan = setup, plan
        self.retarget, self.on_change, self.make_schedule = list(retarget), on_change, make_schedule
        self.done_at: int | None = None  # the epoch (of the phase) the re-plan was made after
        self.replanned: int | None = None
        self.midway_at: int | None = None  # ... and the second look, halfway
        self._epochs_seen = 0
        self._since: list[float] = []  # end to end, the epochs after the first re-plan
        self._last_end = 0.0

    # --- timing -----------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._train, self._val = time.monotonic(), [], []

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        self._train.append(time.monotonic() - self._t)

    def on_test_batch_begin(self, batch, logs=None):
        self._v = time.monotonic()

    def on_test_batch_end(self, batch, logs=None):
        self._val.append(time.monotonic() - self._v)

    # --- the re-plan ------------------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        self._epochs_seen += 1
        now = time.monotonic()
        wall = now - self._start
        if self.done_at is None and not self.model.stop_training:
            epoch_s = steady_epoch_s(wall, self._train, self._val)
            if epoch_s is None and self._epochs_seen >= 2:  # a head: this epoch traced nothing
                epoch_s = wall
            if epoch_s is not None:
                self._replan(epoch + 1, epoch_s, wall)
        elif self.done_at is not None and self.midway_at is None:
            self._since.append(now - self._last_end)  # the checkpoint after it included
            if not self.model.stop_training and self._midway_due(epoch + 1):
                self._replan(epoch + 1, sum(self._since) / len(self._since), wall, midway=True)
        if epoch + 1 >= self.setup.window.last_epoch:
            self.model.stop_training = True  # the phase's (re-planned) last epoch
        self._last_end = now

    def _resizable(self) -> tuple[bool, bool]:
        """Whether the phase's rate is a schedule a new length can be given to, and whether
        that is free: a cosine whose length sits in a variable (no new trace)."""
        rate = getattr(self.model.optimizer, "_learning_rate", None)
        resizable = self.make_schedule is not None and isinstance(
            rate, keras.optimizers.schedules.LearningRateSchedule
        )
        return resizable, resizable and schedules.has_settable_length(rate)

    def _midway_due(self, global_epoch: int) -> bool:
        """The second look: halfway through the phase (as planned now), before its last epoch,
        after MIDWAY_EPOCHS timed since the first re-plan, where a new length is free."""
        done = global_epoch - self.setup.window.first_epoch + 1
        planned = self.setup.phase.epochs
        return (
            len(self._since) >= MIDWAY_EPOCHS
            and 2 * done >= planned > done
            and self._resizable()[1]
        )

    def _replan(self, global_epoch: int, epoch_s: float, wall: float, midway=False) -> None:
        setup, plan = self.setup, self.plan
        phase, window = setup.phase, setup.window
        done = global_epoch - window.first_epoch + 1
        if midway:
            self.midway_at = done
        else:
            self.done_at = done
        schedule = phase.lr_schedule
        resizable, free = self._resizable()
        left = plan.deadline_s - time.monotonic()
        epochs = replan_epochs(
            left,
            epoch_s,
            done=done,
            planned=phase.epochs,
            ceiling=plan.ceiling or phase.epochs,
            retrace_s=plan.retrace_s if resizable and not free else 0.0,
        )
        self.replanned = epochs
        resize = resizable and epochs > done and schedule.warmup_epochs < epochs
        if midway:
            took = f"its {len(self._since)} epochs since the first took {epoch_s:.2f}s on average"
        else:
            took = f"it took {wall:.2f}s ({epoch_s:.2f}s without tracing)"
        log.info(
            "[%s] time budget %s after epoch %d of %d: %s, %.1fs left before the phase must end:"
            " %s",
            phase.name,
            "second look, halfway," if midway else "re-plan",
            done,
            phase.epochs,
            took,
            left,
            _outcome(epochs, phase.epochs, done, resize),
        )
        if epochs == done < phase.epochs:  # as the budget guard would: the plan stays as made
            self.model.stop_training = True
            return
        if epochs == phase.epochs:
            return
        patience = epochs if plan.keep_best else phase.early_stopping_patience
        phase = dataclasses.replace(phase, epochs=epochs, early_stopping_patience=patience)
        if resize:
            rate = self.make_schedule(phase)
            if not schedules.set_length(self.model.optimizer._learning_rate, rate):
                self.model.optimizer.learning_rate = rate
                self.model.make_train_function(force=True)
        setup.phase = phase
        setup.window = dataclasses.replace(window, last_epoch=window.first_epoch - 1 + epochs)
        for cb in self.retarget:
            if hasattr(cb, "window"):
                cb.window = setup.window
            for name in ("epochs", "phase_epochs"):
                if hasattr(cb, name):
                    setattr(cb, name, epochs)
            if plan.keep_best and hasattr(cb, "patience"):  # the budget, not a plateau, ends it
                cb.patience = epochs
        if self.on_change is not None:
            self.on_change(phase, done)


def _outcome(epochs: int, planned: int, done: int, resized: bool) -> str:
    if epochs == planned:
        return "the plan holds"
    if epochs == done:
        return f"the phase stops here, after {done} of its {planned} epochs"
    return f"{epochs} epochs instead of {planned}" + (
        ", the schedule re-sized to end at the last" if resized else ""
    )


def with_deadline(
    plan: PhasePlan,
    clock,
    cost: EpochCost,
    phase: Phase,
    reserve_s: float,
    ft_need_s: float | None,
    ft_follows: bool,
) -> PhasePlan:
    """The plan with what its re-plan needs: the deadline (`budget_plan.phase_time_s` from now),
    the ceiling (a head before fine-tuning at most its rule's epochs, a head that fills the
    budget at most `FE_FILL_CAP` times them; a phase that trains the base grows from the larger
    of its plan and its rule's epochs, so that a plan timed in a load spike does not hold it
    far below what fits), and what a new schedule length costs (the measured tracing)."""
    in_s = phase_time_s(clock.budget_s, clock.elapsed_s, reserve_s=reserve_s, ft_need_s=ft_need_s)
    if phase.trains_base:
        ceiling = max(replan_ceiling(plan.epochs), replan_ceiling(phase.epochs))
    else:
        ceiling = replan_ceiling(plan.epochs, phase.epochs * (1 if ft_follows else FE_FILL_CAP))
    return dataclasses.replace(
        plan,
        deadline_s=time.monotonic() + in_s,
        ceiling=ceiling,
        retrace_s=cost.trace_s,
    )


__all__ = ["EpochReplan", "with_deadline"]
