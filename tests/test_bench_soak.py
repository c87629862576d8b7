"""benchmarks/soak_crash.py: its quick command (three SIGKILLs, each run resumed to the bitwise
result of an uninterrupted run), and what its comparison calls the same run.

The figures come from the full command (docs/reliability.md#the-crash-soak); the quick one checks
the path: an uninterrupted run of each kind and its timeline, kills by time and at fail points,
the next command a user would run (`--resume`, or the same `--overwrite` when a replacement was
killed before its commit point), and the comparison. Slow: 3 to 5 minutes on 2 busy cores. Each
attempt is a TensorFlow process of MobileNet-0.25 at 32 px, two uninterrupted runs and five or
so attempts; no test backbone on main makes a run much cheaper (TensorFlow's import alone is
10 s of each).
"""

import hashlib
import io
import json
import sys
import zipfile

import h5py
import numpy as np
import pytest
from conftest import REPO
from inprocess import benchmark

sys.path.insert(0, str(REPO / "benchmarks"))
import _soak_compare  # noqa: E402


@pytest.mark.slow
def test_soak_benchmark_quick(tmp_path):
    proc = benchmark("soak_crash.py", tmp_path, "--quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads((tmp_path / "soak_quick.json").read_text())
    totals, runs = payload["summary"], payload["runs"]
    assert totals["kills"] >= 3 and totals["all_matched"] and totals["hangs"] == 0
    assert {r["kind"] for r in runs} == {"every_epoch", "overwrite"}
    landed = [a["landed"] for r in runs for a in r["attempts"] if "landed" in a]
    assert sum(n for moments in payload["histogram"].values() for n in moments.values()) == len(
        landed
    )
    for run in runs:  # every kill was followed by the next command, and the last one finished
        *killed, last = run["attempts"]
        assert all(a["rc"] == -9 and a["next"] in ("resume", "overwrite") for a in killed)
        assert last["rc"] == 0 and run["matched"] and run["differences"] == []
        for a, following in zip(killed, run["attempts"][1:], strict=True):
            assert following["command"] == a["next"]
            if a["next"] == "overwrite":  # killed before the commit point: the old run, bitwise
                assert a["old_run_intact"]
    for reference in payload["references"].values():
        phases = [m["phase"] for m in reference["timeline"]]
        assert {"start-up", "fe", "switch", "ft", "end"} <= set(phases)
    assert "ended bitwise equal to the uninterrupted run" in proc.stdout
    assert not (REPO / "benchmarks" / "results" / "soak_quick.json").exists()


# --- what the comparison calls the same run ------------------------------------------------------
def write_run(root, *, wall_time_s=1.0, object_id=140000, date="2026-01-01", kernel=None):
    """A stand-in workdir: run.json and a phase's model.keras (a zip of config, metadata and an
    HDF5 weights file), as a run writes them."""
    (root / "fe").mkdir(parents=True)
    run = {"phases": {"fe": {"last_epoch": 2, "wall_time_s": wall_time_s}}, "data": str(root)}
    (root / "run.json").write_text(json.dumps(run))
    weights = io.BytesIO()
    with h5py.File(weights, "w") as f:
        f["layers/dense/vars/0"] = np.arange(6, dtype=np.float32) if kernel is None else kernel
        f["optimizer/vars/0"] = np.int64(7)
    config = {"layers": [{"dtype": {"shared_object_id": object_id}}],
              "compile_config": {"optimizer": {"config": {"name": "adam_1"}}}}  # fmt: skip
    with zipfile.ZipFile(root / "fe" / "model.keras", "w") as z:
        z.writestr("metadata.json", json.dumps({"date_saved": date}))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", weights.getvalue())
    (root / "data").mkdir()
    (root / "data" / hashlib.sha1(str(root).encode()).hexdigest()).write_text("outlives a run")


def test_compare_leaves_out_dates_durations_paths_and_process_ids(tmp_path):
    write_run(tmp_path / "a")
    write_run(tmp_path / "b", wall_time_s=9.0, object_id=150000, date="2027-02-02")
    assert _soak_compare.differences(tmp_path / "a", tmp_path / "b") == []


def test_compare_sees_one_bit_of_one_weight_and_a_leftover(tmp_path):
    kernel = np.arange(6, dtype=np.float32)
    kernel.view(np.uint32)[3] ^= 1  # the lowest bit of one value
    write_run(tmp_path / "a")
    write_run(tmp_path / "b", kernel=kernel)
    assert _soak_compare.differences(tmp_path / "a", tmp_path / "b") == [
        "fe/model.keras: variable layers/dense/vars/0 differs"
    ]
    (tmp_path / "b" / "checkpoints").mkdir()
    (tmp_path / "b" / "checkpoints" / "state.json").write_text("{}")
    assert "only in the run: checkpoints/state.json" in _soak_compare.differences(
        tmp_path / "b", tmp_path / "a"
    )
