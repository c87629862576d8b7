"""The shape of every file the package reads back, checked before anything uses it.

A workdir's files can be truncated by a full disk, edited by hand, replaced by another tool or by
someone who means harm. Each reader states the shape it expects as plain data and reads through
`read_json` (or `read_weights`); a file of another shape is one `DamagedFileError` naming the
file, what is wrong, and the way out, instead of an `AttributeError` deep inside a later step:

    RUN = Obj({"backbone": Str, "class_names": ListOf(Str), "phases": DictOf(Obj({...}))})
    run = schema.read_json(path, RUN, fix="start again with --overwrite")

Shapes: the scalars `Str`, `Int`, `Num` (int or float, never bool), `Bool`, `Name` (a safe
file-name component: letters, digits, `_` and `-`, so a file cannot point outside its folder),
`Anything`; `Maybe(shape)` (that or null); `ListOf(shape)`; `DictOf(shape)` (an object with any
keys); `Obj({key: shape}, optional={key: shape})` (an object with those keys, others allowed).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tl_keras.errors import DamagedFileError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"  # what a phase, stage or artifact folder may be named


@dataclasses.dataclass(frozen=True)
class _Scalar:
    label: str
    types: tuple[type, ...]
    pattern: str | None = None

    def problem(self, value: Any, where: str) -> str | None:
        ok = isinstance(value, self.types) and not (
            isinstance(value, bool) and bool not in self.types
        )
        if not ok:
            return f"{where or 'the file'} is {_kind(value)}, not {self.label}"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"{where or 'the file'} is {value[:60]!r}, not {self.label}"
        return None


Str = _Scalar("a string", (str,))
Int = _Scalar("an integer", (int,))
Num = _Scalar("a number", (int, float))
Bool = _Scalar("true or false", (bool,))
Name = _Scalar("a plain name (letters, digits, _ and -)", (str,), NAME_PATTERN)


@dataclasses.dataclass(frozen=True)
class _Anything:
    def problem(self, value: Any, where: str) -> str | None:
        return None


Anything = _Anything()


@dataclasses.dataclass(frozen=True)
class Maybe:
    shape: Any

    def problem(self, value: Any, where: str) -> str | None:
        return None if value is None else self.shape.problem(value, where)


@dataclasses.dataclass(frozen=True)
class ListOf:
    shape: Any

    def problem(self, value: Any, where: str) -> str | None:
        if not isinstance(value, list):
            return f"{where or 'the file'} is {_kind(value)}, not a list"
        for i, item in enumerate(value):
            if (p := self.shape.problem(item, f"{where}[{i}]")) is not None:
                return p
        return None


@dataclasses.dataclass(frozen=True)
class DictOf:
    shape: Any
    keys: Any = None  # the shape of each key (a `Name`, say); None = any string

    def problem(self, value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where or 'the file'} is {_kind(value)}, not an object"
        for key, item in value.items():
            if self.keys is not None and (p := self.keys.problem(key, f"a key of {where}")):
                return p
            if (p := self.shape.problem(item, _join(where, key))) is not None:
                return p
        return None


@dataclasses.dataclass(frozen=True)
class Obj:
    required: Mapping[str, Any]
    optional: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def problem(self, value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where or 'the file'} is {_kind(value)}, not an object"
        for key, shape in self.required.items():
            if key not in value:
                return f"{_join(where, key)} is missing"
            if (p := shape.problem(value[key], _join(where, key))) is not None:
                return p
        for key, shape in self.optional.items():
            if key in value and (p := shape.problem(value[key], _join(where, key))) is not None:
                return p
        return None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else repr(key)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "a string"}
    for t, name in kinds.items():
        if isinstance(value, t):
            return name
    if isinstance(value, list):
        return "a JSON list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def problem(value: Any, shape: Any) -> str | None:
    """The first way `value` differs from `shape`, in words, or None when it fits."""
    return shape.problem(value, "")


def damaged(path: str, what: str, fix: str) -> DamagedFileError:
    """The error for a damaged file: `PATH is damaged (WHAT); FIX`."""
    return DamagedFileError(f"{path} is damaged ({what}); {fix}")


def read_json(path: str, shape: Any, *, fix: str) -> Any:
    """Reads a JSON file the package wrote and checks its shape.

    Args:
      path: the file.
      shape: what it must hold (see the module docstring).
      fix: the way out, for the message: "rerun phase 'fe' (--phase=fe --overwrite)".

    Returns:
      The parsed JSON.

    Raises:
      DamagedFileError: the file cannot be read, is empty, is not JSON (truncated), or does not
        have the shape.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise damaged(path, f"unreadable: {getattr(e, 'strerror', None) or e}", fix) from None
    if not text.strip():
        raise damaged(path, "empty", fix)
    try:
        value = json.loads(text)
    except ValueError as e:
        raise damaged(path, f"not valid JSON, truncated or edited: {e}", fix) from None
    if (p := problem(value, shape)) is not None:
        raise damaged(path, p, fix)
    return value


def read_weights(path: str, *, like: Sequence[tuple[int, ...]] | None, fix: str) -> list:
    """Reads a weights file written by `tl_keras.io.save_weights`, checked against a model.

    Args:
      path: the `.npz` file.
      like: the shapes the arrays must have, in order (`[w.shape for w in model.get_weights()]`);
        None = any.
      fix: the way out, for the message.

    Raises:
      DamagedFileError: the file cannot be read (truncated, not an npz, pickled objects) or
        its arrays do not fit the model.
    """
    from tl_keras import io

    try:
        weights = io.load_weights(path)
    except Exception as e:  # zipfile, numpy and pickle refusals all mean the same here
        raise damaged(path, f"unreadable: {str(e).splitlines()[0][:160]}", fix) from None
    if like is not None:
        got = [tuple(w.shape) for w in weights]
        want = [tuple(s) for s in like]
        if got != want:
            raise damaged(
                path, f"{len(got)} arrays that do not fit the model's {len(want)} weights", fix
            )
    return weights
