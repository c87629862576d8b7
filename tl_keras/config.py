"""Every setting of a run: its default, unit and meaning live here and nowhere else.

A `Config` is plain data. It is filled, in this order of precedence (later wins):

1. the defaults below;
2. for a later phase (`--phase=ft`), the config the earlier phase saved in the workdir;
3. a TOML config file (`--config=configs/NAME.toml`);
4. command-line flags (`--lr=3e-4`), one per field, generated from this class.

An unknown field in a file or a mapping is an error, so a typo never silently falls back to a
default. `validate` checks ranges without importing TensorFlow, so bad input fails in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from tl_keras import doctor as doctor_lib
from tl_keras import recipe
from tl_keras.data import augment
from tl_keras.errors import ConfigError, did_you_mean
from tl_keras.model import backbones
from tl_keras.recipe import BN_POLICIES, LR_FACTOR_RANGE, Phase, budget_plan
from tl_keras.recipe import auto as auto_recipe
from tl_keras.recipe.auto import AUTO
from tl_keras.training import distribute, features, optim, rollback
from tl_keras.training.class_weight import CLASS_WEIGHTS

# The defaults of the LR-schedule fields are the recipe's (`recipe.LRSchedule`), their one home.
_LR_SCHEDULE = recipe.LRSchedule()


# The way out of a damaged workdir config.json.
SAVED_CONFIG_FIX = "start the run again with --overwrite, or use another --workdir"


def _field(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


def _auto(help: str) -> Any:
    """A setting the recipe decides unless given: 'auto' by default (see `tl_keras.recipe.auto`).

    Its help text ends with its fixed default under recipe = "manual" (`auto_recipe.MANUAL`).
    """
    return _field(AUTO, help)


@dataclasses.dataclass
class Config:
    """The resolved settings of one training run (see the module docstring for precedence)."""

    # --- data ---------------------------------------------------------------------------------
    data_dir: str = _field(
        "",
        "Training data: an image-folder tree (one sub-folder per class, or train/ val/ test/ "
        "folders of those), 'tfds:NAME' (a TensorFlow Datasets name), a .npz file of arrays "
        "(x_train, y_train, optional x_val/y_val, x_test/y_test, class_names), or 'synthetic' "
        "(coloured shapes drawn into <workdir>/data; no download). Relative paths are resolved "
        "against the current directory.",
    )
    val_dir: str = _field(
        "",
        "Validation image-folder tree with the same class sub-folders as data_dir; '' = hold "
        "out val_fraction of data_dir.",
    )
    test_dir: str = _field(
        "", "Held-out test image-folder tree with the same classes as data_dir; '' = none."
    )
    tfds_data_dir: str = _field(
        "", "Where TFDS keeps prepared data sets ('' = its default, ~/tensorflow_datasets)."
    )
    train_split: str = _field(
        "train", "TFDS split spec of the training data, e.g. 'train' or 'train[:80%]'."
    )
    val_split: str = _field(
        "",
        "TFDS split spec of the validation data, e.g. 'validation'; '' = hold out val_fraction "
        "of train_split.",
    )
    test_split: str = _field("", "TFDS split spec of a held-out test set, e.g. 'test'; '' = none.")
    val_fraction: float = _field(
        0.2,
        "Fraction of each class held out for validation (seeded, stratified) when no separate "
        "validation data is given; 0 = no validation.",
    )
    batch_size: int = _field(32, "Global batch size (images per optimizer step).")
    resize_method: str = _field(
        "bilinear",
        "Interpolation of the resize to image_size: bilinear, nearest, bicubic, area, lanczos3, "
        "lanczos5, gaussian or mitchellcubic.",
    )
    resize_mode: str = _field(
        "stretch",
        "How images reach image_size: 'stretch' (resize, aspect not kept), 'crop' (centre "
        "square, then resize), 'pad' (resize to fit, black bars) or 'crop_or_pad' (no scaling: "
        "centre crop or zero-pad).",
    )
    cache: str = _field(
        "none",
        "Cache of decoded, resized (never augmented) images: 'none', 'memory', or 'file' "
        "(under <workdir>/data/cache, reused by later runs on the same files and size).",
    )
    max_skipped_fraction: float = _field(
        0.05,
        "Largest fraction of image files that cannot be decoded and are skipped (each one "
        "logged and counted); more than that is an error.",
    )
    augment: str = _auto(
        "Training-only augmentation preset: 'none', 'light' (flip, rotation, zoom, contrast) "
        "or 'strong' (flip + RandAugment). See tl_keras.data.augment.",
    )
    augment_phases: str = _auto(
        "Which phases see the augmentation (and MixUp / CutMix): 'all', or 'base' (only phases "
        "that train part of the base; head-only phases then train on cached features).",
    )
    mixup: float = _field(
        0.0, "MixUp alpha for training batches (keras.layers.MixUp); 0 = off, 0.2 is typical."
    )
    cutmix: float = _field(
        0.0,
        "CutMix factor in (0, 1] for training batches (keras.layers.CutMix); 0 = off. With "
        "mixup too, each batch gets one of the two.",
    )
    label_smoothing: float | str = _auto(
        "Label smoothing of training targets, in [0, 1) (0.1 is typical); validation and test "
        "labels stay one-hot.",
    )
    synthetic_images_per_class: int = _field(60, "Images per class when data_dir='synthetic'.")

    # --- model --------------------------------------------------------------------------------
    backbone: str = _field(
        "mobilenet_v2",
        "Backbone name (see `tl_keras.model.backbones.names()`), or hub:<preset> for a keras-hub "
        "image backbone.",
    )
    alpha: float = _field(
        1.0, "Width multiplier of the MobileNet families (1.0 for every other backbone)."
    )
    weights: str = _field(
        "imagenet",
        "'imagenet' (downloaded by Keras; efficientnet_lite0's converted from the lite0 extra; "
        "a hub: preset's own), 'none' (random init) or a weights file path.",
    )
    image_size: int = _field(0, "Square input size in pixels; 0 = the backbone's default.")
    head_units: int = _field(
        128, "Width of the hidden Dense layer of the head; 0 = no hidden layer."
    )
    dropout: float = _field(0.2, "Dropout rate before the classifier, in [0, 1).")
    bn_policy: str = _field(
        "frozen",
        "'frozen': BatchNormalization layers never train (the default, and the safe choice); "
        "'train': unfrozen BN layers update their statistics (for experiments only).",
    )

    # --- schedule -----------------------------------------------------------------------------
    recipe: str = _field(
        "auto",
        "'auto': every setting marked auto below is decided from the data, the model and "
        "time_budget, printed as a recipe card and kept in <workdir>/recipe.json; 'manual': "
        "they take fixed defaults. A value you give always wins.",
    )
    time_budget: str = _field(
        "",
        "Wall-time budget of the run, e.g. '90s', '10m', '1.5h', '1h30m': fine-tuning epochs are "
        "planned from the run's measured step rates to end within it; '' = none.",
    )
    lr: float | str = _auto("Learning rate of feature extraction (the base learning rate).")
    ft_lr_factor: float | str = _auto(
        "Fine-tuning learning rate = lr / ft_lr_factor; must lie in "
        f"[{LR_FACTOR_RANGE[0]:g}, {LR_FACTOR_RANGE[1]:g}].",
    )
    allow_any_lr_factor: bool = _field(
        False,
        f"Allow an ft_lr_factor outside [{LR_FACTOR_RANGE[0]:g}, {LR_FACTOR_RANGE[1]:g}] (you "
        "are on your own).",
    )
    epochs_fe: int | str = _auto("Epochs of feature extraction (head only, base frozen).")
    epochs_ft: int | str = _auto("Epochs of fine-tuning.")
    unfreeze: str = _auto(
        "What fine-tuning unfreezes: 'blocks:K' (top K blocks), 'layers:N' (top N layers, as "
        "base.layers[-N:]), 'fraction:F' (top F of the layers) or 'all'. BN stays frozen.",
    )
    optimizer: str = _field("adam", "Optimizer: adam, adamw, sgd (momentum 0.9) or rmsprop.")
    early_stopping_patience: int = _field(
        0,
        "Stop a phase after this many epochs without val_loss improvement and restore that "
        "phase's best weights; 0 = off.",
    )
    stages: str = _field(
        "",
        "Gradual unfreezing: the phases as 'NAME:UNFREEZE:EPOCHS[:/FACTOR][:SCHEDULE],...', e.g. "
        "'fe:none:3,ft1:blocks:2:2,ft2:blocks:4:2'; replaces epochs_fe, epochs_ft and unfreeze. "
        "In TOML also an array of tables [[stages]]. '' = fe then ft.",
    )
    stage_lr_decay: float = _field(
        1.0,
        "Gradual unfreezing: the j-th stage that unfreezes part of the base (j = 0, 1, ...) "
        "trains at lr / (ft_lr_factor * stage_lr_decay**j) unless the stage gives /FACTOR.",
    )
    layer_decay: float | str = _auto(
        "Discriminative learning rates: the base's top block trains at lr * layer_decay, the "
        "block below at lr * layer_decay**2, ... down to the stem; the head at lr. In (0, 1]; "
        "1.0 = off.",
    )
    layer_decay_groups: int = _field(
        0,
        "Discriminative learning rates in groups: the base's blocks (stem .. top) split into this "
        "many runs of neighbouring blocks, each run one rate, layer_decay apart (head lr, top run "
        "lr * layer_decay, ...); 0 = one rate per block.",
    )
    lr_schedule: str = _auto(
        "Learning rate within each phase: constant, cosine (decay to lr * min_lr_ratio), step "
        "(times lr_step_gamma every lr_step_every epochs) or plateau (times lr_plateau_factor "
        "after lr_plateau_patience epochs without val_loss improvement).",
    )
    warmup_epochs: float | str = _auto(
        "Linear warm-up from 0 to the phase's lr over this many epochs at the start of every "
        "phase (constant and cosine only; fractions allowed); 0 = none.",
    )
    min_lr_ratio: float = _field(
        _LR_SCHEDULE.min_lr_ratio,
        "Lowest rate as a fraction of the phase's lr (where cosine ends; step/plateau floor).",
    )
    lr_step_every: int = _field(
        _LR_SCHEDULE.step_every, "step schedule: epochs between two decays."
    )
    lr_step_gamma: float = _field(
        _LR_SCHEDULE.gamma, "step schedule: factor applied at each decay, in (0, 1]."
    )
    lr_plateau_patience: int = _field(
        _LR_SCHEDULE.plateau_patience,
        "plateau schedule: epochs without val_loss improvement before the rate is reduced.",
    )
    lr_plateau_factor: float = _field(
        _LR_SCHEDULE.plateau_factor,
        "plateau schedule: factor applied at each reduction, in (0, 1).",
    )
    fe_switch_patience: int | str = _auto(
        "Phase control: end a head-only phase (fe) after this many epochs without val_loss "
        "improvement, keep its best weights and go on to the next phase; 0 = run all its epochs.",
    )
    class_weight: str = _field(
        "none",
        "'balanced': weight each training image's loss by n / (K * n_c), so every class counts "
        "the same (for imbalanced data; validation stays unweighted); 'none' = unweighted.",
    )
    weight_decay: float | str = _auto(
        "Decoupled weight decay of the optimizer (each step shrinks weights by lr * weight_decay); "
        "0 = none.",
    )
    weight_averaging: str = _auto(
        "'ema': the saved weights of a phase that trains the base are an exponential moving "
        "average over about its last quarter (Keras's optimizer EMA); 'none'.",
    )
    tta: str = _auto(
        "Test-time augmentation the trained model is evaluated and served with: 'none' or "
        "'flip' (the image and its mirror, averaged); kept in run.json for predict and export.",
    )
    rollback: str = _field(
        "",
        "Phase control: 'val_accuracy' or 'val_loss': when a phase ends with this metric worse "
        "than the best of the previous phase, restore the previous phase's best weights (logged "
        "and saved in <phase>/summary.json); '' = off.",
    )

    doctor: str = _field(
        "auto",
        "Data doctor before training: 'auto' (duplicates and leakage across splits, label "
        "suspects, class balance, outliers, from the frozen base's features; one log line, the "
        "report in <workdir>/doctor/) or 'off'. See `python -m tl_keras.doctor`.",
    )

    # --- speed and scale ----------------------------------------------------------------------
    feature_cache: str = _field(
        "memory",
        "Feature extraction on cached features: 'memory' (run the frozen base once per process), "
        "'file' (also keep them under <workdir>/cache/features for later runs) or 'off'. Used only "
        "when valid (no augmentation, MixUp or CutMix; the base frozen).",
    )
    precision: str = _field(
        "float32",
        "'float32', 'mixed' (float16 on a GPU, bfloat16 otherwise), 'mixed_float16' or "
        "'mixed_bfloat16'; the softmax always computes in float32.",
    )
    jit_compile: str = _field("auto", "XLA: 'auto' (Keras decides: on with a GPU), 'on' or 'off'.")
    strategy: str = _field(
        "default",
        "tf.distribute strategy: 'default' (one device), 'mirrored' (all local GPUs, or the "
        "logical CPUs), 'multi_worker' (the cluster in TF_CONFIG) or 'tpu'. batch_size is global.",
    )
    logical_cpus: int = _field(
        0, "Split the CPU into this many logical devices (to try 'mirrored' without GPUs); 0 = off."
    )
    scale_lr_with_replicas: bool = _field(
        False, "Multiply every learning rate by the number of replicas (the linear scaling rule)."
    )

    # --- run ----------------------------------------------------------------------------------
    seed: int = _field(0, "Seed of the data split, shuffling, initialisation and dropout.")
    progress: str = _field(
        "auto", "'auto' (progress bar on a terminal, one line per epoch otherwise), 'bar', 'lines'."
    )
    checkpoint_every: float = _field(
        30.0,
        "Seconds of training between two resumable checkpoints: one is written at the end of the "
        "first epoch that ends at least this long after the last one (and at a phase's last "
        "epoch), so --resume loses at most this much training plus the epoch in progress; 0 = "
        "after every epoch.",
    )
    tensorboard: bool = _field(False, "Write TensorBoard logs to <workdir>/logs/tensorboard.")
    csv_log: bool = _field(False, "Append one CSV row per epoch to <workdir>/logs/epochs.csv.")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}

# Fields that define what a saved model IS (written to `run.json`): a later phase, and a resumed
# run, refuse a config that disagrees (`RunSpec.identity` gives their resolved values).
IDENTITY_FIELDS = (
    "backbone",
    "alpha",
    "image_size",
    "head_units",
    "dropout",
    "weights",
    "precision",
)

# The names a field may take live in the module that acts on them (recipe.BN_POLICIES,
# optim.OPTIMIZERS and JIT_COMPILE, distribute.PRECISIONS and STRATEGIES, features.MODES,
# rollback.MONITORS, the augment presets, the backbones); `validate` checks against those.
# The data pipeline and the phase's logging need TensorFlow at import, so the names of their
# fields live here, their only home.
PROGRESS = ("auto", "bar", "lines")
RESIZE_METHODS = (
    "bilinear",
    "nearest",
    "bicubic",
    "area",
    "lanczos3",
    "lanczos5",
    "gaussian",
    "mitchellcubic",
)
RESIZE_MODES = ("stretch", "crop", "pad", "crop_or_pad")
CACHE_MODES = ("none", "memory", "file")


def field_help(name: str) -> str:
    """Returns the one-line meaning of a config field."""
    return FIELDS[name].metadata["help"]


def _check_known(values: Mapping[str, Any], source: str) -> None:
    for key in values:
        if key not in FIELDS:
            raise ConfigError(
                f"unknown config field {key!r} in {source}{did_you_mean(key, FIELDS)}; "
                f"known fields: {', '.join(FIELDS)}"
            )


def _coerce(name: str, value: Any, source: str) -> Any:
    """Checks a value's type against the field's default, allowing int where float is expected."""
    if name == "stages" and isinstance(value, list):  # a TOML array of tables [[stages]]
        return recipe.stages_from_tables(value, source)
    if name in auto_recipe.AUTO_FIELDS:  # 'auto', or a value of the manual default's type
        return auto_recipe.coerce(name, value, source)
    expected = type(FIELDS[name].default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"config field {name!r} in {source} must be {expected.__name__}, got {value!r}"
        )
    return value


def replace(config: Config, values: Mapping[str, Any], source: str = "overrides") -> Config:
    """Returns a copy of `config` with `values` applied.

    Args:
      config: the config to start from.
      values: field name to new value.
      source: where the values come from, for error messages.

    Raises:
      ConfigError: a name is not a field, or a value has the wrong type.
    """
    _check_known(values, source)
    coerced = {k: _coerce(k, v, source) for k, v in values.items()}
    return dataclasses.replace(config, **coerced)


def load_file(path: str) -> dict[str, Any]:
    """Reads a TOML config file into a flat mapping of field values.

    Raises:
      ConfigError: the file is missing, not valid TOML, or has an unknown field.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; the shipped ones are in configs/")
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from None
    _check_known(values, path)
    return values


def merged(
    overrides: Mapping[str, Any],
    *,
    workdir: str | None = None,
    config_file: str | None = None,
    phase: str = "all",
    resume: bool = False,
) -> Config:
    """Applies defaults < saved workdir config (later phases, --resume) < config file < overrides.

    The config a workdir's earlier phase saved (`config.json`) counts for `--resume` and for a
    phase after the first: they continue the saved run. A first phase starts anew.

    Args:
      overrides: field values given now (command-line flags).
      workdir: the run's folder, whose `config.json` may hold a saved config.
      config_file: a TOML config file.
      phase: 'all' or the phase to run.
      resume: continue the saved run.

    Raises:
      ConfigError: an unknown field, a value of the wrong type, a missing or bad file.
    """
    cfg = Config()
    saved = os.path.join(workdir, "config.json") if workdir else None
    if saved and os.path.isfile(saved) and (resume or phase != "all"):
        saved_cfg = read_saved(saved, fix=SAVED_CONFIG_FIX)
        names = [p.name for p in recipe.build_schedule(filled(saved_cfg))]
        if resume or phase in names[1:]:
            cfg = saved_cfg
    if config_file:
        cfg = replace(cfg, load_file(config_file), config_file)
    return replace(cfg, overrides, "command line")


def read_saved(path: str, *, fix: str) -> Config:
    """Reads a config the package saved (a workdir's `config.json`), checked.

    Raises:
      DamagedFileError: the file is missing, not JSON, not an object, or has a field that is
        unknown or of the wrong type; naming the file and `fix`, the way out.
    """
    from tl_keras import schema

    values = schema.read_json(path, schema.DictOf(schema.Anything), fix=fix)
    try:
        return from_dict(values, path)
    except ConfigError as e:
        raise schema.damaged(path, str(e).replace(f" in {path}", ""), fix) from None


def to_dict(config: Config) -> dict[str, Any]:
    """Returns the config as a JSON-serialisable dict."""
    return dataclasses.asdict(config)


def from_dict(values: Mapping[str, Any], source: str = "saved config") -> Config:
    """Builds a config from a mapping such as a saved `config.json`."""
    return replace(Config(), values, source)


def to_json(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A validated config and what follows from it, worked out once by `resolve`.

    Data, model and training take this instead of deriving the same facts again.

    Attributes:
      config: the config with every decided setting filled in: the recipe card's values, or the
        fixed defaults of `recipe.auto.MANUAL` while no card is known (`decided` False).
      backbone: the backbone's registry entry.
      image_size: the square input size in pixels (the backbone's own when the config says 0).
      weights: 'imagenet', None (random initialisation) or the path of a weights file.
      schedule: the phases, in order (`recipe.build_schedule`).
      given: the config as given, 'auto' where the recipe decides (what `config.json` keeps).
      card: the recipe card (`recipe.auto.decide`), once the facts are known.
      time_budget_s: the run's time budget in seconds, or None.
    """

    config: Config
    backbone: backbones.BackboneSpec
    image_size: int
    weights: str | None
    schedule: tuple[Phase, ...]
    given: Config | None = None
    card: auto_recipe.Card | None = None
    time_budget_s: float | None = None

    @property
    def decided(self) -> bool:
        """Whether every setting is final: a card is known, or nothing is left to decide."""
        return self.card is not None or not undecided(self.given or self.config)

    @property
    def identity(self) -> dict[str, Any]:
        """What a saved model IS: the values of IDENTITY_FIELDS, as `run.json` records them."""
        resolved = {
            "backbone": self.backbone.name,
            "image_size": self.image_size,
            "weights": self.weights,
        }
        return {name: resolved.get(name, getattr(self.config, name)) for name in IDENTITY_FIELDS}


def resolve(config: Config | RunSpec, card: auto_recipe.Card | None = None) -> RunSpec:
    """Validates a config and works out what follows from it (a RunSpec passes through).

    The settings left at 'auto' take the recipe card's values, or, while no card is known, the
    fixed defaults of `recipe.auto.MANUAL` (the runner decides the card once it knows the data
    and the model, and resolves again with it).

    Raises:
      ConfigError, BackboneError: as `validate`.
    """
    if isinstance(config, RunSpec):
        if card is None:
            return config
        config = config.given or config.config
    effective = filled(config, card)
    spec, schedule = _checked(effective)
    return RunSpec(
        config=effective,
        backbone=spec,
        image_size=backbones.input_size(spec, config.image_size),
        weights=backbones.normalize_weights(config.weights),
        schedule=tuple(schedule),
        given=config,
        card=card,
        time_budget_s=budget_plan.parse_duration(config.time_budget),
    )


def undecided(config: Config) -> list[str]:
    """The settings a config leaves to the recipe ('auto'), in AUTO_FIELDS order."""
    return [f for f in auto_recipe.AUTO_FIELDS if auto_recipe.is_auto(getattr(config, f))]


def filled(config: Config, card: auto_recipe.Card | None = None) -> Config:
    """The config with every 'auto' setting replaced: the card's value, else the manual default."""
    values = auto_recipe.resolved(to_dict(config), card)
    return dataclasses.replace(config, **values)


def input_size(config: Config) -> int:
    """The square input size a config asks for: `image_size`, or the backbone's own when 0."""
    return backbones.input_size(backbones.get(config.backbone), config.image_size)


def validate(config: Config) -> Config:
    """Checks every field's range and names; returns the config unchanged.

    Imports no TensorFlow, so bad input fails in milliseconds.

    Raises:
      ConfigError: with the field, the value received and what is allowed.
      BackboneError: an unknown backbone, or a width or size it cannot take.
    """
    _checked(filled(config))
    return config


def _checked(c: Config) -> tuple[backbones.BackboneSpec, list[Phase]]:
    """Checks every field, in the order the README's tables list them; the backbone, schedule."""
    _check_data(c)
    spec = _check_model(c)
    schedule = _check_training(c)
    _check_recipe(c)
    _check_speed(c)
    return spec, schedule


def _refused(c: Config, name: str, allowed: str) -> ConfigError:
    return ConfigError(f"{name}={getattr(c, name)!r} is not allowed: {allowed}")


def _check_data(c: Config) -> None:
    if not 0.0 <= c.val_fraction < 1.0:
        raise _refused(c, "val_fraction", "use a fraction in [0, 1), e.g. 0.2")
    if c.batch_size < 1:
        raise _refused(c, "batch_size", "use a positive number of images, e.g. 32")
    if c.synthetic_images_per_class < 2:
        raise _refused(c, "synthetic_images_per_class", "use at least 2")
    if c.resize_method not in RESIZE_METHODS:
        raise _refused(
            c,
            "resize_method",
            f"one of {', '.join(RESIZE_METHODS)}{did_you_mean(c.resize_method, RESIZE_METHODS)}",
        )
    if c.resize_mode not in RESIZE_MODES:
        raise _refused(c, "resize_mode", f"one of {', '.join(RESIZE_MODES)}")
    if c.cache not in CACHE_MODES:
        raise _refused(c, "cache", f"one of {', '.join(CACHE_MODES)}")
    if not 0.0 <= c.max_skipped_fraction <= 1.0:
        raise _refused(c, "max_skipped_fraction", "use a fraction in [0, 1], e.g. 0.05")
    augment.get(c.augment)  # raises ConfigError listing the presets
    if not (math.isfinite(c.mixup) and c.mixup >= 0):
        raise _refused(c, "mixup", "use 0 (off) or a positive alpha, e.g. 0.2")
    if not 0.0 <= c.cutmix <= 1.0:
        raise _refused(c, "cutmix", "use 0 (off) or a factor in (0, 1], e.g. 1.0")
    if not 0.0 <= c.label_smoothing < 1.0:
        raise _refused(c, "label_smoothing", "use a value in [0, 1), e.g. 0.1")
    if c.doctor not in doctor_lib.MODES:
        raise _refused(c, "doctor", f"one of {', '.join(doctor_lib.MODES)}")


def _check_model(c: Config) -> backbones.BackboneSpec:
    spec = backbones.get(c.backbone)  # raises BackboneError listing the names
    backbones.check_alpha(spec, c.alpha, c.weights)
    backbones.check_image_size(spec, backbones.input_size(spec, c.image_size))
    if c.image_size < 0:
        raise _refused(c, "image_size", "use 0 (the backbone's default) or a size in pixels")
    if c.head_units < 0:
        raise _refused(c, "head_units", "use 0 (no hidden layer) or a positive width")
    if not 0.0 <= c.dropout < 1.0:
        raise _refused(c, "dropout", "use a rate in [0, 1)")
    if c.bn_policy not in BN_POLICIES:
        raise _refused(c, "bn_policy", f"one of {', '.join(BN_POLICIES)}")
    return spec


def _check_training(c: Config) -> list[Phase]:
    if not (math.isfinite(c.lr) and c.lr > 0):
        raise _refused(c, "lr", "use a positive learning rate, e.g. 1e-3")
    recipe.ft_learning_rate(c.lr, c.ft_lr_factor, allow_any=c.allow_any_lr_factor)
    for name in ("epochs_fe", "epochs_ft", "early_stopping_patience", "fe_switch_patience"):
        if getattr(c, name) < 0:
            raise _refused(c, name, "use 0 or a positive number of epochs")
    recipe.parse_unfreeze(c.unfreeze)
    if not isinstance(c.stages, str):
        raise _refused(c, "stages", f"write {recipe.STAGES_GRAMMAR}")
    if not (math.isfinite(c.stage_lr_decay) and c.stage_lr_decay > 0):
        raise _refused(c, "stage_lr_decay", "use a positive factor, e.g. 2 (1 = the same rate)")
    if not (math.isfinite(c.layer_decay) and 0 < c.layer_decay <= 1):
        raise _refused(c, "layer_decay", "use a factor in (0, 1], e.g. 0.7 (1.0 = off)")
    if c.class_weight not in CLASS_WEIGHTS:
        raise _refused(c, "class_weight", f"one of {', '.join(CLASS_WEIGHTS)}")
    if c.layer_decay_groups < 0:
        raise _refused(c, "layer_decay_groups", "use 0 (one rate per block) or a number of groups")
    if c.rollback not in rollback.MONITORS:
        raise _refused(c, "rollback", "use 'val_accuracy', 'val_loss' or '' (off)")
    if c.rollback and c.val_fraction == 0:
        raise _refused(c, "rollback", "it compares validation metrics; set val_fraction > 0")
    schedule = recipe.build_schedule(c)  # the stages, each stage's lr factor, the LR schedules
    if c.optimizer not in optim.OPTIMIZERS:
        names = optim.OPTIMIZERS
        raise _refused(
            c, "optimizer", f"one of {', '.join(names)}{did_you_mean(c.optimizer, names)}"
        )
    if c.progress not in PROGRESS:
        raise _refused(c, "progress", f"one of {', '.join(PROGRESS)}")
    if not (math.isfinite(c.checkpoint_every) and c.checkpoint_every >= 0):
        raise _refused(c, "checkpoint_every", "use 0 (every epoch) or a number of seconds, e.g. 30")
    return schedule


def _check_recipe(c: Config) -> None:
    """The recipe's own fields (the decided ones are checked with the rest)."""
    if c.recipe not in auto_recipe.RECIPES:
        raise _refused(c, "recipe", f"one of {', '.join(auto_recipe.RECIPES)}")
    budget_plan.parse_duration(c.time_budget)  # raises naming the accepted forms
    if c.augment_phases not in auto_recipe.AUGMENT_PHASES:
        raise _refused(c, "augment_phases", f"one of {', '.join(auto_recipe.AUGMENT_PHASES)}")
    if not (math.isfinite(c.weight_decay) and c.weight_decay >= 0):
        raise _refused(c, "weight_decay", "use 0 (off) or a positive factor, e.g. 0.05")
    if c.weight_averaging not in auto_recipe.WEIGHT_AVERAGING:
        raise _refused(c, "weight_averaging", f"one of {', '.join(auto_recipe.WEIGHT_AVERAGING)}")
    if c.weight_averaging == "ema" and c.layer_decay != 1.0:
        raise _refused(
            c,
            "weight_averaging",
            "'ema' does not combine with per-block rates (layer_decay < 1); use one of the two",
        )
    if c.tta not in auto_recipe.TTA_MODES:
        raise _refused(c, "tta", f"one of {', '.join(auto_recipe.TTA_MODES)}")


def _check_speed(c: Config) -> None:
    for name, allowed in (
        ("feature_cache", features.MODES),
        ("precision", distribute.PRECISIONS),
        ("jit_compile", optim.JIT_COMPILE),
        ("strategy", distribute.STRATEGIES),
    ):
        value = getattr(c, name)
        if value not in allowed:
            raise _refused(c, name, f"one of {', '.join(allowed)}{did_you_mean(value, allowed)}")
    if c.logical_cpus < 0 or c.logical_cpus == 1:
        raise _refused(c, "logical_cpus", "use 0 (off) or at least 2 logical devices")
