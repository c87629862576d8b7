"""benchmarks/bench_doctor.py's documented quick command runs and writes its JSON."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.shared]


def test_doctor_benchmark_quick(tmp_path, flowers_dir, shared_weights):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TL_KERAS_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_doctor.py", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "doctor.json").read_text())
    whole = payload["whole_set"]
    assert payload["quick"] and whole["images"] == 300
    timing = whole["timing"]
    assert timing["features_computed"]["steps_s"]["features"] > 0
    assert timing["features_cached"]["wall_s"] > 0 and timing["command_cached_s"] > 0
    assert whole["findings"]["summary"].startswith("doctor: ")
    seed = payload["planted"]["seeds"][0]
    assert seed["duplicate_recall"] >= 0.95 and seed["planted_outliers_flagged"] >= 2
    assert "with them cached" in proc.stdout
