"""The walkthroughs in notebooks/ run top to bottom (tiny mode), and are committed clean.

Adding a walkthrough is one line in NOTEBOOKS; a notebook in the folder but not in the list
fails `test_every_notebook_is_executed`, so none escapes CI.
"""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
from conftest import REPO

# Every walkthrough, in the README's order.
NOTEBOOKS = [
    "01_feature_extraction.ipynb",
    "02_fine_tuning.ipynb",
    "03_gradual_unfreezing.ipynb",
    "04_strategy_comparison.ipynb",
    "05_preprocessing_pitfalls.ipynb",
    "06_evaluate_predict_export.ipynb",
]
TINY_BUDGET_S = 240  # a loose bound on a loaded 2-core machine; alone each takes well under 60 s


def _runner():
    spec = importlib.util.spec_from_file_location("notebook_runner", REPO / "notebooks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_is_executed():
    assert sorted(NOTEBOOKS) == _runner().notebooks()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    dirty = _dirty_cells(REPO / "notebooks" / name)
    assert not dirty, (
        f"{name}: code cells {dirty} have outputs; run `python notebooks/run.py --strip`"
    )


def test_strip_clears_outputs_and_keeps_the_code(tmp_path):
    import nbformat

    runner = _runner()
    source = REPO / "notebooks" / NOTEBOOKS[0]
    nb = nbformat.read(source, as_version=4)
    code = next(cell for cell in nb.cells if cell.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    code.execution_count = 3
    copy = tmp_path / "executed.ipynb"
    nbformat.write(nb, copy)
    assert runner.strip(copy) is True and runner.strip(copy) is False
    assert copy.read_text(encoding="utf-8") == source.read_text(encoding="utf-8")
    # The committed notebooks are already clean: --strip changes nothing.
    assert runner.main(["--strip"]) == 0
    assert not _dirty_cells(source)


def _dirty_cells(path) -> list[int]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    return [i for i, cell in enumerate(code) if cell["outputs"] or cell["execution_count"]]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_readme_links_the_notebook(name):
    assert f"(notebooks/{name})" in (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path):
    import nbformat

    pytest.importorskip("nbclient")
    start = time.perf_counter()
    # `python notebooks/run.py --tiny NAME`, as the README documents; raises on a failing cell.
    assert _runner().main(["--tiny", f"--runs_dir={tmp_path}", name]) == 0
    elapsed = time.perf_counter() - start
    nb = nbformat.read(tmp_path / name, as_version=4)  # the executed copy, with outputs
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # The walkthrough used this checkout's package, not an installed copy elsewhere.
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"tl_keras from {REPO}" in text
    assert elapsed < TINY_BUDGET_S, f"{name} took {elapsed:.0f} s in tiny mode"
