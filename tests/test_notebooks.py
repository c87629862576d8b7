"""The walkthroughs in notebooks/: committed with honest outputs, and still running.

* Committed outputs: each notebook carries the outputs of a full-size run (`python
  notebooks/run.py --render`), produced by its current cells, prose included, walkthrough.py and
  tl_keras's sources (their hash, stored in its metadata when it was rendered), top to bottom in
  one kernel, with no error, no log line, warning or machine path, and images small enough for a
  reviewable diff, stored without colour loss.
* Verdicts computed, not written: every comparison a notebook states is printed from its numbers
  (a paired interval: "within noise" when it holds zero) or asserted by `walkthrough.claim`,
  which fails the render when the data disagree; the stored outputs show every claim passed, and
  the prose carries no measured figure and no verdict word of its own.
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
import re
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
MAX_IMAGE_BYTES = 400_000  # one rendered image, after lossless compression (photo galleries)
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
    assert "weights: " in first and "photos: " in first and "base: " in first
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


def test_source_hash_covers_every_cell_the_helper_and_the_package(tmp_path, monkeypatch):
    import nbformat

    runner = _runner()
    nb = nbformat.read(REPO / "notebooks" / NOTEBOOKS[0], as_version=4)
    before = runner.source_hash(nb)
    prose = next(c for c in nb.cells if c.cell_type == "markdown")
    prose.source += "\nMore words."
    with_prose = runner.source_hash(nb)
    assert with_prose != before  # the prose states what the outputs show: stale until rendered
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.source += "\nprint('changed')"
    assert runner.source_hash(nb) not in (before, with_prose)
    assert runner.source_hash(nb, "0" * 64) != runner.source_hash(nb)  # the package's sources
    helper = tmp_path / "walkthrough.py"
    helper.write_bytes(runner.HELPER.read_bytes() + b"\n# changed\n")
    current = runner.source_hash(nb)
    monkeypatch.setattr(runner, "HELPER", helper)
    assert runner.source_hash(nb) != current


def test_a_package_change_makes_every_notebook_stale(monkeypatch):
    runner = _runner()
    monkeypatch.setattr(runner, "package_hash", lambda: "f" * 64)
    reason = runner.stale(NOTEBOOKS[0])
    assert reason is not None and "tl_keras" in reason


def test_package_hash_follows_the_sources(tmp_path, monkeypatch):
    runner = _runner()
    package = tmp_path / "tl_keras"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(runner, "REPO", tmp_path)
    monkeypatch.setattr(runner, "PACKAGE", package)
    first = runner.package_hash()
    (package / "a.py").write_text("x = 2\n")
    assert runner.package_hash() != first


def test_render_keeps_every_colour_of_a_photo():
    import numpy as np
    from PIL import Image

    runner = _runner()
    yy, xx = np.mgrid[0:300, 0:1400]  # smooth gradients: far more than 256 colours
    pixels = np.stack([xx * 255 // 1399, yy * 255 // 299, (xx + 3 * yy) % 256], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    smaller = runner.compress_png(base64.b64encode(buffer.getvalue()).decode())
    image = Image.open(io.BytesIO(base64.b64decode(smaller)))
    assert image.mode == "RGB" and image.width == runner.MAX_IMAGE_WIDTH
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 256


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


# --- verdicts computed, not written; clean outputs --------------------------------------------------
# What a learner cannot act on, or a machine's own paths: none of it in a stored output.
NOISE = re.compile(
    r"^(?:INFO|WARNING|ERROR|DEBUG):|^[IWEF]\d{4} \d\d:|Warning:|Warning\b.*\bwarn|"
    r"DeprecationWarning|UserWarning|deprecated|Instructions for updating|Traceback|"
    r"(?:^|[\s'\"(=])/(?:work|home|root|tmp|usr|opt|var|private|Users)/|site-packages|[A-Z]:\\\\",
    re.MULTILINE,
)
# A measured figure (0.57, 4.1 points, 75%) or a verdict word in the prose: the outputs say those.
# (A setting is not a result: MobileNet's width 0.25 is its name.)
SETTINGS = re.compile(r"width\s+0\.25|MobileNet-0\.25|95% (?:CI|interval|confidence)")
PROSE_RESULT = re.compile(
    r"\b0\.\d+\b|\b\d+(?:\.\d+)? (?:percentage )?points?\b|\b\d+(?:\.\d+)?\s?%|"
    r"\b(?:beats?|outperforms?|wins?|loses|lead|ahead|behind|better than|worse than|as good as|"
    r"competitive|on par|quarters|halves|reproduces)\b|as good\b",
    re.IGNORECASE,
)


def _markdown(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_hold_no_log_line_warning_or_machine_path(name):
    for i, cell in enumerate(_code_cells(_read(name))):
        text = _text(cell["outputs"])
        found = NOISE.search(text)
        assert found is None, (
            f"{name}, code cell {i + 1}: {text[max(0, found.start() - 80) :][:240]!r}"
        )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_claim_in_the_notebook_passed_in_its_stored_outputs(name):
    """`claim(...)` fails the render when the data disagree: each call site printed "checked:"."""
    cells = _code_cells(_read(name))
    for cell in cells:
        source = "".join(cell["source"])
        calls = len(re.findall(r"(?<![\w.])claim\(", source))
        text = _text(cell["outputs"])
        assert "not checked" not in text  # tiny mode's line: never in a full-size render
        assert text.count("checked: ") >= calls, (name, source[:200])


@pytest.mark.parametrize("name", sorted(EXERCISES.values()))
def test_each_exercise_prints_its_comparison_with_an_interval(name):
    text = _text([o for c in _code_cells(_read(name)) for o in c["outputs"]])
    verdicts = re.findall(
        r"^.*(?: beats .* by .*CI|within noise.*contains 0).*$", text, re.MULTILINE
    )
    assert verdicts, f"{name} prints no paired verdict"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_prose_states_no_measured_result(name):
    for text in _markdown(_read(name)):
        found = PROSE_RESULT.search(SETTINGS.sub("", text))
        assert found is None, f"{name}: {text[max(0, found.start() - 100) :][:220]!r}"


def test_the_prose_check_catches_the_sentences_that_contradicted_their_outputs():
    for sentence in (
        "feature extraction loses most of its lead",
        "one uniform rate is often as good",
        "accuracy near 0.75",
        "dynamic quantisation quarters it",
        "a small network trained from scratch can be competitive",
    ):
        assert PROSE_RESULT.search(sentence), sentence


def test_claim_fails_when_the_data_disagree(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "notebooks"))
    walkthrough = importlib.import_module("walkthrough")
    walkthrough.claim(0.7 > 0.6, "A is above B")
    assert capsys.readouterr().out == "checked: A is above B\n"
    with pytest.raises(AssertionError, match="the data disagree with this sentence: B is above A"):
        walkthrough.claim(0.6 > 0.7, "B is above A")


@pytest.mark.slow
def test_the_set_up_cell_runs_from_any_working_directory(tmp_path):
    """A kernel started outside notebooks/, with tl_keras importable (as `pip install -e` makes
    it), finds walkthrough.py, works in notebooks/ and says it uses this checkout."""
    import os
    import subprocess
    import sys

    setup_cell = "".join(_code_cells(_read(NOTEBOOKS[0]))[0]["source"])
    script = tmp_path / "cell.py"
    script.write_text(setup_cell + "\nimport os\nprint('cwd', os.path.basename(os.getcwd()))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TL_KERAS_TINY": "1"}
    env.pop("TL_KERAS_RUNS", None)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tl_keras from .. (this checkout)" in proc.stdout and "cwd notebooks" in proc.stdout


def test_render_shrinks_a_photo_gallery_by_resolution_to_the_byte_limit():
    import numpy as np
    from PIL import Image

    runner = _runner()
    noise = np.random.default_rng(0).integers(0, 256, (500, 900, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    smaller = base64.b64decode(runner.compress_png(base64.b64encode(buffer.getvalue()).decode()))
    image = Image.open(io.BytesIO(smaller))
    assert len(smaller) <= runner.MAX_IMAGE_BYTES <= MAX_IMAGE_BYTES
    assert image.mode == "RGB" and image.width < 900
