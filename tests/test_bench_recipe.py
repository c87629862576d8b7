"""benchmarks/bench_recipe.py's quick command runs every arm and writes its JSON.

The figures themselves come from the full command (docs/benchmarks.md, "The decided recipe against
plain Keras"); this checks the path: the plain recipe, tl_keras's default and the same-budget arm
on few-shot flowers, each scored on a test split no run saw. The arms run the same code on every
regime's folder; what the digits regime adds is its data (scikit-learn's digits written as PNG
files and carved the same way), checked on its own: training the three arms on it as well cost
the suite about 25 CPU-seconds.
"""

import json
import os
import sys

import pytest
from conftest import REPO
from inprocess import benchmark

pytestmark = [pytest.mark.slow, pytest.mark.shared]


def test_recipe_benchmark_quick(tmp_path, flowers_dir, shared_weights):
    proc = benchmark("bench_recipe.py", tmp_path, "--quick", "--regimes=fewshot")
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "recipe_quick.json").read_text())
    assert set(payload["regimes"]) == {"fewshot"}
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
    assert "| fewshot |" in proc.stdout


def test_recipe_benchmark_digits_regime(tmp_path, flowers_dir):
    """The digits regime's folders as --quick writes them for the arms: the first 200 digits as
    32 px RGB PNG files, 15% of each class carved into a test split the user's folder lacks."""
    pytest.importorskip("sklearn")
    from PIL import Image

    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_recipe

    folder = bench_recipe.make_regimes(str(tmp_path), flowers_dir, True, ["digits"])["digits"]
    test, user = (
        {
            c: set(os.listdir(os.path.join(folder, split, c)))
            for c in os.listdir(folder + "/" + split)
        }
        for split in ("test", "user")
    )
    assert sorted(test) == sorted(user) == [str(d) for d in range(10)]
    assert sum(len(test[c]) + len(user[c]) for c in test) == 200
    for c in test:
        assert not test[c] & user[c] and len(test[c]) == round(0.15 * len(test[c] | user[c]))
    with Image.open(os.path.join(folder, "user", "0", sorted(user["0"])[0])) as image:
        assert (image.size, image.mode) == ((32, 32), "RGB")
