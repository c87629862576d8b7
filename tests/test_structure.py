"""The package's shape, read from its source (AST): short functions, modules of a readable size,
imports that only go down the layers, no cycles, and TensorFlow-free modules that stay so.

Every module has a layer (`LAYERS`, bottom to top), and an import, anywhere in a module (inside
a function, or for a type only), may only name a module of its own layer or one below. The
config composes at the top of the library: the sections it is made of (the data's, the model's,
the training's) sit below it, with the names their fields may take; what takes a `Config` (the
runner and the calls beside it) sits above it, and the commands above all.
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


# The layers, bottom to top: a module's layer is its exact entry, else its package's `.*` entry.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Files, errors and the workdir's small records: what every layer stands on.
    (
        "foundation",
        (
            "tl_keras.errors",
            "tl_keras._failpoints",
            "tl_keras.io",
            "tl_keras.schema",
            "tl_keras.progress",
            "tl_keras.interrupt",
            "tl_keras.lock",
            "tl_keras.transaction",
            "tl_keras.workdir",
        ),
    ),
    # Numbers about predictions and runs: metrics, their statistics, calibration, plots.
    (
        "measures",
        ("tl_keras.metrics", "tl_keras.stats", "tl_keras.calibration", "tl_keras.plotting"),
    ),
    ("recipe", ("tl_keras.recipe", "tl_keras.recipe.*")),  # pure rules, no TensorFlow
    ("data", ("tl_keras.data", "tl_keras.data.*")),  # takes its own section (data.settings)
    ("model", ("tl_keras.model", "tl_keras.model.*")),
    ("training", ("tl_keras.training", "tl_keras.training.*")),  # a phase and its parts
    ("doctor", ("tl_keras.doctor", "tl_keras.doctor.*")),  # uses training's feature pass
    ("config", ("tl_keras.config",)),  # composes the sections below it
    # What takes a `Config`: the runner, its plan, start and recipe decision, and the library
    # calls beside it (compare, the LR range test, the doctor's workflow).
    (
        "run",
        (
            "tl_keras.training.plan",
            "tl_keras.training.decide",
            "tl_keras.training.start",
            "tl_keras.training.runner",
            "tl_keras.training.compare",
            "tl_keras.training.lr_find",
            "tl_keras.doctor.workflow",
        ),
    ),
    ("inference", ("tl_keras.inference", "tl_keras.inference.*")),  # after training
    ("cli", ("tl_keras.cli", "tl_keras.cli.*")),  # the command layer
    # The public API's lazy names and the one-line `python -m tl_keras.<command>` modules.
    ("commands", ("tl_keras", *(module_name(path) for path in SHIMS.values()))),
)
LAYER_NAMES = [name for name, _ in LAYERS]


def layer_rank(module: str) -> int | None:
    """The index in LAYERS of a module's layer, or None when the map does not place it."""
    for rank, (_, members) in enumerate(LAYERS):
        if module in members:
            return rank
    best = None  # (length of the package prefix, rank): the innermost package wins
    for rank, (_, members) in enumerate(LAYERS):
        for member in members:
            package = member[: -len(".*")]
            if member.endswith(".*") and module.startswith(package + "."):
                best = max(best or (0, 0), (len(package), rank))
    return None if best is None else best[1]


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
def test_every_module_has_a_layer_and_every_entry_a_module():
    unplaced = sorted(name for name in MODULES if layer_rank(name) is None)
    assert not unplaced, f"modules without a layer in LAYERS: {unplaced}"
    stale = [
        member
        for _, members in LAYERS
        for member in members
        if not member.endswith(".*") and member not in MODULES
    ]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_no_import_goes_up_a_layer():
    """Anywhere in a module, a function's body and type-only imports included."""
    up = sorted(
        f"{name} ({LAYER_NAMES[layer_rank(name)]}) -> {target} ({LAYER_NAMES[layer_rank(target)]})"
        for name, path in MODULES.items()
        for target in imports(path)
        if layer_rank(target) > layer_rank(name)
    )
    assert not up, up


def test_the_data_layer_never_reaches_config_or_training():
    """Loading data pulls in neither the config nor any training module, through any chain."""
    graph = {name: imports(path) for name, path in MODULES.items()}
    for name in MODULES:
        if layer(name) != "data":
            continue
        seen, todo = set(), [name]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        wrong = {t for t in seen if t == "tl_keras.config" or layer(t) == "training"}
        assert not wrong, (name, sorted(wrong))


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


def import_cycles(*, type_checking: bool) -> list[set[str]]:
    """The modules that import each other round a loop (strongly connected components)."""
    graph = {name: imports(path, type_checking=type_checking) for name, path in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while not component or node not in component:
                component.add(stack.pop())
            if len(component) > 1:
                cycles.append(component)

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def test_no_import_cycles():
    """None, not even through an import for a type only (such a cycle is a misplaced type)."""
    assert not [sorted(c) for c in import_cycles(type_checking=True)]


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
    "tl_keras.data.settings",
    "tl_keras.model.settings",
    "tl_keras.training",
    "tl_keras.training.settings",
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
    """`config.check` fails bad flags in milliseconds because nothing it needs imports TF; nor
    does `config.resolve`."""
    script = (
        "import importlib, sys\n"
        f"for name in {TENSORFLOW_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "from tl_keras import config\n"
        "from tl_keras.recipe import auto\n"
        "config.validate(config.Config())\n"
        "cfg = config.Config(stages='fe:none:1,ft:blocks:2:1', optimizer='sgd')\n"
        "facts = auto.Facts(100, 2, 50, stages_given=True)\n"
        "config.resolve(config.check(cfg), auto.decide(config.to_dict(cfg), facts))\n"
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
