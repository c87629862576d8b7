"""Discriminative (layer-wise) learning rates as a real optimizer feature.

Every trainable variable is updated at its own learning rate: the optimizer's base learning rate
(a float or the current value of a `LearningRateSchedule`) times that variable's multiplier. The
multiplier is applied to the `learning_rate` argument of the optimizer's own `update_step`, so
adaptive optimizers are affected correctly. Scaling the *gradients* instead would do nothing
under Adam, RMSprop or Adagrad, whose steps do not depend on the gradient's scale.

    from tl_keras.recipe import layer_decay_multipliers  # timm's rule, without TensorFlow

    multipliers = variable_multipliers(
        model, layer_decay_multipliers(["block1", "block2", "head"], decay=0.5)
    )
    optimizer = with_lr_multipliers(keras.optimizers.AdamW(1e-3), multipliers)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")

How it works: `with_lr_multipliers` returns an instance of a subclass of the optimizer's own
class (e.g. `LRMultiplierAdamW`, created once per base class and cached) that overrides
`build`, `update_step` and `_apply_weight_decay`. Multipliers are keyed by `variable.path`
(e.g. `"conv1/kernel"`); at `build` time they are turned into one Python float per trainable
variable index, so the traced train step contains only constant multiplies. Decoupled weight
decay (AdamW, Lion, ...) uses the scaled learning rate too, as a PyTorch/timm parameter group
with its own `lr` would. The optimizer and its multipliers round-trip through
`get_config`/`from_config` and `.keras` files; loading needs `tl_keras.training.lr_multipliers` imported.

Variable paths: Keras fixes `variable.path` when the layer is built, from the name scopes active
at that moment. A functional base model builds its layers when it is constructed, so a variable
of layer `conv1` inside a nested base model `backbone` has the path `"conv1/kernel"`, without
the `"backbone/"` prefix. Use `variable_multipliers` to get the paths rather than spelling them.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping

import keras

from tl_keras.recipe.layers import check_multiplier

__all__ = [
    "LRMultiplierOptimizer",
    "variable_multipliers",
    "with_lr_multipliers",
]

_PACKAGE = "tl_keras"
_REGISTERED_CLASS_NAME = "LRMultiplierOptimizer"
_REGISTERED_NAME = f"{_PACKAGE}>{_REGISTERED_CLASS_NAME}"

# Private state of `BaseOptimizer.exclude_from_weight_decay`; it is not part of `get_config`, so
# it has to be carried over by hand when the optimizer is rebuilt as a subclass.
_WEIGHT_DECAY_EXCLUSION_ATTRS = (
    "_exclude_from_weight_decay",
    "_exclude_from_weight_decay_pattern",
)


def _check_multiplier_map(multipliers: Mapping[str, object], what: str) -> dict[str, float]:
    if not isinstance(multipliers, Mapping):
        raise ValueError(
            f"{what} must be a mapping of names to multipliers; "
            f"received {type(multipliers).__name__}."
        )
    checked = {}
    for key, value in multipliers.items():
        if not isinstance(key, str):
            raise ValueError(f"{what} keys must be strings; received {key!r}.")
        checked[key] = check_multiplier(value, f"Multiplier for {key!r}")
    return checked


def _sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    # Only models expose their sublayers publicly; a custom composite layer is one unit.
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return []


def variable_multipliers(
    model: keras.Model, layer_multipliers: Mapping[str, float], default: float = 1.0
) -> dict[str, float]:
    """Map per-layer multipliers to a multiplier for each trainable variable path.

    Layers are matched by name anywhere in the model, including inside nested models (e.g. the
    base model of a transfer-learning model). A multiplier given for a model applies to all its
    layers unless a layer inside it has its own entry: the most deeply nested entry wins. A layer
    that is not a `keras.Model` is one unit; its internal sublayers cannot be addressed.

    Args:
        model: A built Keras model.
        layer_multipliers: Layer name -> multiplier (finite, > 0).
        default: Multiplier for trainable variables not covered by any entry.

    Returns:
        A dict mapping `variable.path` of every trainable variable of `model` to its multiplier.
        Frozen layers contribute no entries (their variables are not trainable).

    Raises:
        ValueError: If a multiplier or `default` is not a finite number > 0, a layer name is not
            found in the model, or two different trainable variables share a path but would get
            different multipliers.
    """
    checked = _check_multiplier_map(layer_multipliers, "layer_multipliers")
    default_value = check_multiplier(default, "default")
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built, so it has no variables yet; build it (call it on "
            "data or give it an input shape) before computing variable multipliers."
        )

    result: dict[str, float] = {}
    owners: dict[str, int] = {}
    matched: set[str] = set()
    all_names: set[str] = set()

    def assign(variable: keras.Variable, multiplier: float) -> None:
        path = variable.path
        if path in result and result[path] != multiplier:
            other = "the same variable" if owners[path] == id(variable) else "another variable"
            raise ValueError(
                f"Variable path {path!r} would get multipliers {result[path]} and {multiplier} "
                f"({other} reached twice). Optimizer multipliers are keyed by variable path, so "
                "give the layers unique names or the same multiplier."
            )
        result[path] = multiplier
        owners[path] = id(variable)

    def visit(layer: keras.layers.Layer, multiplier: float) -> None:
        all_names.add(layer.name)
        if layer.name in checked:
            multiplier = checked[layer.name]
            matched.add(layer.name)
        children = _sublayers(layer)
        covered: set[int] = set()
        for child in children:
            visit(child, multiplier)
            covered.update(id(v) for v in child.trainable_weights)
        # Weights a model creates itself (not through a sublayer) follow the model's multiplier.
        for variable in layer.trainable_weights:
            if id(variable) not in covered:
                assign(variable, multiplier)

    visit(model, default_value)
    unknown = sorted(set(checked) - matched)
    if unknown:
        raise ValueError(
            f"Layer name(s) {unknown} not found in model {model.name!r}. "
            f"Known layer names include: {sorted(all_names)[:40]}."
        )
    return result


def _same_tail(a: str, b: str) -> bool:
    """Whether one path is the other with leading components removed."""
    return a.endswith("/" + b) or b.endswith("/" + a)


_subclass_lock = threading.Lock()
_subclasses: dict[type, type] = {}


def _unsupported_reason(cls: type) -> str | None:
    wrappers = [
        getattr(keras.optimizers, name, None) for name in ("LossScaleOptimizer", "MultiOptimizer")
    ]
    for wrapper in wrappers:
        if wrapper is not None and issubclass(cls, wrapper):
            return (
                f"{cls.__name__} delegates its updates to other optimizers; apply the "
                "multipliers to the inner optimizer(s) instead"
            )
    if not issubclass(cls, keras.optimizers.Optimizer):
        return f"{cls.__name__} is not a keras.optimizers.Optimizer"
    return None


def _subclass_for(base: type) -> type:
    """Return the cached `LRMultiplier<Base>` class for optimizer class `base`."""
    with _subclass_lock:
        cls = _subclasses.get(base)
        if cls is not None:
            return cls
        reason = _unsupported_reason(base)
        if reason is not None:
            raise ValueError(f"Cannot add learning-rate multipliers: {reason}.")
        name = f"LRMultiplier{base.__name__}"
        cls = type(
            name,
            (LRMultiplierOptimizer, base),
            {
                "__module__": __name__,
                "__qualname__": name,
                "__doc__": f"`{base.__name__}` with per-variable learning-rate multipliers.",
                "_lr_base_class": base,
            },
        )
        # Every generated class serializes under the one registered name, whose `from_config`
        # recreates the right subclass from `base_optimizer`. So a `.keras` file can be loaded in a
        # fresh process, where no subclass has been generated yet. Registering the subclass
        # points the name at it, hence the second line to point it back.
        keras.saving.register_keras_serializable(package=_PACKAGE, name=_REGISTERED_CLASS_NAME)(cls)
        keras.saving.get_custom_objects()[_REGISTERED_NAME] = LRMultiplierOptimizer
        _subclasses[base] = cls
        return cls


def _base_optimizer_name(base: type) -> str:
    # Built-in optimizers are not in the custom-object registry; this returns their class name
    # (e.g. "Adam"), and "package>Name" for registered custom optimizers.
    return keras.saving.get_registered_name(base)


def _resolve_base_optimizer(name: str, custom_objects: Mapping[str, object] | None) -> type:
    builtins = {
        key: value
        for key, value in vars(keras.optimizers).items()
        if isinstance(value, type) and issubclass(value, keras.optimizers.Optimizer)
    }
    base = keras.saving.get_registered_object(
        name, custom_objects=dict(custom_objects or {}), module_objects=builtins
    )
    if not (isinstance(base, type) and issubclass(base, keras.optimizers.Optimizer)):
        raise ValueError(
            f"Cannot recreate the optimizer: base optimizer {name!r} is neither a Keras optimizer "
            "nor a registered custom object. Register it with "
            "keras.saving.register_keras_serializable or pass it in custom_objects."
        )
    return base


@keras.saving.register_keras_serializable(package=_PACKAGE, name=_REGISTERED_CLASS_NAME)
class LRMultiplierOptimizer(keras.optimizers.Optimizer):
    """Base of the generated `LRMultiplier<Optimizer>` classes; use `with_lr_multipliers`.

    Instances are also instances of the wrapped optimizer's class (e.g. `keras.optimizers.Adam`)
    and behave exactly like it, except that each variable's learning rate is multiplied by its
    multiplier. `learning_rate` and `iterations` are the base optimizer's: callbacks such as
    `ReduceLROnPlateau` change the base rate and all multipliers follow.

    Args:
        *args: Passed to the base optimizer.
        lr_multipliers: `variable.path` -> multiplier; variables not listed use 1.0.
        **kwargs: Passed to the base optimizer.

    Raises:
        TypeError: If instantiated directly rather than through `with_lr_multipliers`.
        ValueError: If a multiplier is not a finite number > 0.
    """

    _lr_base_class: type | None = None

    def __init__(self, *args, lr_multipliers: Mapping[str, float] | None = None, **kwargs):
        if self._lr_base_class is None:
            raise TypeError(
                "LRMultiplierOptimizer wraps another optimizer; create it with "
                "tl_keras.training.lr_multipliers.with_lr_multipliers(optimizer, multipliers)."
            )
        checked = _check_multiplier_map(lr_multipliers or {}, "lr_multipliers")
        super().__init__(*args, **kwargs)
        # Tuples, not dicts: the optimizer's attribute tracker would wrap a dict in a TrackedDict.
        self._lr_multiplier_items = tuple(sorted(checked.items()))
        self._lr_scales: tuple[float, ...] | None = None
        self._lr_resolved_paths: tuple[tuple[str, str], ...] = ()
        self._weight_decay_lr_scale = 1.0

    @property
    def lr_multipliers(self) -> dict[str, float]:
        """A copy of the `variable.path` -> multiplier mapping (current paths once built)."""
        multipliers = dict(self._lr_multiplier_items)
        # Once built, report the variables' current paths (see `_compute_lr_scales`).
        for path, key in self._lr_resolved_paths:
            if path != key:
                multipliers[path] = multipliers.pop(key)
        return multipliers

    def build(self, variables):
        super().build(variables)
        self._lr_scales = self._compute_lr_scales()

    def _compute_lr_scales(self) -> tuple[float, ...]:
        multipliers = dict(self._lr_multiplier_items)
        # Indexed like `_get_variable_index`, i.e. like the variable list given to `build`.
        paths = [variable.path for variable in self._trainable_variables]
        resolved = {path: path for path in paths if path in multipliers}
        # Keras does not keep paths stable across save/load for every model: a Sequential model's
        # "sequential/dense/kernel" comes back as "dense/kernel". Keys without an exact match are
        # therefore matched on whole trailing path components, where key and path pick each
        # other unambiguously.
        open_paths = [path for path in paths if path not in resolved]
        spare_keys = [key for key in multipliers if key not in resolved]
        for key in list(spare_keys):
            hits = [path for path in open_paths if _same_tail(key, path)]
            if len(hits) == 1 and sum(_same_tail(k, hits[0]) for k in spare_keys) == 1:
                resolved[hits[0]] = key
        spare_keys = [key for key in spare_keys if key not in resolved.values()]
        self._lr_resolved_paths = tuple(resolved.items())
        unused = sorted(spare_keys)
        if unused:
            shown = ", ".join(repr(p) for p in unused[:10])
            more = f" and {len(unused) - 10} more" if len(unused) > 10 else ""
            warnings.warn(
                f"{len(unused)} learning-rate multiplier(s) match no trainable variable of "
                f"optimizer {self.name!r}: {shown}{more}. Those variables are frozen, or the "
                "multipliers were computed for another model.",
                stacklevel=3,
            )
        return tuple(multipliers[resolved[path]] if path in resolved else 1.0 for path in paths)

    def _lr_scale(self, variable) -> float:
        if self._lr_scales is None:
            self._lr_scales = self._compute_lr_scales()
        # On TensorFlow `variable` is the raw tf.Variable behind the Keras variable; the
        # optimizer's own index handles both.
        return self._lr_scales[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._lr_scale(variable)
        if scale != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, scale)
        return super().update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables):
        # The base class decays with `self.learning_rate`; scale it per group of variables that
        # share a multiplier, so decoupled weight decay follows each variable's own rate.
        groups: dict[float, list] = {}
        for variable in variables:
            groups.setdefault(self._lr_scale(variable), []).append(variable)
        for scale, group in groups.items():
            self._weight_decay_lr_scale = scale
            try:
                super()._apply_weight_decay(group)
            finally:
                self._weight_decay_lr_scale = 1.0

    def _get_current_learning_rate(self):
        learning_rate = super()._get_current_learning_rate()
        scale = getattr(self, "_weight_decay_lr_scale", 1.0)
        if scale == 1.0:
            return learning_rate
        return keras.ops.multiply(learning_rate, scale)

    def get_config(self):
        config = super().get_config()
        config["base_optimizer"] = _base_optimizer_name(self._lr_base_class)
        config["lr_multipliers"] = self.lr_multipliers
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        base_name = config.pop("base_optimizer", None)
        if base_name is not None:
            target = _subclass_for(_resolve_base_optimizer(base_name, custom_objects))
        elif cls._lr_base_class is not None:
            target = cls
        else:
            raise ValueError(
                "Cannot recreate an LRMultiplierOptimizer: its config has no 'base_optimizer'."
            )
        # Continue with the base optimizer's own `from_config`, bound to the generated class.
        parent = super(LRMultiplierOptimizer, target)
        if custom_objects is None:
            return parent.from_config(config)
        return parent.from_config(config, custom_objects=custom_objects)


def with_lr_multipliers(
    optimizer: keras.optimizers.Optimizer | str, multipliers: Mapping[str, float]
) -> keras.optimizers.Optimizer:
    """Return a copy of `optimizer` that applies per-variable learning-rate multipliers.

    The copy is an instance of a generated subclass of the optimizer's class, configured like the
    original (same hyperparameters, learning rate or schedule, weight-decay exclusions). Each
    variable's update uses `learning_rate * multipliers[variable.path]` (1.0 when absent),
    including in decoupled weight decay. A multiplier whose path matches no trainable variable
    when the optimizer is built triggers a warning. Passing an optimizer that already has
    multipliers replaces them.

    Args:
        optimizer: An unbuilt Keras optimizer (e.g. Adam, AdamW, SGD, RMSprop), or a name such as
            `"adam"`.
        multipliers: `variable.path` -> multiplier, e.g. from `variable_multipliers`.

    Returns:
        A new, unbuilt optimizer; the original is not modified.

    Raises:
        ValueError: If a multiplier is not a finite number > 0, the optimizer is already built
            (its state would be lost), or it is a wrapper such as `LossScaleOptimizer`.
    """
    checked = _check_multiplier_map(multipliers, "multipliers")
    optimizer = keras.optimizers.get(optimizer)
    reason = _unsupported_reason(type(optimizer))
    if reason is not None:
        raise ValueError(f"Cannot add learning-rate multipliers: {reason}.")
    if optimizer.built:
        raise ValueError(
            f"Optimizer {optimizer.name!r} is already built; its state would be lost. Add the "
            "multipliers before compiling the model (or before the first training step)."
        )
    base = getattr(type(optimizer), "_lr_base_class", None) or type(optimizer)
    config = optimizer.get_config()
    config.pop("base_optimizer", None)
    config["lr_multipliers"] = checked
    new = _subclass_for(base).from_config(config)
    for attr in _WEIGHT_DECAY_EXCLUSION_ATTRS:
        if hasattr(optimizer, attr):
            setattr(new, attr, getattr(optimizer, attr))
    return new
