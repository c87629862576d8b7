"""Run the walkthroughs top to bottom; render them with their outputs for git; check them.

    python notebooks/run.py --render                  # every notebook, full size, outputs saved
    python notebooks/run.py --render 03_gradual_unfreezing.ipynb        # one (or several)
    python notebooks/run.py --check                   # are the committed outputs current?
    python notebooks/run.py --tiny 02_fine_tuning.ipynb   # small and fast, as CI runs it
    python notebooks/run.py                           # full size, executed copies in runs/notebooks/
    python notebooks/run.py --strip                   # clear outputs in place (while editing)

The committed notebooks carry their outputs, from a full-size run on the shared ImageNet weights
and flower photos, so a reader sees every plot and table without running anything. `--render`
executes each notebook in a fresh kernel, shrinks its images losslessly (at most MAX_IMAGE_WIDTH
pixels wide, every colour kept) and records in the notebook's metadata (`tl_keras`) the hash of
what its outputs depend on and are read with (every cell, prose included, walkthrough.py, and
the sources of tl_keras), how long it took and on how many CPUs. tests/test_notebooks.py checks
that hash against the current files, that no output is an error, a warning, a log line or a
machine path, that every verdict the notebook asserts (`walkthrough.claim`) passed, and runs
every notebook again in tiny mode. Format a notebook (`ruff format notebooks`) before rendering
it: formatting changes its code, so its hash.

Each notebook's first code cell calls `walkthrough.setup()`, which reads the parameters from the
environment (TL_KERAS_TINY, TL_KERAS_RUNS, TL_KERAS_SHARED, TL_KERAS_OFFLINE) and says which
weights and photos it uses.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import io
import os
import pathlib
import re
import sys
import time

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent
REPO = NOTEBOOKS_DIR.parent
KERNEL = "python3"
HELPER = NOTEBOOKS_DIR / "walkthrough.py"  # the set-up every notebook imports: part of its source
PACKAGE = REPO / "tl_keras"  # the library the notebooks call: part of their source too
MAX_IMAGE_WIDTH = 1100  # pixels; wider figures are scaled down when rendering
MAX_IMAGE_BYTES = 380_000  # a figure still larger (photos) is scaled down until it fits
RENDER_CELL_TIMEOUT_S = 3600


def notebooks() -> list[str]:
    """The walkthroughs in this folder, by name, in order."""
    return sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))


def execute(name: str, *, tiny: bool, runs_dir: str | os.PathLike, timeout: int = 600):
    """Executes one notebook in a fresh kernel, in this folder, with this checkout's tl_keras.

    Args:
      name: the notebook's file name in notebooks/.
      tiny: set TL_KERAS_TINY=1 (small parameters).
      runs_dir: TL_KERAS_RUNS, where the notebook writes its workdirs.
      timeout: the most seconds one cell may run.

    Returns:
      The executed notebook (an nbformat NotebookNode, with outputs).

    Raises:
      nbclient.exceptions.CellExecutionError: a cell raised; the message shows the cell and
        the traceback.
    """
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    env = {
        **os.environ,
        "TL_KERAS_TINY": "1" if tiny else "0",
        # Relative to the notebook's folder, where the kernel runs: outputs show short paths.
        "TL_KERAS_RUNS": os.path.relpath(pathlib.Path(runs_dir).resolve(), NOTEBOOKS_DIR),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # This checkout's package first, whatever an editable install elsewhere points at.
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=timeout,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    client.execute(env=env)
    return nb


def package_hash() -> str:
    """sha256 of the package's sources (every tl_keras/**/*.py, by path): what the notebooks call."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(b"\0" + path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def source_hash(nb, package: str | None = None) -> str:
    """sha256 of everything a notebook's outputs depend on or are read with.

    Every cell, prose included (the prose states what the outputs show, so an edit to it is
    unreviewed until the outputs are rendered with it), walkthrough.py, and the package's
    sources (`package_hash`: a change to tl_keras can change any number printed).
    """
    h = hashlib.sha256(HELPER.read_bytes())
    h.update(b"\0package\0" + (package or package_hash()).encode())
    for cell in nb.cells:
        h.update(f"\0{cell.cell_type} cell\0".encode() + cell.source.encode("utf-8"))
    return h.hexdigest()


def compress_png(data: str) -> str:
    """A base64 PNG made smaller for git, losslessly: at most MAX_IMAGE_WIDTH wide, optimised.

    Size is limited by resolution, never by palette: a photo keeps every colour (a 256-colour
    palette posterised the photos of notebook 6). An image narrow enough already is returned
    as it was when optimising it would not make it smaller.
    """
    from PIL import Image

    raw = base64.b64decode(data)
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    too_wide = image.width > MAX_IMAGE_WIDTH
    if too_wide:  # always scaled down, even where the smaller image takes more bytes
        height = round(image.height * MAX_IMAGE_WIDTH / image.width)
        image = image.resize((MAX_IMAGE_WIDTH, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    while out.tell() > MAX_IMAGE_BYTES:  # a photo gallery: fewer pixels, every colour kept
        too_wide = True
        size = (round(image.width * 0.85), round(image.height * 0.85))
        image = image.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=True)
    if not too_wide and out.tell() >= len(raw):
        return data
    return base64.b64encode(out.getvalue()).decode("ascii") + "\n"


# TensorFlow's C++ start-up lines on stderr (absl's format: `I0000 00:00:1796113296.297283 123 port.cc:153]`,
# and the line announcing them), which TF 2.21 prints whatever TF_CPP_MIN_LOG_LEVEL says. They
# describe the rendering machine (its CPU instructions, that it has no GPU), not the walkthrough,
# so rendering drops them, and TFLite's announcement of its CPU delegate, printed by its C++ runtime
# whatever Python's logging says; every other stderr line stays.
TF_STARTUP = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)$"
)


def drop_tf_startup_lines(cell) -> None:
    """Removes TF_STARTUP lines from a cell's stderr outputs (and outputs left empty)."""
    kept = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and output.get("name") == "stderr":
            lines = output.text.splitlines(keepends=True)
            output.text = "".join(line for line in lines if not TF_STARTUP.match(line.rstrip("\n")))
            if not output.text:
                continue
        kept.append(output)
    cell.outputs = kept


def render(name: str, *, runs_dir: str | os.PathLike) -> float:
    """Executes a notebook at full size and saves it in place, with its outputs.

    Returns:
      The seconds it took.
    """
    import nbformat

    start = time.perf_counter()
    nb = execute(name, tiny=False, runs_dir=runs_dir, timeout=RENDER_CELL_TIMEOUT_S)
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # per-cell timestamps: noise in every diff
        if cell.cell_type != "code":
            continue
        drop_tf_startup_lines(cell)
        for output in cell.outputs:
            if "image/png" in output.get("data", {}):
                output.data["image/png"] = compress_png(output.data["image/png"])
    nb.metadata["tl_keras"] = {
        "source_sha256": source_hash(nb),
        "package_sha256": package_hash(),
        "mode": "full",
        "render_seconds": round(seconds),
        "rendered_on": f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPUs",
    }
    nbformat.write(nb, NOTEBOOKS_DIR / name)
    return seconds


def stale(name: str) -> str | None:
    """Why a committed notebook's outputs are not current, or None when they are."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    meta = nb.metadata.get("tl_keras", {})
    if meta.get("source_sha256") is None:
        return "never rendered"
    package = package_hash()
    if meta["source_sha256"] != source_hash(nb, package):
        if meta.get("package_sha256") not in (None, package):
            return "tl_keras's sources changed since it was rendered"
        return "its cells (code or prose), walkthrough.py or tl_keras changed since it was rendered"
    if meta.get("mode") != "full":
        return f"rendered in {meta.get('mode')!r} mode, not full size"
    return None


def strip(path: str | os.PathLike) -> bool:
    """Clears a notebook's outputs and execution counts in place; True if it changed."""
    import nbformat

    path = pathlib.Path(path)
    before = path.read_text(encoding="utf-8")
    nb = nbformat.reads(before, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    after = nbformat.writes(nb).rstrip("\n") + "\n"  # as nbformat.write leaves files
    if after != before:
        path.write_text(after, encoding="utf-8")
    return after != before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="small parameters, as CI runs them")
    mode.add_argument("--render", action="store_true", help="full size, outputs saved in place")
    mode.add_argument("--check", action="store_true", help="say which outputs are stale")
    mode.add_argument("--strip", action="store_true", help="clear outputs in place instead")
    parser.add_argument("--runs_dir", default=str(REPO / "runs" / "notebooks"))
    args = parser.parse_args(argv)
    names = args.names or notebooks()
    unknown = sorted(set(names) - set(notebooks()))
    if unknown:
        parser.error(f"no such notebook(s) {unknown}; choose from {notebooks()}")
    if args.strip:
        for name in names:
            print(f"{name}: {'stripped' if strip(NOTEBOOKS_DIR / name) else 'already clean'}")
        return 0
    if args.check:
        reasons = {name: stale(name) for name in names}
        for name, reason in reasons.items():
            print(f"{name}: {reason or 'current'}")
        return 1 if any(reasons.values()) else 0
    import nbformat

    os.makedirs(args.runs_dir, exist_ok=True)
    total = time.perf_counter()
    for name in names:
        if args.render:
            print(f"{name}: rendered in {render(name, runs_dir=args.runs_dir):.0f} s", flush=True)
            continue
        start = time.perf_counter()
        nb = execute(name, tiny=args.tiny, runs_dir=args.runs_dir)
        out = pathlib.Path(args.runs_dir) / name
        nbformat.write(nb, out)
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {out}", flush=True)
    print(f"{len(names)} notebook(s) in {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
