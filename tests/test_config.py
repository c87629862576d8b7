"""Config resolution and validation; every shipped config must load and validate."""

import dataclasses
import pathlib

import pytest

from tl_keras import config as config_lib
from tl_keras.config import Config
from tl_keras.errors import BackboneError, ConfigError

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_configs_exist():
    assert CONFIGS, "configs/ has no .toml files"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    text = path.read_text()
    assert text.startswith("#") and "python -m tl_keras." in text, (
        f"{path.name} must open with the command to run it"
    )
    config_lib.validate(config_lib.replace(Config(), config_lib.load_file(str(path)), str(path)))


def test_unknown_field_is_an_error_with_a_suggestion(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('backbone = "mobilenet"\nepochs_fee = 3\n')
    with pytest.raises(
        ConfigError, match=r"unknown config field 'epochs_fee'.*did you mean 'epochs_fe'"
    ):
        config_lib.load_file(str(path))


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="'epochs_fe' .* must be int, got 'three'"):
        config_lib.replace(Config(), {"epochs_fe": "three"})
    with pytest.raises(ConfigError, match="must be bool"):
        config_lib.replace(Config(), {"tensorboard": 1})


def test_int_is_accepted_for_float_fields():
    assert config_lib.replace(Config(), {"lr": 1}).lr == 1.0


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config_lib.load_file(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        config_lib.load_file(str(tmp_path / "nope.toml"))


def test_json_round_trip():
    cfg = Config(backbone="efficientnet_b0", lr=3e-4, epochs_ft=7)
    import json

    assert config_lib.from_dict(json.loads(config_lib.to_json(cfg))) == cfg


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (
            dict(backbone="resnet50"),
            BackboneError,
            "unknown backbone 'resnet50'.*known backbones: efficientnet_b0",
        ),
        (
            dict(backbone="efficientnet_b0", alpha=0.5),
            BackboneError,
            "alpha=0.5 does not apply to efficientnet_b0",
        ),
        (
            dict(backbone="mobilenet", alpha=0.3),
            BackboneError,
            "ImageNet weights only for alpha in 0.25, 0.5",
        ),
        (dict(image_size=16), BackboneError, "image_size=16 is too small"),
        (dict(epochs_fe=-1), ConfigError, "epochs_fe=-1 is not allowed"),
        (dict(ft_lr_factor=5), ConfigError, "ft_lr_factor=5 is outside"),
        (dict(lr=0.0), ConfigError, "lr=0.0 is not allowed"),
        (dict(dropout=1.0), ConfigError, "dropout=1.0"),
        (dict(val_fraction=1.0), ConfigError, "val_fraction=1.0"),
        (dict(optimizer="adamm"), ConfigError, "did you mean 'adam'"),
        (dict(bn_policy="update"), ConfigError, "bn_policy='update'"),
        (dict(unfreeze="top:3"), ConfigError, "unfreeze='top:3'"),
    ],
)
def test_validate_rejects(overrides, error, match):
    with pytest.raises(error, match=match):
        config_lib.validate(Config(**overrides))


def test_any_alpha_allowed_without_imagenet_weights():
    config_lib.validate(Config(backbone="mobilenet", alpha=0.3, weights="none"))


def test_every_field_has_help():
    for name in config_lib.FIELDS:
        assert len(config_lib.field_help(name)) > 10, name


# --- check once, resolve once -----------------------------------------------------------------------
def _card(cfg: Config, **facts):
    from tl_keras.recipe import auto

    return auto.decide(config_lib.to_dict(cfg), auto.Facts(1000, 4, 250, **facts))


def test_check_then_resolve_gives_one_decided_spec_of_sections():
    """What `check` works out before the card is what the decided spec holds; the rest comes
    from the card, nothing left 'auto'."""
    cfg = Config(data_dir="synthetic", backbone="mobilenet", alpha=0.25, weights="none")
    checked = config_lib.check(cfg)
    assert checked.model.image_size == checked.data.image_size == 224  # the backbone's own
    assert checked.phase_names == ("fe", "ft") and checked.run.time_budget_s is None
    card = _card(cfg, pretrained=False)
    spec = config_lib.resolve(checked, card)
    assert (spec.data, spec.model, spec.run, spec.given) == (
        checked.data,
        checked.model,
        checked.run,
        cfg,
    )
    decided = card.values()
    assert spec.schedule[0].lr == decided["lr"] and spec.schedule[1].unfreeze == "all"
    assert spec.augmentation.augment == decided["augment"] and spec.tta == decided["tta"]
    assert spec.decided_config() == config_lib.filled(cfg, card)
    assert (
        spec.identity
        == checked.identity
        == {
            "backbone": "mobilenet",
            "alpha": 0.25,
            "image_size": 224,
            "head_units": 128,
            "dropout": 0.2,
            "weights": None,
            "precision": "float32",
        }
    )


def test_resolve_scales_the_rates_with_the_replicas_only_when_asked():
    cfg = Config(recipe="manual")
    plain = config_lib.resolve(cfg, _card(cfg), replicas=4)
    scaled = config_lib.resolve(
        dataclasses.replace(cfg, scale_lr_with_replicas=True), _card(cfg), replicas=4
    )
    assert [p.lr * 4 for p in plain.schedule] == [p.lr for p in scaled.schedule]


def test_the_recipe_builds_only_a_decided_schedule():
    """'auto' is filled in one place (`config.filled`): the recipe refuses it, while
    `tl_keras.build_schedule` takes a config as given (its 'auto' at the fixed defaults)."""
    from tl_keras import build_schedule, recipe

    with pytest.raises(ConfigError, match="still 'auto'"):
        recipe.build_schedule(Config())
    assert build_schedule(Config()) == recipe.build_schedule(config_lib.filled(Config()))


def test_the_data_section_keeps_the_configs_defaults():
    """`load_data(config)` reads the config's data section; its defaults are the config's."""
    data = Config(data_dir="photos/").data
    for field in ("val_fraction", "batch_size", "resize_mode", "cache", "train_split"):
        assert getattr(data, field) == config_lib.FIELDS[field].default
    assert Config().augmentation.augment == "none"  # 'auto' at the fixed default
