"""benchmarks/bench_scale.py's quick command: both measurements, and its JSON and table.

The figures come from the full command (docs/benchmarks.md, "Memory and speed as the data grows"); this checks the path: the
generated folders, TFDS's own `tf_flowers` builder preparing them locally, a real `fe` epoch of
`python -m tl_keras.train` per size with its peak RSS, and the fixed-step child. The TFDS source
only: the folder rows run the same code on the folder the TFDS set is made from, and each
source costs the suite over a minute.
"""

import json

import pytest
from conftest import REPO
from inprocess import benchmark

pytestmark = pytest.mark.slow


def test_scale_benchmark_quick(tmp_path):
    proc = benchmark("bench_scale.py", tmp_path, "--quick", "--sources", "tfds")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    payload = json.loads((tmp_path / "scale_quick.json").read_text())
    assert payload["settings"]["quick"] and payload["settings"]["sizes"] == [200, 400]
    rows = payload["results"]
    for mode in ("epoch", "steps"):
        for n in (200, 400):
            row = rows[f"{mode}/tfds/{n}"]
            assert row["peak_rss_mib"] > 100 and row["images_per_s"] > 0, (mode, n)
        assert set(payload["ratios"]) == {f"{mode}/tfds" for mode in ("epoch", "steps")}
    assert rows["epoch/tfds/400"]["images"] == 400  # every image once: train and validation
    assert "| epoch: peak | tfds |" in proc.stdout and "| steps: speed | tfds |" in proc.stdout
    assert not (REPO / "benchmarks" / "results" / "scale_quick.json").exists()
