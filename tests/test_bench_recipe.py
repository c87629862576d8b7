"""benchmarks/bench_recipe.py's quick command runs every arm and writes its JSON.

The figures themselves come from the full command (docs/benchmarks.md, "The decided recipe against
plain Keras"); this checks the
path: the plain recipe, tl_keras's default and the same-budget arm, on few-shot flowers and on
scikit-learn's digits, each scored on a test split no run saw.
"""

import json

import pytest
from inprocess import benchmark

pytestmark = [pytest.mark.slow, pytest.mark.shared]


def test_recipe_benchmark_quick(tmp_path, flowers_dir, shared_weights):
    pytest.importorskip("sklearn")
    proc = benchmark("bench_recipe.py", tmp_path, "--quick", "--regimes=fewshot,digits")
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "recipe_quick.json").read_text())
    assert set(payload["regimes"]) == {"fewshot", "digits"}
    assert payload["backbone"] == "mobilenet_025"  # the default base
    for regime in payload["regimes"].values():
        run = regime["runs"][0]
        for arm in ("plain", "tl_keras", "tl_keras_same_budget"):
            assert 0.0 <= run[arm]["test_accuracy"] <= 1.0 and run[arm]["wall_s"] > 0
        assert run["tl_keras_same_budget"]["time_budget"]["budget_s"] > 0
        assert set(run["plain"]["phase_wall_s"]) == {"fe", "ft"}  # each arm's phases apart
        assert set(run["tl_keras"]["phase_wall_s"]) <= {"fe", "ft"}
        summary = regime["summary"]["tl_keras"]
        assert len(summary["wall_vs_plain_per_seed"]) == len(payload["seeds"]) == 1
        assert (
            run["tl_keras"]["recipe"]["epochs_fe"] == 1
        )  # given by --quick: the user's value wins
    assert "| fewshot |" in proc.stdout and "| digits |" in proc.stdout
