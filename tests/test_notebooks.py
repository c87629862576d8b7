"""The walkthroughs in notebooks/: committed with honest outputs, and still running.

* Committed outputs: each notebook carries the outputs of a full-size run (`python
  notebooks/run.py --render`), produced by its current code (the hash of its code cells and
  walkthrough.py, stored in its metadata when it was rendered), top to bottom in one kernel,
  with no error, and images small enough for a reviewable diff.
* Still running: every notebook is executed again here in tiny mode (`python notebooks/run.py
  --tiny NAME`), in a fresh kernel with no set-up call, and its `train()` shows its epochs.

Adding a walkthrough is one line in NOTEBOOKS; a notebook in the folder but not in the list
fails `test_every_notebook_is_executed`, so none escapes CI.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import struct
import time

import pytest
from conftest import REPO

# Every walkthrough, in the order docs/walkthroughs.md lists them.
NOTEBOOKS = [
    "01_feature_extraction.ipynb",
    "02_fine_tuning.ipynb",
    "03_gradual_unfreezing.ipynb",
    "04_strategy_comparison.ipynb",
    "05_preprocessing_pitfalls.ipynb",
    "06_evaluate_predict_export.ipynb",
    "07_small_data_fe_vs_ft.ipynb",
    "08_discriminative_learning_rates.ipynb",
    "09_domain_gap.ipynb",
]
# The course's exercises, each answered by one notebook (docs/walkthroughs.md lists them).
EXERCISES = {
    "a": "07_small_data_fe_vs_ft.ipynb",
    "b": "03_gradual_unfreezing.ipynb",
    "c": "08_discriminative_learning_rates.ipynb",
    "d": "09_domain_gap.ipynb",
    "e": "05_preprocessing_pitfalls.ipynb",
}
TINY_BUDGET_S = 240  # a loose bound on a loaded 2-core machine; alone each takes well under 60 s
MAX_IMAGE_BYTES = 200_000  # one rendered image, after compression
MAX_NOTEBOOK_BYTES = 1_500_000  # one rendered notebook, outputs included


def _runner():
    spec = importlib.util.spec_from_file_location("notebook_runner", REPO / "notebooks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(name: str) -> dict:
    return json.loads((REPO / "notebooks" / name).read_text(encoding="utf-8"))


def _code_cells(nb: dict) -> list[dict]:
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def _text(outputs: list[dict]) -> str:
    parts = []
    for o in outputs:
        if o["output_type"] == "stream":
            parts.append("".join(o["text"]))
        elif "text/plain" in o.get("data", {}):
            parts.append("".join(o["data"]["text/plain"]))
    return "".join(parts)


def test_every_notebook_is_executed():
    assert sorted(NOTEBOOKS) == _runner().notebooks()
    assert set(EXERCISES.values()) <= set(NOTEBOOKS)


# --- the committed outputs -------------------------------------------------------------------------
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_come_from_the_current_code(name):
    reason = _runner().stale(name)
    assert reason is None, (
        f"{name}: {reason}; render it again: python notebooks/run.py --render {name}"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_are_a_whole_error_free_run(name):
    nb = _read(name)
    cells = _code_cells(nb)
    # Every code cell ran, once, in order, in one kernel: counts 1, 2, ..., n.
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    outputs = [o for c in cells for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = _text(outputs)
    assert "Traceback" not in text
    # Full size, and it says what it ran with: the set-up cell's lines.
    first = _text(cells[0]["outputs"])
    assert "tl_keras from .. (this checkout)" in first and "mode: full size" in first
    assert "weights: " in first and "photos: " in first
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} shows no plot"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_images_are_compressed(name):
    runner = _runner()
    path = REPO / "notebooks" / name
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{name}: {path.stat().st_size:,} bytes"
    for cell in _code_cells(_read(name)):
        for o in cell["outputs"]:
            png = o.get("data", {}).get("image/png")
            if png is None:
                continue
            raw = base64.b64decode(png)
            width = struct.unpack(">I", raw[16:20])[0]  # the PNG header's IHDR width
            assert len(raw) <= MAX_IMAGE_BYTES and width <= runner.MAX_IMAGE_WIDTH


def test_source_hash_covers_the_code_and_the_helper_not_the_prose():
    import nbformat

    runner = _runner()
    nb = nbformat.read(REPO / "notebooks" / NOTEBOOKS[0], as_version=4)
    before = runner.source_hash(nb)
    prose = next(c for c in nb.cells if c.cell_type == "markdown")
    prose.source += "\nMore words."
    assert runner.source_hash(nb) == before  # editing prose leaves the outputs current
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.source += "\nprint('changed')"
    assert runner.source_hash(nb) != before


def test_render_compresses_a_figure():
    from matplotlib.figure import Figure
    from PIL import Image

    runner = _runner()
    fig = Figure(figsize=(16, 4), dpi=110)  # 1760 px wide, as curves.png of three panels
    fig.subplots(1, 3)[0].plot(range(10))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    original = base64.b64encode(buffer.getvalue()).decode()
    smaller = runner.compress_png(original)
    image = Image.open(io.BytesIO(base64.b64decode(smaller)))
    assert image.width == runner.MAX_IMAGE_WIDTH and len(smaller) < len(original)


def test_strip_clears_outputs_and_keeps_the_code(tmp_path):
    import nbformat

    runner = _runner()
    source = REPO / "notebooks" / NOTEBOOKS[0]
    nb = nbformat.read(source, as_version=4)
    code = next(cell for cell in nb.cells if cell.cell_type == "code")
    code.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="hello\n"))
    code.execution_count = 3
    copy = tmp_path / "executed.ipynb"
    nbformat.write(nb, copy)
    assert runner.strip(copy) is True and runner.strip(copy) is False
    stripped = nbformat.read(copy, as_version=4)
    original = nbformat.read(source, as_version=4)
    assert [c.source for c in stripped.cells] == [c.source for c in original.cells]
    assert not [c for c in stripped.cells if c.cell_type == "code" and c.outputs]
    assert runner.source_hash(stripped) == runner.source_hash(original)


def test_check_command_reports_current_notebooks(capsys):
    assert _runner().main(["--check"]) == 0
    assert capsys.readouterr().out.count(": current") == len(NOTEBOOKS)


# --- the list of walkthroughs (docs/walkthroughs.md; the README links it) ----------------------
WALKTHROUGHS = REPO / "docs" / "walkthroughs.md"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_readme_links_the_notebook(name):
    assert f"(../notebooks/{name})" in WALKTHROUGHS.read_text(encoding="utf-8")


@pytest.mark.parametrize("exercise, name", sorted(EXERCISES.items()))
def test_readme_lists_each_exercise_with_its_notebook(exercise, name):
    readme = WALKTHROUGHS.read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith(f"| ({exercise}) ")]
    assert len(rows) == 1 and f"(../notebooks/{name})" in rows[0], rows


# --- still running ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    import nbformat

    pytest.importorskip("nbclient")
    # No download attempt (walkthrough.pick_weights): the shared copy of the weights, or none.
    monkeypatch.setenv("TL_KERAS_OFFLINE", "1")
    start = time.perf_counter()
    # `python notebooks/run.py --tiny NAME`, as docs/walkthroughs.md documents; raises on a failing cell.
    assert _runner().main(["--tiny", f"--runs_dir={tmp_path}", name]) == 0
    elapsed = time.perf_counter() - start
    nb = nbformat.read(tmp_path / name, as_version=4)  # the executed copy, with outputs
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    # The walkthrough used this checkout's package, not an installed copy elsewhere.
    assert "tl_keras from .. (this checkout)" in text and "mode: tiny" in text
    # train() in a fresh kernel, with no set-up call, showed its epochs (phase, k/n, lr).
    assert "setup_logging" not in "".join(c.source for c in nb.cells)
    epochs = [line for line in text.splitlines() if "] epoch 1 (1/" in line]
    assert epochs and all(" - lr " in line for line in epochs), text[-2000:]
    assert elapsed < TINY_BUDGET_S, f"{name} took {elapsed:.0f} s in tiny mode"


def test_render_drops_only_tensorflows_startup_lines():
    import nbformat

    cell = nbformat.v4.new_code_cell("import tensorflow")
    cell.outputs = [
        nbformat.v4.new_output(
            "stream",
            name="stderr",
            text="WARNING: All log messages before absl::InitializeLog() is called are written "
            "to STDERR\nI0000 00:00:1796113296.297283   12864 port.cc:153] oneDNN custom "
            "operations are on.\nE0000 00:00:1796113305.813961   12864 cuda_platform.cc:52] "
            "failed call to cuInit\nweights=none: the base starts random\n",
        ),
        nbformat.v4.new_output("stream", name="stderr", text="I0000 00:00:1.5 1 a.cc:1] x\n"),
        nbformat.v4.new_output("stream", name="stdout", text="I0000 00:00:1.5 1 a.cc:1] kept\n"),
    ]
    _runner().drop_tf_startup_lines(cell)
    assert [(o.name, o.text) for o in cell.outputs] == [
        ("stderr", "weights=none: the base starts random\n"),
        ("stdout", "I0000 00:00:1.5 1 a.cc:1] kept\n"),
    ]
