"""The schedule as data: unfreeze specs, stages, phases, their learning rates and LR schedules.

`build_schedule(config)` answers which phases run, what each unfreezes and at what learning rate:
a config's `stages` (gradual unfreezing), or the two phases `fe` then `ft`. Every rule of the
package's README ("the LR factor rule", "each stage unfreezes at least what the previous one
did") is checked here, from plain values, without TensorFlow (see `tl_keras.recipe`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tl_keras.errors import ConfigError, did_you_mean
from tl_keras.recipe import auto
from tl_keras.recipe.auto import LR_FACTOR_RANGE

UNFREEZE_KINDS = ("none", "layers", "blocks", "fraction", "all")
# The names of `tl_keras.training.schedules.SCHEDULES`, kept here so the recipe imports no TensorFlow
# (tests/test_stages.py checks that the two agree).
LR_SCHEDULES = ("constant", "cosine", "step", "plateau")
WARMUP_SCHEDULES = ("constant", "cosine")  # the schedules that support a linear warm-up
# Stage names become folders of the workdir and values of --phase.
STAGE_NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_-]*"
RESERVED_STAGE_NAMES = ("all", "data", "logs", "lr_find")
STAGES_GRAMMAR = (
    "comma-separated stages NAME:UNFREEZE:EPOCHS[:/FACTOR][:SCHEDULE], e.g. "
    "'fe:none:3,ft1:blocks:2:2,ft2:blocks:4:2:/20:cosine' (UNFREEZE is none, all, blocks:K, "
    "layers:N or fraction:F; /FACTOR sets the stage's lr to lr/FACTOR; SCHEDULE is one of "
    + ", ".join(LR_SCHEDULES)
    + ")"
)


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
class LRSchedule:
    """How the learning rate moves within one phase (see `tl_keras.training.schedules`).

    Its defaults are the package's: the config's `lr_schedule`, `warmup_epochs`, `min_lr_ratio`,
    `lr_step_*` and `lr_plateau_*` fields take them from here, and `schedules.make_schedule`
    builds a phase's rate from the whole value.

    Attributes:
      name: one of LR_SCHEDULES.
      warmup_epochs: linear warm-up from 0 over this many epochs ('constant', 'cosine' only).
      min_lr_ratio: floor as a fraction of the phase's lr ('cosine' ends there).
      step_every: 'step': epochs between decays.
      gamma: 'step': factor applied every `step_every` epochs.
      plateau_patience: 'plateau': epochs without improvement before reducing.
      plateau_factor: 'plateau': reduction factor.
    """

    name: str = auto.MANUAL["lr_schedule"]
    warmup_epochs: float = auto.MANUAL["warmup_epochs"]
    min_lr_ratio: float = 0.0
    step_every: int = 5
    gamma: float = 0.5
    plateau_patience: int = 2
    plateau_factor: float = 0.5


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a schedule: what trains, for how long, how fast.

    Attributes:
      name: the name users pass to `--phase` ('fe', 'ft', a stage's name).
      unfreeze: what part of the base trains (see `parse_unfreeze`); 'none' = head only.
      epochs: the most epochs the phase runs (early stopping may end it sooner).
      lr: the phase's learning rate, every variable's derived from it: the head's is
        `lr * head_lr_ratio`, the base's top block's `lr * layer_decay`, the next block's
        `lr * layer_decay**2`, ... (all `lr` at the defaults).
      optimizer: optimizer name (see `config.OPTIMIZERS`).
      early_stopping_patience: epochs without val_loss improvement before stopping; 0 = off.
      lr_schedule: how the rate moves within the phase.
      layer_decay: discriminative learning rates: the top block of the base trains at
        `lr * layer_decay`, the one below at `lr * layer_decay**2`, ...; 1.0 = one rate.
      layer_decay_groups: neighbouring blocks share a rate in this many runs, `layer_decay`
        apart (`recipe.group_blocks`); 0 = one rate per block.
      head_lr_ratio: the head trains at `lr * head_lr_ratio` while the phase trains part of the
        base (the base at `lr`, or below it with `layer_decay`); 1.0 = one rate. A head-only
        phase has 1.0.
      augment: whether the phase's training batches take the configured augmentation (and
        MixUp / CutMix); without it a head-only phase can train on cached features.
      weight_decay: the optimizer's decoupled weight decay; 0 = none.
      weight_averaging: 'ema': the phase ends with an exponential moving average of its weights
        (Keras's optimizer EMA); 'none'.
    """

    name: str
    unfreeze: str
    epochs: int
    lr: float
    optimizer: str = "adam"
    early_stopping_patience: int = 0
    lr_schedule: LRSchedule = LRSchedule()
    layer_decay: float = 1.0
    layer_decay_groups: int = 0
    head_lr_ratio: float = 1.0
    augment: bool = True
    weight_decay: float = 0.0
    weight_averaging: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Phase:
        values = dict(values)
        if isinstance(values.get("lr_schedule"), Mapping):
            values["lr_schedule"] = LRSchedule(**values["lr_schedule"])
        return cls(**values)

    @property
    def trains_base(self) -> bool:
        """Whether any part of the base trains (the learning-rate factor rule applies)."""
        return parse_unfreeze(self.unfreeze).kind != "none"

    @property
    def per_variable_rates(self) -> bool:
        """Whether variables train at rates of their own (`layer_decay`, `head_lr_ratio`)."""
        return self.trains_base and (self.layer_decay != 1.0 or self.head_lr_ratio != 1.0)


# --- stages: the schedule as data -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage as the user wrote it; `build_schedule` turns it into a `Phase`.

    Attributes:
      name: the stage's name (a `--phase` value and a workdir folder).
      unfreeze: canonical unfreeze spec.
      epochs: the most epochs of the stage.
      lr_factor: the stage trains at `lr / lr_factor`; None = the default (see module docstring).
      schedule: the stage's LR schedule; None = the config's `lr_schedule`.
    """

    name: str
    unfreeze: str
    epochs: int
    lr_factor: float | None = None
    schedule: str | None = None

    def __str__(self) -> str:
        parts = [self.name, self.unfreeze, str(self.epochs)]
        if self.lr_factor is not None:
            parts.append(f"/{self.lr_factor:g}")
        if self.schedule is not None:
            parts.append(self.schedule)
        return ":".join(parts)


def _stage_error(text: str, why: str) -> ConfigError:
    return ConfigError(f"stages: {text!r} {why}; write {STAGES_GRAMMAR}")


def _check_stage_name(name: str, text: str) -> None:
    if not re.fullmatch(STAGE_NAME_PATTERN, name):
        raise _stage_error(text, f"has the name {name!r}: use letters, digits, '_' or '-'")
    if name in RESERVED_STAGE_NAMES:
        raise _stage_error(
            text, f"uses the reserved name {name!r} ({', '.join(RESERVED_STAGE_NAMES)})"
        )


def _parse_factor(token: str, text: str) -> float:
    try:
        factor = float(token[1:])
    except ValueError:
        raise _stage_error(text, f"has the factor {token!r}: write /NUMBER, e.g. /20") from None
    if not (math.isfinite(factor) and factor > 0):
        raise _stage_error(text, f"has the factor {token!r}: it must be a positive number")
    return factor


def parse_stage(text: str) -> Stage:
    """Parses one stage `NAME:UNFREEZE:EPOCHS[:/FACTOR][:SCHEDULE]` (see STAGES_GRAMMAR).

    Raises:
      ConfigError: naming the stage text and the grammar.
    """
    tokens = [t.strip() for t in text.strip().split(":")]
    if len(tokens) < 3:
        raise _stage_error(text, "has too few parts")
    name, rest = tokens[0], tokens[1:]
    _check_stage_name(name, text)
    width = 1 if rest[0].lower() in ("none", "all") else 2
    try:
        unfreeze = str(parse_unfreeze(":".join(rest[:width])))
    except ConfigError as e:
        raise _stage_error(text, f"has a bad UNFREEZE ({e})") from None
    rest = rest[width:]
    if not rest or not rest[0].isdecimal():  # what int() reads ('²' is a digit, not decimal)
        got = repr(rest[0]) if rest else "nothing"
        raise _stage_error(text, f"needs EPOCHS (a whole number) after {unfreeze!r}, not {got}")
    epochs, factor, schedule = int(rest[0]), None, None
    for token in rest[1:]:
        if token.startswith("/") and factor is None:
            factor = _parse_factor(token, text)
        elif token in LR_SCHEDULES and schedule is None:
            schedule = token
        else:
            raise _stage_error(text, f"has {token!r} where /FACTOR or a SCHEDULE may follow EPOCHS")
    return Stage(name, unfreeze, epochs, factor, schedule)


def check_stages_grow(stages: Sequence[Stage]) -> None:
    """Refuses a sequence in which a stage unfreezes less than the stage before it.

    Gradual unfreezing only adds layers: head-only stages come first, 'all' can only be followed
    by 'all', and two stages of the same kind ('blocks', 'layers', 'fraction') must not shrink.
    Stages of different kinds are not compared (that needs the model).

    Raises:
      ConfigError: naming both stages.
    """
    for before, after in zip(stages, stages[1:], strict=False):
        a, b = parse_unfreeze(before.unfreeze), parse_unfreeze(after.unfreeze)
        shrinks = (
            (b.kind == "none" and a.kind != "none")
            or (a.kind == "all" and b.kind != "all")
            or (a.kind == b.kind and b.amount < a.amount)
        )
        if shrinks:
            raise ConfigError(
                f"stages: {after.name!r} unfreezes {b}, less than {before.name!r} before it "
                f"({a}); in gradual unfreezing each stage trains at least what the previous one "
                "did. Reorder the stages or change their UNFREEZE"
            )


def parse_stages(text: str) -> list[Stage]:
    """Parses a whole stage list (see STAGES_GRAMMAR) and checks names and growth.

    Raises:
      ConfigError: a malformed stage, a repeated name, or a stage that unfreezes less than the
        stage before it.
    """
    stages = [parse_stage(part) for part in text.split(",") if part.strip()]
    if not stages:
        raise ConfigError(f"stages={text!r} has no stage; write {STAGES_GRAMMAR}")
    names = [s.name for s in stages]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"stages: the name(s) {', '.join(repeated)} appear more than once")
    check_stages_grow(stages)
    return stages


_STAGE_TABLE_KEYS = ("name", "unfreeze", "epochs", "lr_factor", "schedule")


def stages_from_tables(tables: Sequence[Mapping[str, Any]], source: str = "config") -> str:
    """Turns a TOML array of tables (`[[stages]]`) into the one-line stage grammar.

    Each table has `name`, `unfreeze` and `epochs`, optionally `lr_factor` and `schedule`.

    Raises:
      ConfigError: a table misses a key, has an unknown one, or a value does not parse.
    """
    parts = []
    for i, table in enumerate(tables, start=1):
        if not isinstance(table, Mapping):
            raise ConfigError(f"stages in {source}: entry {i} is {table!r}, not a table")
        for key in table:
            if key not in _STAGE_TABLE_KEYS:
                raise ConfigError(
                    f"stages in {source}: table {i} has the unknown key {key!r}"
                    f"{did_you_mean(key, _STAGE_TABLE_KEYS)}; keys: {', '.join(_STAGE_TABLE_KEYS)}"
                )
        missing = [k for k in ("name", "unfreeze", "epochs") if k not in table]
        if missing:
            raise ConfigError(f"stages in {source}: table {i} needs {', '.join(missing)}")
        text = f"{table['name']}:{table['unfreeze']}:{table['epochs']}"
        if table.get("lr_factor") is not None:
            text += f":/{table['lr_factor']}"
        if table.get("schedule") is not None:
            text += f":{table['schedule']}"
        parts.append(str(parse_stage(text)))
    return ",".join(parts)


DEFAULT_PHASES = ("fe", "ft")  # the phases of a config without `stages`


def default_stages(config: Any) -> list[Stage]:
    """The two-phase schedule `fe` then `ft` that a config without `stages` describes."""
    fe, ft = DEFAULT_PHASES
    return [
        Stage(fe, "none", config.epochs_fe),
        Stage(ft, str(parse_unfreeze(config.unfreeze)), config.epochs_ft),
    ]


def stage_lr_factor(config: Any, stage: Stage, unfreezing_index: int) -> float:
    """The factor a stage's learning rate is `lr / factor` by (see the module docstring).

    Args:
      config: the config (`ft_lr_factor`, `stage_lr_decay`).
      stage: the stage.
      unfreezing_index: j for the j-th stage (0-based) that unfreezes part of the base.
    """
    if stage.lr_factor is not None:
        return stage.lr_factor
    if parse_unfreeze(stage.unfreeze).kind == "none":
        return 1.0
    return config.ft_lr_factor * config.stage_lr_decay**unfreezing_index


# LRSchedule's attributes whose config field has another name (`build_schedule` maps them).
_SCHEDULE_FIELDS = {
    "step_every": "lr_step_every",
    "gamma": "lr_step_gamma",
    "plateau_patience": "lr_plateau_patience",
    "plateau_factor": "lr_plateau_factor",
}


def check_lr_schedule(phase: Phase) -> None:
    """Checks a phase's LR schedule without building it, so bad values fail before training.

    Raises:
      ConfigError: naming the phase, the value and what is allowed.
    """
    s = phase.lr_schedule

    def bad(field: str, allowed: str) -> ConfigError:
        name = _SCHEDULE_FIELDS.get(field, field)  # the config field (and flag) a user sets
        return ConfigError(
            f"phase {phase.name!r}: {name}={getattr(s, field)!r} is not allowed: {allowed}"
        )

    if s.name not in LR_SCHEDULES:
        raise ConfigError(
            f"phase {phase.name!r}: lr_schedule={s.name!r} is unknown; use one of "
            f"{', '.join(LR_SCHEDULES)}"
        )
    if not (math.isfinite(s.warmup_epochs) and s.warmup_epochs >= 0):
        raise bad("warmup_epochs", "use 0 or a positive number of epochs")
    if s.warmup_epochs > 0 and s.name not in WARMUP_SCHEDULES:
        raise bad("warmup_epochs", f"schedule {s.name!r} has no warm-up; use 'cosine' or 0")
    if s.warmup_epochs > 0 and phase.epochs and s.warmup_epochs >= phase.epochs:
        raise bad(
            "warmup_epochs",
            f"it must be shorter than the phase's {phase.epochs} epochs (fractions are fine)",
        )
    if not 0.0 <= s.min_lr_ratio <= 1.0:
        raise bad("min_lr_ratio", "use a fraction of lr in [0, 1]")
    if s.step_every < 1:
        raise bad("step_every", "use a whole number of epochs >= 1")
    if not 0.0 < s.gamma <= 1.0:
        raise bad("gamma", "use a factor in (0, 1]")
    if s.plateau_patience < 0:
        raise bad("plateau_patience", "use 0 or more epochs")
    if not 0.0 < s.plateau_factor < 1.0:
        raise bad("plateau_factor", "use a factor in (0, 1)")


def phase_names(config: Any) -> list[str]:
    """The names of the phases a config asks for, in order: its stages', or `fe` and `ft`.

    Nothing the recipe decides changes them, so they are known before its card is.
    """
    if config.stages:
        return [stage.name for stage in parse_stages(config.stages)]
    return [DEFAULT_PHASES[0], DEFAULT_PHASES[1]]


def build_schedule(config: Any) -> list[Phase]:
    """Returns the ordered phases a config asks for: its `stages`, or `fe` then `ft`.

    Every phase gets the config's optimizer, LR schedule (a stage may name its own) and
    `layer_decay`. Head-only phases stop early after `fe_switch_patience` epochs without
    improvement when that is set (the switch from `fe` to `ft`), else `early_stopping_patience`.

    Args:
      config: a `tl_keras.config.Config` (anything with its fields), decided: nothing left
        'auto' (`tl_keras.config.filled` fills a config; `tl_keras.build_schedule` takes one
        as it is).

    Raises:
      ConfigError: a setting still 'auto', a bad stage list, a learning-rate factor outside
        [10, 100] for a stage that unfreezes part of the base (unless `allow_any_lr_factor`),
        or a bad schedule value.
    """
    undecided = [f for f in auto.AUTO_FIELDS if auto.is_auto(getattr(config, f, None))]
    if undecided:
        raise ConfigError(
            f"{', '.join(undecided)} still 'auto': the recipe decides them, so build the schedule "
            "of a decided config (tl_keras.build_schedule takes a config as given)"
        )
    stages = parse_stages(config.stages) if config.stages else default_stages(config)
    phases, unfreezing = [], 0
    for stage in stages:
        factor = stage_lr_factor(config, stage, unfreezing)
        head_only = parse_unfreeze(stage.unfreeze).kind == "none"
        if head_only:
            if not (math.isfinite(factor) and factor > 0):
                raise ConfigError(f"stage {stage.name!r}: factor {factor!r} must be positive")
            lr = config.lr / factor
        elif config.stages:
            try:
                lr = ft_learning_rate(config.lr, factor, allow_any=config.allow_any_lr_factor)
            except ConfigError as e:
                how = (
                    f"/{factor:g} given in the stage"
                    if stage.lr_factor is not None
                    else f"ft_lr_factor {config.ft_lr_factor:g} * stage_lr_decay "
                    f"{config.stage_lr_decay:g}**{unfreezing}"
                )
                raise ConfigError(
                    f"stage {stage.name!r} (its lr factor {factor:g} = {how}): "
                    + str(e).replace(f"ft_lr_factor={factor:g} ", "the factor ", 1)
                ) from None
        else:
            lr = ft_learning_rate(config.lr, factor, allow_any=config.allow_any_lr_factor)
        unfreezing += 0 if head_only else 1
        patience = config.early_stopping_patience
        if head_only and config.fe_switch_patience:
            patience = config.fe_switch_patience
        phase = Phase(
            stage.name,
            stage.unfreeze,
            stage.epochs,
            lr,
            optimizer=config.optimizer,
            early_stopping_patience=patience,
            lr_schedule=LRSchedule(
                name=stage.schedule or config.lr_schedule,
                warmup_epochs=config.warmup_epochs,
                min_lr_ratio=config.min_lr_ratio,
                step_every=config.lr_step_every,
                gamma=config.lr_step_gamma,
                plateau_patience=config.lr_plateau_patience,
                plateau_factor=config.lr_plateau_factor,
            ),
            layer_decay=config.layer_decay,
            layer_decay_groups=config.layer_decay_groups,
            head_lr_ratio=1.0 if head_only else config.head_lr_ratio,
            augment=getattr(config, "augment_phases", "all") == "all" or not head_only,
            weight_decay=getattr(config, "weight_decay", 0.0),
            weight_averaging="none" if head_only else getattr(config, "weight_averaging", "none"),
        )
        check_lr_schedule(phase)
        phases.append(phase)
    return phases


def _name(phase: Phase | str) -> str:
    return phase if isinstance(phase, str) else phase.name


def select_phases(schedule: Sequence[Phase | str], phase: str) -> list:
    """Returns the phases to run for `--phase`: 'all' or one phase's name.

    `schedule` holds phases or their names (a run's plan knows only the names until its recipe
    card decides the rest); the answer holds the same.

    Raises:
      ConfigError: no phase has that name.
    """
    names = [_name(p) for p in schedule]
    if phase == "all":
        return list(schedule)
    if phase not in names:
        raise ConfigError(
            f"--phase={phase!r} is not a phase of this schedule; use one of all, {', '.join(names)}"
        )
    return [schedule[names.index(phase)]]


def previous_phase(schedule: Sequence[Phase | str], phase: Phase | str) -> Phase | str | None:
    """Returns the phase (or name) before `phase` in the schedule, or None for the first."""
    names = [_name(p) for p in schedule]
    i = names.index(_name(phase))
    return schedule[i - 1] if i else None
