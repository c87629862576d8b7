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

import numpy as np

from tl_keras import config as config_lib
from tl_keras import io, recipe
from tl_keras.errors import WorkdirError
from tl_keras.recipe import auto
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


def measure_facts(spec: config_lib.RunSpec, data, model) -> tuple[auto.Facts, float | None]:
    """The facts the recipe's rules need, and the base's forward images/s (None if unmeasured).

    The BatchNorm probe runs only on a pretrained base (a random one has no ImageNet statistics
    to compare with).
    """
    given = spec.given or spec.config
    labels = data.train_labels
    if labels is not None and len(labels):
        counts = np.bincount(np.asarray(labels), minlength=data.num_classes)
        smallest = int(counts.min())
    else:
        smallest = data.num_train // max(1, data.num_classes)
    shifts, rate = [], None
    wanted = spec.weights is not None or spec.time_budget_s is not None
    if wanted and data.train_in_order is not None:
        shifts, rate = bn_shift.block_shifts(model, spec.backbone, data.train_in_order)
        if spec.weights is None:  # a random base: its statistics say nothing; the rate counts
            shifts = []
        if spec.time_budget_s is not None:  # the probe's pass is eager: time a compiled one
            rate = budget.forward_rate(model, next(iter(data.train_in_order)))
    facts = auto.Facts(
        num_train=data.num_train,
        num_classes=data.num_classes,
        min_per_class=smallest,
        has_validation=data.val is not None,
        image_size=spec.image_size,
        native_size=spec.backbone.default_size,
        pretrained=spec.weights is not None,
        block_shift=tuple(shifts),
        stages_given=bool(given.stages),
        stage_epochs=tuple(s.epochs for s in recipe.parse_stages(given.stages))
        if given.stages
        else (),
        schedule_given=None if auto.is_auto(given.lr_schedule) else given.lr_schedule,
        time_budget_s=spec.time_budget_s,
    )
    return facts, rate


def decide(spec: config_lib.RunSpec, data, model, wd: Workdir, *, first_phase: bool):
    """The run's card: read back from the workdir (a later phase, a resumed run), or decided
    now from measured facts (the run's first phase). Logs the card when it is new.

    Returns:
      (card, forward images/s of the base or None, whether the card is new).

    Raises:
      WorkdirError: a later phase's workdir has no card or a damaged one.
    """
    given = spec.given or spec.config
    saved = read_recipe_card(wd)
    if not first_phase:
        if saved is None:  # a run made before the recipe was decided: its fixed defaults
            saved = auto.decide(config_lib.to_dict(given), _unmeasured(data), recipe="manual")
        return saved, None, False
    facts, rate = measure_facts(spec, data, model)
    card = auto.decide(config_lib.to_dict(given), facts, recipe=given.recipe)
    for line in card.lines():
        log.info("%s", line)
    return card, rate, True


def _unmeasured(data) -> auto.Facts:
    return auto.Facts(data.num_train, data.num_classes, data.num_train // data.num_classes)
