"""benchmarks/bench_doctor.py's documented quick command runs and writes its JSON."""

import json

import pytest
from inprocess import benchmark

pytestmark = [pytest.mark.slow, pytest.mark.shared]


def test_doctor_benchmark_quick(tmp_path, flowers_dir, shared_weights):
    proc = benchmark("bench_doctor.py", tmp_path, "--quick")
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


@pytest.mark.slow
def test_doctor_benchmark_on_lite0_features_smoke(tmp_path):
    """`--backbone=efficientnet_lite0` on the digits (no ../shared needed): one seed, 10 digits a
    class, with the converted checkpoint; the planted copies and outliers are found."""
    from tl_keras.model import pretrained

    if not pretrained.importlib.util.find_spec(pretrained.CHECKPOINT_MODULE):
        pytest.skip(f"{pretrained.CHECKPOINT_PACKAGE} not installed")
    weights = pretrained.convert(pretrained.checkpoint_path(), str(tmp_path / "lite0.weights.h5"))
    proc = benchmark(
        "bench_doctor.py", tmp_path, "--backbone=efficientnet_lite0", f"--weights={weights}",
        "--data=digits", "--seeds=1", "--per_class=10",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    digits = json.loads((tmp_path / "doctor_lite0.json").read_text())["sources"]["digits"]
    assert digits["images_per_seed"] == 100 + 8 + 18 + 3 and digits["image_size"] == 64
    (seed,) = digits["seeds"]
    assert seed["duplicate_recall"] == 1.0 and seed["planted_outliers_flagged"] == 3
    assert 0.0 < seed["probe_accuracy"] <= 1.0 and 0.0 <= seed["flip_precision_at_k"] <= 1.0
    (detail,) = digits["details"]
    assert len(detail["planted_outlier_scores"]) == 3
    assert digits["outlier_z_sweep"]["3.5"]["planted_flagged"] == 3


def test_doctor_cost_benchmark_smoke(tmp_path, flowers_dir, shared_weights):
    """bench_doctor_cost.py --quick, one run of the default and one of --doctor=off: the default's
    doctor line says what it deferred, and its own steps are in the JSON."""
    proc = benchmark(
        "bench_doctor_cost.py", tmp_path, "--quick", "--before=HEAD", "--runs=1",
        "--arms=after,off",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "doctor_cost_quick.json").read_text())
    (after,) = payload["runs"]["after"]
    assert after["doctor_line"].startswith("doctor: ") and "deferred" in after["doctor_line"]
    assert set(after["doctor_steps_s"]) == {"hashes", "features", "diagnose", "report"}
    assert 0 < after["to_fe_setup_s"] < after["to_first_epoch_s"]
    (off,) = payload["runs"]["off"]
    assert "doctor_line" not in off and off["to_first_epoch_s"] > 0
    assert len(payload["before_commit"]) == 40
