"""The recipe's rules, checked without TensorFlow (milliseconds)."""

import pytest

from tl_keras import config as config_lib
from tl_keras import recipe
from tl_keras.config import Config
from tl_keras.errors import ConfigError
from tl_keras.recipe import LayerInfo, Phase


def test_ft_learning_rate_is_fe_lr_over_factor():
    assert recipe.ft_learning_rate(1e-3, 10) == pytest.approx(1e-4)
    assert recipe.ft_learning_rate(3e-3, 100) == pytest.approx(3e-5)


@pytest.mark.parametrize("factor", [5, 500, 9.99, 100.01])
def test_lr_factor_outside_10_to_100_is_refused(factor):
    with pytest.raises(
        ConfigError, match=rf"ft_lr_factor={factor:g} is outside \[10, 100\].*allow_any_lr_factor"
    ):
        recipe.ft_learning_rate(1e-3, factor)


def test_lr_factor_outside_range_allowed_when_asked():
    assert recipe.ft_learning_rate(1e-3, 5, allow_any=True) == pytest.approx(2e-4)
    with pytest.raises(ConfigError, match="positive"):
        recipe.ft_learning_rate(1e-3, 0, allow_any=True)


def test_default_schedule_is_fe_then_ft():
    cfg = Config(lr=2e-3, ft_lr_factor=20, epochs_fe=3, epochs_ft=4, unfreeze="layers:30")
    fe, ft = config_lib.build_schedule(cfg)
    assert fe == Phase("fe", "none", 3, 2e-3, "adam", 0)
    assert (ft.name, ft.unfreeze, ft.epochs) == ("ft", "layers:30", 4)
    assert ft.lr == pytest.approx(1e-4)


def test_schedule_refuses_bad_factor():
    with pytest.raises(ConfigError, match="ft_lr_factor=500"):
        config_lib.build_schedule(Config(ft_lr_factor=500))


def test_select_phases():
    schedule = config_lib.build_schedule(Config())
    assert [p.name for p in recipe.select_phases(schedule, "all")] == ["fe", "ft"]
    assert [p.name for p in recipe.select_phases(schedule, "ft")] == ["ft"]
    assert recipe.previous_phase(schedule, schedule[1]).name == "fe"
    assert recipe.previous_phase(schedule, schedule[0]) is None
    with pytest.raises(ConfigError, match="--phase='finetune'.*all, fe, ft"):
        recipe.select_phases(schedule, "finetune")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("none", "none"),
        ("ALL", "all"),
        ("layers:20", "layers:20"),
        ("blocks:3", "blocks:3"),
        ("fraction:0.25", "fraction:0.25"),
    ],
)
def test_parse_unfreeze(spec, expected):
    assert str(recipe.parse_unfreeze(spec)) == expected


@pytest.mark.parametrize(
    "spec",
    ["top", "layers", "layers:x", "layers:0", "blocks:1.5", "fraction:0", "fraction:1.5", "some:3"],
)
def test_parse_unfreeze_rejects(spec):
    with pytest.raises(ConfigError, match="unfreeze="):
        recipe.parse_unfreeze(spec)


# A toy base: input-side preprocessing, a stem and three blocks; each block conv -> bn -> act.
LAYERS = [
    LayerInfo("rescaling", None, False, False),
    LayerInfo("stem_conv", "stem", True, False),
    LayerInfo("stem_bn", "stem", True, True),
    *[
        LayerInfo(f"b{i}_{kind}", f"b{i}", kind != "act", kind == "bn")
        for i in (1, 2, 3)
        for kind in ("conv", "bn", "act")
    ],
]


def test_block_order():
    assert recipe.block_order(LAYERS) == ["stem", "b1", "b2", "b3"]


def test_none_trains_nothing_and_all_everything_but_bn():
    assert recipe.trainable_layers(LAYERS, "none") == []
    assert recipe.trainable_layers(LAYERS, "all") == [
        "stem_conv",
        "b1_conv",
        "b1_act",
        "b2_conv",
        "b2_act",
        "b3_conv",
        "b3_act",
    ]


def test_blocks_take_whole_blocks_from_the_top_without_bn():
    assert recipe.trainable_layers(LAYERS, "blocks:2") == ["b2_conv", "b2_act", "b3_conv", "b3_act"]


def test_layers_count_like_keras_and_skip_bn():
    # base.layers[-4:] = b2_act, b3_conv, b3_bn, b3_act; the BN one stays frozen.
    assert recipe.trainable_layers(LAYERS, "layers:4") == ["b2_act", "b3_conv", "b3_act"]


def test_fraction():
    # 11 candidate layers (rescaling has no block and no weights); ceil(0.3 * 11) = 4.
    assert recipe.trainable_layers(LAYERS, "fraction:0.3") == ["b2_act", "b3_conv", "b3_act"]


def test_bn_policy_train_includes_bn():
    assert recipe.trainable_layers(LAYERS, "blocks:1", bn_policy="train") == [
        "b3_conv",
        "b3_bn",
        "b3_act",
    ]


def test_too_many_blocks_or_layers_is_an_error():
    with pytest.raises(ConfigError, match="asks for 5 blocks but the base has 4 .*stem .. b3"):
        recipe.trainable_layers(LAYERS, "blocks:5")
    with pytest.raises(ConfigError, match="asks for 99 layers but the base has 11"):
        recipe.trainable_layers(LAYERS, "layers:99")


def test_unfrozen_blocks():
    names = recipe.trainable_layers(LAYERS, "layers:4")
    assert recipe.unfrozen_blocks(LAYERS, names) == ["b3"]  # b2_act has no weights
