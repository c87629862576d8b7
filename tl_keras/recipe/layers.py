"""The base's layers as the recipe sees them: blocks, what trains, per-block learning rates.

`tl_keras.model.backbones.layer_infos` describes a real Keras base as a list of `LayerInfo`;
everything here works on that list alone, so which layers an unfreeze spec trains, and the
learning-rate multiplier of each block, are testable without building a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from tl_keras.errors import ConfigError
from tl_keras.recipe.stages import Unfreeze, parse_unfreeze

# --bn_policy: 'frozen' (BatchNormalization never trains: the default, and the safe choice) or
# 'train' (unfrozen BN layers update their statistics; experiments, and training from scratch).
BN_POLICIES = ("frozen", "train")
_HEAD = "<head>"  # the head, above the base's top block, in `block_lr_multipliers`


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
    if bn_policy == BN_POLICIES[0]:  # frozen
        chosen = [layer for layer in chosen if not layer.is_batchnorm]
    return [layer.name for layer in chosen]


def unfrozen_blocks(layers: Sequence[LayerInfo], names: Sequence[str]) -> list[str]:
    """Returns the blocks (in order) that contain at least one trainable layer with weights."""
    selected = set(names)
    blocks = {layer.block for layer in layers if layer.name in selected and layer.has_weights}
    return [b for b in block_order(layers) if b in blocks]


def check_multiplier(value: object, what: str) -> float:
    """Return `value` as a float, or raise ValueError if it is not a finite number > 0."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a finite number > 0; received {value!r} (a bool).")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number > 0; received {value!r}.") from None
    if not math.isfinite(number) or number <= 0.0:
        raise ValueError(f"{what} must be a finite number > 0; received {value!r}.")
    return number


def layer_decay_multipliers(block_order: list[str], decay: float) -> dict[str, float]:
    """Learning-rate multipliers that decay geometrically from the top block down.

    This is timm's `layer_decay`: the last block in `block_order` (the one closest to the output,
    usually the classification head) gets 1.0, the one below it `decay`, the next `decay**2`, and
    so on down to the first block.

    Args:
        block_order: Block (layer) names ordered from the input to the output. Each name may be
            any layer that `variable_multipliers` can find, e.g. a whole nested base model.
        decay: Factor between neighbouring blocks, in (0, 1].

    Returns:
        A dict mapping each block name to its multiplier, `decay ** (n - 1 - i)` for the block at
        index `i` of `n`.

    Raises:
        ValueError: If `decay` is not in (0, 1], or a block name is repeated or not a string.
    """
    decay_value = check_multiplier(decay, "decay")
    if decay_value > 1.0:
        raise ValueError(
            f"decay must be in (0, 1] so that lower blocks learn more slowly; received {decay!r}."
        )
    seen: set[str] = set()
    for name in block_order:
        if not isinstance(name, str):
            raise ValueError(f"block_order must contain layer names; received {name!r}.")
        if name in seen:
            raise ValueError(f"block_order lists {name!r} more than once.")
        seen.add(name)
    n = len(block_order)
    return {name: decay_value ** (n - 1 - i) for i, name in enumerate(block_order)}


def group_blocks(order: Sequence[str], groups: int) -> list[list[str]]:
    """Splits the base's blocks (input to output) into `groups` runs of neighbouring blocks.

    The runs are as even as they can be; where they cannot be, the lower runs take one block
    more (the stem and early blocks are the most general, so they share a rate in larger runs,
    and the top run stays small).

    Args:
      order: the blocks from input to output (`block_order`).
      groups: how many runs; 0 = one run per block.

    Returns:
      The runs, from input to output; every block in exactly one, in order.

    Raises:
      ConfigError: `groups` is negative or more than there are blocks.

    Example:
      >>> group_blocks(["stem", "b1", "b2", "b3", "b4"], 2)
      [['stem', 'b1', 'b2'], ['b3', 'b4']]
    """
    if groups < 0 or groups > len(order):
        raise ConfigError(
            f"layer_decay_groups={groups} is not allowed: the base has {len(order)} blocks "
            f"({order[0] if order else '-'} .. {order[-1] if order else '-'}); use 0 (one group "
            f"per block) up to {len(order)}"
        )
    if groups == 0:
        return [[block] for block in order]
    size, extra = divmod(len(order), groups)
    runs, start = [], 0
    for i in range(groups):
        end = start + size + (1 if i < extra else 0)
        runs.append(list(order[start:end]))
        start = end
    return runs


def block_lr_multipliers(
    layers: Sequence[LayerInfo], decay: float, *, groups: int = 0
) -> dict[str, float]:
    """Per-layer learning-rate multipliers that decay with depth, block by block
    (`layer_decay_multipliers` with the base's blocks, then the head, as the blocks).

    The head (every layer outside the base) counts as the top unit and keeps 1.0; the base's top
    block gets `decay`, the block below `decay**2`, and so on down to the stem. With `groups`,
    neighbouring blocks share a rate in that many runs (`group_blocks`): the head 1.0, the top
    run `decay`, the run below `decay**2`, ... (5 parameter groups at about 3x apart: `groups=4`,
    `decay=1/3`). Layers before the first block (no block, e.g. an input rescaling) share the
    stem's multiplier. Frozen layers are included: the optimizer only uses the entries of
    variables that train.

    Args:
      layers: the base's layers in order.
      decay: the factor between neighbouring blocks (or runs), in (0, 1]; 1.0 = one rate for all.
      groups: runs of neighbouring blocks that share a rate; 0 = one per block.

    Returns:
      Base layer name -> multiplier, for every layer of the base.

    Raises:
      ConfigError: `decay` is outside (0, 1], or `groups` outside [0, number of blocks].
    """
    if not (math.isfinite(decay) and 0.0 < decay <= 1.0):
        raise ConfigError(
            f"layer_decay={decay!r} is not allowed: use a factor in (0, 1] (1.0 = off), e.g. 0.7"
        )
    runs = group_blocks(block_order(layers), groups)
    per_run = layer_decay_multipliers([*(run[0] for run in runs), _HEAD], decay)
    per_block = {block: per_run[run[0]] for run in runs for block in run}
    lowest = per_run[runs[0][0]] if runs else 1.0
    return {layer.name: per_block.get(layer.block, lowest) for layer in layers}
