"""Strategy comparison: the same data, seed and epoch budget for every strategy."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, tiny_config
from inprocess import command

from tl_keras.errors import ConfigError, WorkdirError
from tl_keras.training.compare import STRATEGIES, compare, strategy_configs
from tl_keras.training.curves import BOUNDARY_GID

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
    assert table.startswith("Scores of each final model on the val split, over 1 seed (0): mean.")
    assert "| strategy | phases (epochs) | accuracy | balanced accuracy | macro F1 |" in table
    for r in result.rows:
        assert f"| {r.strategy} | {r.phases} | {r.scores['accuracy']['mean']:.4f} |" in table
    payload = json.loads((workdir / "comparison.json").read_text())
    assert payload["budget_epochs"] == 2 and len(payload["rows"]) == 4
    assert payload["seeds"] == [0] and len(payload["differences"]) == 6  # every pair
    one_seed = payload["differences"][0]
    assert one_seed["over_seeds"]["low"] is None and "one seed" in one_seed["verdict"]
    assert (workdir / "comparison.png").stat().st_size > 10_000
    from tl_keras.training.compare import plot_comparison

    fig = plot_comparison(result)
    acc = fig.axes[0]
    lines = [ln for ln in acc.lines if ln.get_gid() != BOUNDARY_GID]
    assert [ln.get_label() for ln in lines] == list(STRATEGIES)
    boundaries = [ln for ln in acc.lines if ln.get_gid() == BOUNDARY_GID]
    assert len(boundaries) == 2  # fe_ft and gradual switch once each


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("seeded")
    cfg = compare_config(synthetic_images_per_class=12)
    return workdir, compare(cfg, str(workdir), strategies=["fe", "fe_ft"], seeds=2)


def test_seeds_run_every_strategy_on_each_and_save_the_answers(seeded):
    workdir, result = seeded
    assert result.seeds == [0, 1] and result.eval_split == "val"
    for r in result.rows:
        assert [s["seed"] for s in r.per_seed] == [0, 1]
        assert r.workdir == str(workdir / r.strategy / "seed-0")
        for s in r.per_seed:
            saved = np.load(os.path.join(s["workdir"], "predictions.npz"))
            assert saved["correct"].mean() == pytest.approx(s["accuracy"])
            np.testing.assert_array_equal(saved["correct"], saved["labels"] == saved["predicted"])
        accs = [s["accuracy"] for s in r.per_seed]
        assert r.scores["accuracy"]["mean"] == pytest.approx(np.mean(accs))
        assert r.scores["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    fe = [np.load(os.path.join(s["workdir"], "predictions.npz")) for s in result.rows[0].per_seed]
    assert len(fe[0]["labels"]) == len(fe[1]["labels"]) == 6  # 2 of each class's 12, per seed
    assert (workdir / "doctor" / "report.json").is_file()  # examined once, for the first seed
    assert not (workdir / "fe" / "seed-0" / "doctor").exists()


def test_each_difference_has_paired_intervals_and_a_plain_verdict(seeded):
    from tl_keras import stats

    workdir, result = seeded
    (d,) = result.differences
    assert (d["a"], d["b"]) == ("fe_ft", "fe")
    fe_ft, fe = result.rows[1], result.rows[0]
    per_seed = [
        a["accuracy"] - b["accuracy"] for a, b in zip(fe_ft.per_seed, fe.per_seed, strict=True)
    ]
    assert d["difference"] == pytest.approx(np.mean(per_seed))
    t = stats.paired_t_interval(
        [s["accuracy"] for s in fe_ft.per_seed], [s["accuracy"] for s in fe.per_seed]
    )
    assert (d["over_seeds"]["low"], d["over_seeds"]["high"]) == pytest.approx((t.low, t.high))
    assert d["over_images"]["n"] == 12 and d["over_images"]["low"] <= d["over_images"]["high"]
    table = (workdir / "comparison.md").read_text()
    assert "over 2 seeds (0, 1): mean ± standard deviation" in table
    assert f"| fe_ft - fe | {100 * d['difference']:+.1f} |" in table
    assert d["verdict"].startswith(("within noise", "fe_ft beats fe", "fe beats fe_ft"))
    if not (d["over_seeds"]["significant"] and d["over_images"]["significant"]):
        assert d["verdict"].startswith("within noise")


def test_verdict_wording():
    from tl_keras.stats import PairedInterval
    from tl_keras.training.compare_report import verdict

    def iv(d, lo, hi):
        return PairedInterval(d, lo, hi, 0.95, "x", 3)

    assert (
        verdict("a", "b", iv(0.05, 0.01, 0.09), iv(0.05, 0.02, 0.08)) == "a beats b by 5.0 points"
    )
    assert verdict("a", "b", iv(-0.05, -0.09, -0.01), iv(-0.05, -0.08, -0.02)) == (
        "b beats a by 5.0 points"
    )
    assert verdict("a", "b", iv(0.03, -0.01, 0.07), iv(0.03, 0.01, 0.05)) == (
        "within noise (+3.0 points; the interval over seeds contains 0)"
    )
    assert verdict("a", "b", iv(0.03, None, None), iv(0.03, 0.01, 0.05)) == (
        "a beats b by 3.0 points (one seed: run-to-run spread not measured)"
    )


def test_refusals(tmp_path):
    with pytest.raises(ConfigError, match=r"add up to 3 epochs but the budget .* is 2"):
        strategy_configs(compare_config(stages="fe:none:1,ft1:blocks:1:2"), ["gradual"])
    with pytest.raises(ConfigError, match="needs `stages`"):
        strategy_configs(tiny_config(), ["gradual"])
    with pytest.raises(ConfigError, match="unknown finetune; use a comma-separated list of"):
        strategy_configs(compare_config(), ["fe", "finetune"])
    with pytest.raises(ConfigError, match="seeds=0 must be a whole number of at least 1"):
        compare(compare_config(), str(tmp_path / "zero"), seeds=0)
    with pytest.raises(ConfigError, match="strategy 'fe_ft': ft_lr_factor=5"):
        strategy_configs(compare_config(ft_lr_factor=5), ["fe_ft"])
    (tmp_path / "fe").mkdir()
    (tmp_path / "fe" / "run.json").write_text("{}")
    with pytest.raises(WorkdirError, match="already holds the strategies fe; pass --overwrite"):
        compare(compare_config(), str(tmp_path), strategies=["gradual", "fe"])
    assert not (tmp_path / "gradual").exists()  # refused before anything trained


@pytest.mark.slow
def test_readme_compare_command(tmp_path):
    """docs/beyond.md's command, made tiny by flags (the real one needs ../shared and minutes),
    in a process of its own; its refusal of --phase in this one (tests/inprocess.py)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    tiny = [
        "--data_dir=synthetic",
        "--synthetic_images_per_class=8",
        "--backbone=tiny",
        "--alpha=1",
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
    proc = command(*cmd[3:], *tiny, "--phase=fe", module="tl_keras.compare")
    assert proc.returncode == 2 and "error: --phase does not apply" in proc.stderr
