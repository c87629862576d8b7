"""Every setting of a run, with its default, unit and meaning, and how they become one decided spec.

A `Config` is plain data. It is filled, in this order of precedence (later wins):

1. the defaults below;
2. for a later phase (`--phase=ft`), the config the earlier phase saved in the workdir;
3. a TOML config file (`--config=configs/NAME.toml`);
4. command-line flags (`--lr=3e-4`), one per field, generated from this class.

An unknown field in a file or a mapping is an error, so a typo never silently falls back to a
default. A field marked auto may hold 'auto': the run's recipe decides it (`tl_keras.recipe.auto`).

A run reads its config through two steps, each taken once:

1. `check(config)` validates every field without importing TensorFlow, so bad input fails in
   milliseconds, and works out the sections the recipe does not decide: the data
   (`tl_keras.data.settings.DataSettings`), the model (`tl_keras.model.settings.ModelSettings`)
   and how the run runs (`tl_keras.training.settings.RunSettings`). That `Checked` is all a run
   needs before its recipe card exists: its plan, its data, its model, the recipe's facts.
2. `resolve(checked, card)` fills what the config left to the recipe from the card and makes the
   run's `RunSpec`: frozen and fully decided (no 'auto', no placeholder), made of sections,
   each read by the layer it belongs to: those three, the training batches' `Augmentation`, the
   phases (`recipe.Phase`) and the test-time augmentation.

The config composes at the top: each section's type, its checks and the names its fields may
take live in the layer that acts on them, and nothing below this module imports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tomllib
from collections.abc import Mapping
from typing import Any

from tl_keras import doctor as doctor_lib
from tl_keras import recipe
from tl_keras.data.settings import Augmentation, DataSettings
from tl_keras.errors import ConfigError, did_you_mean, refused
from tl_keras.model import backbones
from tl_keras.model.settings import ModelSettings
from tl_keras.recipe import LR_FACTOR_RANGE, Phase, budget_plan
from tl_keras.recipe import auto as auto_recipe
from tl_keras.recipe.auto import AUTO
from tl_keras.training import distribute
from tl_keras.training.settings import RunSettings, phases

# The defaults of the LR-schedule fields are the recipe's (`recipe.LRSchedule`), their one home;
# those of the data fields are the data section's (`tl_keras.data.settings`).
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


def _data(name: str, help: str) -> Any:
    """A field of the data section, with that section's default (`DataSettings`, or
    `Augmentation` for the training-only ones)."""
    fields = {**Augmentation.__dataclass_fields__, **DataSettings.__dataclass_fields__}
    return _field(fields[name].default, help)


@dataclasses.dataclass
class Config:
    """The settings of one training run as given (see the module docstring for precedence).

    A field marked auto may hold 'auto' here; `check` then `resolve` turn it into a run's decided
    `RunSpec`.
    """

    # --- data ---------------------------------------------------------------------------------
    data_dir: str = _field(
        "",
        "Training data: an image-folder tree (one sub-folder per class, or train/ val/ test/ "
        "folders of those), 'tfds:NAME' (a TensorFlow Datasets name), a .npz file of arrays "
        "(x_train, y_train, optional x_val/y_val, x_test/y_test, class_names), or 'synthetic' "
        "(coloured shapes drawn into <workdir>/data; no download). Relative paths are resolved "
        "against the current directory.",
    )
    val_dir: str = _data(
        "val_dir",
        "Validation image-folder tree with the same class sub-folders as data_dir; '' = hold "
        "out val_fraction of data_dir.",
    )
    test_dir: str = _data(
        "test_dir", "Held-out test image-folder tree with the same classes as data_dir; '' = none."
    )
    tfds_data_dir: str = _data(
        "tfds_data_dir",
        "Where TFDS keeps prepared data sets ('' = its default, ~/tensorflow_datasets).",
    )
    train_split: str = _data(
        "train_split", "TFDS split spec of the training data, e.g. 'train' or 'train[:80%]'."
    )
    val_split: str = _data(
        "val_split",
        "TFDS split spec of the validation data, e.g. 'validation'; '' = hold out val_fraction "
        "of train_split.",
    )
    test_split: str = _data(
        "test_split", "TFDS split spec of a held-out test set, e.g. 'test'; '' = none."
    )
    val_fraction: float = _data(
        "val_fraction",
        "Fraction of each class held out for validation (seeded, stratified) when no separate "
        "validation data is given; 0 = no validation.",
    )
    batch_size: int = _data("batch_size", "Global batch size (images per optimizer step).")
    resize_method: str = _data(
        "resize_method",
        "Interpolation of the resize to image_size: bilinear, nearest, bicubic, area, lanczos3, "
        "lanczos5, gaussian or mitchellcubic.",
    )
    resize_mode: str = _data(
        "resize_mode",
        "How images reach image_size: 'stretch' (resize, aspect not kept), 'crop' (centre "
        "square, then resize), 'pad' (resize to fit, black bars) or 'crop_or_pad' (no scaling: "
        "centre crop or zero-pad).",
    )
    cache: str = _data(
        "cache",
        "Cache of decoded, resized (never augmented) images: 'auto' ('memory' for a set small "
        "enough, see tl_keras.data.check.AUTO_MEMORY_MAX; else 'none'), 'none', 'memory', or "
        "'file' (under <workdir>/data/cache, reused by later runs on the same files and size).",
    )
    max_skipped_fraction: float = _data(
        "max_skipped_fraction",
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
    mixup: float = _data(
        "mixup", "MixUp alpha for training batches (keras.layers.MixUp); 0 = off, 0.2 is typical."
    )
    cutmix: float = _data(
        "cutmix",
        "CutMix factor in (0, 1] for training batches (keras.layers.CutMix); 0 = off. With "
        "mixup too, each batch gets one of the two.",
    )
    label_smoothing: float | str = _auto(
        "Label smoothing of training targets, in [0, 1) (0.1 is typical); validation and test "
        "labels stay one-hot.",
    )
    synthetic_images_per_class: int = _data(
        "synthetic_images_per_class", "Images per class when data_dir='synthetic'."
    )

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
    head_lr_ratio: float | str = _auto(
        "In a phase that trains part of the base, the head trains at this many times the "
        "phase's rate (the base's: lr / ft_lr_factor), e.g. 10 keeps the head at lr while the "
        "base fine-tunes at lr / 10; 1 = one rate for head and base. At least 1.",
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
        "Data doctor before training, from the frozen base's features (one log line, the report "
        "in <workdir>/doctor/): 'auto' (what must be known before training: duplicates and "
        "leakage across splits, class balance; label errors and outliers are left to `python -m "
        "tl_keras.doctor --workdir=...`, which reuses the cached features), 'full' (every check "
        "before training) or 'off'.",
    )

    # --- speed and scale ----------------------------------------------------------------------
    feature_cache: str = _field(
        "memory",
        "Feature extraction on cached features: 'memory' (run the frozen base once per process), "
        "'file' (also keep them under <workdir>/cache/features for later runs) or 'off'. Used only "
        "when valid (no augmentation, MixUp or CutMix; the base frozen). Unless 'off', a phase "
        "that trains only the top of the base also runs its frozen blocks once over every "
        "epoch's images, in memory, and trains the top on their outputs.",
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
        0,
        f"Split the CPU into this many logical devices, 2 to {distribute.MAX_LOGICAL_CPUS} (to "
        "try 'mirrored' without GPUs); 0 = off.",
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

    # --- the sections this config describes (`check` composes them all) -----------------------
    @property
    def data(self) -> DataSettings:
        """Its data section, checked (`load_data(config)` reads it), at the backbone's input
        size: the data's own fields only (a model the data does not build is `check`'s to
        refuse, so arrays load at any size, as they always have)."""
        return _data_section(
            self, backbones.input_size(backbones.get(self.backbone), self.image_size)
        )

    @property
    def augmentation(self) -> Augmentation:
        """What its training batches get: a setting left to the recipe at its fixed
        (recipe = "manual") default. A run takes the decided one from its `RunSpec`."""
        return _augmentation(filled(self))

    @property
    def model(self) -> ModelSettings:
        """Its model section, checked."""
        return _model_section(self)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}

# Fields that define what a saved model IS (written to `run.json`): a later phase, and a resumed
# run, refuse a config that disagrees (`Checked.identity` gives their resolved values).
IDENTITY_FIELDS = (
    "backbone",
    "alpha",
    "image_size",
    "head_units",
    "dropout",
    "weights",
    "precision",
)

_FLOAT_MAX = int(sys.float_info.max)


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
    if isinstance(value, str) and "\0" in value:  # a TOML string may hold one; no path can
        raise ConfigError(
            f"config field {name!r} in {source} holds a NUL character (\\u0000); remove it"
        )
    if name == "stages" and isinstance(value, list):  # a TOML array of tables [[stages]]
        return recipe.stages_from_tables(value, source)
    expected = auto_recipe.field_types().get(name, type(FIELDS[name].default))
    if expected is float and isinstance(value, int) and abs(value) > _FLOAT_MAX:
        raise ConfigError(  # a TOML integer past any float (1e309 and up)
            f"config field {name!r} in {source} must be float, got an integer of "
            f"{len(str(abs(value)))} digits, past the largest float"
        )
    if name in auto_recipe.AUTO_FIELDS:  # 'auto', or a value of the manual default's type
        return auto_recipe.coerce(name, value, source)
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
    except UnicodeDecodeError as e:  # TOML is UTF-8; tomllib decodes before it parses
        raise ConfigError(
            f"config file {path!r} is not valid TOML: byte {e.start} is not UTF-8; save it as UTF-8"
        ) from None
    except ValueError:  # an integer of more digits than Python converts (4300)
        raise ConfigError(
            f"config file {path!r} holds an integer of more than {sys.get_int_max_str_digits()} "
            "digits, which Python does not read; no setting needs one"
        ) from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(
            f"config file {path!r} nests arrays or tables too deeply to read; a config needs "
            "at most one level ([[stages]])"
        ) from None
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
        names = recipe.phase_names(saved_cfg)
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


# --- check once, resolve once ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Checked:
    """A config with every field validated, and the sections the recipe does not decide.

    What a run knows before its recipe card exists (`check`): it plans, loads its data, builds
    its model and measures the recipe's facts from this, then resolves once.

    Attributes:
      given: the config as given, 'auto' where the recipe decides (what `config.json` keeps).
      data: the data section (`tl_keras.data.settings.DataSettings`).
      model: the model section (`tl_keras.model.settings.ModelSettings`).
      run: how the run runs (`tl_keras.training.settings.RunSettings`).
      phase_names: the names of the phases, in order (what `--phase` may name).
    """

    given: Config
    data: DataSettings
    model: ModelSettings
    run: RunSettings
    phase_names: tuple[str, ...]

    @property
    def identity(self) -> dict[str, Any]:
        """What a saved model IS: the values of IDENTITY_FIELDS, as `run.json` records them."""
        return {**self.model.identity, "precision": self.run.precision}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A run's settings, fully decided (`resolve`): nothing 'auto', nothing provisional.

    Each layer reads its own section: the data layer `data` and `augmentation`, the model layer
    `model`, a phase its `Phase` of `schedule`, the runner `run`.

    Attributes:
      given: the config as given, 'auto' where the recipe decides (what `config.json` keeps).
      card: the recipe card the decided settings come from (what `recipe.json` keeps).
      data: the data section.
      augmentation: what the training batches get, decided.
      model: the model section.
      run: how the run runs.
      schedule: the phases, in order, decided (their rates scaled under scale_lr_with_replicas).
      tta: the test-time augmentation the trained model is served with: 'none' or 'flip'.
    """

    given: Config
    card: auto_recipe.Card
    data: DataSettings
    augmentation: Augmentation
    model: ModelSettings
    run: RunSettings
    schedule: tuple[Phase, ...]
    tta: str

    @property
    def identity(self) -> dict[str, Any]:
        """What a saved model IS (see `Checked.identity`)."""
        return {**self.model.identity, "precision": self.run.precision}

    def phase(self, name: str) -> Phase:
        """The phase of the schedule called `name`."""
        return next(p for p in self.schedule if p.name == name)

    def decided_config(self) -> Config:
        """The config with the card's values where it said 'auto' (what a phase's
        `config.json` records)."""
        return filled(self.given, self.card)


def check(config: Config) -> Checked:
    """Validates every field and works out the sections the recipe does not decide.

    Imports no TensorFlow, so bad input fails in milliseconds. A setting left to the recipe is
    checked at its fixed (recipe = "manual") default; its decided value is checked by `resolve`.

    Raises:
      ConfigError: with the field, the value received and what is allowed.
      BackboneError: an unknown backbone, or a width or size it cannot take.
    """
    c = filled(config)
    model = _model_section(c)
    data = _data_section(c, model.image_size)
    _augmentation(c)
    if c.doctor not in doctor_lib.MODES:
        raise refused("doctor", c.doctor, f"one of {', '.join(doctor_lib.MODES)}")
    schedule = phases(c)
    _check_recipe(c)
    run = RunSettings(
        seed=c.seed,
        progress=c.progress,
        checkpoint_every=c.checkpoint_every,
        tensorboard=c.tensorboard,
        csv_log=c.csv_log,
        feature_cache=c.feature_cache,
        precision=c.precision,
        jit_compile=c.jit_compile,
        strategy=c.strategy,
        logical_cpus=c.logical_cpus,
        scale_lr_with_replicas=c.scale_lr_with_replicas,
        class_weight=c.class_weight,
        rollback=c.rollback,
        doctor=c.doctor,
        time_budget_s=budget_plan.parse_duration(c.time_budget),
    )
    if c.rollback and c.val_fraction == 0:
        raise refused(
            "rollback", c.rollback, "it compares validation metrics; set val_fraction > 0"
        )
    return Checked(config, data, model, run, tuple(p.name for p in schedule))


def validate(config: Config) -> Config:
    """Checks every field's range and names (`check`); returns the config unchanged.

    Raises:
      ConfigError, BackboneError: as `check`.
    """
    check(config)
    return config


def resolve(config: Config | Checked, card: auto_recipe.Card, *, replicas: int = 1) -> RunSpec:
    """The run's decided spec: the settings left 'auto' take the card's values. Once per run.

    Args:
      config: the config, or what `check` made of it.
      card: the run's recipe card (`tl_keras.recipe.auto.decide`): it decides every setting
        the config left to the recipe.
      replicas: the replicas training runs on (every rate times this under
        scale_lr_with_replicas).

    Raises:
      ConfigError, BackboneError: as `check`; or a decided value out of range.
    """
    checked = config if isinstance(config, Checked) else check(config)
    c = filled(checked.given, card)
    schedule = phases(c)
    _check_recipe(c)
    if checked.run.scale_lr_with_replicas and replicas > 1:
        schedule = tuple(dataclasses.replace(p, lr=p.lr * replicas) for p in schedule)
    return RunSpec(
        given=checked.given,
        card=card,
        data=checked.data,
        augmentation=_augmentation(c),
        model=checked.model,
        run=checked.run,
        schedule=schedule,
        tta=c.tta,
    )


def filled(config: Config, card: auto_recipe.Card | None = None) -> Config:
    """The config with every 'auto' setting replaced: the card's value, else the fixed
    (recipe = "manual") default. The one place a setting left to the recipe is filled in."""
    values = auto_recipe.resolved(to_dict(config), card)
    return dataclasses.replace(config, **values)


def build_schedule(config: Config) -> list[Phase]:
    """The phases a config asks for (`recipe.build_schedule`), a setting left to the recipe at
    its fixed (recipe = "manual") default: a run's own come from its card (`resolve`).

    Raises:
      ConfigError: as `recipe.build_schedule`.
    """
    return recipe.build_schedule(filled(config))


def _data_section(c: Config, image_size: int) -> DataSettings:
    return DataSettings(
        data_dir=c.data_dir,
        image_size=image_size,
        seed=c.seed,
        batch_size=c.batch_size,
        val_dir=c.val_dir,
        test_dir=c.test_dir,
        tfds_data_dir=c.tfds_data_dir,
        train_split=c.train_split,
        val_split=c.val_split,
        test_split=c.test_split,
        val_fraction=c.val_fraction,
        synthetic_images_per_class=c.synthetic_images_per_class,
        resize_method=c.resize_method,
        resize_mode=c.resize_mode,
        cache=c.cache,
        max_skipped_fraction=c.max_skipped_fraction,
    )


def _augmentation(c: Config) -> Augmentation:
    return Augmentation(
        augment=c.augment, mixup=c.mixup, cutmix=c.cutmix, label_smoothing=c.label_smoothing
    )


def _model_section(c: Config) -> ModelSettings:
    return ModelSettings.make(
        backbone=c.backbone,
        alpha=c.alpha,
        weights=c.weights,
        image_size=c.image_size,
        head_units=c.head_units,
        dropout=c.dropout,
        bn_policy=c.bn_policy,
        seed=c.seed,
    )


def _check_recipe(c: Config) -> None:
    """The recipe's own fields: its name, and the decided test-time augmentation."""
    if c.recipe not in auto_recipe.RECIPES:
        raise refused("recipe", c.recipe, f"one of {', '.join(auto_recipe.RECIPES)}")
    if c.tta not in auto_recipe.TTA_MODES:
        raise refused("tta", c.tta, f"one of {', '.join(auto_recipe.TTA_MODES)}")
