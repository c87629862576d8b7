"""The decided recipe in a real run: the card is measured, printed, kept, trusted and obeyed.

Tiny runs (the test backbone `tiny` at 32 px, a few dozen generated images); the epochs are
given so the runs stay short, and everything else is left to the recipe. The rules themselves are
tested without training in tests/test_recipe_auto.py.
"""

import json
import logging
import pathlib
import shutil

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tl_keras import config as config_lib
from tl_keras.errors import ConfigError, WorkdirError
from tl_keras.recipe import auto
from tl_keras.training import budget, decide
from tl_keras.training.runner import train
from tl_keras.training.start import build_initial_model


def read(path) -> dict:
    return json.loads(pathlib.Path(path).read_text())


def auto_config(**overrides):
    """A tiny run that leaves every recipe setting but the epochs to the recipe."""
    values = dict(recipe="auto", epochs_fe=1, epochs_ft=2, unfreeze="auto")
    return tiny_config(**{**values, **overrides})


class LastEpoch(keras.callbacks.Callback):
    """Keeps the trainable weights at the end of the run's last epoch (before any averaging)."""

    def __init__(self):
        super().__init__()
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        self.weights = [np.array(w) for w in self.model.trainable_weights]


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    """The auto run, with weight averaging asked for (one run serves the card's tests and the
    averaging's: the recipe decides every other setting as it would)."""
    wd = tmp_path_factory.mktemp("auto")
    logger = logging.getLogger("tl_keras")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler, last = Keep(), LastEpoch()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = train(auto_config(weight_averaging="ema"), str(wd), callbacks=[last])
    finally:
        logger.removeHandler(handler)
    return wd, result, lines, last.weights


def test_the_card_is_printed_kept_and_says_who_chose_what(auto_run):
    wd, _, lines, _ = auto_run
    card = auto.Card.from_dict(read(wd / "recipe.json"))
    assert card.recipe == "auto"
    assert card.get("epochs_ft").source == "user" and card.get("augment").source == "rule"
    assert card.get("unfreeze").value == "all"  # random weights: no statistics to compare
    header = [line for line in lines if line.startswith("recipe card (auto)")]
    assert len(header) == 1 and "no pretrained weights" in header[0]
    assert any(line.split()[:2] == ["lr_schedule", "cosine"] for line in lines)


def test_the_run_follows_the_card(auto_run):
    wd, result, lines, _ = auto_run
    card = auto.Card.from_dict(read(wd / "recipe.json"))
    run = read(wd / "run.json")
    fe, ft = (p for p in run["schedule"])
    # fe trains on cached, unaugmented features; ft on the decided augmentation.
    assert (fe["augment"], ft["augment"]) == (False, True)
    assert any("[fe] cached features" in line for line in lines)
    assert ft["lr_schedule"]["name"] == card.get("lr_schedule").value == "cosine"
    assert ft["unfreeze"] == "all" and ft["lr"] == pytest.approx(1e-4)
    assert read(wd / "fe" / "summary.json")["data"]["pipeline"]["augment"] == "none"
    assert read(wd / "ft" / "summary.json")["data"]["pipeline"]["augment"] == "light"
    assert read(wd / "ft" / "config.json")["label_smoothing"] == 0.1  # what the phase ran with
    assert read(wd / "config.json")["label_smoothing"] == "auto"  # what the user asked
    assert run["inference"]["tta"] == card.get("tta").value  # beside the fitted temperature
    assert [r["epoch"] for r in result.history.records] == [1, 2, 3]


@pytest.fixture(scope="module")
def auto_fe_done(tmp_path_factory):
    """The auto run with only phase `fe` done (read-only: a test copies it before going on)."""
    wd = tmp_path_factory.mktemp("auto_fe") / "w"
    train(auto_config(), str(wd), phase="fe")
    return wd


def test_a_later_phase_trusts_the_saved_card_and_never_decides_again(tmp_path, auto_fe_done):
    wd = tmp_path / "w"
    shutil.copytree(auto_fe_done, wd)
    saved = read(wd / "recipe.json")
    # Edit the kept card: a later phase must follow it, not decide afresh.
    for d in saved["decisions"]:
        if d["field"] == "augment":
            d["value"] = "none"
    (wd / "recipe.json").write_text(json.dumps(saved))
    train(auto_config(), str(wd), phase="ft")
    assert read(wd / "ft" / "config.json")["augment"] == "none"
    assert read(wd / "recipe.json") == saved


def test_a_damaged_card_is_one_line_naming_the_file_and_the_way_out(tmp_path, auto_fe_done):
    wd = tmp_path / "w"
    shutil.copytree(auto_fe_done, wd)
    (wd / "recipe.json").write_text("[1, 2]")
    with pytest.raises(WorkdirError, match=r"recipe.json is damaged .* with --overwrite"):
        train(auto_config(), str(wd), phase="ft")


def test_a_budget_too_small_for_one_epoch_is_refused_before_anything_is_written(tmp_path):
    wd = tmp_path / "w"
    # A millisecond: the tiny model's data, build and probe alone take longer on any machine
    # (a second did not: CI's faster cores fitted the tiny run's estimate inside it).
    with pytest.raises(ConfigError, match=r"time_budget=0.001s cannot hold one epoch of each"):
        train(auto_config(time_budget="0.001s"), str(wd))
    assert not (wd / "run.json").exists() and not (wd / "recipe.json").exists()


# The budgets of the runs below, in seconds: a budgeted run fills its budget whatever the machine,
# so its budget is its cost. Not smaller: what a run spends before its first epoch (data, model,
# probe; about 1.3 CPU-s once TensorFlow is warm) must stay well inside it, and fine-tuning must
# still be planned more epochs than the card's warm-up (1): a phase planned shorter runs a quarter
# of it, which the given run, one warm-up for both phases, cannot repeat. On 2 cores loaded 9-10
# the run spent 3-7 s before its first epoch after an earlier run in the process (as here:
# `auto_run` trains first), 10-13 s in a fresh one; 6 s and 10 s budgets were refused as too small
# for one epoch, and 15 s planned fine-tuning a single epoch in a fresh process.
BUDGET_S, FE_ONLY_BUDGET_S = 20, 20


@pytest.fixture(scope="module")
def budget_runs(tmp_path_factory):
    """A run with a time budget, and the same run given the epochs the budget planned.

    The plan made before each phase only: the re-plan after a phase's first epochs re-sizes a
    schedule already under way, so its run is not one given its final length outright; what it
    keeps instead is tested in tests/test_replan.py."""
    from unittest import mock

    root = tmp_path_factory.mktemp("budget")
    budgeted = auto_config(time_budget=f"{BUDGET_S}s", epochs_fe="auto", epochs_ft="auto")
    with mock.patch("tl_keras.training.replan.with_deadline", lambda plan, *_: plan):
        planned = train(budgeted, str(root / "a"))
    card = auto.Card.from_dict(read(root / "a" / "recipe.json"))
    # The warm-up rule reads the phases' lengths: the given run gets the planned run's too.
    epochs = {f: card.get(f).value for f in ("epochs_fe", "epochs_ft", "warmup_epochs")}
    # A warm-up as long as the planned phase ran as a quarter of it (training/phase.py); a given
    # one must be shorter than its phase: the given run gets what the planned one ran with.
    if epochs["warmup_epochs"] >= epochs["epochs_ft"]:
        epochs["warmup_epochs"] = epochs["epochs_ft"] / 4
    # The guard may end a phase of the planned run before its planned epochs (the tiny model's
    # epochs are too short to time well: a 20 s budget plans dozens to hundreds; on a loaded
    # machine it may cut fe too): the given run stops each phase where the planned one did, on
    # the same schedule, so the two must still agree bitwise.
    ends = {r["phase"]: r["epoch"] for r in planned.history.records}
    given = train(auto_config(**epochs), str(root / "b"), callbacks=[StopAt(ends.values())])
    return root / "a", planned, card, given


class StopAt(keras.callbacks.Callback):
    """Ends a phase after any of the run's epochs `ends` (counted across phases, from 1); at a
    phase's own last epoch it changes nothing."""

    def __init__(self, ends):
        super().__init__()
        self.ends = set(ends)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.ends:
            self.model.stop_training = True


def test_the_budget_plans_both_phases_and_run_json_reports_what_was_used(budget_runs):
    wd, result, card, _ = budget_runs
    run = read(wd / "run.json")
    for i, name in enumerate(("fe", "ft")):
        planned = card.get(f"epochs_{name}")
        assert planned.source == "budget" and planned.value >= 1
        assert run["schedule"][i]["epochs"] == planned.value
        done = [r for r in result.history.records if r["phase"] == name]
        assert 1 <= len(done) <= planned.value  # a plateau or the guard may end it, never later
    # fe, with fine-tuning to follow, keeps to its share and still switches on a plateau.
    assert card.get("epochs_fe").value <= 3  # the rule's fe for a random base: at most that
    assert run["schedule"][0]["early_stopping_patience"] == card.get("fe_switch_patience").value
    used = run["time_budget"]
    assert used["budget_s"] == BUDGET_S and used["used_s"] > 0
    assert used["used_share"] == pytest.approx(used["used_s"] / BUDGET_S, abs=1e-3)


def test_a_planned_run_is_the_run_its_epochs_would_give(budget_runs):
    """The budget's measurements (real steps, then everything put back) leave no trace: the
    planned run equals a run given the planned epochs outright, bitwise (both ending where the
    planned run's guard ended it)."""
    _, planned, _, given = budget_runs
    assert [r["epoch"] for r in planned.history.records] == [
        r["epoch"] for r in given.history.records
    ]
    for a, b in zip(planned.model.weights, given.model.weights, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_fe_that_ends_the_run_fills_its_budget_and_keeps_its_best_epoch(tmp_path):
    wd = tmp_path / "w"
    result = train(
        auto_config(time_budget=f"{FE_ONLY_BUDGET_S}s", epochs_fe="auto", epochs_ft=0), str(wd)
    )
    card = auto.Card.from_dict(read(wd / "recipe.json"))
    planned = card.get("epochs_fe")
    assert planned.source == "budget" and "fills the budget" in planned.reason
    fe = [r for r in result.history.records if r["phase"] == "fe"]
    schedule = read(wd / "run.json")["schedule"][0]
    assert schedule["epochs"] == planned.value
    assert schedule["early_stopping_patience"] == planned.value  # no plateau stop: the budget
    if len(fe) == planned.value:  # not cut short by the guard on a busy machine
        best = min(fe, key=lambda r: r["val_loss"])["epoch"]
        kept = [k.epoch for k in result.history.kept if k.phase == "fe"]
        assert kept == [best] or (best == fe[-1]["epoch"] and not kept)


def test_measuring_an_epoch_changes_nothing(tmp_path):
    cfg = auto_config()
    from tl_keras.data.sources import load_data

    data = load_data(cfg, workdir=str(tmp_path))
    keras.utils.set_random_seed(0)
    model = build_initial_model(cfg.model, data)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3, use_ema=True),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.optimizer.build(model.trainable_variables)
    before = [np.array(v) for v in model.weights + model.optimizer.variables]
    cost = budget.measure_epoch_cost(model, data, first_epoch=0)
    after = [np.array(v) for v in model.weights + model.optimizer.variables]
    assert cost.train_s > 0 and cost.overhead_s > 0
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_weight_averaging_saves_the_average_and_reports_both_scores(auto_run):
    wd, result, _, last = auto_run
    summary = read(wd / "ft" / "summary.json")
    assert set(summary["weight_averaging"]) == {"last_epoch", "averaged"}
    assert "val_accuracy" in summary["weight_averaging"]["averaged"]
    final = [np.array(w) for w in result.model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(final, last, strict=True))


def test_auto_is_accepted_on_the_command_line_and_in_files(tmp_path):
    cfg = config_lib.merged({"lr": "auto", "epochs_ft": "7"})
    assert cfg.lr == auto.AUTO and cfg.epochs_ft == 7
    path = tmp_path / "c.toml"
    path.write_text('lr = "auto"\nepochs_ft = 4\nlabel_smoothing = 0\n')
    cfg = config_lib.merged({}, config_file=str(path))
    assert (cfg.lr, cfg.epochs_ft, cfg.label_smoothing) == (auto.AUTO, 4, 0.0)


@pytest.mark.shared
def test_the_probe_tells_photos_from_a_far_domain(tmp_path, shared_weights, flowers_dir):
    """Real ImageNet weights: flower photos sit near ImageNet, the drawn shapes far from it."""
    import os

    small = tmp_path / "flowers"
    for cls in sorted(os.listdir(flowers_dir)):
        (small / cls).mkdir(parents=True)
        for name in sorted(os.listdir(os.path.join(flowers_dir, cls)))[:24]:
            (small / cls / name).symlink_to(os.path.join(flowers_dir, cls, name))
    domains = {}
    for name, data_dir in (("flowers", str(small)), ("shapes", "synthetic")):
        cfg = tiny_config(
            data_dir=data_dir,
            backbone="mobilenet",  # the real weights' family (tiny_config trains `tiny`)
            alpha=0.25,
            weights=shared_weights,
            image_size=64,
            synthetic_images_per_class=24,
            recipe="auto",
        )
        checked = config_lib.check(cfg)
        from tl_keras.data.sources import load_data

        data = load_data(checked, workdir=str(tmp_path / name))
        model = build_initial_model(checked.model, data)
        facts, rate = decide.measure_facts(checked, data, model)
        assert len(facts.block_shift) == 14 and rate > 0  # stem and 13 blocks of MobileNet
        domains[name] = (facts.domain, facts.early_shift)
    assert domains["flowers"][0] == "near" and domains["shapes"][0] == "far", domains


class _Model:
    stop_training = False


@pytest.mark.parametrize("last_epoch, stopped_at", [(20, 4), (4, None)])
def test_budget_guard_keeps_the_run_inside_the_budget(monkeypatch, last_epoch, stopped_at):
    """The guard stops at the end of the epoch after which another epoch and the run's end would
    pass the budget; the first epoch (tracing) counts at most the plan's measured epoch; the
    phase's last epoch is never called a stop."""
    now = [0.0]
    monkeypatch.setattr(budget.time, "monotonic", lambda: now[0])
    guard = budget.BudgetGuard(budget.Clock(100.0, started=0.0), reserve_s=10.0)
    guard.planned_epoch_s = 5.0
    guard.set_model(_Model())
    guard.set_params({"epochs": last_epoch})
    for epoch, seconds in enumerate([30.0, 20.0, 20.0, 20.0]):  # ends at 30, 50, 70, 90 s
        guard.on_epoch_begin(epoch)
        now[0] += seconds
        guard.on_epoch_end(epoch)
        if guard.model.stop_training:
            break
    # After epoch 1: 30 + 5 + 10 = 45 (not 30 + 30 + 10); epoch 3: 70 + 20 + 10 = 100, inside;
    # epoch 4: 90 + 20 + 10 = 120 > 100.
    assert guard.stopped_at == stopped_at
    assert guard.model.stop_training == (stopped_at is not None)
