"""keras-hub image backbones as `--backbone=hub:<preset>`, offline: presets built here from their
configs (random weights with BatchNorm statistics that are not the initial ones), saved as local
preset folders, and run through the same phases, blocks, BatchNorm guard and export as the
registry's backbones. Skips without keras-hub (the `hub` extra; the `test` extra installs it).

Two families: keras-hub's EfficientNet-Lite0 (flat layers, like keras.applications) and its
MobileNetV3 (each block one keras-hub layer with its BatchNorm layers inside, which the guard
has to reach).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tl_keras import recipe
from tl_keras.errors import BackboneError
from tl_keras.model import backbones, efficientnet_lite, hub
from tl_keras.model import classifier as model_lib
from tl_keras.recipe import Phase

keras_hub = pytest.importorskip("keras_hub")

SIZE = 32
SCALE = 1 / 255.0
# keras-hub's EfficientNet-Lite0 (its efficientnet_lite0_ra_imagenet preset's architecture).
LITE0 = dict(
    stackwise_width_coefficients=[1.0] * 7,
    stackwise_depth_coefficients=[1.0] * 7,
    stackwise_kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
    stackwise_num_repeats=[1, 2, 2, 3, 3, 4, 1],
    stackwise_input_filters=[32, 16, 24, 40, 80, 112, 192],
    stackwise_output_filters=[16, 24, 40, 80, 112, 192, 320],
    stackwise_expansion_ratios=[1, 6, 6, 6, 6, 6, 6],
    stackwise_strides=[1, 2, 2, 2, 1, 2, 1],
    stackwise_squeeze_and_excite_ratios=[0] * 7,
    stackwise_block_types=["v1"] * 7,
    min_depth=None,
    use_depth_divisor_as_min_depth=True,
    cap_round_filter_decrease=True,
    batch_norm_momentum=0.9,
    dropout=0,
    activation="relu6",
)
# keras-hub's MobileNetV3-Small 0.5, three stages.
MOBILENET = dict(
    stackwise_num_blocks=[2, 3, 2],
    stackwise_expansion=[[40, 56], [64, 144, 144], [72, 72]],
    stackwise_num_filters=[[16, 16], [24, 24, 24], [24, 24]],
    stackwise_kernel_size=[[3, 3], [5, 5, 5], [5, 5]],
    stackwise_num_strides=[[2, 1], [2, 1, 1], [1, 1]],
    stackwise_se_ratio=[[None, None], [0.25, 0.25, 0.25], [0.25, 0.25]],
    stackwise_activation=[["relu", "relu"], ["hard_swish"] * 3, ["hard_swish"] * 2],
    stackwise_padding=[[1, 1], [2, 2, 2], [2, 2]],
    output_num_filters=1024,
    input_num_filters=16,
    depthwise_filters=8,
    depthwise_stride=2,
    depthwise_residual=False,
    squeeze_and_excite=0.5,
    last_layer_filter=144,
)


def all_batchnorm(layer) -> list:
    return [
        sub
        for sub in layer._flatten_layers(include_self=False)
        if isinstance(sub, keras.layers.BatchNormalization)
    ]


def make_preset(folder, backbone) -> str:
    """Saves `backbone` (with non-trivial BatchNorm statistics) and a 0..1 converter as a preset."""
    rng = np.random.default_rng(0)
    for bn in all_batchnorm(backbone):
        bn.moving_mean.assign(rng.normal(0, 0.1, bn.moving_mean.shape))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, bn.moving_variance.shape))
    backbone.save_to_preset(str(folder))
    keras_hub.layers.ImageConverter(scale=SCALE).save_to_preset(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def lite0_preset(tmp_path_factory):
    return make_preset(
        tmp_path_factory.mktemp("hub_lite0"), keras_hub.models.EfficientNetBackbone(**LITE0)
    )


@pytest.fixture(scope="module")
def mobilenet_preset(tmp_path_factory):
    return make_preset(
        tmp_path_factory.mktemp("hub_mobilenet"), keras_hub.models.MobileNetBackbone(**MOBILENET)
    )


def snapshot(layer) -> dict[str, np.ndarray]:
    return {v.path: v.numpy().copy() for v in layer.weights}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not np.array_equal(before[k], after[k])}


def stats(base) -> set[str]:
    return {v.path for bn in all_batchnorm(base) for v in (bn.moving_mean, bn.moving_variance)}


# --- the spec and the base -----------------------------------------------------------------------
def test_a_hub_name_is_a_spec_without_loading_anything():
    spec = backbones.get("hub:resnet_50_imagenet")
    assert (spec.name, spec.keras_name, spec.source) == (
        "hub:resnet_50_imagenet",
        "resnet_50_imagenet",
        backbones.HUB,
    )
    assert spec.default_size == 224 and not spec.has_alpha
    with pytest.raises(BackboneError, match="needs a keras-hub preset after the colon"):
        backbones.get("hub:")


def test_the_base_is_the_preset_flat_with_its_scaling_and_weights(lite0_preset):
    spec = backbones.get(f"hub:{lite0_preset}")
    base = backbones.build_base(spec, image_size=SIZE, weights="imagenet")
    source = keras_hub.models.Backbone.from_preset(lite0_preset)
    assert base.name == "backbone" and base.layers[1].name == hub.PREPROCESS_LAYER
    assert base.layers[1].scale == pytest.approx(SCALE)
    for a, b in zip(source.weights, base.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # keras-hub's Lite0 has the package's block names: the same 16 blocks, stem and top.
    order = recipe.block_order(backbones.layer_infos(spec, base))
    assert order == ["stem", *efficientnet_lite.block_names(), "top"]
    random = backbones.build_base(spec, image_size=SIZE, weights=None)
    assert not np.array_equal(
        random.get_layer("top_bn").moving_mean, base.get_layer("top_bn").moving_mean
    )


def test_mobilenet_blocks_come_from_its_layer_names(mobilenet_preset):
    spec = backbones.get(f"hub:{mobilenet_preset}")
    base = backbones.build_base(spec, image_size=SIZE, weights="imagenet")
    order = recipe.block_order(backbones.layer_infos(spec, base))
    assert order[0] == "stem" and order[1:] == [
        "block_0_0", "block_1_0", "block_1_1", "block_2_0", "block_2_1", "block_2_2",
        "block_3_0", "block_3_1", "block_4_0",
    ]  # fmt: skip


# --- phases and the BatchNorm guard ------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(shapes_dir):
    from tl_keras.data.sources import load_image_folder

    return load_image_folder(shapes_dir, image_size=SIZE, batch_size=8, val_fraction=0.25, seed=0)


@pytest.mark.parametrize("bn_policy", ["frozen", "train"])
def test_the_guard_reaches_batchnorm_inside_keras_hub_blocks(mobilenet_preset, data, bn_policy):
    """MobileNet's blocks hold their BatchNorm layers inside one keras-hub layer: unfreezing the
    block must still leave their statistics bitwise alone ('train' shows they would move)."""
    from tl_keras.training.phase import run_phase

    name = f"hub:{mobilenet_preset}"
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(name, data.num_classes, image_size=SIZE, weights="imagenet")
    base = model_lib.get_base(model)
    before = snapshot(base)
    result = run_phase(
        model, Phase("ft", "blocks:2", 1, 1e-3), data, backbone=name, bn_policy=bn_policy,
        progress="lines",
    )  # fmt: skip
    assert result.report.unfrozen_blocks == ("block_3_1", "block_4_0")
    moved = changed(before, snapshot(base))
    top = {v.path for n in ("block_3_1", "block_4_0") for v in base.get_layer(n).weights}
    if bn_policy == "frozen":
        assert moved and moved <= top and not moved & stats(base)
    else:
        assert moved & stats(base)


def test_calibration_reaches_batchnorm_inside_keras_hub_blocks(mobilenet_preset, data):
    """weights=none: the BatchNorm layers inside MobileNet's keras-hub blocks get the cumulative
    average over the calibration batches like the base's own (one batch: its statistics alone,
    whatever they started from; keras-hub's momentum 0.9 kept 90% of the start); every other
    weight stays bitwise, every layer's `trainable` as it was."""
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(
        f"hub:{mobilenet_preset}", data.num_classes, image_size=SIZE, weights=None
    )
    base = model_lib.get_base(model)
    inner = [bn for bn in all_batchnorm(base) if bn not in base.layers]
    assert len(inner) == 24  # inside ConvBnActBlock, DepthwiseConvBlock, InvertedResidualBlock
    flags = [layer.trainable for layer in model._flatten_layers()]
    batch = data.train_epochs(0, 1).take(1)
    before = snapshot(model)
    assert model_lib.calibrate_batchnorm(model, batch) == 1
    calibrated = snapshot(model)
    assert changed(before, calibrated) == stats(base)  # the inner ones too; nothing else
    assert [layer.trainable for layer in model._flatten_layers()] == flags
    assert {bn.momentum for bn in inner} == {0.9}  # keras-hub's own, restored
    rng = np.random.default_rng(1)
    for bn in inner:  # start elsewhere: one batch's cumulative average does not remember it
        bn.moving_mean.assign(rng.normal(0, 1, bn.moving_mean.shape))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, bn.moving_variance.shape))
    model_lib.calibrate_batchnorm(model, batch)
    again = snapshot(model)
    for path in stats(base):
        np.testing.assert_allclose(again[path], calibrated[path], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def lite0_run(lite0_preset, shapes_dir, tmp_path_factory):
    from tl_keras.training.runner import train

    workdir = str(tmp_path_factory.mktemp("hub_run") / "run")
    cfg = tiny_config(
        data_dir=shapes_dir, backbone=f"hub:{lite0_preset}", alpha=1.0, weights="imagenet"
    )
    train(cfg, workdir)
    return workdir


@pytest.mark.slow
def test_a_hub_run_trains_the_top_blocks_only_and_exports(lite0_run, lite0_preset):
    import os

    from tl_keras.inference.export.manifest import export_workdir

    spec = backbones.get(f"hub:{lite0_preset}")
    start = backbones.build_base(spec, image_size=SIZE, weights="imagenet")
    model = keras.models.load_model(os.path.join(lite0_run, "ft", "model.keras"))
    base = model.get_layer("backbone")
    moved = {
        layer.name
        for layer in base.layers
        for got, want in zip(
            layer.get_weights(), start.get_layer(layer.name).get_weights(), strict=True
        )
        if not np.array_equal(got, want)
    }
    # blocks:2 is block7a and top; keras-hub names the projection `block7a_project`.
    assert moved == {"block7a_expand_conv", "block7a_dwconv", "block7a_project", "top_conv"}
    manifest = export_workdir(lite0_run, formats=["saved_model", "tflite"], num_parity_images=4)
    assert manifest["backbone"] == spec.name
    assert all(a["parity"]["passed"] for a in manifest["artifacts"].values())


# --- what cannot be used ---------------------------------------------------------------------------
def test_without_keras_hub_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(hub, "available", lambda: False)
    with pytest.raises(BackboneError, match=r'needs keras-hub.*pip install "tl_keras\[hub\]"'):
        backbones.build_base(backbones.get("hub:resnet_50_imagenet"), image_size=SIZE)


def test_a_preset_that_cannot_be_loaded_is_one_clear_error(tmp_path):
    with pytest.raises(BackboneError, match=r"cannot load the keras-hub preset .*local preset"):
        backbones.build_base(backbones.get(f"hub:{tmp_path / 'nope'}"), image_size=SIZE)


def test_a_backbone_without_a_feature_map_is_refused():
    vit = keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3), patch_size=16, num_layers=1, num_heads=1, hidden_dim=8,
        mlp_dim=8,
    )  # fmt: skip
    with pytest.raises(BackboneError, match="not one feature map.*pick a convolutional preset"):
        hub.flatten(vit, SIZE, 1.0, 0.0)
