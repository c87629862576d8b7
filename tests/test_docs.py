"""The README and docs/ say only what exists: commands, flags, config files, links, the reference.

* Every `python -m tl_keras.<command> ...` in the README and docs/ (code blocks and inline code)
  names a real command, and each of its `--flags` is one that command defines (the config fields
  included), as `python docs/make_flags.py --json` defines them, the way the command does.
* Every `python benchmarks/X.py`, `python notebooks/run.py` or `python docs/X.py` names a script
  that exists and defines each flag it is given.
* Every `configs/*.toml` named exists; every relative link resolves, its #anchor included.
* docs/flags.md is exactly what the generator writes from the code today.
* The README is a front door: at most 250 lines, linking every page of docs/.

Running the documented commands is the job of each command's own tests (tests/test_cli.py,
test_readme_beyond.py, test_doctor_cli.py, test_lr_find_cli.py, test_compare.py ...).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "notebooks" / "README.md"]
README_MAX_LINES = 250
# absl's own flags, which every command answers.
ABSL_FLAGS = {"help", "helpfull", "helpshort", "flagfile", "undefok"}


def _name(path) -> str:
    return str(path.relative_to(REPO))


@pytest.fixture(scope="module")
def generated() -> dict:
    """{"commands": command -> flag -> record, "reference": the text of docs/flags.md}."""
    proc = subprocess.run(
        [sys.executable, "docs/make_flags.py", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},  # the script puts its checkout first
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def code_text(text: str) -> list[str]:
    """The shell lines of a page: code-block lines (continuations joined) and inline code spans."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        lines += re.sub(r"\\\n\s*", " ", block).splitlines()
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += re.findall(r"`([^`\n]+)`", outside)
    return lines


def commands_in(text: str, program: str) -> list[list[str]]:
    """Each `program ...` found in the page's code, as its arguments after the program."""
    found = []
    for line in code_text(text):
        line = re.split(r"(?:^|\s)#\s", line)[0]  # a shell comment
        for match in re.finditer(re.escape(program), line):
            rest = line[match.end() :].split("`")[0]  # inline code quoted in a code block
            if "<" in rest.split(" ", 1)[0]:
                continue  # a placeholder: python -m tl_keras.<command>
            found.append(shlex.split(rest))
    return found


def headings(path) -> set[str]:
    """GitHub's anchors for the page's headings (code blocks skipped)."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    anchors, seen = set(), {}
    for title in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_tl_keras_command_and_flag_exists(page, generated):
    commands = generated["commands"]
    checked = 0
    for args in commands_in(page.read_text(encoding="utf-8"), "python -m tl_keras."):
        command, flags = args[0], [a for a in args[1:] if a.startswith("--")]
        assert command in commands, f"{_name(page)}: no command `python -m tl_keras.{command}`"
        module = REPO / "tl_keras" / command
        assert module.with_suffix(".py").is_file() or (module / "__main__.py").is_file()
        known = set(commands[command]) | ABSL_FLAGS
        booleans = {n for n, r in commands[command].items() if r["boolean"]}
        for flag in flags:
            name = flag[2:].split("=", 1)[0]
            negated = name.startswith("no") and name[2:] in booleans
            assert name in known or negated, (
                f"{_name(page)}: `python -m tl_keras.{command}` has no flag --{name}"
            )
        checked += 1
    if _name(page) in ("README.md", "docs/training.md", "docs/beyond.md", "docs/after_training.md"):
        assert checked >= 4, f"{_name(page)}: the command scan found only {checked}"


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_script_and_its_flags_exist(page):
    for folder in ("benchmarks", "notebooks", "docs"):
        for args in commands_in(page.read_text(encoding="utf-8"), f"python {folder}/"):
            script = REPO / folder / args[0]
            assert script.is_file(), f"{_name(page)}: no script {folder}/{args[0]}"
            source = script.read_text(encoding="utf-8")
            for arg in args[1:]:
                if arg.startswith("--"):
                    flag = arg.split("=", 1)[0]
                    assert f'"{flag}"' in source, f"{_name(page)}: {folder}/{args[0]} has no {flag}"


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_config_file_named_exists(page):
    for path in re.findall(r"configs/[\w.-]+\.toml", page.read_text(encoding="utf-8")):
        assert (REPO / path).is_file(), f"{_name(page)} names {path}, which does not exist"


@pytest.mark.parametrize("page", DOCS, ids=_name)
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https://, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{_name(page)}: the link ({target}) leads nowhere"
        if anchor:
            assert resolved.suffix == ".md", f"{_name(page)}: an anchor into {path}"
            assert anchor in headings(resolved), f"{_name(page)}: no heading #{anchor} in {path}"


def test_the_flag_reference_is_what_the_code_says(generated):
    on_disk = (REPO / "docs" / "flags.md").read_text(encoding="utf-8")
    assert on_disk == generated["reference"], (
        "docs/flags.md is stale: run python docs/make_flags.py"
    )
    # Every config field is in it, with its flag.
    from tl_keras import config

    for name in config.FIELDS:
        assert f"| `--{name}` |" in on_disk, name


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)", readme))
    assert linked == {p.name for p in (REPO / "docs").glob("*.md")}
    # The set-up and the two commands that work on a fresh machine, first and exactly.
    setup = readme[: readme.index("## Your own photos")]
    for line in (
        "python3 -m venv .venv && . .venv/bin/activate",
        'pip install -e ".[test]"',
        "python -m tl_keras.train --config=configs/quickstart.toml --workdir=runs/quickstart",
        "python -m pytest -q",
    ):
        assert f"\n{line}\n" in setup, line
    # PyPI shows the README (setup.cfg), and CI runs what it says.
    assert "long_description = file: README.md" in (REPO / "setup.cfg").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]"' in ci and "python -m pytest -q" in ci
