"""The transfer-learning recipe as plain data and pure functions.

Nothing here imports TensorFlow or Keras: which phases run, what each one unfreezes and at what
learning rate are answered from a config and a list of layer descriptions, so every rule is
testable in milliseconds. The runner asks this package questions, never the other way round.

    stages.py       unfreeze specs, stages and phases, the LR-factor rule, LR schedule settings
    layers.py       the base's layers: block order, what trains, per-block learning rates
    auto.py         the decided recipe: facts -> a card of settings, each with its reason
    budget_plan.py  the time budget's arithmetic: how many epochs of a phase fit

Everything public is importable from `tl_keras.recipe` itself (`recipe.build_schedule(...)`).

The rules:

* `fe` (feature extraction) trains the head only, at the base learning rate `lr`.
* `ft` (fine-tuning) unfreezes the top of the base at `lr / ft_lr_factor`, the factor in [10, 100]
  unless explicitly allowed otherwise: a fine-tuning step as large as the head's destroys the
  pretrained features in the first few steps (the "accuracy collapses when fine-tuning starts"
  failure).
* BatchNormalization layers never train under the default policy, whatever is unfrozen: their
  statistics were estimated on ImageNet over millions of images, and re-estimating them on small
  batches of a small data set shifts every activation downstream.

Gradual unfreezing generalises `fe -> ft` to any number of stages (`parse_stages`): head-only
stages first, then stages that each unfreeze at least as much as the one before. The learning-rate
factor rule applies to every stage that unfreezes part of the base: its rate is `lr / factor`, the
factor in [10, 100] (explicit per stage, or `ft_lr_factor * stage_lr_decay ** j` for the j-th
unfreezing stage, j = 0, 1, ...). Head-only stages train at `lr` (or `lr / factor` with any
factor): they cannot touch the pretrained features the rule protects.
"""

from tl_keras.recipe.layers import (
    BN_POLICIES,
    LayerInfo,
    block_lr_multipliers,
    block_order,
    check_multiplier,
    group_blocks,
    layer_decay_multipliers,
    trainable_layers,
    unfrozen_blocks,
)
from tl_keras.recipe.stages import (
    LR_FACTOR_RANGE,
    LR_SCHEDULES,
    RESERVED_STAGE_NAMES,
    STAGE_NAME_PATTERN,
    STAGES_GRAMMAR,
    UNFREEZE_KINDS,
    WARMUP_SCHEDULES,
    LRSchedule,
    Phase,
    Stage,
    Unfreeze,
    build_schedule,
    check_lr_schedule,
    check_stages_grow,
    default_stages,
    ft_learning_rate,
    parse_stage,
    parse_stages,
    parse_unfreeze,
    previous_phase,
    select_phases,
    stage_lr_factor,
    stages_from_tables,
)

__all__ = [
    "BN_POLICIES",
    "LR_FACTOR_RANGE",
    "LR_SCHEDULES",
    "RESERVED_STAGE_NAMES",
    "STAGES_GRAMMAR",
    "STAGE_NAME_PATTERN",
    "UNFREEZE_KINDS",
    "WARMUP_SCHEDULES",
    "LRSchedule",
    "LayerInfo",
    "Phase",
    "Stage",
    "Unfreeze",
    "block_lr_multipliers",
    "block_order",
    "build_schedule",
    "check_multiplier",
    "check_lr_schedule",
    "check_stages_grow",
    "default_stages",
    "ft_learning_rate",
    "group_blocks",
    "layer_decay_multipliers",
    "parse_stage",
    "parse_stages",
    "parse_unfreeze",
    "previous_phase",
    "select_phases",
    "stage_lr_factor",
    "stages_from_tables",
    "trainable_layers",
    "unfrozen_blocks",
]
