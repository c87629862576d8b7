"""The transfer-learning recipe as plain data and pure functions.

Nothing here imports TensorFlow or Keras: which phases run, what each one unfreezes and at what
learning rate are answered from a config and a list of layer descriptions, so every rule is
testable in milliseconds. The runner asks this module questions, never the other way round.

The rules:

* `fe` (feature extraction) trains the head only, at the base learning rate `lr`.
* `ft` (fine-tuning) unfreezes the top of the base at `lr / ft_lr_factor`, the factor in [10, 100]
  unless explicitly allowed otherwise: a fine-tuning step as large as the head's destroys the
  pretrained features in the first few steps (the "accuracy collapses when fine-tuning starts"
  failure).
* BatchNormalization layers never train under the default policy, whatever is unfrozen: their
  statistics were estimated on ImageNet over millions of images, and re-estimating them on small
  batches of a small data set shifts every activation downstream.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tl_keras.errors import ConfigError

UNFREEZE_KINDS = ("none", "layers", "blocks", "fraction", "all")
LR_FACTOR_RANGE = (10.0, 100.0)


@dataclasses.dataclass(frozen=True)
class Unfreeze:
    """What part of the base trains: `kind` in UNFREEZE_KINDS and its `amount`."""

    kind: str
    amount: float = 0

    def __str__(self) -> str:
        if self.kind in ("none", "all"):
            return self.kind
        amount = int(self.amount) if self.kind in ("layers", "blocks") else self.amount
        return f"{self.kind}:{amount}"


def parse_unfreeze(spec: str | Unfreeze) -> Unfreeze:
    """Parses 'none', 'all', 'layers:N', 'blocks:K' or 'fraction:F'.

    Raises:
      ConfigError: the spec is malformed or its amount is out of range.
    """
    if isinstance(spec, Unfreeze):
        return spec
    text = str(spec).strip().lower()
    usage = "use 'none', 'all', 'layers:N', 'blocks:K' or 'fraction:F' (0 < F <= 1)"
    if text in ("none", "all"):
        return Unfreeze(text)
    kind, sep, amount_text = text.partition(":")
    if not sep or kind not in ("layers", "blocks", "fraction"):
        raise ConfigError(f"unfreeze={spec!r} is not understood: {usage}")
    try:
        amount = float(amount_text)
    except ValueError:
        raise ConfigError(f"unfreeze={spec!r} has no number after ':': {usage}") from None
    if kind == "fraction":
        if not 0.0 < amount <= 1.0:
            raise ConfigError(f"unfreeze={spec!r}: the fraction must be in (0, 1]")
        return Unfreeze(kind, amount)
    if not amount.is_integer() or amount < 1:
        raise ConfigError(f"unfreeze={spec!r}: the count must be a whole number >= 1")
    return Unfreeze(kind, int(amount))


def ft_learning_rate(base_lr: float, factor: float, *, allow_any: bool = False) -> float:
    """Returns the fine-tuning learning rate `base_lr / factor`.

    Args:
      base_lr: the feature-extraction learning rate.
      factor: how many times smaller fine-tuning steps are.
      allow_any: accept a factor outside [10, 100].

    Raises:
      ConfigError: the factor is outside [10, 100] and `allow_any` is False, or not positive.
    """
    lo, hi = LR_FACTOR_RANGE
    if not (math.isfinite(factor) and factor > 0):
        raise ConfigError(f"ft_lr_factor={factor!r} must be a positive number, e.g. 10")
    if not allow_any and not lo <= factor <= hi:
        raise ConfigError(
            f"ft_lr_factor={factor:g} is outside [{lo:g}, {hi:g}]: fine-tuning at lr/{factor:g} "
            f"{'risks wrecking the pretrained features' if factor < lo else 'barely moves the base'}. "
            "Use a factor in that range, or set allow_any_lr_factor=true (--allow_any_lr_factor) "
            "if you mean it."
        )
    return base_lr / factor


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a schedule: what trains, for how long, how fast.

    Attributes:
      name: the name users pass to `--phase` ('fe', 'ft', ...).
      unfreeze: what part of the base trains (see `parse_unfreeze`); 'none' = head only.
      epochs: the most epochs the phase runs (early stopping may end it sooner).
      lr: the learning rate of the phase.
      optimizer: optimizer name (see `config.OPTIMIZERS`).
      early_stopping_patience: epochs without val_loss improvement before stopping; 0 = off.
    """

    name: str
    unfreeze: str
    epochs: int
    lr: float
    optimizer: str = "adam"
    early_stopping_patience: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Phase:
        return cls(**values)


def build_schedule(config: Any) -> list[Phase]:
    """Returns the ordered phases a config asks for (default: `fe` then `ft`).

    Args:
      config: a `tl_keras.config.Config` (anything with its fields).
    """
    common = dict(
        optimizer=config.optimizer, early_stopping_patience=config.early_stopping_patience
    )
    return [
        Phase("fe", "none", config.epochs_fe, config.lr, **common),
        Phase(
            "ft",
            str(parse_unfreeze(config.unfreeze)),
            config.epochs_ft,
            ft_learning_rate(config.lr, config.ft_lr_factor, allow_any=config.allow_any_lr_factor),
            **common,
        ),
    ]


def select_phases(schedule: Sequence[Phase], phase: str) -> list[Phase]:
    """Returns the phases to run for `--phase`: 'all' or one phase's name.

    Raises:
      ConfigError: no phase has that name.
    """
    names = [p.name for p in schedule]
    if phase == "all":
        return list(schedule)
    if phase not in names:
        raise ConfigError(
            f"--phase={phase!r} is not a phase of this schedule; use one of all, {', '.join(names)}"
        )
    return [schedule[names.index(phase)]]


def previous_phase(schedule: Sequence[Phase], phase: Phase) -> Phase | None:
    """Returns the phase before `phase` in the schedule, or None for the first."""
    names = [p.name for p in schedule]
    i = names.index(phase.name)
    return schedule[i - 1] if i else None


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """What the recipe needs to know of one layer of the base, in the base's layer order."""

    name: str
    block: str | None
    has_weights: bool
    is_batchnorm: bool


def block_order(layers: Sequence[LayerInfo]) -> list[str]:
    """Returns the base's blocks from input to output (order of first appearance)."""
    order: list[str] = []
    for layer in layers:
        if layer.block is not None and layer.block not in order:
            order.append(layer.block)
    return order


def trainable_layers(
    layers: Sequence[LayerInfo], unfreeze: str | Unfreeze, *, bn_policy: str = "frozen"
) -> list[str]:
    """Returns the names of the base layers that train under `unfreeze`.

    'layers:N' counts layers as Keras lists them (`base.layers[-N:]`, the input layer excluded),
    the way the Keras and TensorFlow guides do. 'blocks:K' takes whole blocks from the top, so a
    residual unit is never half unfrozen. Under bn_policy='frozen' no BatchNormalization layer is
    ever returned.

    Args:
      layers: the base's layers in order.
      unfreeze: the unfreeze spec.
      bn_policy: 'frozen' (default) or 'train'.

    Raises:
      ConfigError: the spec asks for more layers or blocks than the base has.
    """
    spec = parse_unfreeze(unfreeze)
    candidates = [layer for layer in layers if layer.block is not None or layer.has_weights]
    if spec.kind == "none":
        chosen: list[LayerInfo] = []
    elif spec.kind == "all":
        chosen = list(candidates)
    elif spec.kind == "layers":
        n = int(spec.amount)
        if n > len(candidates):
            raise ConfigError(
                f"unfreeze='{spec}' asks for {n} layers but the base has {len(candidates)}; "
                "use a smaller N or 'all'"
            )
        chosen = candidates[-n:]
    elif spec.kind == "fraction":
        chosen = candidates[len(candidates) - math.ceil(spec.amount * len(candidates)) :]
    else:  # blocks
        order = block_order(layers)
        k = int(spec.amount)
        if k > len(order):
            raise ConfigError(
                f"unfreeze='{spec}' asks for {k} blocks but the base has {len(order)} "
                f"({order[0]} .. {order[-1]}); use a smaller K or 'all'"
            )
        top = set(order[-k:])
        chosen = [layer for layer in candidates if layer.block in top]
    if bn_policy == "frozen":
        chosen = [layer for layer in chosen if not layer.is_batchnorm]
    return [layer.name for layer in chosen]


def unfrozen_blocks(layers: Sequence[LayerInfo], names: Sequence[str]) -> list[str]:
    """Returns the blocks (in order) that contain at least one trainable layer with weights."""
    selected = set(names)
    blocks = {layer.block for layer in layers if layer.name in selected and layer.has_weights}
    return [b for b in block_order(layers) if b in blocks]
