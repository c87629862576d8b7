"""Writes docs/flags.md, the flag reference, from the code: nothing in it is typed by hand.

    python docs/make_flags.py           # rewrite docs/flags.md
    python docs/make_flags.py --check   # exit 1 when docs/flags.md is not what the code says
    python docs/make_flags.py --json    # every command's flags and the reference (tests/test_docs.py)

The config fields come from `tl_keras.config.Config` (each field's help, its default, and the
fixed default `--recipe=manual` gives a setting the recipe decides), grouped as the class groups
them; every other flag comes from defining each command's flags (`tl_keras.cli.<command>.
define_flags`) exactly as `python -m tl_keras.<command>` does. Run it from anywhere: it puts its
own checkout first on the import path.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "flags.md"
sys.path.insert(0, str(REPO))

# The commands, in the order a user meets them (every module of tl_keras/cli but the shared one).
ORDER = ("train", "lr_find", "compare", "doctor", "evaluate", "predict", "export", "weights")


def commands() -> list[str]:
    """The `python -m tl_keras.<command>` commands: one module each in tl_keras/cli."""
    found = {p.stem for p in (REPO / "tl_keras" / "cli").glob("*.py")} - {"__init__", "common"}
    return [c for c in ORDER if c in found] + sorted(found - set(ORDER))


def _flag_record(flag) -> dict:
    default = flag.default
    if isinstance(default, (list, tuple)):
        default = ",".join(str(v) for v in default)
    return {"help": flag.help, "default": default, "boolean": flag.boolean}


def command_flags() -> dict[str, dict[str, dict]]:
    """Every command's flags, defined as the command defines them: command -> name -> record.

    Each command's flags are removed again before the next defines its own, so two commands
    may define a flag of the same name (every one has --workdir).
    """
    import importlib

    from absl import flags

    result = {}
    for command in commands():
        module = importlib.import_module(f"tl_keras.cli.{command}")
        before = set(flags.FLAGS)
        module.define_flags()
        # Only the flags tl_keras defines: importing TensorFlow on the way defines its own too.
        new = sorted(
            name
            for name in set(flags.FLAGS) - before
            if flags.FLAGS.find_module_defining_flag(name, "").startswith("tl_keras.")
        )
        result[command] = {name: _flag_record(flags.FLAGS[name]) for name in new}
        for name in new:
            delattr(flags.FLAGS, name)
    return result


def config_sections() -> list[tuple[str, list[dataclasses.Field]]]:
    """The config fields, grouped under the `# --- name ---` comments of the Config class."""
    from tl_keras import config as config_lib

    fields = {f.name: f for f in dataclasses.fields(config_lib.Config)}
    sections: list[tuple[str, list]] = [("", [])]
    for line in inspect.getsource(config_lib.Config).splitlines():
        heading = re.match(r"\s+# --- (.+?) -+$", line)
        field = re.match(r"\s+(\w+):", line)
        if heading:
            sections.append((heading.group(1), []))
        elif field and field.group(1) in fields:
            sections[-1][1].append(fields.pop(field.group(1)))
    assert not fields, f"fields the source scan missed: {sorted(fields)}"
    return [(name, group) for name, group in sections if group]


def _cell(text: str) -> str:
    # '<workdir>' would read as an HTML tag on GitHub; '|' would end the cell.
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;")


def _default(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def _config_table(fields: list[dataclasses.Field]) -> list[str]:
    from tl_keras.recipe import auto

    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for f in fields:
        default = _default(f.default)
        if f.name in auto.MANUAL:
            default += f"; manual: {_default(auto.MANUAL[f.name])}"
        rows.append(f"| `--{f.name}` | {default} | {_cell(f.metadata['help'])} |")
    return rows


def _flag_table(flag_records: dict[str, dict]) -> list[str]:
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for name, record in sorted(flag_records.items()):
        rows.append(f"| `--{name}` | {_default(record['default'])} | {_cell(record['help'])} |")
    return rows


def render(per_command: dict[str, dict[str, dict]]) -> str:
    """The whole of docs/flags.md, from `command_flags()`."""
    from tl_keras import config as config_lib

    fields = set(config_lib.FIELDS)
    with_config = [c for c, names in per_command.items() if fields <= set(names)]
    shared = set.intersection(*(set(per_command[c]) - fields for c in with_config))
    lines = [
        "# Flag reference",
        "",
        "<!-- Generated by `python docs/make_flags.py` from tl_keras.config and tl_keras/cli;",
        "     do not edit: tests/test_docs.py fails when this file and the code disagree. -->",
        "",
        "Every config field is a flag of the same name of "
        + ", ".join(f"`{c}`" for c in with_config)
        + ", and a key of a `--config` TOML file (see [`configs/`](../configs/)); precedence is "
        "defaults < the config an earlier phase saved in the workdir < `--config` < flags. "
        "An unknown field, in a file or as a flag, is an error. A setting the "
        "[decided recipe](recipe.md) fills in defaults to `'auto'`; *manual* is the fixed value "
        "it takes under `--recipe=manual`. `python -m tl_keras.<command> --help` prints the same "
        "text for one command.",
        "",
        "Commands: " + ", ".join(f"[`{c}`](#{c})" for c in per_command) + ".",
    ]
    for name, group in config_sections():
        lines += ["", f"## Config fields: {name}", "", *_config_table(group)]
    first = with_config[0]
    lines += [
        "",
        "## The flags of a run",
        "",
        "Shared by " + ", ".join(f"`{c}`" for c in with_config) + ", beside the config fields.",
        "",
        *_flag_table({n: per_command[first][n] for n in shared}),
    ]
    for command, flag_records in per_command.items():
        lines += ["", f"## {command}", ""]
        own = flag_records
        if command in with_config:
            own = {n: r for n, r in flag_records.items() if n not in fields and n not in shared}
            lines.append(
                f"`python -m tl_keras.{command}`: the config fields and the flags of a run"
                + (", and:" if own else " (no flags of its own).")
            )
        else:
            lines.append(f"`python -m tl_keras.{command}` takes only these flags:")
        if own:
            lines += ["", *_flag_table(own)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 if docs/flags.md is stale")
    group.add_argument(
        "--json", action="store_true", help="print every command's flags and the reference as JSON"
    )
    args = ap.parse_args(argv)
    per_command = command_flags()
    text = render(per_command)
    if args.json:
        print(json.dumps({"commands": per_command, "reference": text}, default=str))
        return 0
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run `python docs/make_flags.py`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"written: {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
