"""The package's shape, read from its source (AST): short functions, modules of a readable size,
imports that only go down the layers, no cycles, and TensorFlow-free modules that stay so.

The layers, bottom to top: errors, io, history, workdir and the recipe; the model and the data;
training; inference; the command layer (cli) and the one-line command modules above all. The
config sits where it is imported from: it validates against the name lists of the modules that
act on them, so it imports those, and data, model and training import it.
"""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import REPO

PACKAGE = REPO / "tl_keras"
MAX_FUNCTION_LINES = 100  # docstring and decorators included
MAX_MODULE_LINES = 800
COMMANDS = ("train", "evaluate", "predict", "export", "lr_find", "compare", "doctor", "weights")
# `python -m tl_keras.<command>` runs a one-line module: tl_keras/<command>.py, or the package's
# __main__.py where the command shares its name with a package (the doctor).
SHIMS = {c: REPO / "tl_keras" / f"{c}.py" for c in COMMANDS} | {
    "doctor": REPO / "tl_keras" / "doctor" / "__main__.py"
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(target: str) -> str | None:
    """The tl_keras module an import names (a module, or the package an attribute comes from)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def imports(path: pathlib.Path, *, type_checking: bool = True) -> set[str]:
    """The tl_keras modules a module imports, anywhere in it (inside functions too)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tl_keras":
                    found.add(_resolve(alias.name))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "tl_keras"
        ):
            for alias in node.names:
                found.add(_resolve(f"{node.module}.{alias.name}"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(None)
    found.discard(module_name(path))
    return found


def third_party(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names - {"tl_keras", "__future__"} - set(sys.stdlib_module_names)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# --- size -----------------------------------------------------------------------------------------
def test_no_function_is_longer_than_a_screen():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = node.end_lineno - start + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_module_is_longer_than_a_chapter():
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


# --- layers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lower, forbidden",
    [
        ("data", {"training", "inference", "cli"}),
        ("model", {"training", "inference", "cli"}),
        ("training", {"inference", "cli"}),
        ("inference", {"cli"}),
        ("doctor", {"inference", "cli"}),
    ],
)
def test_imports_only_go_down(lower, forbidden):
    shims = {module_name(path) for path in SHIMS.values()}
    wrong = {
        f"{name} -> {target}"
        for name, path in MODULES.items()
        if layer(name) == lower and name not in shims
        for target in imports(path)
        if layer(target) in forbidden
    }
    assert not wrong, wrong


def test_the_doctor_takes_only_the_feature_pass_from_training():
    """The doctor sits below training's runner (which runs it before the first phase) and above
    the feature pass it shares with fe."""
    wrong = {
        f"{name} -> {target}"
        for name, path in MODULES.items()
        if layer(name) == "doctor"
        for target in imports(path)
        if layer(target) == "training" and target != "tl_keras.training.features"
    }
    assert not wrong, wrong


def test_only_the_command_layer_imports_it():
    shims = {module_name(path) for path in SHIMS.values()}
    wrong = {
        f"{name} -> {target}"
        for name, path in MODULES.items()
        if layer(name) != "cli" and name not in shims
        for target in imports(path)
        if layer(target) == "cli"
    }
    assert not wrong, wrong


def test_the_command_modules_are_one_liners_over_the_command_layer():
    for command, path in SHIMS.items():
        assert imports(path) == {f"tl_keras.cli.{command}"}, command
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 8, command


def test_the_recipe_imports_nothing_but_errors_and_the_standard_library():
    for name, path in MODULES.items():
        if layer(name) == "recipe":
            outside = {t for t in imports(path) if layer(t) != "recipe"}
            assert outside <= {"tl_keras.errors"}, (name, outside)
            assert not third_party(path), (name, third_party(path))


def test_no_import_cycles():
    graph = {name: imports(path, type_checking=False) for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


# --- TensorFlow stays out of the cheap modules ------------------------------------------------------
TENSORFLOW_FREE = [
    "tl_keras",
    "tl_keras.config",
    "tl_keras.recipe",
    "tl_keras.model",
    "tl_keras.model.backbones",
    "tl_keras.model.pretrained",
    "tl_keras.model.hub",
    "tl_keras.data",
    "tl_keras.data.augment",
    "tl_keras.training",
    "tl_keras.training.plan",
    "tl_keras.inference",
    "tl_keras.inference.export",
    "tl_keras.doctor",
    "tl_keras.doctor.workflow",
    "tl_keras.model.served",
    "tl_keras.training.calibrate",
    "tl_keras.training.class_weight",
    *[f"tl_keras.cli.{c}" for c in COMMANDS if c != "export"],
]


def test_validation_and_the_plan_import_no_tensorflow(tmp_path):
    """`config.validate` fails bad flags in milliseconds because nothing it needs imports TF."""
    script = (
        "import importlib, sys\n"
        f"for name in {TENSORFLOW_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "from tl_keras import config\n"
        "config.validate(config.Config())\n"
        "config.resolve(config.Config(stages='fe:none:1,ft:blocks:2:1', optimizer='sgd'))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


# --- the map of the package (docs/architecture.md) -----------------------------------------------
def readme_layout() -> set[str]:
    """The module paths docs/architecture.md's "How the code is laid out" tree lists."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("# How the code is laid out") :]
    tree = section[section.index("```\n") + 4 : section.index("\n```", section.index("```\n") + 4)]
    listed, folders = set(), []
    for line in tree.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        names = re.split(r"\s{2,}", line.strip())[0].split()
        folders = folders[:depth]
        for name in names:
            if name.endswith("/"):
                folders.append(name.rstrip("/"))
            elif name.endswith(".py"):
                listed.add("/".join([*folders, name]))
    return listed


def test_the_readme_lists_every_module_where_it_is():
    """Every module, in its folder (a subpackage's line stands for its `__init__.py`)."""
    modules = {
        str(p.relative_to(REPO))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" or p.parent == PACKAGE
    }
    assert readme_layout() == modules, (
        f"only in docs/architecture.md: {readme_layout() - modules}; "
        f"not in it: {modules - readme_layout()}"
    )
