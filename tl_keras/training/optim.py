"""Optimizers by name, a phase's optimizer (schedule and per-block rates), and the compile.

Every change of what trains needs a recompile with a fresh optimizer (`compile_for_phase`): a
phase's optimizer follows the phase's learning-rate schedule from its first step, and under
`layer_decay` every variable gets its own rate (`tl_keras.training.lr_multipliers`).

The names users type live here: `OPTIMIZERS` (`--optimizer`) and `JIT_COMPILE` (`--jit_compile`,
XLA). This module imports Keras only inside its functions, so `tl_keras.config` validates both
against these names without TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tl_keras.errors import ConfigError

if TYPE_CHECKING:
    import keras

    from tl_keras.recipe import Phase

# --optimizer: name -> (keras.optimizers class, its arguments besides the learning rate).
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
    "sgd": ("SGD", {"momentum": 0.9}),
    "rmsprop": ("RMSprop", {}),
}
# --jit_compile (XLA): name -> model.compile's `jit_compile` ('auto': Keras decides).
JIT_COMPILE: dict[str, str | bool] = {"auto": "auto", "on": True, "off": False}


def make_optimizer(
    name: str, learning_rate, *, weight_decay: float = 0.0, ema_momentum: float | None = None
) -> keras.optimizers.Optimizer:
    """Returns a fresh optimizer by name (one of `OPTIMIZERS`).

    Args:
      name: the optimizer's name.
      learning_rate: a float or a Keras schedule.
      weight_decay: decoupled weight decay; 0 keeps the optimizer's own default (AdamW's 0.004,
        none for the others).
      ema_momentum: keep an exponential moving average of the weights with this momentum and
        write it into the weights when `fit` ends (Keras's `use_ema`); None = off.

    Raises:
      ConfigError: an unknown name.
    """
    import keras

    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer={name!r} is unknown; use one of {', '.join(OPTIMIZERS)}")
    class_name, kwargs = OPTIMIZERS[name]
    kwargs = dict(kwargs)
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    if ema_momentum is not None:
        kwargs.update(use_ema=True, ema_momentum=ema_momentum)
    return getattr(keras.optimizers, class_name)(learning_rate, **kwargs)


def ema_momentum(phase: Phase, steps_per_epoch: int) -> float | None:
    """The EMA momentum that averages about the last `EMA_FRACTION` of a phase's steps, or None
    when the phase does not average its weights."""
    from tl_keras.recipe import auto

    if phase.weight_averaging != "ema" or not phase.trains_base or phase.epochs < 1:
        return None
    window = max(2.0, auto.EMA_FRACTION * phase.epochs * steps_per_epoch)
    return 1.0 - 1.0 / window


def discriminative_multipliers(
    model: keras.Model, backbone, layer_decay: float, *, groups: int = 0, head: float = 1.0
) -> dict[str, float]:
    """Per-variable learning-rate multipliers: `layer_decay` per block, from the head down.

    The head's variables get `head`, the base's top block `layer_decay`, the block below
    `layer_decay**2`, ... (see `recipe.block_lr_multipliers`). Only trainable variables get an
    entry, keyed by `variable.path`.

    Args:
      model: a model from `build_model`, trainability set.
      backbone: the backbone's registry name or `BackboneSpec` (its blocks).
      layer_decay: the factor between neighbouring blocks, in (0, 1].
      groups: runs of neighbouring blocks sharing a rate (`recipe.group_blocks`); 0 = per block.
      head: the multiplier of every variable outside the base (the phase's `head_lr_ratio`).

    Raises:
      ConfigError: more groups than the base has blocks.
    """
    from tl_keras import recipe
    from tl_keras.model import backbones
    from tl_keras.model.classifier import get_base
    from tl_keras.training import lr_multipliers

    infos = backbones.layer_infos(backbones.get(backbone), get_base(model))
    return lr_multipliers.variable_multipliers(
        model, recipe.block_lr_multipliers(infos, layer_decay, groups=groups), default=head
    )


def phase_optimizer(
    model: keras.Model,
    phase: Phase,
    *,
    backbone,
    steps_per_epoch: int,
    monitor: str = "val_loss",
) -> tuple[keras.optimizers.Optimizer, list[keras.callbacks.Callback]]:
    """Returns a fresh optimizer for a phase, and the callbacks its LR schedule needs.

    The learning rate follows the phase's `lr_schedule` from the phase's first step (a fresh
    optimizer per phase, so every phase restarts its schedule, warm-up included). With
    `layer_decay` < 1 or `head_lr_ratio` > 1, and part of the base training, every variable gets
    its own rate (see `discriminative_multipliers`). Call after `set_trainable`: the multipliers
    cover the variables that train.

    Args:
      model: the model, trainability already set for the phase.
      phase: the phase.
      backbone: the backbone's registry name or `BackboneSpec` (its blocks).
      steps_per_epoch: optimizer steps per epoch (the schedule counts steps).
      monitor: what the 'plateau' schedule watches ('val_loss', or 'loss' without validation).
    """
    from tl_keras.training import lr_multipliers, schedules

    learning_rate, callbacks = phase.lr, []
    if phase.epochs > 0:
        learning_rate, callbacks = schedules.make_schedule(
            phase.lr_schedule,
            base_lr=phase.lr,
            steps_per_epoch=steps_per_epoch,
            epochs=phase.epochs,
            plateau_monitor=monitor,
        )
    optimizer = make_optimizer(
        phase.optimizer,
        learning_rate,
        weight_decay=phase.weight_decay,
        ema_momentum=ema_momentum(phase, steps_per_epoch),
    )
    if phase.per_variable_rates:
        multipliers = discriminative_multipliers(
            model,
            backbone,
            phase.layer_decay,
            groups=phase.layer_decay_groups,
            head=phase.head_lr_ratio,
        )
        optimizer = lr_multipliers.with_lr_multipliers(optimizer, multipliers)
    return optimizer, callbacks


def compile_for_phase(
    model: keras.Model,
    phase: Phase,
    *,
    optimizer: keras.optimizers.Optimizer | None = None,
    jit_compile: str = "auto",
    steps_per_execution: int = 1,
) -> None:
    """Recompiles with a fresh optimizer: required after any change of `trainable`.

    Args:
      model: the model.
      phase: the phase (its optimizer and constant lr when `optimizer` is not given).
      optimizer: a fresh optimizer, e.g. from `phase_optimizer`.
      jit_compile: XLA: one of `JIT_COMPILE` ('auto': Keras decides, 'on' or 'off').
      steps_per_execution: batches per call of the compiled train step (the same updates; batch
        callbacks run once per block).
    """
    model.compile(
        optimizer=optimizer or make_optimizer(phase.optimizer, phase.lr),
        **_loss_and_metrics(),
        jit_compile=JIT_COMPILE[jit_compile],
        steps_per_execution=steps_per_execution,
    )


def compile_for_evaluation(model: keras.Model, *, jit_compile: str = "auto") -> None:
    """Compiles a model that is only evaluated (a phase's validation top,
    `tl_keras.training.frozen_val`) with the loss and metrics every phase reports."""
    model.compile(**_loss_and_metrics(), jit_compile=JIT_COMPILE[jit_compile])


def _loss_and_metrics() -> dict:
    import keras

    return {
        "loss": keras.losses.CategoricalCrossentropy(),
        "metrics": [keras.metrics.CategoricalAccuracy(name="accuracy")],
    }
