"""Generated inputs of `python -m tl_keras.train` and the property every one of them must keep.

Shared by tests/test_fuzz_config.py (a fixed budget in the suite) and benchmarks/fuzz_config.py
(a large one). A case is a command line (flags named from the config's own field list, plus
--phase, --resume, --overwrite, --config, the --unfreeze shortcuts, unknown flags, stray
arguments), maybe a TOML file it names, and the state of the workdir it points at (missing,
empty, a run whose `fe` is done, a finished run: the small files a plan reads, written here).

`run_case` runs the command in this process, as `python -m tl_keras.train` would, up to the
moment it has decided everything: absl parses the flags (`app.parse_flags_with_usage`, what
`app.run` calls), the command's `main` merges and resolves the config, and the runner's
`train`, replaced here, plans the run (`tl_keras.training.plan.plan_run`: the phases, every
refusal that reads the workdir), does with the values what the runner does next without
TensorFlow (seed NumPy, look up the paths), and stops before data, the lock or TensorFlow.
`check_outcome` is the property:

- the command planned a run (nothing refused); or
- it refused with exit status 2 and exactly one line `error: ...` on stderr that names what
  was given at fault (a field or flag given, a TOML key, the config file, the workdir); or
- absl refused the flags themselves (an unknown flag, a value its type cannot parse): exit
  status 1 and one `FATAL Flags parsing error:` line naming the flag (docs/bad_inputs.md,
  `unknown-flag`; before `main` runs);

never a traceback, and the workdir as it was (no file written, changed or removed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import pathlib
import re
import shutil
import tempfile
import traceback
import types

from hypothesis import strategies as st

from tl_keras import config as config_lib
from tl_keras.recipe import auto as auto_recipe

FIELDS = tuple(config_lib.FIELDS)
SHORTCUTS = ("unfreeze_layers", "unfreeze_blocks", "unfreeze_fraction")

# The smallest real run: what every generated command starts from (tests/test_bad_inputs.py).
BASE = {
    "data_dir": "synthetic",
    "synthetic_images_per_class": 4,
    "backbone": "mobilenet",
    "alpha": 0.25,
    "weights": "none",
    "image_size": 32,
    "batch_size": 8,
    "epochs_fe": 1,
    "epochs_ft": 1,
    "head_units": 8,
}

# Values each field takes that combine with any other value listed here and with BASE: a
# command of only these must plan a run. (Literals, not the package's lists, so a list that
# loses a name is caught.)
VALID: dict[str, list] = {
    "data_dir": ["synthetic", "photos", "tfds:beans", "data.npz"],
    "val_dir": ["", "val"],
    "test_dir": ["", "test"],
    "tfds_data_dir": ["", "tfds"],
    "train_split": ["train", "train[:80%]"],
    "val_split": ["", "validation"],
    "test_split": ["", "test"],
    "val_fraction": [0.2, 0.1, 0.5],
    "batch_size": [1, 8, 32],
    "resize_method": ["bilinear", "nearest", "bicubic", "area", "lanczos3", "mitchellcubic"],
    "resize_mode": ["stretch", "crop", "pad", "crop_or_pad"],
    "cache": ["none", "memory", "file"],
    "max_skipped_fraction": [0.0, 0.05, 1.0],
    "augment": ["auto", "none", "light", "strong"],
    "augment_phases": ["auto", "all", "base"],
    "mixup": [0.0, 0.2],
    "cutmix": [0.0, 0.5, 1.0],
    "label_smoothing": ["auto", 0.0, 0.1],
    "synthetic_images_per_class": [2, 4, 60],
    "backbone": ["mobilenet", "MobileNet", "mobilenet_v2", "Mobilenet-V2"],
    "alpha": [0.25, 0.5, 1.0],
    "weights": ["none", "None", ""],
    "image_size": [32, 64, 96],
    "head_units": [0, 8, 128],
    "dropout": [0.0, 0.2, 0.5],
    "bn_policy": ["frozen", "train"],
    "recipe": ["auto", "manual"],
    "time_budget": ["", "90s", "10m", "1.5h", "1h30m", "600"],
    "lr": ["auto", 0.001, 0.0003, 1.0],
    "ft_lr_factor": ["auto", 10.0, 30, 100],
    "allow_any_lr_factor": [False, True],
    "epochs_fe": ["auto", 0, 1, 3],
    "epochs_ft": ["auto", 1, 3],
    "unfreeze": ["auto", "all", "blocks:2", "layers:10", "fraction:0.5", "none"],
    "optimizer": ["adam", "adamw", "sgd", "rmsprop"],
    "early_stopping_patience": [0, 2],
    "stages": ["", "fe:none:2,ft1:blocks:2:2,ft2:blocks:4:2", "fe:none:1,ft:all:1:/20:cosine"],
    "stage_lr_decay": [1.0, 2.0],
    "layer_decay": ["auto", 1.0],
    "head_lr_ratio": ["auto", 1.0, 10],
    "layer_decay_groups": [0, 1, 2],
    "lr_schedule": ["auto", "constant", "cosine", "step", "plateau"],
    "warmup_epochs": ["auto", 0, 0.0],
    "min_lr_ratio": [0.0, 0.01, 1.0],
    "lr_step_every": [1, 3],
    "lr_step_gamma": [0.1, 1.0],
    "lr_plateau_patience": [0, 2],
    "lr_plateau_factor": [0.1, 0.5],
    "fe_switch_patience": ["auto", 0, 2],
    "class_weight": ["none", "balanced"],
    "weight_decay": ["auto", 0.0, 0.05],
    "weight_averaging": ["auto", "none"],
    "tta": ["auto", "none", "flip"],
    "rollback": ["", "val_accuracy", "val_loss"],
    "doctor": ["auto", "off"],
    "feature_cache": ["memory", "file", "off"],
    "precision": ["float32", "mixed", "mixed_float16", "mixed_bfloat16"],
    "jit_compile": ["auto", "on", "off"],
    "strategy": ["default", "mirrored"],
    "logical_cpus": [0, 2],
    "scale_lr_with_replicas": [False, True],
    "seed": [0, 1, 12345],
    "progress": ["auto", "bar", "lines"],
    "checkpoint_every": [0.0, 30.0, 1.5],
    "tensorboard": [False, True],
    "csv_log": [False, True],
}

# One value per field that is wrong whatever else is given, and the kind of wrong it is: a
# command of valid values and one of these must be refused, naming that field.
INVALID: dict[str, list] = {
    "data_dir": ["a\x00b"],  # a TOML string may hold a NUL; a command line cannot
    "weights": ["a\x00b"],
    "val_fraction": [-0.1, 1.0, math.nan, "abc"],
    "batch_size": [0, -1, 10**400],
    "resize_method": ["cubic", ""],
    "resize_mode": ["zoom", ""],
    "cache": ["disk", ""],
    "max_skipped_fraction": [-0.01, 1.5, math.nan],
    "augment": ["heavy", ""],
    "augment_phases": ["head", ""],
    "mixup": [-0.2, math.inf, math.nan],
    "cutmix": [-0.1, 1.5, math.nan],
    "label_smoothing": [-0.1, 1.0, "abc", math.nan],
    "synthetic_images_per_class": [1, 0, -5],
    "backbone": ["resnet50", "", "hub:", "mobilenet_v9"],
    "alpha": [0.0, -1.0, math.nan, math.inf],
    "image_size": [16, -32, 1, 10**400],
    "head_units": [-1],
    "dropout": [1.0, -0.1, math.nan],
    "bn_policy": ["trainable", ""],
    "recipe": ["fast", ""],
    "time_budget": ["10 minutes", "-5m", "0", "inf", "nan", "h", "1e400"],
    "lr": [0.0, -1e-3, math.inf, math.nan, "fast", 10**400],
    "ft_lr_factor": [5, 500, 0, -10, math.nan, "x"],
    "epochs_fe": [-1, "many", 1.5],
    "epochs_ft": [-1, "many", 2.5],
    "unfreeze": ["top:3", "blocks:0", "blocks:1.5", "fraction:0", "fraction:2", "layers:x", ""],
    "optimizer": ["adagrad", ""],
    "early_stopping_patience": [-1],
    "stages": ["fe", "fe:none", "fe:none:x", "fe:none:²", "all:none:1", "fe:none:1,fe:all:1"],
    "stage_lr_decay": [0.0, -2.0, math.nan, math.inf],
    "layer_decay": [0.0, 1.5, -0.5, math.nan],
    "head_lr_ratio": [0.5, 0.0, math.nan, 1000],
    "layer_decay_groups": [-1],
    "lr_schedule": ["linear", ""],
    "warmup_epochs": [-1, math.nan, "x"],
    "min_lr_ratio": [-0.1, 1.5, math.nan],
    "lr_step_every": [0, -1],
    "lr_step_gamma": [0.0, 1.5, math.nan],
    "lr_plateau_patience": [-1],
    "lr_plateau_factor": [0.0, 1.0, math.nan],
    "fe_switch_patience": [-1, "x"],
    "class_weight": ["inverse", ""],
    "weight_decay": [-0.1, math.nan, math.inf],
    "weight_averaging": ["swa", ""],
    "tta": ["crop", ""],
    "rollback": ["accuracy", "loss"],
    "doctor": ["full", ""],
    "feature_cache": ["disk", ""],
    "precision": ["float16", ""],
    "jit_compile": ["yes", ""],
    "strategy": ["horovod", ""],
    "logical_cpus": [1, -2],
    "seed": [-1, 2**32, 2**80],
    "progress": ["quiet", ""],
    "checkpoint_every": [-1.0, math.inf, math.nan],
}

# A field that makes another's bad value good: ft_lr_factor=5 is fine with allow_any_lr_factor.
_EXCUSES = {"ft_lr_factor": ("allow_any_lr_factor",)}

# Text that any field may be given on the command line.
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
_NUMBER_TEXT = st.sampled_from(
    ["0", "-0", "1", "-1", "1.5", "-2.5", "1e400", "-1e400", "1e-400", "inf", "-inf", "nan",
     "NaN", "9" * 30, "-" + "9" * 30, "1_000", "0x10", "1e3", " 7", "7 ", "٣", "²", "１"]
)  # fmt: skip
_WORDS = st.sampled_from(["auto", "", " ", "none", "None", "true", "false", "all", "x" * 2000])


def _field_type(name: str) -> type:
    if name in auto_recipe.AUTO_FIELDS:
        return auto_recipe.field_types()[name]
    return type(config_lib.FIELDS[name].default)


def _text(value) -> str:
    """A value as a flag's text (floats as Python writes them: nan, inf, 1e-05)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@st.composite
def any_value_text(draw, name: str) -> str:
    """Any text for a field's flag: mostly its listed values, valid and invalid (so most
    commands get past absl's parsing to the config's checks), else numbers, words, unicode."""
    pool = draw(st.integers(0, 9))
    if pool < 6:
        listed = VALID.get(name, [""]) + INVALID.get(name, [])
        return draw(st.sampled_from([_text(v) for v in listed]))
    if pool < 8:
        return draw(st.one_of(_NUMBER_TEXT, _WORDS))
    return draw(_TEXT)


# --- TOML ------------------------------------------------------------------------------------
def toml_value(value) -> str:
    """`value` written as TOML (a string, number, bool, datetime, array or inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXT,
    st.sampled_from(["auto", "", "none", "blocks:2", "10m", "a\x00b", 10**400]),
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(microsecond=0)),
)
_TOML_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["name", "unfreeze", "epochs", "x"]), inner, max_size=3),
    ),
    max_leaves=6,
)

_STAGE_TABLE = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["fe", "ft", "ft1", "ft2", "all", "9x", "é", ""]),
        "unfreeze": st.sampled_from(["none", "all", "blocks:2", "blocks:4", "layers:x", "top"]),
        "epochs": st.one_of(st.integers(-2, 5), st.sampled_from(["2", "²", "x", 1.5])),
        "lr_factor": st.one_of(st.floats(allow_nan=True), st.integers(-5, 200), st.just("x")),
        "schedule": st.sampled_from(["cosine", "constant", "linear"]),
        "epoch": st.just(1),
    },
)


@st.composite
def toml_case(draw) -> tuple[bytes, set[str]]:
    """A TOML file's bytes and the top-level names it gives (valid, invalid, broken)."""
    names = draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True))
    values = {}
    for name in names:
        kind = draw(st.sampled_from(["valid", "invalid", "any"]))
        if kind == "valid" or (kind == "invalid" and name not in INVALID):
            values[name] = draw(st.sampled_from(VALID[name]))
        elif kind == "invalid":
            values[name] = draw(st.sampled_from(INVALID[name]))
        else:
            values[name] = draw(_TOML_VALUES)
    unknown = draw(
        st.lists(st.sampled_from(["epochs_fee", "lr_rate", "Backbone", "x"]), max_size=1)
    )
    for name in unknown:
        values[name] = draw(_SCALARS)
    lines = [f"{name} = {toml_value(v)}" for name, v in values.items()]
    given = set(values)
    tables = draw(st.sampled_from(["none", "stages", "nested", "stages_bad"]))
    if tables == "stages":
        given.add("stages")
        for table in draw(st.lists(_STAGE_TABLE, min_size=1, max_size=3)):
            lines.append("[[stages]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    elif tables == "nested":
        section = draw(st.sampled_from(["data", "model", "lr", "stages"]))
        given.add(section)
        lines += [f"[{section}]", f"{draw(st.sampled_from(FIELDS))} = 1"]
    elif tables == "stages_bad":
        given.add("stages")
        lines.append(f"stages = {toml_value(draw(st.lists(_SCALARS, min_size=1, max_size=2)))}")
    text = "\n".join(lines) + "\n"
    if "stages" in values and "[[stages]]" in text:
        # A key and tables of one name are TOML's own error (the "junk" damage makes those):
        # here the tables go under an unknown name instead, for the config to refuse.
        text = text.replace("[[stages]]", "[[stagez]]")
        given.add("stagez")
    data = text.encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none"] * 6 + ["cut", "junk", "latin1", "deep", "bom", "long"]))
    if damage == "cut":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "junk":
        at = draw(st.integers(0, len(data)))
        data = (
            data[:at]
            + draw(st.sampled_from([b"=", b"[", b'"', b"\n[x\n", b"= =", b"\\"]))
            + data[at:]
        )
    elif damage == "latin1":
        data += b'backbone = "caf\xe9"\n'
        given.add("backbone")
    elif damage == "deep":
        depth = draw(st.sampled_from([50, 5000]))
        data += b"lr = " + b"[" * depth + b"]" * depth + b"\n"
        given.add("lr")
    elif damage == "long":  # an integer of more digits than Python converts
        data += b"batch_size = " + b"9" * draw(st.sampled_from([400, 5000])) + b"\n"
        given.add("batch_size")
    elif damage == "bom":
        data = "\ufeff".encode() + data
    return data, given


# --- command lines ---------------------------------------------------------------------------
STATES = ("missing", "empty", "fe_done", "finished")


@dataclasses.dataclass
class Case:
    """One command: its flags, the TOML file it names (bytes) and the workdir's state."""

    flags: list[str]
    state: str = "empty"
    toml: bytes | None = None
    given: set[str] = dataclasses.field(default_factory=set)  # names an error may blame
    bad_field: str | None = None  # the one field given a wrong value, when that is the case
    must_plan: bool = False  # every value valid: the command must plan a run

    def describe(self) -> str:
        toml = "" if self.toml is None else f" with TOML {self.toml[:300]!r}"
        return f"[{self.state}] {' '.join(self.flags)}{toml}"


def _flag(name: str, text: str) -> str:
    return f"--{name}={text}"


def _base_flags(skip: set[str]) -> list[str]:
    return [_flag(k, _text(v)) for k, v in BASE.items() if k not in skip]


@st.composite
def valid_case(draw) -> Case:
    """Only valid values: the command must plan a run (a fresh workdir, or an empty one)."""
    names = draw(st.lists(st.sampled_from(FIELDS), max_size=8, unique=True))
    values = {name: draw(st.sampled_from(VALID[name])) for name in names}
    if values.get("rollback") and values.get("val_fraction") == 0:
        values["val_fraction"] = 0.2
    flags = _base_flags(set(values)) + [_flag(k, _text(v)) for k, v in values.items()]
    return Case(flags, draw(st.sampled_from(["missing", "empty"])), must_plan=True)


@st.composite
def one_bad_field_case(draw) -> Case:
    """Valid values and one field given a value that is wrong whatever else is given."""
    bad = draw(st.sampled_from(sorted(INVALID)))
    others = [f for f in FIELDS if f not in (bad, *_EXCUSES.get(bad, ()))]
    names = draw(st.lists(st.sampled_from(others), max_size=4, unique=True))
    values = {name: draw(st.sampled_from(VALID[name])) for name in names}
    values[bad] = draw(st.sampled_from(INVALID[bad]))
    via_toml = draw(st.booleans()) or "\x00" in str(values[bad])
    if via_toml:
        toml = "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()).encode()
        return Case(_base_flags(set(values)), "empty", toml, set(values), bad_field=bad)
    flags = _base_flags(set(values)) + [_flag(k, _text(v)) for k, v in values.items()]
    return Case(flags, "empty", None, set(values), bad_field=bad)


@st.composite
def any_case(draw) -> Case:
    """Anything: flags with any text, the run flags, a TOML file, any workdir state."""
    names = draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True))
    flags, given = [], set()
    for name in names:
        if _field_type(name) is bool and draw(st.booleans()):
            flags.append(draw(st.sampled_from([f"--{name}", f"--no{name}"])))
        else:
            flags.append(_flag(name, draw(any_value_text(name))))
        given.add(name)
    extras = draw(
        st.lists(
            st.sampled_from(
                ["phase", "resume", "overwrite", "shortcut", "unknown", "positional", "workdir"]
            ),
            max_size=3,
            unique=True,
        )
    )
    for extra in extras:
        if extra == "phase":
            flags.append(_flag("phase", draw(st.sampled_from(["all", "fe", "ft", "ft1", "x", ""]))))
            given.add("phase")
        elif extra in ("resume", "overwrite"):
            flags.append(draw(st.sampled_from([f"--{extra}", f"--no{extra}", f"--{extra}=maybe"])))
            given.add(extra)
        elif extra == "shortcut":
            name = draw(st.sampled_from(SHORTCUTS))
            flags.append(_flag(name, draw(st.sampled_from(["2", "0", "-1", "0.5", "x", "1e400"]))))
            given |= {name, "unfreeze"}
        elif extra == "unknown":
            name = draw(st.sampled_from(["epochs_fee", "learning_rate", "Lr", "phases"]))
            flags.append(_flag(name, "1"))
            given.add(name)
        elif extra == "positional":
            flags.append(draw(st.sampled_from(["train", "fe", "--", "x=1"])))
            given.add("arguments")
        elif extra == "workdir":
            given.add("workdir")
    toml, toml_given = None, set()
    if draw(st.booleans()):
        toml, toml_given = draw(toml_case())
        given |= toml_given | {"config"}
    keep_base = draw(st.booleans())
    base = _base_flags(set(names)) if keep_base else []
    state = draw(st.sampled_from(STATES))
    return Case(base + flags, state, toml, given | {"workdir"})


# --- running a case --------------------------------------------------------------------------
class Planned(Exception):  # noqa: N818  (the command got as far as it may go here)
    """Raised by the stand-in runner: the command planned a run."""

    def __init__(self, spec, plan):
        super().__init__("planned")
        self.spec, self.plan = spec, plan


def _stand_in_train(spec, workdir, *, phase="all", overwrite=False, resume=False, **_):
    """The runner's `train` up to its plan: what it decides before the lock, data or TensorFlow."""
    from tl_keras.training import plan as plan_lib

    plan = plan_lib.plan_run(spec, workdir, phase=phase, overwrite=overwrite, resume=resume)
    _runner_next(getattr(spec, "given", None) or spec.config)
    raise Planned(spec, plan)


def _runner_next(config) -> None:
    """What the runner does next with a planned config's values that needs no TensorFlow: seed
    NumPy (`keras.utils.set_random_seed`), look at the paths it names (a path that does not
    exist is the data's refusal, later; one the OS cannot even look up is a crash)."""
    import numpy as np

    np.random.seed(config.seed)
    for name in ("data_dir", "val_dir", "test_dir", "tfds_data_dir", "weights"):
        with contextlib.suppress(OSError):
            os.stat(getattr(config, name))


STAND_IN_RUNNER = types.SimpleNamespace(train=_stand_in_train)


@dataclasses.dataclass
class Outcome:
    status: int  # the exit status the command would end with (0: it planned a run)
    stderr: str
    planned: bool = False
    crash: str | None = None  # a traceback: what escaped the command's error handling


def _flag_values():
    """absl's flags as `python -m tl_keras.train` defines them, and only those: a test that ran
    another command in this process (tests/inprocess.py) may have left that command's."""
    from absl import flags
    from inprocess import fresh_flags

    from tl_keras.cli import train as train_cli

    fresh_flags(train_cli.define_flags)
    return flags.FLAGS


def run_argv(argv: list[str]) -> Outcome:
    """Runs `python -m tl_keras.train ARGV` in this process, the runner replaced by its plan."""
    from absl import app

    from tl_keras import training
    from tl_keras.cli import train as train_cli

    FLAGS = _flag_values()
    FLAGS.unparse_flags()  # every flag back to its default, as in a new process
    err, out = io.StringIO(), io.StringIO()
    saved = getattr(training, "runner", None)
    training.runner = STAND_IN_RUNNER  # `from tl_keras.training import runner` finds it
    try:
        with _logger_kept(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rest = app.parse_flags_with_usage(["tl_keras.train", *argv])
            except SystemExit as e:  # absl refused the flags
                return Outcome(int(e.code or 0), err.getvalue())
            try:
                status = train_cli.main(rest)
            except Planned:
                return Outcome(0, err.getvalue(), planned=True)
            except BaseException:  # noqa: BLE001  (what a user would see as a traceback)
                return Outcome(1, err.getvalue(), crash=traceback.format_exc())
            return Outcome(status, err.getvalue())
    finally:
        if saved is None:
            del training.runner
        else:
            training.runner = saved
        FLAGS.unparse_flags()


@contextlib.contextmanager
def _logger_kept():
    """The command's log lines off (not the property's business), and the `tl_keras` logger as
    it was afterwards: `main` gives it a handler on this case's stdout and stops propagation,
    which other tests in this process (caplog) must not inherit."""
    import logging

    logger = logging.getLogger("tl_keras")
    saved = (list(logger.handlers), logger.propagate, logger.level, logger.disabled)
    logger.disabled = True
    try:
        yield
    finally:
        logger.handlers[:] = saved[0]
        logger.propagate, logger.level, logger.disabled = saved[1:]


def _fabricate(folder: pathlib.Path, phases: list[str]) -> None:
    """The small files a plan reads, as a run of BASE with these phases done leaves them."""
    folder.mkdir(parents=True)
    cfg = config_lib.replace(config_lib.Config(), BASE)
    (folder / "config.json").write_text(config_lib.to_json(cfg))
    run = {
        "format": 1,
        "backbone": "mobilenet",
        "alpha": 0.25,
        "image_size": 32,
        "head_units": 8,
        "dropout": 0.2,
        "weights": None,
        "precision": "float32",
        "class_names": ["circle", "square", "triangle"],
        "phases": {p: {"last_epoch": i + 1, "first_epoch": i + 1} for i, p in enumerate(phases)},
    }
    (folder / "run.json").write_text(json.dumps(run))


def _snapshot(folder: pathlib.Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class Sandbox:
    """A scratch folder for cases: each case's workdir, its TOML file, from the state's template."""

    def __init__(self):
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="tl_keras-fuzz-"))
        self.templates = self.root / "templates"
        _fabricate(self.templates / "fe_done", ["fe"])
        _fabricate(self.templates / "finished", ["fe", "ft"])
        self.count = 0

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def prepare(self, case: Case) -> tuple[list[str], pathlib.Path]:
        self.count += 1
        place = self.root / f"case{self.count}"
        place.mkdir()
        workdir = place / "run"
        if case.state == "empty":
            workdir.mkdir()
        elif case.state in ("fe_done", "finished"):
            shutil.copytree(self.templates / case.state, workdir)
        argv = list(case.flags)
        if case.toml is not None:
            path = place / "config.toml"
            path.write_bytes(case.toml)
            argv.insert(0, f"--config={path}")
            case.given.add(str(path))
        if "workdir" not in case.given or case.bad_field or case.must_plan:
            argv.append(f"--workdir={workdir}")
        else:  # the run flags may leave it out, or give an empty one
            argv.append(f"--workdir={workdir}" if self.count % 3 else "--workdir=")
        case.given.add(str(workdir))
        return argv, workdir


def run_case(sandbox: Sandbox, case: Case) -> tuple[Outcome, dict, dict]:
    """Runs a case; returns its outcome and the workdir's files before and after."""
    argv, workdir = sandbox.prepare(case)
    before = _snapshot(workdir)
    outcome = run_argv(argv)
    after = _snapshot(workdir)
    shutil.rmtree(workdir.parent, ignore_errors=True)
    return outcome, before, after


_FATAL = "FATAL Flags parsing error"


def _names(line: str, given: set[str]) -> list[str]:
    """The given names a line mentions (a name as a word: `lr` is not in `min_lr_ratio`)."""
    found = []
    for name in given:
        if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", line):
            found.append(name)
    return found


def check_outcome(case: Case, outcome: Outcome, before: dict, after: dict) -> str | None:
    """What is wrong with how the command ended, or None (see the module docstring)."""
    if outcome.crash:
        return "traceback:\n" + outcome.crash
    if "Traceback" in outcome.stderr:
        return "a traceback on stderr:\n" + outcome.stderr
    lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
    if outcome.planned:
        if case.bad_field:
            return f"accepted a bad value of {case.bad_field}"
        return None
    if before != after:
        return f"the workdir changed: {sorted(set(before.items()) ^ set(after.items()))[:4]}"
    if case.must_plan:
        return "refused a valid command: " + " | ".join(lines)
    if outcome.status == 1 and lines and lines[0].startswith(_FATAL):
        head = lines[0] if lines[0] != _FATAL + ":" else lines[1]
        blame = {case.bad_field} if case.bad_field else case.given
        if not _names(head, blame):
            return "absl's refusal names no given flag: " + head
        return None
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if outcome.status != 2:
        return f"exit status {outcome.status}, not 2: " + " | ".join(lines)
    if len(errors) != 1:
        return f"{len(errors)} error lines: " + " | ".join(lines)
    if case.bad_field:
        if case.bad_field not in _names(errors[0], {case.bad_field}):
            return f"the error does not name {case.bad_field}: {errors[0]}"
        return None
    if not _names(errors[0], case.given):
        return "the error names nothing given: " + errors[0]
    return None


def blamed(case: Case, outcome: Outcome) -> str:
    """The field (or flag, or file) a refusal names, for the tally: the first one given."""
    if outcome.planned:
        return "(planned)"
    lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
    line = next((ln for ln in lines if ln.startswith(("error: ", _FATAL))), "")
    absl = line.startswith(_FATAL)
    if absl and line.strip() == _FATAL + ":" and len(lines) > 1:
        line = lines[1]  # absl writes a message of several lines below its first
    names = _names(line, {n for n in case.given if not n.startswith(os.sep)})
    for name in sorted(names, key=lambda n: line.find(n)):
        return ("absl: " if absl else "") + name
    if any(n.startswith(os.sep) and n in line for n in case.given):
        return "(a file or the workdir)"
    return "(none)"


def check_toml(sandbox: Sandbox, toml: tuple[bytes, set[str]]) -> str | None:
    """A TOML file (`toml_case`) through `config.merged` and `config.validate`, as a library user
    calls them: a config, or a `TLKerasError` of one line naming a key or the file."""
    from tl_keras.errors import TLKerasError

    data, given = toml
    sandbox.count += 1
    path = sandbox.root / f"config{sandbox.count}.toml"
    path.write_bytes(data)
    try:
        config_lib.validate(config_lib.merged({}, config_file=str(path)))
    except TLKerasError as e:
        line = " ".join(str(e).split())
        if not _names(line, given | {str(path), *FIELDS}):
            return "the error names no key, field or file: " + line
    except Exception:  # noqa: BLE001  (a traceback)
        return "traceback:\n" + traceback.format_exc()
    finally:
        path.unlink()
    return None


__all__ = [
    "Case",
    "Outcome",
    "Sandbox",
    "any_case",
    "blamed",
    "check_outcome",
    "check_toml",
    "one_bad_field_case",
    "run_case",
    "toml_case",
    "valid_case",
]
