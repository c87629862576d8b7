"""Strategy comparison: the same data, seed and epoch budget for every strategy."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, tiny_config

from tl_keras.errors import ConfigError, WorkdirError
from tl_keras.plotting import BOUNDARY_GID
from tl_keras.training.compare import STRATEGIES, compare, strategy_configs

GRADUAL = "fe:none:1,ft1:blocks:1:1"


def compare_config(**overrides):
    return tiny_config(**{"stages": GRADUAL, **overrides})  # budget: epochs_fe + epochs_ft = 2


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("compare")
    return workdir, compare(compare_config(), str(workdir))


def test_every_strategy_ran_the_same_budget(comparison):
    workdir, result = comparison
    assert [r.strategy for r in result.rows] == list(STRATEGIES)
    assert result.budget == 2 and all(r.epochs_run == 2 for r in result.rows)
    phases = {r.strategy: r.phases for r in result.rows}
    assert phases == {
        "scratch": "scratch 2",
        "fe": "fe 2",
        "fe_ft": "fe 1 -> ft 1",
        "gradual": "fe 1 -> ft1 1",
    }
    for r in result.rows:
        assert r.workdir == str(workdir / r.strategy)
        assert os.path.isfile(os.path.join(r.workdir, "history.json"))
        assert 0.0 <= r.final_val_accuracy <= r.best_val_accuracy <= 1.0
        assert r.wall_time_s > 0


def test_same_data_and_seed_give_the_same_first_epoch(comparison):
    """fe, fe_ft and gradual all start with the same head-only epoch: identical numbers."""
    _, result = comparison
    first = {name: result.histories[name].records[0] for name in ("fe", "fe_ft", "gradual")}
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert first["fe"][key] == first["fe_ft"][key] == first["gradual"][key], key


def test_scratch_trains_everything_and_batchnorm(comparison):
    workdir, result = comparison
    params = {r.strategy: r.trainable_params for r in result.rows}
    assert params["fe"] < params["gradual"] < params["fe_ft"] < params["scratch"]
    summary = json.loads((workdir / "scratch" / "scratch" / "summary.json").read_text())
    assert summary["trainability"]["frozen_batchnorm_layers"] == 0
    run = json.loads((workdir / "scratch" / "run.json").read_text())
    assert run["weights"] is None
    assert json.loads((workdir / "fe_ft" / "run.json").read_text())["weights"] is None  # tiny cfg
    assert summary["phase"]["lr"] == pytest.approx(1e-3)  # no factor: nothing to protect


def test_table_json_and_overlay_plot(comparison):
    workdir, result = comparison
    table = (workdir / "comparison.md").read_text()
    assert table.startswith("| strategy | phases (epochs) | final val acc | best val acc (epoch)")
    for r in result.rows:
        assert f"| {r.strategy} | {r.phases} | {r.final_val_accuracy:.4f} |" in table
    payload = json.loads((workdir / "comparison.json").read_text())
    assert payload["budget_epochs"] == 2 and len(payload["rows"]) == 4
    assert (workdir / "comparison.png").stat().st_size > 10_000
    from tl_keras.training.compare import plot_comparison

    fig = plot_comparison(result)
    acc = fig.axes[0]
    lines = [ln for ln in acc.lines if ln.get_gid() != BOUNDARY_GID]
    assert [ln.get_label() for ln in lines] == list(STRATEGIES)
    boundaries = [ln for ln in acc.lines if ln.get_gid() == BOUNDARY_GID]
    assert len(boundaries) == 2  # fe_ft and gradual switch once each


def test_refusals(tmp_path):
    with pytest.raises(ConfigError, match=r"add up to 3 epochs but the budget .* is 2"):
        strategy_configs(compare_config(stages="fe:none:1,ft1:blocks:1:2"), ["gradual"])
    with pytest.raises(ConfigError, match="needs `stages`"):
        strategy_configs(tiny_config(), ["gradual"])
    with pytest.raises(ConfigError, match="unknown finetune; use a comma-separated list of"):
        strategy_configs(compare_config(), ["fe", "finetune"])
    with pytest.raises(ConfigError, match="strategy 'fe_ft': ft_lr_factor=5"):
        strategy_configs(compare_config(ft_lr_factor=5), ["fe_ft"])
    (tmp_path / "fe").mkdir()
    (tmp_path / "fe" / "run.json").write_text("{}")
    with pytest.raises(WorkdirError, match="already holds the strategies fe; pass --overwrite"):
        compare(compare_config(), str(tmp_path), strategies=["gradual", "fe"])
    assert not (tmp_path / "gradual").exists()  # refused before anything trained


@pytest.mark.slow
def test_readme_compare_command(tmp_path):
    """The README's command, made tiny by flags (the real one needs ../shared and minutes)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    tiny = [
        "--data_dir=synthetic",
        "--synthetic_images_per_class=8",
        "--weights=none",
        "--image_size=32",
        "--batch_size=8",
        "--head_units=8",
        "--epochs_fe=1",
        "--epochs_ft=1",
        f"--stages={GRADUAL}",
        "--strategies=fe,gradual",
    ]
    cmd = [
        sys.executable,
        "-m",
        "tl_keras.compare",
        "--config=configs/compare_flowers.toml",
        f"--workdir={tmp_path}",
    ]
    proc = subprocess.run(
        [*cmd, *tiny], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[compare] done" in proc.stdout and "| gradual | fe 1 -> ft1 1 |" in proc.stdout
    rows = json.loads((tmp_path / "comparison.json").read_text())["rows"]
    assert [r["strategy"] for r in rows] == ["fe", "gradual"]
    proc = subprocess.run(
        [*cmd, *tiny, "--phase=fe"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "error: --phase does not apply" in proc.stderr
