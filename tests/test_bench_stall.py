"""benchmarks/bench_stall.py's quick command runs and writes its JSON.

The figures come from the full command (benchmarks/results/stall.json); this checks the path: two
short runs of the train command timed line by line, each phase's gap and its idle stretch, and
the iterator deletions of both arms.
"""

import json

import pytest
from inprocess import benchmark

pytestmark = [pytest.mark.slow, pytest.mark.shared]


def test_stall_benchmark_quick(tmp_path, flowers_dir, shared_weights):
    proc = benchmark("bench_stall.py", tmp_path, "--quick")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    payload = json.loads((tmp_path / "stall_quick.json").read_text())
    assert payload["quick"] and len(payload["runs"]) == 2
    for run in payload["runs"]:
        assert run["returncode"] == 0 and set(run["gaps"]) == {"fe", "ft"}
        for gap in run["gaps"].values():
            assert gap["gap_s"] >= 0 and 0 <= gap["idle_s"] <= gap["gap_s"] + 0.2
        assert "[calibration]" in run["gaps"]["ft"]["next_line"]
    (phases,) = payload["summary"].values()
    assert phases["ft"]["runs"] == 2 and phases["ft"]["max_gap_s"] >= phases["ft"]["median_gap_s"]
    deletions = payload["iterators"]["deletion_s"]
    assert len(deletions["as_built"]) == len(deletions["autotuned"]) == 2
    assert payload["iterators"]["batches_per_s"]["as_built"][0] > 0
    assert "largest gap" in proc.stdout
