"""What a phase hands on: its result, its best epoch, the rollback decision (plain data).

A leaf of `tl_keras.training`: the phase (`phase.py`) makes a `PhaseResult`, the callbacks keep
the best epoch as a `Snapshot`, a checkpoint stores one, and rollback (`rollback.py`) compares
one with the next and records a `RollbackDecision`. None of them needs another's logic for these
types, so all of them import them from here and nothing here imports them back. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_keras.recipe import Phase
from tl_keras.training.history import History

if TYPE_CHECKING:
    from tl_keras.model.classifier import TrainabilityReport


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


@dataclasses.dataclass
class PhaseResult:
    """What one phase did."""

    phase: Phase
    history: History
    report: TrainabilityReport
    wall_time_s: float
    stopped_early: bool
    best: Snapshot | None = None  # the best epoch, when tracked (rollback)
    rollback: RollbackDecision | None = None
    # Under rollback: what the next phase must beat (the best weights kept so far).
    reference: Snapshot | None = None
    # The global epoch whose weights early stopping restored at the phase's end, when it did.
    kept_epoch: int | None = None
    # Under weight averaging: validation metrics of the last epoch's and of the averaged weights.
    averaged: dict | None = None
    validation: Any = None  # the phase's `frozen_val` callback: calibration reuses its answers


__all__ = ["PhaseResult", "RollbackDecision", "Snapshot", "is_worse", "lower_is_better"]
