"""The Keras callbacks of a phase's `fit`: history, logging, the NaN guard, checkpoints, best weights.

`tl_keras.training.phase` puts them together for every phase, fresh each time (stateful callbacks
carried across phases are how early stopping leaks between phases), in the order that matters:
the recorder and the NaN guard first, the best-weights copy before early stopping (which may
restore other weights at the end), the learning-rate schedule's callbacks before the checkpoint
(they change the rate at an epoch's end), the checkpoint after all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time

import keras

from tl_keras import _failpoints, interrupt
from tl_keras.progress import say
from tl_keras.training import checkpoint, schedules
from tl_keras.training.history import History
from tl_keras.training.results import Snapshot, is_worse
from tl_keras.training.schedules import current_lr

log = logging.getLogger("tl_keras")


class HistoryRecorder(schedules.LRRecorder):
    """Records each epoch into a `History` with the phase name and the learning rate used.

    The learning rate of an epoch is the one its first step used (`schedules.LRRecorder`): the
    warm-up's 0 on a schedule's first epoch, the rate before `ReduceLROnPlateau` changes it at
    the epoch's end. With `layer_decay` it is the head's rate; block b trains at that times its
    multiplier.
    """

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase
        self.history = History()

    @property
    def epoch_lr(self) -> float:
        """The learning rate of the epoch in progress (or just ended)."""
        return self.lrs[-1] if self.lrs else current_lr(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(self.phase, epoch + 1, self.epoch_lr, logs or {})


class EpochLogger(keras.callbacks.Callback):
    """One plain line per epoch, for logs, notebooks and non-interactive runs (no progress-bar
    noise): `[ft] epoch 7 (2/5) - 1.2s - loss ... - val_accuracy ... - lr 1.00e-04`, the run's
    epoch, then the phase's k/n. Shown without any set-up (`tl_keras.progress.say`)."""

    def __init__(
        self, phase: str, initial_epoch: int, epochs: int, recorder: HistoryRecorder | None = None
    ):
        super().__init__()
        self.phase, self.initial_epoch, self.epochs = phase, initial_epoch, epochs
        self.recorder = recorder

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        metrics = " - ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate")
        say(
            "[%s] epoch %d (%d/%d) - %.1fs - %s - lr %.2e",
            self.phase,
            epoch + 1,
            epoch + 1 - self.initial_epoch,
            self.epochs,
            time.perf_counter() - self._start,
            metrics,
            self.recorder.epoch_lr if self.recorder else current_lr(self.model.optimizer),
        )


def use_progress_bar(progress: str) -> bool:
    """Whether `fit` shows a progress bar (`PhaseProgressBar`) rather than one plain line per
    epoch (`EpochLogger`): 'bar', or 'auto' on a terminal. A notebook gets the lines: they read
    well live and in a saved notebook, where a bar's redraws would not."""
    return progress == "bar" or (progress == "auto" and sys.stdout.isatty())


# Divergence with a finite loss. Conservative on purpose: a normal run, its first fine-tuning
# epochs and a warm-up included, stays far from each (see README "Reliability").
DIVERGED_LOSS_TIMES_CHANCE = 100.0  # an epoch's loss over 100 x ln(classes), the chance level
GROWING_EPOCHS = 4  # ... or rising this many epochs in a row,
GROWN_TIMES_LOWEST = 10.0  # to 10 x the phase's lowest and above the chance level
EXPLODED_WEIGHTS = 1000.0  # trained weights whose largest |value| grew 1000-fold ...
EXPLODED_WEIGHTS_FLOOR = 100.0  # ... to over 100


class PhaseProgressBar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, headed by the phase, its epoch k/n and the learning rate.

    Keras's own bar says only `Epoch 7/10`, which across phases is ambiguous (whose 10?) and
    hides the switch to a 10-100x lower rate. Passed to `fit` (with `verbose=1`), it replaces
    the bar Keras would add; each epoch opens with

        [ft] epoch 7 (2/5) - lr 1.00e-04

    and the bar's last line carries the epoch's metrics.
    """

    def __init__(self, phase: str, initial_epoch: int, epochs: int):
        super().__init__()
        self.phase, self.initial_epoch, self.phase_epochs = phase, initial_epoch, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self._reset_progbar()
        self._maybe_init_progbar()
        if self.verbose:
            print(
                f"[{self.phase}] epoch {epoch + 1} ({epoch + 1 - self.initial_epoch}/"
                f"{self.phase_epochs}) - lr {current_lr(self.model.optimizer):.2e}",
                flush=True,
            )


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training when it has gone wrong, and remembers where: at the first batch whose
    loss is NaN or infinite; at the end of an epoch whose trained weights are; or at the end of
    an epoch where the loss diverged while staying finite (far above the chance level, growing
    epoch after epoch, or the weights exploding).

    Under `steps_per_execution` > 1 Keras calls the batch hooks once per block of batches, so the
    bad batch is known to the block ('3-5'); the loss is the epoch's running mean, which stays
    non-finite from the first bad batch on. The weights are checked too because the loss alone
    can miss a divergence: on CPUs where TensorFlow fuses a Dense layer with its ReLU (oneDNN),
    the fused ReLU turns a NaN input into 0, so NaN images give a finite loss while their NaN
    gradients overwrite the weights.

    Args:
      losses_before: the phase's epoch losses before this `fit` (a resumed phase's).

    Attributes:
      bad: (global epoch, batch(es) or None, what went wrong, 'nan' or 'diverged'), or None.
    """

    def __init__(self, losses_before: list[float | None] | None = None):
        super().__init__()
        self.bad: tuple[int, str | None, str, str] | None = None
        self.losses = [x for x in (losses_before or []) if x is not None]
        self._epoch, self._begin, self._start_max = 0, 0, None

    def on_train_begin(self, logs=None):
        self._start_max = self._largest_weight()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._begin = epoch + 1, 0

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = batch

    def on_train_batch_end(self, batch, logs=None):
        for b in range(self._begin, batch + 1):  # every batch this block trained
            _failpoints.hit(f"batch:{self._epoch}:{b}")
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.bad is None:
            where = str(batch) if batch == self._begin else f"{self._begin}-{batch}"
            self.bad = (self._epoch, where, f"the loss became {float(loss)}", "nan")
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.bad is not None:
            return
        weights = self.model.trainable_weights
        finite = [keras.ops.all(keras.ops.isfinite(w)) for w in weights]
        if weights and not bool(keras.ops.all(keras.ops.stack(finite))):  # one sync per epoch
            broken = [w.path for w, ok in zip(weights, finite, strict=True) if not bool(ok)]
            problem = (
                f"the weights became NaN or infinite ({', '.join(broken[:3])}"
                f"{', ...' if len(broken) > 3 else ''}) although the loss stayed finite"
            )
            self.bad = (self._epoch, None, problem, "nan")
        else:
            loss = (logs or {}).get("loss")
            problem = self._diverged(None if loss is None else float(loss))
            if problem is not None:
                self.bad = (self._epoch, None, problem, "diverged")
        if self.bad is not None:
            self.model.stop_training = True

    def _largest_weight(self) -> float | None:
        weights = self.model.trainable_weights
        if not weights:
            return None
        return float(
            keras.ops.max(keras.ops.stack([keras.ops.max(keras.ops.abs(w)) for w in weights]))
        )

    def _diverged(self, loss: float | None) -> str | None:
        """What says the phase diverged at this epoch's end, in words, or None."""
        chance = math.log(max(2, int(self.model.outputs[0].shape[-1])))
        if loss is not None:
            self.losses.append(loss)
            if loss > DIVERGED_LOSS_TIMES_CHANCE * chance:
                return (
                    f"the loss diverged to {loss:.3g}, over {DIVERGED_LOSS_TIMES_CHANCE:g}x the "
                    f"chance level (ln of the classes: {chance:.3g})"
                )
            recent = self.losses[-(GROWING_EPOCHS + 1) :]
            rising = len(recent) == GROWING_EPOCHS + 1 and all(
                a < b for a, b in zip(recent, recent[1:], strict=False)
            )
            if rising and loss > max(GROWN_TIMES_LOWEST * min(self.losses), chance):
                return (
                    f"the loss diverged: it rose {GROWING_EPOCHS} epochs in a row to {loss:.3g}, "
                    f"over {GROWN_TIMES_LOWEST:g}x the phase's lowest ({min(self.losses):.3g})"
                )
        largest = self._largest_weight()
        if (
            largest is not None
            and self._start_max
            and largest > max(EXPLODED_WEIGHTS * self._start_max, EXPLODED_WEIGHTS_FLOOR)
        ):
            return (
                f"the weights exploded: the largest trained weight grew from "
                f"{self._start_max:.3g} to {largest:.3g}"
            )
        return None


class InterruptCheck(keras.callbacks.Callback):
    """Raises `tl_keras.interrupt.Interrupted` at a safe point once SIGTERM or SIGINT arrived.

    The last callback of a phase: at a batch's end (the partial epoch is dropped, never
    checkpointed) and at an epoch's end, after its checkpoint is written.
    """

    def on_train_batch_end(self, batch, logs=None):
        interrupt.check()

    def on_epoch_end(self, epoch, logs=None):
        interrupt.check()


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras EarlyStopping whose progress (best value, wait, best weights) survives a restart."""

    def __init__(self, *args, resume_state: dict | None = None, best_weights=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_state = resume_state
        self._resume_best_weights = best_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resume_state:
            self.wait = self._resume_state["wait"]
            self.best = self._resume_state["best"]
            self.best_epoch = self._resume_state["best_epoch"]
            self.stopped_epoch = self._resume_state["stopped_epoch"]
            self.best_weights = self._resume_best_weights

    def resumed_best_weights(self):
        """The best weights so far, also for a resumed phase whose `fit` never ran (it had
        finished): those come from the checkpoint, as `on_train_begin` would have set them."""
        return self.best_weights if self.best_weights is not None else self._resume_best_weights

    def kept_epoch(self) -> int | None:
        """The global epoch (1-based) whose weights the phase hands on, or None when early
        stopping restored none (`restore_best_weights` restores at the end of every `fit`)."""
        if self.best_weights is not None:
            return int(self.best_epoch) + 1  # Keras counts global epochs from 0
        saved = self._resume_state
        if self._resume_best_weights is not None and saved:
            return int(saved["best_epoch"]) + 1
        return None

    def resume_state(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {
            "wait": int(self.wait),
            "best": best,
            "best_epoch": int(self.best_epoch),
            "stopped_epoch": int(self.stopped_epoch),
        }


class BestWeights(keras.callbacks.Callback):
    """Keeps a copy of the weights of the best epoch of one `fit`, by a validation metric.

    Put it before any callback that changes the weights at an epoch's end: the copy must be the
    weights the epoch's validation metric was computed on.

    Args:
      phase: the phase's name (for the snapshot).
      monitor: the metric in the epoch logs, e.g. 'val_accuracy'.

    Attributes:
      best: the best `Snapshot` so far, or None before the first epoch with a finite value.
    """

    def __init__(self, phase: str, monitor: str, source_model: keras.Model | None = None):
        super().__init__()
        self.phase, self.monitor = phase, monitor
        # Whose weights to copy: the full model when fit trains only its head (cached features).
        self.source_model = source_model
        self.best: Snapshot | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        if self.best is None or is_worse(self.best.value, float(value), self.monitor):
            self.best = Snapshot(
                self.phase,
                epoch + 1,
                self.monitor,
                float(value),
                (self.source_model or self.model).get_weights(),
            )


class FullModelView(keras.callbacks.Callback):
    """Shows a callback the whole model while `fit` trains the head on cached features.

    A user's callback (or TensorBoard, CSVLogger) expects `self.model` to be the model it was
    given to: a ModelCheckpoint must save the whole classifier, a probe must find the backbone.
    The view hands the wrapped callback the full model (whose head layers and optimizer are the
    ones training), forwards every hook, and passes a `stop_training` request on to the model
    `fit` is really training, as EarlyStopping and TerminateOnNaN make it.
    """

    def __init__(self, callback: keras.callbacks.Callback, full_model: keras.Model):
        super().__init__()
        self.callback, self.full_model = callback, full_model

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def set_model(self, model):
        super().set_model(model)  # the head `fit` trains
        self.full_model.stop_training = False
        self.callback.set_model(self.full_model)

    def _forward(self, hook: str, *args):
        getattr(self.callback, hook)(*args)
        if getattr(self.full_model, "stop_training", False):
            self._model.stop_training = True


def _forwarding(hook: str):
    def method(self, *args, **kwargs):
        self._forward(hook, *args, *kwargs.values())

    method.__name__ = hook
    return method


for _hook in [name for name in dir(keras.callbacks.Callback) if name.startswith("on_")]:
    setattr(FullModelView, _hook, _forwarding(_hook))


# --- the learning-rate callbacks' state, kept across a resume -----------------------------------
# State of Keras callbacks that change the learning rate, by attribute: what on_train_begin resets.
_CALLBACK_STATE = {"ReduceLROnPlateau": ("wait", "best", "cooldown_counter")}


def callback_state(callback) -> dict | None:
    """The resumable state of a learning-rate callback (None for callbacks without any)."""
    names = _CALLBACK_STATE.get(type(callback).__name__)
    if not names:
        return None
    return {
        n: float(getattr(callback, n)) if n == "best" else int(getattr(callback, n)) for n in names
    }


def restore_callback_state(callback, state: dict | None) -> None:
    """Makes `callback` start its next `fit` with `state` instead of its reset values."""
    if not state:
        return
    reset = callback.on_train_begin

    def on_train_begin(logs=None):
        reset(logs)
        for name, value in state.items():
            setattr(callback, name, value)

    callback.on_train_begin = on_train_begin


@dataclasses.dataclass(frozen=True)
class PhaseWindow:
    """Where one phase's `fit` sits in the run: what a checkpoint records besides the model.

    Attributes:
      phase: the phase's name.
      first_epoch: its first global epoch (1-based).
      last_epoch: its last global epoch when every epoch runs.
      history_before: the stitched history of the phases before it.
      wall_before: seconds the phase ran before this process (a resumed phase), else 0.
    """

    phase: str
    first_epoch: int
    last_epoch: int
    history_before: History
    wall_before: float = 0.0


@dataclasses.dataclass
class PhaseState:
    """The stateful callbacks of one phase's `fit`: what a checkpoint saves to resume it.

    Attributes:
      recorder: the phase's history so far.
      guard: the NaN and divergence guard (a diverged epoch is never checkpointed).
      early: early stopping's progress and best weights, when on.
      best: rollback's copy of the phase's best epoch, when tracked.
      schedule: the learning-rate schedule's callbacks (ReduceLROnPlateau's counters).
      checkpoints: the checkpoint writer, when the phase writes checkpoints.
    """

    recorder: HistoryRecorder
    guard: NonFiniteGuard
    early: ResumableEarlyStopping | None = None
    best: BestWeights | None = None
    schedule: list[keras.callbacks.Callback] = dataclasses.field(default_factory=list)
    checkpoints: EpochCheckpoint | None = None


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes a resumable checkpoint at an epoch's end (see `tl_keras.training.checkpoint`).

    One is written at the end of the first epoch that ends `every_s` seconds or more after the
    previous one (or after the phase began), and at the phase's last epoch; `every_s = 0` writes
    one after every epoch. A save of the whole model costs a few tenths of a second: more than an
    epoch of a head on cached features, so checkpointing every such epoch made fe several times
    slower. A resumed run is the same run whichever epoch it resumes from (each epoch's data
    depends only on the seed and the epoch), so the cadence only sets what a kill loses.

    It runs after every callback that changes state at an epoch's end (early stopping, the
    learning-rate schedule's), so a resumed epoch starts exactly where this one left off.

    Args:
      workdir: where `checkpoints/` goes.
      window: where the phase sits in the run.
      state: the phase's stateful callbacks, whose state each checkpoint holds.
      save_model: the model to save; the full model when `fit` trains only its head on cached
        features (default: the model `fit` trains).
      every_s: seconds of training between two checkpoints (`checkpoint_every`); 0 = every epoch.

    Attributes:
      written: the epochs whose checkpoint this phase wrote.
    """

    def __init__(
        self,
        workdir: str,
        window: PhaseWindow,
        state: PhaseState,
        *,
        save_model: keras.Model | None = None,
        every_s: float = 0.0,
    ):
        super().__init__()
        self.workdir, self.window, self.state = workdir, window, state
        self.save_model, self.every_s = save_model, every_s
        self.written: list[int] = []

    def on_train_begin(self, logs=None):
        self._start = self._last = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        w, s = self.window, self.state
        if s.guard.bad is not None:
            return  # never checkpoint a diverged model: the previous checkpoint stays the last good one
        e = epoch + 1
        stopped = bool(s.early is not None and s.early.stopped_epoch > 0)
        finished = stopped or e == w.last_epoch
        due = time.monotonic() - self._last >= self.every_s
        if not (finished or due or self.model.stop_training):
            return
        _failpoints.hit(f"before_checkpoint:{e}")
        checkpoint.write(
            self.workdir,
            self.save_model or self.model,
            checkpoint.CheckpointState(
                phase=w.phase,
                epoch=e,
                phase_first_epoch=w.first_epoch,
                finished_phase=finished,
                stopped_early=stopped,
                wall_time_s=w.wall_before + time.monotonic() - self._start,
                history=History(
                    w.history_before.records + s.recorder.history.records,
                    list(w.history_before.kept),
                ),
                early_stopping=s.early.resume_state() if s.early is not None else None,
                early_best_weights=s.early.best_weights if s.early is not None else None,
                callback_state={type(cb).__name__: callback_state(cb) for cb in s.schedule},
                best=s.best.best if s.best is not None else None,
            ),
        )
        self._last = time.monotonic()
        self.written.append(e)
        _failpoints.hit(f"after_checkpoint:{e}")
