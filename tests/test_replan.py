"""The time budget's re-plan after a phase's first real epoch (`tl_keras.training.replan`).

The arithmetic (`tl_keras.recipe.budget_plan`) without training; then tiny runs (MobileNet-0.25
at 32 px, generated images) whose plan and re-plan are fixed by hand, so that what is tested is
what a re-plan does to the run, not this machine's speed: the re-planned run is the run its
epochs would give (bitwise), and a run killed after the re-plan resumes with the saved plan.
"""

import json
import logging
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tl_keras.recipe import auto, budget_plan
from tl_keras.training import bottom_views, replan, schedules
from tl_keras.training.runner import train


# --- the arithmetic -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "left, epoch_s, planned, retrace_s, expected",
    [
        (60.0, 10.0, 7, 0.0, 7),  # 6 more fit after the first: the plan holds
        (80.0, 10.0, 7, 0.0, 9),  # faster than planned: 8 more fit, the phase grows
        (80.0, 10.0, 7, 15.0, 7),  # ... but a new length's tracing eats one: 6 more, keep 7
        (95.0, 10.0, 7, 15.0, 9),  # room for the tracing and 8 more
        (40.0, 10.0, 7, 0.0, 5),  # slower than planned: 4 more fit, the phase shrinks
        (40.0, 10.0, 7, 5.0, 4),  # ... paying for the new length: 3 more
        (5.0, 10.0, 7, 2.0, 1),  # nothing more fits: stop after this epoch (no new length)
        (-20.0, 10.0, 7, 0.0, 1),  # already late
        (500.0, 10.0, 7, 0.0, 12),  # much faster: at most the ceiling
    ],
)
def test_replan_epochs(left, epoch_s, planned, retrace_s, expected):
    got = budget_plan.replan_epochs(
        left, epoch_s, done=1, planned=planned, ceiling=12, retrace_s=retrace_s
    )
    assert got == expected


def test_replan_never_goes_below_the_epochs_done_or_above_the_ceiling():
    for left in (-100.0, 0.0, 3.0, 1e6):
        got = budget_plan.replan_epochs(left, 2.0, done=3, planned=5, ceiling=8, retrace_s=1.0)
        assert 3 <= got <= 8


def test_replan_ceiling_leaves_room_to_grow_within_a_cap():
    assert budget_plan.replan_ceiling(2) == 4  # at least two more
    assert budget_plan.replan_ceiling(10) == 15  # half as many again
    assert budget_plan.replan_ceiling(10, cap=12) == 12
    assert budget_plan.replan_ceiling(10, cap=10) == 10  # a head before fine-tuning: its rule's
    assert budget_plan.replan_ceiling(10, cap=4) == 10  # never below the plan


def test_a_plan_timed_in_a_load_spike_can_still_grow_to_what_its_rule_would():
    """The re-plan's ceiling for a phase that trains the base starts from the larger of its plan
    and its rule's epochs: planned 8 on a 16.4 s epoch that then ran in 8.8 s (a busy machine),
    the phase may grow to 18, not only to 12 (it ended at 0.66 of its budget)."""
    from types import SimpleNamespace

    clock = SimpleNamespace(budget_s=181.3, elapsed_s=32.0)
    cost = budget_plan.EpochCost(train_s=16.4)
    ft = SimpleNamespace(trains_base=True, epochs=12)
    plan = replan.with_deadline(budget_plan.PhasePlan(8), clock, cost, ft, 4.9, None, False)
    assert plan.ceiling == 18 and plan.epochs == 8
    assert (
        replan.with_deadline(budget_plan.PhasePlan(20), clock, cost, ft, 4.9, None, False).ceiling
        == 30
    )
    head = SimpleNamespace(trains_base=False, epochs=40)  # before fine-tuning: its rule's 40
    assert (
        replan.with_deadline(budget_plan.PhasePlan(30), clock, cost, head, 4.9, 20.0, True).ceiling
        == 40
    )


def test_phase_time_is_the_budget_left_or_fe_s_share():
    # 0.98 x 100 - 15 spent - 10 reserved
    assert budget_plan.phase_time_s(100.0, 15.0, reserve_s=10.0) == pytest.approx(73.0)
    # fe with fine-tuning to follow: a third of what is left, and room for one ft epoch.
    assert budget_plan.phase_time_s(100.0, 5.0, ft_need_s=20.0) == pytest.approx(31.0)
    assert budget_plan.phase_time_s(100.0, 5.0, ft_need_s=80.0) == pytest.approx(13.0)


def test_steady_epoch_counts_the_first_call_at_the_median():
    # A first step of 3.1 s (tracing) among steps of 0.1 s; the first validation batch 1.05 s.
    train_calls, val_calls = [3.1] + [0.1] * 9, [1.05, 0.05, 0.05]
    wall = sum(train_calls) + sum(val_calls) + 0.2  # callbacks
    steady = budget_plan.steady_epoch_s(wall, train_calls, val_calls)
    assert steady == pytest.approx(10 * 0.1 + 3 * 0.05 + 0.2)
    no_val = sum(train_calls) + 0.2  # a run without validation
    assert budget_plan.steady_epoch_s(no_val, train_calls, []) == pytest.approx(10 * 0.1 + 0.2)
    # A head on cached features runs its epoch in one call: nothing to tell tracing from.
    assert budget_plan.steady_epoch_s(1.0, [1.0], []) is None
    # One validation batch, traced: it can outweigh a short epoch (a few-shot head's 0.05 s
    # epoch read 0.44 s with it): the next epoch is timed whole instead.
    assert budget_plan.steady_epoch_s(wall, train_calls, [1.05]) is None


def test_a_cosine_whose_length_is_a_variable_takes_a_new_length_without_a_new_trace():
    """`schedules.settable_length`: the same rates, bitwise, before and after a new length set in
    place, read by one traced function (no new trace); its config still names a number, so a
    saved model loads with Keras alone; anything else changed is refused (the caller compiles
    anew)."""

    def cosine(decay_steps, target=1e-4):
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps, alpha=0.0, warmup_target=target, warmup_steps=74
        )

    steps = np.arange(0, 1100, 7)
    rate = cosine(800)
    assert schedules.settable_length(rate) and schedules.has_settable_length(rate)
    traced = tf.function(lambda s: rate(s))
    np.testing.assert_array_equal(
        [np.asarray(traced(s)) for s in steps], [np.asarray(cosine(800)(s)) for s in steps]
    )
    assert schedules.set_length(rate, cosine(950))
    np.testing.assert_array_equal(
        [np.asarray(traced(s)) for s in steps], [np.asarray(cosine(950)(s)) for s in steps]
    )
    assert traced.experimental_get_tracing_count() == 1
    assert rate.get_config()["decay_steps"] == 950
    config = keras.optimizers.Adam(rate).get_config()
    assert keras.optimizers.Adam.from_config(config).learning_rate is not None
    assert not schedules.set_length(rate, cosine(950, target=2e-4))  # not only the length
    assert not schedules.set_length(cosine(800), cosine(950))  # its length not a variable
    assert not schedules.settable_length(1e-4)


# --- in a run -------------------------------------------------------------------------------------
def _read(path) -> dict:
    return json.loads(pathlib.Path(path).read_text())


def _config(**overrides):
    """The decided recipe on the tiny run, ft's length the budget's, fe's given (4 epochs, so the
    warm-up rule keeps its one epoch: the first ft epoch then runs as under any length). Batches
    of 2, so validation runs in 3 and the re-plan comes after ft's first epoch; a checkpoint
    after every epoch, so a crash leaves one to resume from."""
    values = dict(
        recipe="auto",
        unfreeze="auto",
        epochs_fe=4,
        epochs_ft="auto",
        time_budget="900s",
        batch_size=2,
        checkpoint_every=0,
    )
    return tiny_config(**{**values, **overrides})


PLANNED, REPLANNED = 2, 3


@pytest.fixture
def fixed_plans(monkeypatch):
    """ft planned for PLANNED epochs, re-planned to REPLANNED after its first; whatever the
    machine's speed (the budget is far away: the guard never stops anything)."""
    monkeypatch.setattr(budget_plan, "plan_epochs", lambda *a, **k: PLANNED)
    monkeypatch.setattr(replan, "replan_epochs", lambda *a, **k: REPLANNED)
    return monkeypatch


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _train_logged(*args, **kwargs):
    logger, handler = logging.getLogger("tl_keras"), _Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return train(*args, **kwargs), handler.lines
    finally:
        logger.removeHandler(handler)


def _ft(result) -> list[dict]:
    return [r for r in result.history.records if r["phase"] == "ft"]


def test_a_replanned_phase_is_the_phase_its_new_length_would_give(tmp_path, fixed_plans):
    in_place = []  # the plan's and the re-plan's new lengths, set in the compiled schedule
    set_length = schedules.set_length
    fixed_plans.setattr(
        schedules, "set_length", lambda *a: in_place.append(set_length(*a)) or in_place[-1]
    )
    result, lines = _train_logged(_config(), str(tmp_path / "a"))
    assert in_place == [True, True]  # no new optimizer, no new trace of the train step
    said = [line for line in lines if "re-plan" in line]
    assert len(said) == 1, said  # fe's length is given: only ft re-plans, in one line
    assert said[0].startswith(f"[ft] time budget re-plan after epoch 1 of {PLANNED}: it took ")
    assert said[0].endswith(
        f"{REPLANNED} epochs instead of {PLANNED}, the schedule re-sized to end at the last"
    )
    assert len(_ft(result)) == REPLANNED
    card = auto.Card.from_dict(_read(tmp_path / "a" / "recipe.json"))
    assert card.get("epochs_ft").value == REPLANNED and card.get("epochs_ft").source == "budget"
    assert "re-planned after its first epoch" in card.get("epochs_ft").reason
    run = _read(tmp_path / "a" / "run.json")
    assert [p["epochs"] for p in run["schedule"]] == [4, REPLANNED]
    assert run["phases"]["ft"]["epochs_run"] == REPLANNED

    # The same run given the re-planned length outright: the same epochs, rates and weights.
    fixed_plans.undo()
    given = train(
        _config(time_budget="", epochs_ft=REPLANNED, warmup_epochs=card.get("warmup_epochs").value),
        str(tmp_path / "b"),
    )
    assert [(r["epoch"], r["lr"]) for r in _ft(result)] == [
        (r["epoch"], r["lr"]) for r in _ft(given)
    ]
    assert _ft(result)[-1]["lr"] < _ft(result)[-2]["lr"]  # the cosine runs to the new end
    for a, b in zip(result.model.weights, given.model.weights, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_halfway_a_second_look_re_sizes_the_cosine_from_the_epochs_since(tmp_path, fixed_plans):
    """ft planned for 2 epochs, re-planned to 4 after its first; after its third (halfway, two
    epochs timed since) the second look gives it 5. The cosine takes each length in place (no
    new trace); from the second look on the rates are the 5-epoch cosine's, before it the
    4-epoch one's; the card and the log say so."""
    lengths = iter([4, 5])
    seen = []  # what the second look was given: the mean wall of the epochs since the first

    def replan_epochs(left_s, epoch_s, **kwargs):
        seen.append((epoch_s, kwargs["done"]))
        return next(lengths)

    fixed_plans.setattr(replan, "replan_epochs", replan_epochs)
    in_place = []
    set_length = schedules.set_length
    fixed_plans.setattr(
        schedules, "set_length", lambda *a: in_place.append(set_length(*a)) or in_place[-1]
    )
    result, lines = _train_logged(_config(), str(tmp_path / "a"))
    assert in_place == [True, True, True]
    assert [done for _, done in seen] == [1, 3]
    looks = [line for line in lines if "time budget second look" in line]
    assert len(looks) == 1 and looks[0].startswith(
        "[ft] time budget second look, halfway, after epoch 3 of 4: its 2 epochs since the first"
    )
    assert looks[0].endswith("5 epochs instead of 4, the schedule re-sized to end at the last")
    ft = _ft(result)
    assert len(ft) == 5 and result.history.records[-1]["epoch"] == ft[-1]["epoch"]
    card = auto.Card.from_dict(_read(tmp_path / "a" / "recipe.json"))
    assert card.get("epochs_ft").value == 5
    assert card.get("epochs_ft").reason.endswith("re-planned after epoch 3: 5 epochs")

    fixed_plans.undo()
    given = _ft(
        train(
            _config(time_budget="", epochs_ft=5, warmup_epochs=card.get("warmup_epochs").value),
            str(tmp_path / "b"),
        )
    )
    rates = [r["lr"] for r in ft]
    assert rates[3:] == [r["lr"] for r in given][3:]  # the 5-epoch cosine from the look on
    # Each record holds its epoch's first rate: epochs 1-2 (the warm-up, then the peak) are any
    # length's, epoch 3 the 4-epoch cosine's, which decays sooner.
    assert rates[:2] == [r["lr"] for r in given][:2] and rates[2] < given[2]["lr"]


class _Crash(Exception):
    pass


class _CrashAfter(keras.callbacks.Callback):
    """A crash right after epoch `epoch`'s checkpoint (it runs after the phase's callbacks)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise _Crash


def test_a_run_killed_after_its_replan_resumes_with_the_saved_plan(tmp_path, fixed_plans):
    reference = train(_config(), str(tmp_path / "ref"))
    workdir = str(tmp_path / "w")
    with pytest.raises(_Crash):  # after ft's second epoch: re-planned, not finished
        train(_config(), workdir, callbacks=[_CrashAfter(4 + 2)])

    def no_replan(*args, **kwargs):
        raise AssertionError("a resumed phase re-planned")

    fixed_plans.setattr(replan, "replan_epochs", no_replan)
    fixed_plans.setattr(budget_plan, "plan_epochs", no_replan)
    asked = []  # the resumed phase stays on the live path, as the uninterrupted run trained

    def why_not(*args, **kwargs):
        asked.append(kwargs["budgeted"])
        return why_not_views(*args, **kwargs)

    why_not_views = bottom_views.why_not
    fixed_plans.setattr(bottom_views, "why_not", why_not)
    resumed = train(_config(), workdir, resume=True)
    assert asked == [True]
    assert len(_ft(resumed)) == REPLANNED
    assert [(r["epoch"], r["lr"]) for r in _ft(resumed)] == [
        (r["epoch"], r["lr"]) for r in _ft(reference)
    ]
    for a, b in zip(resumed.model.weights, reference.model.weights, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
