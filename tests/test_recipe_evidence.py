"""benchmarks/recipe_evidence.py: its experiments are listed, and an arm's internal switches
(keys starting with "_") act for that arm only.

The figures come from the full commands (docs/benchmarks.md, "The regularisers and rates,
checked" and the sections after it); this checks the path on a tiny random base.
"""

import logging
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evidence():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import recipe_evidence

    return recipe_evidence


def test_list_names_every_experiment(evidence, capsys):
    evidence.main(["--list"])
    out = capsys.readouterr().out
    for name, (regime, size, arms) in evidence.EXPERIMENTS.items():
        assert f"{name}: {regime} at {size} px; arms {', '.join(arms)}" in out
    assert "flowers_bn_stats" in out and "flowers_batch" in out


def test_an_adabn_arm_re_estimates_the_statistics_then_puts_the_builder_back(
    evidence, shapes_dir, caplog
):
    import bench_recipe

    from tl_keras.training import start

    build = start.build_initial_model
    given = {
        "batch_size": 8,
        "epochs_fe": 1,
        "epochs_ft": 1,
        "head_units": 8,
        "recipe": "manual",
        "_adabn_batches": 2,
    }
    backbone = bench_recipe.BACKBONES["mobilenet_025"]
    with caplog.at_level(logging.INFO):
        out = evidence.run_arm({"data_dir": shapes_dir}, 32, backbone, "none", 0, given)
    said = [r.getMessage() for r in caplog.records]
    assert "BatchNorm statistics re-estimated from 2 training batches" in said
    assert start.build_initial_model is build  # the next arm builds as the package does
    assert 0.0 <= out["val_accuracy"] <= 1.0 and out["epochs_run"] == {"fe": 1, "ft": 1}
    # The switch is not a setting: the run's recipe card never saw it.
    assert "_adabn_batches" not in out["recipe"]
