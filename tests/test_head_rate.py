"""The head's own rate while the base fine-tunes (`head_lr_ratio`): the course puts a head at
1e-3 to 1e-2 and top layers at 1e-5 to 1e-4, so one rate for both leaves one of them out of its
range. What a phase's optimizer does with the ratio, how the schedule and the recipe set it, and
what a bad value gets."""

from types import SimpleNamespace

import numpy as np
import pytest

from tl_keras import config as config_lib
from tl_keras.config import Config
from tl_keras.errors import ConfigError
from tl_keras.recipe import Phase, auto


def _tiny_model():
    from tl_keras.model.classifier import build_model, set_trainable

    model = build_model("tiny", 3, image_size=32, weights=None, head_units=8)
    set_trainable(model, "tiny", "all")
    return model


def test_a_step_moves_the_head_ratio_times_as_far_as_the_base():
    """Adam's first step moves each weight by about its rate: the head's by 10 x 1e-4, the
    base's by 1e-4 (the rate, not the gradient, is what the multiplier scales)."""
    import keras

    from tl_keras.model.classifier import get_base
    from tl_keras.training import optim

    keras.utils.set_random_seed(0)
    model = _tiny_model()
    phase = Phase("ft", "all", 1, 1e-4, head_lr_ratio=10.0)
    optimizer, _ = optim.phase_optimizer(model, phase, backbone="tiny", steps_per_epoch=1)
    optim.compile_for_phase(model, phase, optimizer=optimizer)
    base = {id(v) for v in get_base(model).trainable_variables}
    before = {id(v): v.numpy().copy() for v in model.trainable_variables}
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(8) % 3, 3)
    model.train_on_batch(x, y)
    moved = {id(v): np.abs(v.numpy() - before[id(v)]).max() for v in model.trainable_variables}
    head = [m for k, m in moved.items() if k not in base]
    body = [m for k, m in moved.items() if k in base]
    assert head and body
    assert max(head) == pytest.approx(1e-3, rel=1e-2)
    assert max(body) == pytest.approx(1e-4, rel=1e-2)


def test_the_multipliers_give_the_head_its_ratio_and_the_base_one():
    from tl_keras.model.classifier import get_base
    from tl_keras.training import optim

    model = _tiny_model()
    multipliers = optim.discriminative_multipliers(model, "tiny", 1.0, head=10.0)
    base = {v.path for v in get_base(model).trainable_variables}
    assert set(multipliers) == {v.path for v in model.trainable_variables}
    assert {multipliers[p] for p in base} == {1.0}
    assert {m for p, m in multipliers.items() if p not in base} == {10.0}


def test_only_phases_that_train_the_base_take_the_ratio():
    fe, ft = config_lib.build_schedule(Config(recipe="manual", head_lr_ratio=10.0))
    assert (fe.head_lr_ratio, ft.head_lr_ratio) == (1.0, 10.0)
    assert ft.per_variable_rates and not fe.per_variable_rates  # one rate in a head-only phase
    assert not config_lib.build_schedule(Config(recipe="manual"))[1].per_variable_rates
    assert ft.lr == pytest.approx(1e-4)  # the phase's rate stays the base's
    assert Phase.from_dict({k: v for k, v in ft.to_dict().items() if k != "head_lr_ratio"}) == (
        Phase.from_dict({**ft.to_dict(), "head_lr_ratio": 1.0})
    )  # a phase saved before the setting existed reads as one rate


def test_manual_keeps_one_rate_and_the_recipe_keeps_the_head_at_lr():
    assert auto.MANUAL["head_lr_ratio"] == 1.0
    (ft,) = config_lib.build_schedule(Config(recipe="manual"))[1:]
    assert ft.head_lr_ratio == 1.0
    for data_size, domain in (("enough", "near"), ("few", "far")):  # lr/10, and careful lr/30
        rules = auto._rate_rules(SimpleNamespace(data_size=data_size, domain=domain))
        assert rules["head_lr_ratio"][0] == rules["ft_lr_factor"][0]  # head at lr


@pytest.mark.parametrize("bad", [0.5, 0.0, -1.0, float("nan"), 1000.0])
def test_a_bad_ratio_is_refused_with_its_value_and_the_range(bad):
    with pytest.raises(ConfigError, match=r"head_lr_ratio=.* is not allowed.*\[1, 100\]"):
        config_lib.validate(Config(recipe="manual", head_lr_ratio=bad))


def _card_ratio(**given):
    facts = auto.Facts(2500, 5, 400, **given.pop("facts", {}))
    card = auto.decide({f: given.get(f, auto.AUTO) for f in auto.AUTO_FIELDS}, facts)
    (decision,) = [d for d in card.decisions if d.field == "head_lr_ratio"]
    return decision


def test_the_head_keeps_lr_under_a_given_factor_and_follows_given_stages():
    assert _card_ratio().value == auto.FT_FACTOR
    given = _card_ratio(ft_lr_factor=20.0)
    assert (given.value, given.source) == (20.0, "rule")  # base at lr/20, head at lr
    assert "your ft_lr_factor 20" in given.reason and "within" not in given.reason
    clamped = _card_ratio(ft_lr_factor=500.0)  # (allow_any_lr_factor)
    assert clamped.value == 100.0
    assert "your ft_lr_factor 500, within [1, 100]" in clamped.reason
    assert _card_ratio(head_lr_ratio=3.0, ft_lr_factor=20.0).value == 3.0  # the user's own wins
    staged = _card_ratio(facts={"stages_given": True, "stage_epochs": (2, 2)})
    assert staged.value == 1.0 and "given stages" in staged.reason  # their rates, the head's too
