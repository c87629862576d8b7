"""Gradual unfreezing and per-phase LR settings as pure data: parsed, checked, in milliseconds."""

import pytest

from tl_keras import config as config_lib
from tl_keras import recipe
from tl_keras.config import Config
from tl_keras.errors import ConfigError
from tl_keras.recipe import LayerInfo, LRSchedule, Phase, Stage

# The toy base of test_recipe: a rescaling layer, a stem and three blocks (conv, bn, act).
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

GRADUAL = "fe:none:3,ft1:blocks:1:2,ft2:blocks:2:2:/40,ft3:all:1:cosine"


# --- the grammar ----------------------------------------------------------------------------------
def test_parse_stages_reads_every_part():
    assert recipe.parse_stages(GRADUAL) == [
        Stage("fe", "none", 3),
        Stage("ft1", "blocks:1", 2),
        Stage("ft2", "blocks:2", 2, lr_factor=40.0),
        Stage("ft3", "all", 1, schedule="cosine"),
    ]


def test_stage_text_round_trips():
    stages = recipe.parse_stages(" fe:none:3 , ft1:LAYERS:20:4:cosine:/25 ,")
    assert [str(s) for s in stages] == ["fe:none:3", "ft1:layers:20:4:/25:cosine"]
    assert recipe.parse_stages(",".join(map(str, stages))) == stages


@pytest.mark.parametrize(
    "text, match",
    [
        ("fe:none", "too few parts"),
        ("fe:blocks:3", r"needs EPOCHS .* after 'blocks:3', not nothing"),
        ("fe:none:x", "needs EPOCHS"),
        ("fe:top:2:3", "bad UNFREEZE"),
        ("ft:blocks:2:3:linear", "'linear' where /FACTOR or a SCHEDULE may follow"),
        ("ft:blocks:2:3:/0", "factor '/0'"),
        ("ft:blocks:2:3:/ten", "write /NUMBER"),
        ("1st:none:2", "name '1st'"),
        ("all:none:2", "reserved name 'all'"),
        ("data:none:2", "reserved name 'data'"),
        ("", "has no stage"),
    ],
)
def test_bad_stage_text_names_the_problem_and_the_grammar(text, match):
    with pytest.raises(ConfigError, match=match):
        recipe.parse_stages(text)
    if text:
        with pytest.raises(ConfigError, match=r"NAME:UNFREEZE:EPOCHS|no stage"):
            recipe.parse_stages(text)


def test_repeated_stage_names_are_refused():
    with pytest.raises(ConfigError, match="ft appear more than once"):
        recipe.parse_stages("fe:none:1,ft:blocks:1:1,ft:blocks:2:1")


@pytest.mark.parametrize(
    "text, match",
    [
        ("fe:none:1,ft:blocks:2:1,ft2:blocks:1:1", r"'ft2' unfreezes blocks:1, less than 'ft'"),
        (
            "fe:none:1,ft:all:1,ft2:blocks:9:1",
            r"'ft2' unfreezes blocks:9, less than 'ft' .*\(all\)",
        ),
        ("ft:layers:5:1,fe:none:1", r"'fe' unfreezes none"),
    ],
)
def test_stages_must_not_unfreeze_less_than_before(text, match):
    with pytest.raises(ConfigError, match=match):
        recipe.parse_stages(text)


def test_toml_tables_become_the_same_stage_text(tmp_path):
    path = tmp_path / "gradual.toml"
    path.write_text(
        "stage_lr_decay = 2.0\n"
        '[[stages]]\nname = "fe"\nunfreeze = "none"\nepochs = 3\n'
        '[[stages]]\nname = "ft1"\nunfreeze = "blocks:1"\nepochs = 2\n'
        '[[stages]]\nname = "ft2"\nunfreeze = "blocks:2"\nepochs = 2\nlr_factor = 40\n'
        '[[stages]]\nname = "ft3"\nunfreeze = "all"\nepochs = 1\nschedule = "cosine"\n'
    )
    cfg = config_lib.replace(Config(), config_lib.load_file(str(path)), str(path))
    assert cfg.stages == GRADUAL and cfg.stage_lr_decay == 2.0
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg  # config.json keeps the text


@pytest.mark.parametrize(
    "table, match",
    [
        ({"name": "fe", "unfreeze": "none"}, "table 1 needs epochs"),
        ({"name": "fe", "unfreeze": "none", "epochs": 2, "lr": 1e-3}, "unknown key 'lr'"),
        ({"name": "fe", "unfreeze": "none", "epoch": 2}, "did you mean 'epochs'"),
    ],
)
def test_bad_toml_tables(table, match):
    with pytest.raises(ConfigError, match=match):
        config_lib.replace(Config(), {"stages": [table]}, "x.toml")


# --- stage -> phase: the learning-rate factor rule, per stage ------------------------------------
def test_default_schedule_is_two_stages_fe_ft():
    cfg = Config(epochs_fe=2, epochs_ft=3, unfreeze="blocks:4", ft_lr_factor=20, stage_lr_decay=3)
    assert recipe.default_stages(cfg) == [Stage("fe", "none", 2), Stage("ft", "blocks:4", 3)]
    fe, ft = config_lib.build_schedule(cfg)
    assert (fe.lr, ft.lr) == (pytest.approx(1e-3), pytest.approx(5e-5))  # decay**0 for ft


def test_gradual_stage_rates_divide_by_the_factor_per_stage():
    cfg = Config(lr=1e-3, ft_lr_factor=10, stage_lr_decay=2.0, stages=GRADUAL, optimizer="sgd")
    phases = config_lib.build_schedule(cfg)
    assert [p.name for p in phases] == ["fe", "ft1", "ft2", "ft3"]
    assert [p.unfreeze for p in phases] == ["none", "blocks:1", "blocks:2", "all"]
    assert [p.epochs for p in phases] == [3, 2, 2, 1]
    # fe at lr; ft1 at lr/10 (j=0); ft2 its own /40; ft3 at lr/(10*2**2) (j=2).
    assert [p.lr for p in phases] == pytest.approx([1e-3, 1e-4, 2.5e-5, 2.5e-5])
    assert {p.optimizer for p in phases} == {"sgd"}
    assert [p.lr_schedule.name for p in phases] == ["constant"] * 3 + ["cosine"]


def test_factor_rule_holds_for_every_unfreezing_stage():
    # The 4th unfreezing stage would train at lr / (10 * 2**3) = lr / 80: fine; a 5th, /160, not.
    base = "fe:none:1,a:blocks:1:1,b:blocks:2:1,c:blocks:3:1,d:blocks:4:1"
    config_lib.build_schedule(Config(stages=base, stage_lr_decay=2.0))
    with pytest.raises(
        ConfigError,
        match=r"stage 'e' \(its lr factor 160 = ft_lr_factor 10 \* stage_lr_decay 2\*\*4\): "
        r"the factor is outside \[10, 100\].*allow_any_lr_factor",
    ):
        config_lib.build_schedule(Config(stages=base + ",e:blocks:5:1", stage_lr_decay=2.0))
    with pytest.raises(ConfigError, match=r"stage 'ft' \(its lr factor 5 = /5 given"):
        config_lib.build_schedule(Config(stages="fe:none:1,ft:blocks:1:1:/5"))
    ok = Config(stages="fe:none:1,ft:blocks:1:1:/5", allow_any_lr_factor=True)
    assert config_lib.build_schedule(ok)[1].lr == pytest.approx(2e-4)


def test_head_only_stages_are_exempt_from_the_factor_rule():
    # The rule protects pretrained features; a head-only stage cannot touch them.
    (head,) = config_lib.build_schedule(Config(stages="warm:none:2:/2"))
    assert head.lr == pytest.approx(5e-4) and not head.trains_base


def test_fe_switch_patience_applies_to_head_only_phases():
    cfg = Config(stages=GRADUAL, fe_switch_patience=2, early_stopping_patience=4)
    assert [p.early_stopping_patience for p in config_lib.build_schedule(cfg)] == [2, 4, 4, 4]
    plain = config_lib.build_schedule(Config(stages=GRADUAL))
    assert [p.early_stopping_patience for p in plain] == [0, 0, 0, 0]


def test_select_and_previous_phase_work_for_stage_names():
    phases = config_lib.build_schedule(Config(stages=GRADUAL))
    (ft2,) = recipe.select_phases(phases, "ft2")
    assert recipe.previous_phase(phases, ft2).name == "ft1"
    with pytest.raises(ConfigError, match="use one of all, fe, ft1, ft2, ft3"):
        recipe.select_phases(phases, "ft")


def test_trainable_sets_grow_stage_by_stage():
    sets = [
        set(recipe.trainable_layers(LAYERS, p.unfreeze))
        for p in config_lib.build_schedule(
            Config(stages="fe:none:1,a:blocks:1:1,b:blocks:2:1,c:all:1")
        )
    ]
    assert sets[0] == set()
    assert sets[1] == {"b3_conv", "b3_act"}
    assert sets[2] == {"b2_conv", "b2_act", "b3_conv", "b3_act"}
    assert sets[3] == sets[2] | {"stem_conv", "b1_conv", "b1_act"}
    assert all(a < b for a, b in zip(sets, sets[1:], strict=False))
    assert not any(name.endswith("_bn") for s in sets for name in s)


def test_phase_dict_round_trip_keeps_the_schedule():
    (phase,) = config_lib.build_schedule(Config(stages="fe:none:4:cosine", warmup_epochs=1.5))
    assert phase.lr_schedule == LRSchedule("cosine", warmup_epochs=1.5)
    assert Phase.from_dict(phase.to_dict()) == phase


# --- LR schedules and discriminative rates in the config -----------------------------------------
def test_recipe_schedule_names_match_the_registry():
    from tl_keras.training.schedules import SCHEDULES

    assert set(recipe.LR_SCHEDULES) == set(SCHEDULES)


def test_config_schedule_fields_reach_every_phase():
    cfg = Config(
        lr_schedule="step",
        min_lr_ratio=0.1,
        lr_step_every=2,
        lr_step_gamma=0.3,
        lr_plateau_patience=4,
        lr_plateau_factor=0.2,
        layer_decay=0.7,
    )
    for phase in config_lib.build_schedule(cfg):
        assert phase.lr_schedule == LRSchedule("step", 0.0, 0.1, 2, 0.3, 4, 0.2)
        assert phase.layer_decay == 0.7


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(lr_schedule="linear"), "lr_schedule='linear' is unknown; use one of constant"),
        (dict(lr_schedule="step", warmup_epochs=1.0), "schedule 'step' has no warm-up"),
        (dict(lr_schedule="cosine", warmup_epochs=5.0), "shorter than the phase's 5 epochs"),
        (dict(min_lr_ratio=1.5), "min_lr_ratio=1.5"),
        (dict(lr_step_gamma=0.0), "gamma=0.0"),
        (dict(lr_plateau_factor=1.0), "plateau_factor=1.0"),
        (dict(layer_decay=0.0), "layer_decay=0.0"),
        (dict(layer_decay=1.5), "layer_decay=1.5"),
        (dict(stage_lr_decay=0.0), "stage_lr_decay=0.0"),
        (dict(rollback="accuracy"), "rollback='accuracy'"),
        (dict(rollback="val_loss", val_fraction=0.0), "set val_fraction > 0"),
        (dict(fe_switch_patience=-1), "fe_switch_patience=-1"),
        (dict(stages="fe:none:2,ft:blocks:1:2:/500"), "stage 'ft'"),
    ],
)
def test_validate_refuses_bad_schedule_settings(overrides, match):
    with pytest.raises(ConfigError, match=match):
        config_lib.validate(Config(**overrides))


def test_block_lr_multipliers_decay_from_the_head_down():
    multipliers = recipe.block_lr_multipliers(LAYERS, 0.5)
    # The head (outside the base) is 1; b3 0.5, b2 0.25, b1 0.125, stem 0.0625.
    assert multipliers["b3_conv"] == multipliers["b3_bn"] == 0.5
    assert multipliers["b2_act"] == 0.25 and multipliers["b1_conv"] == 0.125
    assert multipliers["stem_conv"] == multipliers["rescaling"] == 0.0625
    assert set(recipe.block_lr_multipliers(LAYERS, 1.0).values()) == {1.0}


def test_block_lr_multipliers_agree_with_timm_layer_decay():
    from tl_keras.recipe import layer_decay_multipliers

    per_block = layer_decay_multipliers([*recipe.block_order(LAYERS), "head"], 0.7)
    per_layer = recipe.block_lr_multipliers(LAYERS, 0.7)
    for layer in LAYERS[1:]:
        assert per_layer[layer.name] == pytest.approx(per_block[layer.block])


# --- discriminative rates in groups of blocks -----------------------------------------------------
MOBILENET_BLOCKS = ["stem", *[f"block_{i}" for i in range(1, 14)]]  # what layer_infos gives


def test_group_blocks_splits_neighbours_evenly_lower_runs_larger():
    assert recipe.group_blocks(["stem", "b1", "b2", "b3", "b4"], 2) == [
        ["stem", "b1", "b2"],
        ["b3", "b4"],
    ]
    runs = recipe.group_blocks(MOBILENET_BLOCKS, 4)
    assert [len(r) for r in runs] == [4, 4, 3, 3]
    assert [b for r in runs for b in r] == MOBILENET_BLOCKS  # every block once, in order
    assert recipe.group_blocks(["a", "b"], 0) == [["a"], ["b"]]


@pytest.mark.parametrize("groups", [-1, 15])
def test_group_blocks_refuses_a_count_the_base_cannot_take(groups):
    with pytest.raises(ConfigError, match=f"layer_decay_groups={groups} is not allowed: the base "
                       "has 14 blocks \\(stem .. block_13\\); use 0"):  # fmt: skip
        recipe.group_blocks(MOBILENET_BLOCKS, groups)


def test_five_parameter_groups_each_three_times_the_one_below():
    """Exercise (c): head, then 4 runs of blocks down to the stem, each rate 3x the one below."""
    layers = [LayerInfo(f"{b}_conv", b, True, False) for b in MOBILENET_BLOCKS]
    multipliers = recipe.block_lr_multipliers(layers, 1 / 3, groups=4)
    by_block = {layer.block: multipliers[layer.name] for layer in layers}
    runs = recipe.group_blocks(MOBILENET_BLOCKS, 4)
    rates = [[by_block[b] for b in run] for run in runs]
    assert all(len(set(r)) == 1 for r in rates)  # one rate per run
    # stem run 1/81, then 1/27, 1/9, 1/3; the head (outside the base) trains at 1.
    assert [r[0] for r in rates] == pytest.approx([1 / 81, 1 / 27, 1 / 9, 1 / 3])
    # groups=0 is the per-block rule, unchanged.
    assert recipe.block_lr_multipliers(LAYERS, 0.5, groups=0) == recipe.block_lr_multipliers(
        LAYERS, 0.5
    )


def test_layer_decay_groups_reach_every_phase_and_refuse_negative():
    for phase in config_lib.build_schedule(Config(layer_decay=1 / 3, layer_decay_groups=4)):
        assert (phase.layer_decay, phase.layer_decay_groups) == (1 / 3, 4)
    assert Phase.from_dict({"name": "ft", "unfreeze": "all", "epochs": 1, "lr": 1e-4}) == Phase(
        "ft", "all", 1, 1e-4
    )  # a run.json written before the field existed still reads
    with pytest.raises(ConfigError, match="layer_decay_groups=-1 is not allowed"):
        config_lib.validate(Config(layer_decay_groups=-1))
