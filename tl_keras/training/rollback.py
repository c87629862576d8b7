"""Phase control: remember a phase's best weights, and roll back a phase that made things worse.

With `rollback = "val_accuracy"` (or `"val_loss"`), the runner keeps a *reference*: the best
weights of the previous phase, by that validation metric. When a phase ends, the weights it hands
on are evaluated on the validation set; if they are worse than the reference, the reference
weights are restored and the next phase starts from them. Otherwise the phase's own best epoch
becomes the next reference. Either way one log line says which weights were kept, and the
decision is written to the phase's `summary.json`.

Why evaluate at the end instead of reading the last epoch's log: early stopping (and `fe`'s
switch to `ft`) restores a phase's best weights after its last epoch was logged, so the weights a
phase hands on are not always the ones its last logged metric describes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np


def lower_is_better(monitor: str) -> bool:
    """Losses go down, everything else (accuracy, AUC) goes up."""
    return "loss" in monitor


def is_worse(value: float | None, reference: float, monitor: str) -> bool:
    """Whether `value` is strictly worse than `reference`; a missing or non-finite value is."""
    if value is None or not math.isfinite(value):
        return True
    return value > reference if lower_is_better(monitor) else value < reference


@dataclasses.dataclass
class Snapshot:
    """Weights of one epoch and the validation value they scored.

    Attributes:
      phase: the phase the weights come from.
      epoch: the global epoch (1-based) at whose end they were taken.
      monitor: the metric, e.g. 'val_accuracy'.
      value: its value for these weights.
      weights: `model.get_weights()` (every variable, BatchNorm statistics included).
    """

    phase: str
    epoch: int
    monitor: str
    value: float
    weights: list[np.ndarray] = dataclasses.field(repr=False, default_factory=list)

    def describe(self) -> str:
        return f"{self.phase} epoch {self.epoch} ({self.monitor} {self.value:.4f})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "epoch": self.epoch,
            "monitor": self.monitor,
            "value": self.value,
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


@dataclasses.dataclass(frozen=True)
class RollbackDecision:
    """What the runner did at the end of a phase under `rollback`.

    Attributes:
      phase: the phase that just ended.
      monitor: the metric compared.
      end_value: the metric of the weights the phase handed on.
      reference: the previous phase's best (what the phase had to beat).
      rolled_back: True when the reference weights were restored.
    """

    phase: str
    monitor: str
    end_value: float
    reference: Snapshot
    rolled_back: bool

    @property
    def kept(self) -> str:
        """Which weights the run carries on with, in words."""
        if self.rolled_back:
            return f"{self.reference.phase} epoch {self.reference.epoch}"
        return f"{self.phase} (its end)"

    def message(self) -> str:
        ref = self.reference
        if self.rolled_back:
            return (
                f"[{self.phase}] rollback: {self.monitor} {self.end_value:.4f} at the end of "
                f"{self.phase} is worse than {ref.value:.4f}, the best of {ref.phase} (epoch "
                f"{ref.epoch}); restored and kept the weights of {self.kept}"
            )
        return (
            f"[{self.phase}] kept the weights of {self.kept}: {self.monitor} "
            f"{self.end_value:.4f} is not worse than {ref.value:.4f}, the best of {ref.phase} "
            f"(epoch {ref.epoch})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "end_value": self.end_value,
            "reference": self.reference.to_dict(),
            "rolled_back": self.rolled_back,
            "kept": self.kept,
        }


def decide_rollback(
    phase: str, end_value: float, reference: Snapshot, phase_best: Snapshot | None
) -> tuple[RollbackDecision, Snapshot]:
    """Decides whether a phase is rolled back, and what the next phase must beat.

    Args:
      phase: the phase that ended.
      end_value: the monitored metric of the weights it hands on.
      reference: the previous phase's best.
      phase_best: this phase's best epoch (None when it ran no epoch).

    Returns:
      The decision, and the next reference: the previous reference when rolled back (those are
      the weights the run carries on with), else this phase's best epoch.
    """
    rolled_back = is_worse(end_value, reference.value, reference.monitor)
    decision = RollbackDecision(phase, reference.monitor, end_value, reference, rolled_back)
    keep = rolled_back or phase_best is None
    return decision, reference if keep else phase_best
