"""The decided recipe: every setting of the schedule, from what is known before training.

In the spirit of BiT's HyperRule, a few pure rules map facts about the data, the model and an
optional time budget (`Facts`) to the settings of the two-phase recipe, each with its reason
(`decide` -> `Card`, the *recipe card* a run prints and keeps in `<workdir>/recipe.json`). The
runner measures the facts (image counts, how far the data's BatchNorm statistics sit from the
stored ImageNet ones, step rates) and asks; nothing here imports TensorFlow.

A setting is decided only where the config leaves it at `AUTO`; a value the user gave always
wins, and the card says so next to what the rule would have chosen. `recipe = "manual"` turns the
rules off: every `AUTO` setting takes its fixed default from `MANUAL`, the package's schedule
before the recipe was decided (5 + 5 epochs, the top 2 blocks, a constant rate).

The rules and their evidence (validation accuracy, MobileNet-0.25 with ImageNet weights, means
over seeds; the test splits were never read; `benchmarks/bench_recipe.py` has the held-out
figures):

* **Feature extraction runs to convergence.** On cached features an `fe` epoch costs next to
  nothing (the base runs once), so `fe` stops on a validation plateau rather than a count.
* **Little data and a domain like ImageNet: feature extraction only** (the course's first row).
  With 20 flower photos per class, fine-tuning the whole base afterwards gained +0.6 points
  (0.509 -> 0.515, within noise) for five times the time; with 100 per class it gained +3.2
  (0.585 -> 0.617). The line sits between: `FEW_SHOT_PER_CLASS`.
* **Otherwise fine-tune, deep**, down to the deepest block whose BatchNorm statistics show the
  data differs from ImageNet there (at least half the blocks): on 2,339 flower photos the whole
  base reached 0.702 against 0.659 for feature extraction alone and 0.638 for the TensorFlow
  tutorial's top 30 layers; half the blocks reached 0.683.
* **A base whose backward is costly fine-tunes its top half** below its native size: on
  EfficientNet-Lite0 a whole-base epoch costs 2.05 epochs of the frozen base where MobileNet-0.25's
  costs 1.0 (its input pipeline sets the pace). Lite0's top half (its lowest-resolution blocks,
  the cheapest to train) for the same 12 epochs scored 0.767 and 0.803 on the flowers' validation
  split (seeds 0, 1) against the whole base's 0.774 and 0.789, in 0.63-0.68x the fine-tuning
  wall; 7 epochs of the whole base, as cheap, 0.762 and 0.786. Far from ImageNet (Lite0's digits
  at 64 px) it keeps the whole base, whose top half did worse at the same cost, and fine-tunes
  for what the TF tutorial's 8 epochs of the frozen base cost (8 / 2.05: 3 epochs, not 17):
  0.977 and 0.964 on validation against 0.987 and 0.977 for 17 epochs and 0.961 and 0.954 for
  feature extraction alone.
* **Rates**: the head at 1e-3 (the course's 1e-3 to 1e-2), the base at lr / 10 = 1e-4 (the
  course's 1e-5 to 1e-4 for the top layers), with a one-epoch linear warm-up and a cosine decay.
  The course's 1e-6 to 1e-5 for the whole base was beaten: decaying the rate by 0.85 per block
  (1e-5 at the stem) scored 0.686 against 0.702 for 1e-4 throughout; 3e-4 scored 0.688.
* **A domain far from ImageNet** (large BatchNorm shifts in the early blocks: digits, documents,
  spectrograms) gets no flips or rotations: natural photos have those invariances, other domains
  need not (on digits, augmentation cost 1 to 4 points: 0.977 without, 0.949 with).
* **Label smoothing 0.1** while fine-tuning; **no weight decay** (BiT found none needed to
  fine-tune); **no weight averaging and no test-time flips** under a cosine decay, which already
  ends at a small rate: averaging the last epochs' weights moved validation accuracy by +0.0
  (+-0.3) points and flip averaging by +0.0 (+-0.5), so neither pays its cost.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping
from typing import Any

from tl_keras.errors import ConfigError

AUTO = "auto"
RECIPES = ("auto", "manual")
AUGMENT_PHASES = ("all", "base")  # augment every phase, or only phases that train the base
WEIGHT_AVERAGING = ("none", "ema")
TTA_MODES = ("none", "flip")

# The settings the recipe decides, with their fixed defaults under recipe = "manual": the one
# home of these defaults (`tl_keras.config` declares the fields with AUTO).
MANUAL: dict[str, Any] = {
    "epochs_fe": 5,
    "epochs_ft": 5,
    "unfreeze": "blocks:2",
    "lr": 1e-3,
    "ft_lr_factor": 10.0,
    "layer_decay": 1.0,
    "head_lr_ratio": 1.0,
    "lr_schedule": "constant",  # (recipe.LRSchedule takes these two defaults from here)
    "warmup_epochs": 0.0,
    "fe_switch_patience": 0,
    "augment": "none",
    "augment_phases": "all",
    "label_smoothing": 0.0,
    "weight_decay": 0.0,
    "weight_averaging": "none",
    "tta": "none",
}
AUTO_FIELDS = tuple(MANUAL)

# --- thresholds, each with its evidence (see the module docstring) ------------------------------
FEW_SHOT_PER_CLASS = 50  # fewer training images in the smallest class: feature extraction only
# BatchNorm shifts (`tl_keras.training.bn_shift`), MobileNet-0.25: the lowest third of the blocks
# shifts by 0.07 (flowers at 128 px) to 0.09 (at 64 px); 0.39 on digits and 0.38 on the package's
# drawn shapes, both far from photos.
FAR_DOMAIN_SHIFT = 0.2  # early-block shift above this: far from ImageNet
# ... per base where its own measurements put the line elsewhere. EfficientNet-Lite0 shifts more
# on the same photos: the flowers 0.149 at 128 px and 0.21 at 160 px, 20 per class 0.20-0.21
# (read 'far' at 0.2, they fine-tuned the top 2 blocks for 30 epochs: 0.626 and 0.606 on 500
# held-out validation photos, seeds 0 and 1, against 0.646 and 0.624 for feature extraction with
# flip averaging, the rule for few photos near ImageNet, at 2.6-2.9x its wall:
# `recipe_evidence.py --experiment=fewshot`); digits 0.48.
FAR_DOMAIN_SHIFT_BY_BASE = {"efficientnet_lite0": 0.3}
# What a whole-base fine-tuning epoch costs, in epochs of the frozen base over live images (the
# TF tutorial's feature extraction), per base; quiet, 2 CPU cores, flowers at 128 px
# (`bench_recipe.py`: the default's ft epochs against plain's 8 frozen ones). MobileNet-0.25
# (unlisted: 1.0, the rules as measured on it) is bound by its input pipeline: 4.0 s against a
# frozen epoch's 4.0 s (3.4-4.3, 3 seeds; recipe_flowers_20261206_quiet_final.json).
# EfficientNet-Lite0's backward is not: 20.2 s against 9.75 s
# (recipe_lite0_flowers_seed1_quiet_20261206.json); its top half costs 0.63-0.68 of the whole.
FT_EPOCH_COST_BY_BASE = {"efficientnet_lite0": 2.05}
FT_COST_LINE = 1.5  # a base above this fine-tunes only its top half below its native size
# ... and far from ImageNet, the whole base for at most what this many frozen epochs cost (the
# TF tutorial's fine-tuning length).
FT_COSTLY_FROZEN_EPOCHS = 8
ADAPT_SHIFT = 0.1  # a block whose statistics shift less keeps its ImageNet features frozen ...
NATIVE_SHARE = 0.8  # ... but only at (nearly) the base's own resolution: below it, adapt them all
FE_MAX_EPOCHS, FE_PATIENCE = 40, 5  # feature extraction: until 5 epochs without improvement
# Fine-tuning epochs at 2,500 training images: 10, as good as 12 on flowers' validation and
# 0.8x their wall (MobileNet-0.25 and EfficientNet-Lite0, `recipe_evidence.py
# --experiment=flowers_ft_short`); 12 had beaten 8, and 14 or 16 did not beat 12 ...
FT_REF_EPOCHS, FT_REF_IMAGES = 10, 2500
FT_MIN_EPOCHS, FT_MAX_EPOCHS = 3, 30  # ... scaled by sqrt(2500 / images), within these bounds
HEAD_LR, FT_FACTOR, FT_FACTOR_CAREFUL = 1e-3, 10.0, 30.0
LR_FACTOR_RANGE = (10.0, 100.0)  # the course's base rates, lr/100 to lr/10 (ft_learning_rate)
WARMUP_EPOCHS = 1.0
LABEL_SMOOTHING = 0.1
EMA_FRACTION = 0.25  # weight averaging, when on, over about the last quarter of fine-tuning


@dataclasses.dataclass(frozen=True)
class Facts:
    """What is known before training, the recipe's only inputs.

    Attributes:
      num_train: training images.
      num_classes: classes.
      min_per_class: training images of the smallest class.
      has_validation: whether a validation split exists (plateau detection needs one, or uses
        the training loss).
      image_size: the input size the model trains at.
      native_size: the size the backbone's ImageNet weights were trained at.
      pretrained: whether the base starts from pretrained weights.
      block_shift: (block, shift) from input to output: how far the data's BatchNorm input
        statistics sit from the stored ones in each block (see `tl_keras.training.bn_shift`); empty
        when not measured (random weights).
      stages_given: the user gave `stages`, which fix the epochs and unfreezing.
      stage_epochs: the epochs of each given stage.
      schedule_given: the LR schedule the user chose, or None for the recipe's.
      time_budget_s: the run's time budget, or None.
      backbone: the base's registry name: where a base has its own line between near and far
        (`FAR_DOMAIN_SHIFT_BY_BASE`).
    """

    num_train: int
    num_classes: int
    min_per_class: int
    has_validation: bool = True
    image_size: int = 224
    native_size: int = 224
    pretrained: bool = True
    block_shift: tuple[tuple[str, float], ...] = ()
    stages_given: bool = False
    stage_epochs: tuple[int, ...] = ()
    schedule_given: str | None = None
    time_budget_s: float | None = None
    backbone: str = ""

    @property
    def far_shift(self) -> float:
        """The early-block shift above which this base's data is far from ImageNet."""
        return FAR_DOMAIN_SHIFT_BY_BASE.get(self.backbone, FAR_DOMAIN_SHIFT)

    @property
    def ft_epoch_cost(self) -> float:
        """What a whole-base fine-tuning epoch costs on this base, in frozen-base epochs."""
        return FT_EPOCH_COST_BY_BASE.get(self.backbone, 1.0)

    @property
    def below_native(self) -> bool:
        """Whether the model trains below NATIVE_SHARE of the base's own input size."""
        return self.image_size < NATIVE_SHARE * self.native_size

    @property
    def costly_backward(self) -> bool:
        """Whether a whole-base epoch costs more than FT_COST_LINE frozen ones on this base."""
        return self.ft_epoch_cost > FT_COST_LINE

    @property
    def early_shift(self) -> float | None:
        """The median shift over the lowest third of the blocks (stem included), or None."""
        if not self.block_shift:
            return None
        low = [s for _, s in self.block_shift[: max(1, math.ceil(len(self.block_shift) / 3))]]
        return float(statistics.median(low))

    @property
    def domain(self) -> str:
        """'near' or 'far' from ImageNet, or 'unknown' (no pretrained statistics to compare)."""
        shift = self.early_shift
        if shift is None:
            return "unknown"
        return "far" if shift > self.far_shift else "near"

    @property
    def data_size(self) -> str:
        """'few' (under FEW_SHOT_PER_CLASS images in the smallest class) or 'enough'."""
        return "few" if self.min_per_class < FEW_SHOT_PER_CLASS else "enough"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["block_shift"] = [[b, round(s, 4)] for b, s in self.block_shift]
        out.update(early_shift=self.early_shift, domain=self.domain, data_size=self.data_size)
        return out


@dataclasses.dataclass(frozen=True)
class Decision:
    """One setting of the card: its value, who chose it ('rule', 'user', 'manual', 'budget')
    and why."""

    field: str
    value: Any
    source: str
    reason: str


CARD_FILE = "recipe.json"  # where a run keeps its card: <workdir>/recipe.json


@dataclasses.dataclass(frozen=True)
class Card:
    """The recipe card: every decided setting with its reason, and the facts behind them.

    A run keeps it in `<workdir>/CARD_FILE` (`tl_keras.training.decide.write_recipe_card`).
    """

    recipe: str
    regime: str
    facts: dict[str, Any]
    decisions: tuple[Decision, ...]

    def values(self) -> dict[str, Any]:
        """Field -> decided value, for every field of AUTO_FIELDS."""
        return {d.field: d.value for d in self.decisions}

    def get(self, field: str) -> Decision:
        return next(d for d in self.decisions if d.field == field)

    def with_decision(self, decision: Decision) -> Card:
        """The card with one setting replaced (the budget planner's epochs)."""
        kept = tuple(decision if d.field == decision.field else d for d in self.decisions)
        return dataclasses.replace(self, decisions=kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "regime": self.regime,
            "facts": self.facts,
            "decisions": [dataclasses.asdict(d) for d in self.decisions],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Card:
        """Reads a card back (a saved `recipe.json`).

        Raises:
          ConfigError: the mapping is not a card (missing keys, a field that is not decided).
        """
        try:
            decisions = tuple(Decision(**d) for d in values["decisions"])
            card = cls(
                str(values["recipe"]), str(values["regime"]), dict(values["facts"]), decisions
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a recipe card ({type(e).__name__}: {e})") from None
        missing = sorted(set(AUTO_FIELDS) - {d.field for d in decisions})
        if missing:
            raise ConfigError(f"not a recipe card: it decides nothing for {', '.join(missing)}")
        return card

    def lines(self) -> list[str]:
        """The card as printed at the start of a run: a header, then one line per setting."""
        width = max(len(d.field) for d in self.decisions)
        out = [f"recipe card ({self.recipe}): {self.regime}"]
        for d in self.decisions:
            out.append(f"  {d.field:<{width}}  {_shown(d.value):<10} {d.source}: {d.reason}")
        return out


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == AUTO


# --- the rules ----------------------------------------------------------------------------------
def ft_epochs_for(num_train: int) -> int:
    """Fine-tuning epochs for a data set size: FT_REF_EPOCHS at FT_REF_IMAGES, scaled by the
    square root of the size ratio (fewer epochs over more images, as BiT's schedule lengths),
    within [FT_MIN_EPOCHS, FT_MAX_EPOCHS]."""
    scaled = FT_REF_EPOCHS * math.sqrt(FT_REF_IMAGES / max(1, num_train))
    return int(min(FT_MAX_EPOCHS, max(FT_MIN_EPOCHS, round(scaled))))


def unfreeze_for(facts: Facts) -> tuple[str, str]:
    """How deep to fine-tune, and why.

    Below NATIVE_SHARE of the base's own input size every filter sees objects at another scale
    than it learned, so the whole base adapts (on flowers at 128 px of 224, freezing the 4
    least-shifted blocks cost 1.7 points), unless its backward is costly (`_top_half`). At about
    the native size, down to the deepest block whose BatchNorm statistics shift by at least
    ADAPT_SHIFT, at least half the blocks.
    """
    blocks = [b for b, _ in facts.block_shift]
    n = len(blocks)
    if not n:
        return "all", "no statistics to compare (random weights): train the whole base"
    if facts.below_native:
        if facts.costly_backward and facts.domain == "near":
            return _top_half(facts)
        return "all", (
            f"{facts.image_size} px is below the base's {facts.native_size}: every block sees "
            "another scale, fine-tune the whole base (flowers at 128 px: freezing the 4 "
            "least-shifted blocks cost 1.7 points)"
        )
    adapt = [i for i, (_, s) in enumerate(facts.block_shift) if s >= ADAPT_SHIFT]
    deepest = adapt[0] if adapt else n - 1
    k = max(n - deepest, math.ceil(n / 2))
    shifts = ", ".join(f"{b} {s:.2f}" for b, s in facts.block_shift[: max(1, n - k)])
    if k >= n:
        return "all", (
            f"every block's BatchNorm statistics shift by >= {ADAPT_SHIFT:g} on this data (or "
            "half the base would be frozen for little): fine-tune the whole base"
        )
    return f"blocks:{k}", (
        f"the {n - k} lowest blocks barely differ from ImageNet here ({shifts}; < "
        f"{ADAPT_SHIFT:g}): keep them frozen, fine-tune the top {k} of {n}"
    )


def _top_half(facts: Facts) -> tuple[str, str]:
    """Below its native size near ImageNet, a base whose whole-base epoch costs more than
    FT_COST_LINE frozen epochs fine-tunes its top half: its lowest-resolution blocks, the
    cheapest to train. EfficientNet-Lite0 on the flowers at 128 px (validation, seeds 0 and 1):
    the top 9 of 18 blocks for 12 epochs 0.767 and 0.803 against the whole base's 0.774 and 0.789,
    in 0.63-0.68x its fine-tuning wall; the whole base for 7 epochs, as cheap, 0.762 and 0.786,
    for 6 epochs 0.755 and 0.769 (`recipe_evidence.py --experiment=flowers_depth`). Far from
    ImageNet (Lite0's digits) the top half does worse at the same cost: the whole base there,
    for fewer epochs (`_costly_far_epochs`)."""
    n = len(facts.block_shift)
    k = math.ceil(n / 2)
    return f"blocks:{k}", (
        f"{facts.image_size} px is below the base's {facts.native_size}, but a whole-base epoch "
        f"costs {facts.ft_epoch_cost:g}x a frozen one on this base: fine-tune the top {k} of {n} "
        "blocks, its cheapest (Lite0 flowers: as accurate on validation in 0.65x the time)"
    )


def _costly_far(facts: Facts) -> bool:
    """Below its native size, far from ImageNet, on a base whose backward is costly: the whole
    base fine-tunes (`unfreeze_for`), for fewer epochs (`_costly_far_epochs`)."""
    return facts.below_native and facts.costly_backward and facts.domain == "far"


def _costly_far_epochs(facts: Facts, epochs: int) -> tuple[int, str]:
    """Far from ImageNet the data differs from the stem up, so a costly base keeps the whole
    base and pays for its cost in epochs: fine-tuning spends at most the TF tutorial's 8
    fine-tuning epochs in frozen-base epochs (FT_COSTLY_FROZEN_EPOCHS / cost, rounded down), at
    least FT_MIN_EPOCHS, never more than the image count's.

    EfficientNet-Lite0 on digits at 64 px (early shift 0.48), validation (306 images, seeds 0
    and 1; `recipe_evidence.py --experiment=digits_depth`): the whole base for the image count's
    17 epochs 0.987 and 0.977; for 8 epochs 0.984, 0.977 at 0.54x its fine-tuning wall, still
    1.5x the tutorial recipe's whole wall; 4 epochs 0.984, 0.967; 3 epochs 0.977, 0.964. The top
    half costs 0.7x a whole-base epoch at 64 px and does worse at the same cost (8 epochs 0.977,
    0.971 in the fine-tuning wall of the whole base's 5 epochs, 0.980, 0.974; 3 epochs 0.974,
    0.961), and feature extraction alone 0.961, 0.954: the whole base stays, the length goes."""
    cost = facts.ft_epoch_cost
    k = int(min(epochs, max(FT_MIN_EPOCHS, math.floor(FT_COSTLY_FROZEN_EPOCHS / cost))))
    return k, (
        f"far from ImageNet on a base whose whole-base epoch costs {cost:g}x a frozen one: the "
        f"whole base for what {FT_COSTLY_FROZEN_EPOCHS} frozen epochs cost, not the image "
        f"count's {epochs} (Lite0 digits: 3 epochs of 17 -1.1 points on validation)"
    )


Rules = dict[str, tuple[Any, str]]  # field -> (value, reason)


def regime_text(f: Facts) -> str:
    """One line saying which regime the facts put the run in."""
    shift = f"early-block BatchNorm shift {f.early_shift or 0:.2f}"
    domain = {
        "near": f"near ImageNet ({shift} <= {f.far_shift:g})",
        "far": f"far from ImageNet ({shift} > {f.far_shift:g})",
        "unknown": "no pretrained weights (training from scratch)",
    }[f.domain]
    return (
        f"{f.num_train} training images, {f.num_classes} classes, {f.min_per_class} in the "
        f"smallest class ({f.data_size} to fine-tune); {domain}"
    )


def _epoch_rules(f: Facts) -> Rules:
    """How long each phase runs, and how deep fine-tuning goes."""
    v: Rules = {
        "epochs_fe": (
            FE_MAX_EPOCHS,
            f"cached features make an fe epoch nearly free: run to a plateau, at most "
            f"{FE_MAX_EPOCHS}",
        ),
        "fe_switch_patience": (
            FE_PATIENCE,
            f"fe ends after {FE_PATIENCE} epochs without "
            f"{'val_loss' if f.has_validation else 'loss'} improvement, keeping its best weights",
        ),
    }
    if not f.pretrained:
        v["epochs_fe"] = (3, "random features: a short fe only initialises the head")
        v["fe_switch_patience"] = (0, "fe is short")
    if f.data_size == "few" and f.domain == "near":
        v["epochs_ft"] = (
            0,
            f"few images per class (< {FEW_SHOT_PER_CLASS}) near ImageNet: feature extraction "
            "only (20/class: fine-tuning +0.6 points, noise, for 5x the time)",
        )
        v["unfreeze"] = (MANUAL["unfreeze"], "unused: no fine-tuning")
        return v
    n = f.num_train
    v["epochs_ft"] = (
        ft_epochs_for(n),
        f"{FT_REF_EPOCHS} epochs at {FT_REF_IMAGES:,} images, scaled by sqrt({FT_REF_IMAGES}/{n})",
    )
    if f.data_size == "few" and f.domain == "far":  # the course's "careful fine-tuning"
        v["unfreeze"] = ("blocks:2", "little data far from ImageNet: only the top 2 blocks")
    else:
        v["unfreeze"] = unfreeze_for(f)
        if _costly_far(f):
            v["epochs_ft"] = _costly_far_epochs(f, v["epochs_ft"][0])
    return v


def _rate_rules(f: Facts) -> Rules:
    """The learning rates and how they move within a phase."""
    careful = f.data_size == "few" and f.domain == "far"
    factor = FT_FACTOR_CAREFUL if careful else FT_FACTOR
    why = (
        " (careful: little data)"
        if careful
        else " (course: 1e-5 to 1e-4 for top layers; 3e-4 measured -1.4 points, 5e-5 -1.9)"
    )
    return {
        "lr": (HEAD_LR, "the head's rate (course: 1e-3 to 1e-2)"),
        "ft_lr_factor": (factor, f"base at lr/{factor:g} = {HEAD_LR / factor:.0e}{why}"),
        "layer_decay": (1.0, "one rate for the whole base (0.85 per block measured -1.6 points)"),
        "head_lr_ratio": (
            factor,
            f"the head keeps lr = {HEAD_LR:.0e} while the base fine-tunes (course: head 1e-3 to "
            "1e-2; +1.1 points [+0.2, +2.0] over one rate, 6 seeds; 3.3e-4 +0.1; Lite0 +0.8)",
        ),
        "lr_schedule": ("cosine", "decays to 0 by the phase's end; no step to tune"),
        "warmup_epochs": (
            WARMUP_EPOCHS,
            "a linear warm-up keeps the first fine-tuning steps from wrecking the features",
        ),
    }


def _regularisation_rules(f: Facts, fe_only: bool) -> Rules:
    """Augmentation, smoothing, weight decay, weight averaging and test-time flips."""
    if fe_only:
        augment = ("none", "unused: only fe trains, on cached (unaugmented) features")
    elif f.domain == "far":
        augment = ("none", "far from ImageNet: flip/rotation invariance unknown (digits: -1 to -4)")
    else:
        augment = (
            "light",
            "flips, small rotations and zoom keep a natural photo's label ('strong' measured "
            "-3.5 points, MixUp 0.2 -2.0)",
        )
    averaging = (
        "none",
        "averaging the last epochs' weights measured +0.0 +-0.3 points on flowers; "
        "weight_averaging='ema' turns it on",
    )
    if fe_only and f.domain == "near":
        tta = (
            "flip",
            "the model never trains on mirrored images: averaging with the mirror measured +0.6 "
            "(20/class) and +1.8 points (100/class) for feature extraction alone",
        )
    else:
        tta = ("none", "after fine-tuning with flips, flip averaging measured +0.0 +-0.5 points")
    return {
        "augment": augment,
        "augment_phases": (
            "base",
            "fe trains on cached, unaugmented features; the phases that train the base augment",
        ),
        "label_smoothing": (
            LABEL_SMOOTHING,
            "softer targets for fine-tuning (0 and 0.2 measured -0.5 and +0.2 points)",
        ),
        "weight_decay": (0.0, "none (BiT: not needed to fine-tune; the schedule is short)"),
        "weight_averaging": averaging,
        "tta": tta,
    }


def rules(f: Facts) -> Rules:
    """The rules' choice for every decided field, with its reason."""
    epochs = _epoch_rules(f)
    return {
        **epochs,
        **_rate_rules(f),
        **_regularisation_rules(f, fe_only=epochs["epochs_ft"][0] == 0),
    }


def decide(config: Mapping[str, Any], facts: Facts, *, recipe: str = "auto") -> Card:
    """The recipe card for a config (field -> value, `AUTO` where undecided) and the facts.

    Args:
      config: the values of at least AUTO_FIELDS; `AUTO` marks what to decide.
      facts: what is known before training.
      recipe: 'auto' (the rules decide) or 'manual' (the fixed defaults in MANUAL).

    Raises:
      ConfigError: an unknown recipe.
    """
    if recipe not in RECIPES:
        raise ConfigError(f"recipe={recipe!r} is not allowed: use one of {', '.join(RECIPES)}")
    if recipe == "manual":
        regime = "the fixed schedule (recipe = manual)"
        chosen = {f: (MANUAL[f], "the fixed default") for f in AUTO_FIELDS}
    else:
        regime, chosen = regime_text(facts), rules(facts)
    decisions = []
    for field in AUTO_FIELDS:
        value, reason = chosen[field]
        given = config.get(field, AUTO)
        source = "rule" if recipe == "auto" else "manual"
        if facts.stages_given and field in ("epochs_fe", "epochs_ft", "unfreeze"):
            value, source, reason = MANUAL[field], "user", "unused: the given stages fix it"
        elif not is_auto(given):
            would = f"; the recipe would choose {_shown(value)}" if given != value else ""
            value, source, reason = given, "user", f"given{would}"
        decisions.append(Decision(field, value, source, reason))
    if recipe == "auto":
        decisions = _consistent(decisions, facts)
    return Card(recipe, regime, facts.to_dict(), tuple(_fit_warmup(decisions, facts)))


def _consistent(decisions: list[Decision], facts: Facts) -> list[Decision]:
    """Rule choices adjusted to what the user fixed: given stages are the user's schedule (their
    rates stay constant and unwarmed unless the user chooses otherwise); only a cosine schedule
    has a warm-up."""
    by = {d.field: d for d in decisions}

    def ruled(field: str, value: Any, reason: str) -> None:
        if by[field].source == "rule" and by[field].value != value:
            by[field] = Decision(field, value, "rule", reason)

    factor = by["ft_lr_factor"]
    if factor.source == "user":  # the head keeps lr whatever the base's rate
        given = float(factor.value)
        ratio = min(max(given, 1.0), LR_FACTOR_RANGE[1])
        within = "" if ratio == given else f", within [1, {LR_FACTOR_RANGE[1]:g}]"
        ruled("head_lr_ratio", ratio, f"the head keeps lr: your ft_lr_factor {given:g}{within}")
    if facts.stages_given:  # (a stage may name its own schedule, with or without a warm-up)
        ruled("lr_schedule", MANUAL["lr_schedule"], "the given stages are your schedule: constant")
        ruled("warmup_epochs", 0.0, "the given stages are your schedule: no warm-up unless asked")
        ruled("head_lr_ratio", 1.0, "the given stages are your schedule: their rates, head too")
    schedule = by["lr_schedule"].value
    if schedule != "cosine":
        ruled("warmup_epochs", 0.0, f"a {schedule} schedule has no warm-up")
    return [by[d.field] for d in decisions]


def _fit_warmup(decisions: list[Decision], facts: Facts) -> list[Decision]:
    """A decided warm-up shortened to a quarter of the shortest phase when that phase is too
    short for it (a warm-up must end before its phase does)."""
    by = {d.field: d for d in decisions}
    warmup = by["warmup_epochs"]
    epochs = (
        facts.stage_epochs
        if facts.stages_given
        else (
            by["epochs_fe"].value,
            by["epochs_ft"].value,
        )
    )
    shortest = min([e for e in epochs if e > 0], default=0)
    if warmup.source != "rule" or not shortest or warmup.value < shortest:
        return decisions
    fitted = Decision(
        "warmup_epochs",
        shortest / 4,
        "rule",
        f"a quarter of the shortest phase ({shortest} epochs): a warm-up must end before it",
    )
    return [fitted if d.field == "warmup_epochs" else d for d in decisions]


def field_types() -> dict[str, type]:
    """The type of each decided field's values (its manual default's)."""
    return {field: type(value) for field, value in MANUAL.items()}


def coerce(field: str, value: Any, source: str) -> Any:
    """A decided field's value from a file or flag: `AUTO`, or a value of the field's type.

    Raises:
      ConfigError: neither.
    """
    if is_auto(value):
        return AUTO
    expected = field_types()[field]
    if isinstance(value, str) and expected in (int, float):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and (expected is float or number.is_integer()):
            return expected(number)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(
        f"config field {field!r} in {source} must be {expected.__name__}, got {value!r} (or "
        "'auto': the recipe decides)"
    )


def resolved(values: Mapping[str, Any], card: Card | None) -> dict[str, Any]:
    """The decided fields' values: the card's, else MANUAL's where `AUTO` remains."""
    decided = card.values() if card is not None else {}
    return {
        f: decided.get(f, MANUAL[f]) if is_auto(values.get(f, AUTO)) else values[f]
        for f in AUTO_FIELDS
    }


__all__ = [
    "AUTO",
    "AUTO_FIELDS",
    "MANUAL",
    "Card",
    "Decision",
    "Facts",
    "decide",
]
