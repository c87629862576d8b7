"""The recipe of a run, decided once and kept: facts -> card -> `<workdir>/recipe.json`.

The first phase of a run measures the facts the rules of `tl_keras.recipe.auto` need (image
counts, how far the data's BatchNorm statistics sit from ImageNet's, the base's speed), asks for
the card, prints it, and keeps it in the workdir. A later phase, in this process or another, and
a resumed run read the card back and trust it: the recipe is never decided twice, so `--phase=ft`
trains exactly what `--phase=all` would have.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np

from tl_keras import config as config_lib
from tl_keras import io, recipe
from tl_keras.errors import WorkdirError
from tl_keras.recipe import Phase, auto
from tl_keras.training import bn_shift, budget
from tl_keras.workdir import Workdir

log = logging.getLogger("tl_keras")


def read_recipe_card(wd: Workdir) -> auto.Card | None:
    """The recipe card a run saved in its workdir (`recipe.json`), or None when it has none.

    Raises:
      WorkdirError: the file is damaged (naming it and the way out).
    """
    path = wd.file(auto.CARD_FILE)
    if not os.path.isfile(path):
        return None
    try:
        return auto.Card.from_dict(io.read_json(path))
    except Exception as e:  # unreadable JSON or not a card: the same way out
        raise WorkdirError(
            f"{path} is damaged ({str(e).splitlines()[0][:200]}): rerun the run's first phase "
            "with --overwrite"
        ) from None


def write_recipe_card(wd: Workdir, card: auto.Card) -> None:
    """Keeps the run's recipe card in its workdir (`recipe.json`), atomically."""
    io.atomic_write_json(wd.file(auto.CARD_FILE), card.to_dict())


def measure_facts(checked: config_lib.Checked, data, model) -> tuple[auto.Facts, float | None]:
    """The facts the recipe's rules need, and the base's forward images/s (None if unmeasured).

    Every fact comes from what the card does not decide: the checked config (its model section,
    its time budget, the stages and schedule it gives), the data as loaded, the model as built.
    The BatchNorm probe runs only on a pretrained base (a random one has no ImageNet statistics
    to compare with).
    """
    given, section, budget_s = checked.given, checked.model, checked.run.time_budget_s
    labels = data.train_labels
    if labels is not None and len(labels):
        counts = np.bincount(np.asarray(labels), minlength=data.num_classes)
        smallest = int(counts.min())
    else:
        smallest = data.num_train // max(1, data.num_classes)
    shifts, rate = [], None
    wanted = section.weights is not None or budget_s is not None
    if wanted and data.train_in_order is not None:
        shifts, rate = bn_shift.block_shifts(
            model, section.backbone, data.train_in_order, num_images=data.num_train
        )
        if section.weights is None:  # a random base: its statistics say nothing; the rate counts
            shifts = []
        if budget_s is not None:  # the probe's pass is eager: time a compiled one
            rate = budget.forward_rate(model, next(iter(data.train_in_order)))
    facts = auto.Facts(
        num_train=data.num_train,
        num_classes=data.num_classes,
        min_per_class=smallest,
        has_validation=data.val is not None,
        image_size=section.image_size,
        native_size=section.backbone.default_size,
        pretrained=section.weights is not None,
        block_shift=tuple(shifts),
        stages_given=bool(given.stages),
        stage_epochs=tuple(s.epochs for s in recipe.parse_stages(given.stages))
        if given.stages
        else (),
        schedule_given=None if auto.is_auto(given.lr_schedule) else given.lr_schedule,
        time_budget_s=budget_s,
        backbone=section.backbone.name,
    )
    return facts, rate


def decide(checked: config_lib.Checked, data, model, wd: Workdir, *, first_phase: bool):
    """The run's card: read back from the workdir (a later phase, a resumed run), or decided
    now from measured facts (the run's first phase). Logs the card when it is new.

    Returns:
      (card, forward images/s of the base or None, whether the card is new).

    Raises:
      WorkdirError: a later phase's workdir has no card or a damaged one.
    """
    given = checked.given
    if not first_phase:  # a run's first phase decides anew: a card there is replaced, unread
        saved = read_recipe_card(wd)
        if saved is None:  # a run made before the recipe was decided: its fixed defaults
            saved = fixed_card(given, _unmeasured(data))
        return saved, None, False
    facts, rate = measure_facts(checked, data, model)
    card = auto.decide(config_lib.to_dict(given), facts, recipe=given.recipe)
    for line in card.lines():
        log.info("%s", line)
    return card, rate, True


def fixed_card(given: config_lib.Config, facts: auto.Facts | None = None) -> auto.Card:
    """The card of the fixed defaults (recipe = "manual") for a config: what a run made before
    the recipe was decided trained with, and what the LR range test of a workdir without a card
    tests. Those values need no facts (`facts`: what the card records of the data, if known).
    """
    facts = facts or auto.Facts(0, 0, 0, stages_given=bool(given.stages))
    return auto.decide(config_lib.to_dict(given), facts, recipe="manual")


def _unmeasured(data) -> auto.Facts:
    return auto.Facts(data.num_train, data.num_classes, data.num_train // data.num_classes)


def card_follows(outdir, state) -> Callable[[Phase, int], None]:
    """What a re-plan calls (`EpochReplan`'s `on_change`): the run's card (`state.card`) gets
    the phase's new length, written into `recipe.json` at once, so a resumed run keeps the
    re-planned length (a resumed phase never re-plans)."""

    def follow(phase: Phase, done: int) -> None:
        field = "epochs_ft" if phase.trains_base else "epochs_fe"
        before = state.card.get(field)
        after = "its first epoch" if done == 1 else f"epoch {done}"
        reason = f"{before.reason}; re-planned after {after}: {phase.epochs} epochs"
        state.card = state.card.with_decision(auto.Decision(field, phase.epochs, "budget", reason))
        write_recipe_card(outdir, state.card)

    return follow
