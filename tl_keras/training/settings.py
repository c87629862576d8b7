"""The training sections of a run: how it runs (`RunSettings`) and its phases (`phases`).

Both are checked when made, with the names each field may take read from the module that acts on
them (`optim.OPTIMIZERS` and `JIT_COMPILE`, `distribute.PRECISIONS` and `STRATEGIES`,
`features.MODES`, `rollback.MONITORS`, `class_weight.CLASS_WEIGHTS`, `progress.MODES`), and
import no TensorFlow, so `tl_keras.config` composes and checks them in milliseconds.

`RunSettings` holds nothing the recipe decides, so a run knows it before its recipe card exists;
the phases are built once, from the decided values (`tl_keras.config.resolve`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tl_keras import progress, recipe
from tl_keras.errors import refused, refused_name
from tl_keras.recipe import LR_FACTOR_RANGE, Phase
from tl_keras.recipe.auto import AUGMENT_PHASES, WEIGHT_AVERAGING
from tl_keras.training import distribute, features, optim, rollback
from tl_keras.training.class_weight import CLASS_WEIGHTS

MAX_SEED = 2**32 - 1  # the largest seed NumPy's legacy generator (np.random.seed) takes


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How a run trains, logs and keeps its state (see `Config` for each field's meaning).

    Attributes:
      seed: seed of initialisation and dropout (the data's order has its own, the same).
      progress: 'auto', 'bar' or 'lines'.
      checkpoint_every: seconds of training between two resumable checkpoints; 0 = every epoch.
      tensorboard, csv_log: extra logs under <workdir>/logs.
      feature_cache: 'memory', 'file' or 'off' (feature extraction on cached features).
      precision: 'float32', 'mixed', 'mixed_float16' or 'mixed_bfloat16'.
      jit_compile: 'auto', 'on' or 'off' (XLA).
      strategy: the tf.distribute strategy's name.
      logical_cpus: logical CPU devices to split the CPU into; 0 = off.
      scale_lr_with_replicas: every learning rate times the replicas.
      class_weight: 'none' or 'balanced'.
      rollback: '' (off), 'val_accuracy' or 'val_loss'.
      doctor: the data doctor before the first phase: 'auto' or 'off'.
      time_budget_s: the run's wall-time budget in seconds, or None.
    """

    seed: int
    progress: str
    checkpoint_every: float
    tensorboard: bool
    csv_log: bool
    feature_cache: str
    precision: str
    jit_compile: str
    strategy: str
    logical_cpus: int
    scale_lr_with_replicas: bool
    class_weight: str
    rollback: str
    doctor: str
    time_budget_s: float | None

    def __post_init__(self) -> None:
        if self.class_weight not in CLASS_WEIGHTS:
            raise refused("class_weight", self.class_weight, f"one of {', '.join(CLASS_WEIGHTS)}")
        if self.rollback not in rollback.MONITORS:
            raise refused("rollback", self.rollback, "use 'val_accuracy', 'val_loss' or '' (off)")
        if self.progress not in progress.MODES:
            raise refused("progress", self.progress, f"one of {', '.join(progress.MODES)}")
        if not (math.isfinite(self.checkpoint_every) and self.checkpoint_every >= 0):
            raise refused(
                "checkpoint_every",
                self.checkpoint_every,
                "use 0 (every epoch) or a number of seconds, e.g. 30",
            )
        for name, allowed in (
            ("feature_cache", features.MODES),
            ("precision", distribute.PRECISIONS),
            ("jit_compile", optim.JIT_COMPILE),
            ("strategy", distribute.STRATEGIES),
        ):
            if getattr(self, name) not in allowed:
                raise refused_name(name, getattr(self, name), allowed)
        if not 0 <= self.seed <= MAX_SEED:  # keras.utils.set_random_seed seeds NumPy's
            raise refused("seed", self.seed, f"use a whole number from 0 to {MAX_SEED} (2**32 - 1)")
        if not (self.logical_cpus == 0 or 2 <= self.logical_cpus <= distribute.MAX_LOGICAL_CPUS):
            raise refused(
                "logical_cpus",
                self.logical_cpus,
                f"use 0 (off) or from 2 to {distribute.MAX_LOGICAL_CPUS} logical devices",
            )


def phases(c: Any) -> tuple[Phase, ...]:
    """The phases a config's values describe, checked (see `recipe.build_schedule`).

    Args:
      c: the values of every schedule field (a `Config` with nothing left 'auto').

    Raises:
      ConfigError: naming the field, the value and what is allowed.
    """
    _check_rates(c)
    for name in ("epochs_fe", "epochs_ft", "early_stopping_patience", "fe_switch_patience"):
        if getattr(c, name) < 0:
            raise refused(name, getattr(c, name), "use 0 or a positive number of epochs")
    recipe.parse_unfreeze(c.unfreeze)
    if not isinstance(c.stages, str):
        raise refused("stages", c.stages, f"write {recipe.STAGES_GRAMMAR}")
    if not (math.isfinite(c.stage_lr_decay) and c.stage_lr_decay > 0):
        raise refused(
            "stage_lr_decay", c.stage_lr_decay, "use a positive factor, e.g. 2 (1 = the same rate)"
        )
    if not (math.isfinite(c.layer_decay) and 0 < c.layer_decay <= 1):
        raise refused("layer_decay", c.layer_decay, "use a factor in (0, 1], e.g. 0.7 (1.0 = off)")
    if c.layer_decay_groups < 0:
        raise refused(
            "layer_decay_groups",
            c.layer_decay_groups,
            "use 0 (one rate per block) or a number of groups",
        )
    schedule = recipe.build_schedule(c)  # the stages, each stage's lr factor, the LR schedules
    if c.optimizer not in optim.OPTIMIZERS:
        raise refused_name("optimizer", c.optimizer, optim.OPTIMIZERS)
    _check_phase_options(c)
    return tuple(schedule)


def _check_phase_options(c: Any) -> None:
    """Which phases augment, and the optimizer's weight decay and weight averaging."""
    if c.augment_phases not in AUGMENT_PHASES:
        raise refused("augment_phases", c.augment_phases, f"one of {', '.join(AUGMENT_PHASES)}")
    if not (math.isfinite(c.weight_decay) and c.weight_decay >= 0):
        raise refused("weight_decay", c.weight_decay, "use 0 (off) or a positive factor, e.g. 0.05")
    if c.weight_averaging not in WEIGHT_AVERAGING:
        raise refused(
            "weight_averaging", c.weight_averaging, f"one of {', '.join(WEIGHT_AVERAGING)}"
        )
    if c.weight_averaging == "ema" and c.layer_decay != 1.0:
        raise refused(
            "weight_averaging",
            c.weight_averaging,
            "'ema' does not combine with per-block rates (layer_decay < 1); use one of the two",
        )


def _check_rates(c: Any) -> None:
    if not (math.isfinite(c.lr) and c.lr > 0):
        raise refused("lr", c.lr, "use a positive learning rate, e.g. 1e-3")
    recipe.ft_learning_rate(c.lr, c.ft_lr_factor, allow_any=c.allow_any_lr_factor)
    if not (math.isfinite(c.head_lr_ratio) and 1 <= c.head_lr_ratio <= LR_FACTOR_RANGE[1]):
        raise refused(
            "head_lr_ratio",
            c.head_lr_ratio,
            f"use a factor in [1, {LR_FACTOR_RANGE[1]:g}], e.g. 10 (the head at lr while the base "
            "fine-tunes at lr / 10); 1 = one rate for head and base",
        )


__all__ = ["RunSettings", "phases"]
