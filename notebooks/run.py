"""Run the walkthroughs top to bottom, or strip their outputs before a commit.

    python notebooks/run.py                 # every notebook, full size; executed copies with
                                            # their outputs go to runs/notebooks/ (not in git)
    python notebooks/run.py --tiny 02_fine_tuning.ipynb     # small and fast, as CI runs it
    python notebooks/run.py --strip         # clear outputs of the committed notebooks in place

The committed notebooks carry no outputs (tests/test_notebooks.py checks it): outputs belong to
a machine and a run, and they would bloat every diff. The test suite executes each notebook in
tiny mode through `execute` below, so a broken walkthrough fails CI.

Each notebook reads its parameters from the environment in its first cell:
  TL_KERAS_TINY=1     small data, small images, one or two epochs (seconds, not minutes)
  TL_KERAS_RUNS=DIR   where it writes its workdirs (default ../runs/notebooks)
  TL_KERAS_SHARED=DIR the shared weights and photos, when present (default ../../shared)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent
REPO = NOTEBOOKS_DIR.parent
KERNEL = "python3"


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
        "TL_KERAS_RUNS": str(pathlib.Path(runs_dir).resolve()),
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
    parser.add_argument("--tiny", action="store_true", help="small parameters, as CI runs them")
    parser.add_argument("--strip", action="store_true", help="clear outputs in place instead")
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
    import nbformat

    os.makedirs(args.runs_dir, exist_ok=True)
    for name in names:
        start = time.perf_counter()
        nb = execute(name, tiny=args.tiny, runs_dir=args.runs_dir)
        out = pathlib.Path(args.runs_dir) / name
        nbformat.write(nb, out)
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
