"""What trains and what must not: weights compared bitwise before and after each phase.

One model goes through `fe` then `ft` (module fixture, so the suite pays for two short fits);
the tests then check the snapshots. The base starts from random weights whose BatchNorm
statistics were re-estimated from data, so they are not the trivial (0, 1) and a change shows.
"""

import keras
import numpy as np
import pytest

from tl_keras.data.sources import load_image_folder
from tl_keras.model import backbones
from tl_keras.model import classifier as model_lib
from tl_keras.recipe import Phase
from tl_keras.training.phase import run_phase

BACKBONE, ALPHA, SIZE = "mobilenet", 0.25, 32
# The phase and BatchNorm checks run on each family below: its width, the two blocks
# 'blocks:2' unfreezes, and the BatchNorm layers inside them (the ones at risk).
FAMILIES = {
    "mobilenet": (
        0.25,
        ("block_12", "block_13"),
        {"conv_dw_12_bn", "conv_pw_12_bn", "conv_dw_13_bn", "conv_pw_13_bn"},
    ),
    "efficientnet_lite0": (
        1.0,
        ("block7a", "top"),
        {"block7a_expand_bn", "block7a_bn", "block7a_project_bn", "top_bn"},
    ),
}


def snapshot(layer_or_model) -> dict[str, np.ndarray]:
    """Every variable (trainable or not) by path, copied."""
    return {v.path: v.numpy().copy() for v in layer_or_model.weights}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not np.array_equal(before[k], after[k])}


def bn_stat_paths(base) -> set[str]:
    return {
        v.path
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    }


def layer_paths(base, names) -> set[str]:
    return {v.path for name in names for v in base.get_layer(name).weights}


@pytest.fixture(scope="module")
def data(shapes_dir):
    return load_image_folder(shapes_dir, image_size=SIZE, batch_size=8, val_fraction=0.25, seed=0)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> str:
    return request.param


def fresh_model(data, backbone=BACKBONE):
    keras.utils.set_random_seed(0)
    m = model_lib.build_model(
        backbone,
        data.num_classes,
        image_size=SIZE,
        weights=None,
        alpha=FAMILIES[backbone][0],
        head_units=8,
        seed=0,
    )
    model_lib.calibrate_batchnorm(m, data.train_epochs(0, 1).take(2))
    return m


@pytest.fixture(scope="module")
def two_phases(data, family):
    m = fresh_model(data, family)
    base = model_lib.get_base(m)
    s0_base, s0_head = snapshot(base), snapshot(m.get_layer("predictions"))
    fe = run_phase(m, Phase("fe", "none", 1, 1e-2), data, backbone=family, progress="lines")
    s1_base, s1_head = snapshot(base), snapshot(m.get_layer("predictions"))
    ft_phase = Phase("ft", "blocks:2", 1, 1e-3)
    ft = run_phase(
        m, ft_phase, data, backbone=family, initial_epoch=fe.history.last_epoch, progress="lines"
    )
    s2_base = snapshot(base)
    return dict(
        model=m, base=base, fe=fe, ft=ft, s0=s0_base, s1=s1_base, s2=s2_base, h0=s0_head, h1=s1_head,
        family=family,
    )  # fmt: skip


def test_model_structure_and_names():
    m = model_lib.build_model(
        "mobilenet", 4, image_size=32, weights=None, alpha=0.25, head_units=16
    )
    names = [layer.name for layer in m.layers]
    assert names == [
        "image",
        "preprocess",
        "backbone",
        "avg_pool",
        "head_dense",
        "head_dropout",
        "predictions",
    ]
    assert m.get_layer("predictions").units == 4
    assert m.get_layer("predictions").dtype_policy.name == "float32"
    assert not model_lib.get_base(m).trainable
    no_hidden = model_lib.build_model(
        "efficientnet_b0", 3, image_size=32, weights=None, head_units=0
    )
    assert "head_dense" not in [layer.name for layer in no_hidden.layers]
    assert "preprocess" not in [layer.name for layer in no_hidden.layers]  # built into EfficientNet


def test_preprocessing_is_inside_the_model():
    """Raw 0..255 pixels go in: the MobileNet model maps them to [-1, 1] itself."""
    m = model_lib.build_model("mobilenet", 2, image_size=32, weights=None, alpha=0.25)
    pre = m.get_layer("preprocess")
    out = pre(np.array([[[[0.0, 127.5, 255.0]]]], np.float32)).numpy().ravel()
    np.testing.assert_allclose(out, [-1.0, 0.0, 1.0], atol=1e-6)


def test_fe_leaves_every_base_weight_bitwise_unchanged(two_phases):
    assert changed(two_phases["s0"], two_phases["s1"]) == set()


def test_fe_trains_the_head(two_phases):
    assert changed(two_phases["h0"], two_phases["h1"]) == set(two_phases["h0"])


def test_fe_report_counts_only_the_head(two_phases):
    m, report = two_phases["model"], two_phases["fe"].report
    head = sum(
        model_lib.count_params(m.get_layer(n).trainable_weights)
        for n in ("head_dense", "predictions")
    )
    assert report.trainable_params == head
    assert report.trainable_base_layers == () and report.unfrozen_blocks == ()


def test_ft_changes_exactly_the_unfrozen_layers(two_phases):
    base, report = two_phases["base"], two_phases["ft"].report
    assert report.unfrozen_blocks == FAMILIES[two_phases["family"]][1]
    expected = layer_paths(base, report.trainable_base_layers)
    assert expected, "nothing was unfrozen"
    assert changed(two_phases["s1"], two_phases["s2"]) == expected


def test_ft_keeps_every_batchnorm_statistic_bitwise(two_phases):
    base = two_phases["base"]
    stats = bn_stat_paths(base)
    # BN layers inside the unfrozen blocks are exactly the ones at risk; make sure they exist.
    _, top_blocks, top_bn = FAMILIES[two_phases["family"]]
    spec = backbones.get(two_phases["family"])
    in_top_blocks = [
        i.name
        for i in backbones.layer_infos(spec, base)
        if i.is_batchnorm and i.block in top_blocks
    ]
    assert len(in_top_blocks) == 4 and set(in_top_blocks) == top_bn
    assert not stats & changed(two_phases["s1"], two_phases["s2"])
    assert all(not base.get_layer(n).trainable for n in in_top_blocks)


def test_ft_uses_the_phase_learning_rate(two_phases):
    m = two_phases["model"]
    assert float(m.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    assert two_phases["ft"].history.records[0]["lr"] == pytest.approx(1e-3)
    assert two_phases["fe"].history.records[0]["lr"] == pytest.approx(1e-2)


def test_epochs_continue_across_phases(two_phases):
    assert two_phases["fe"].history.epochs == [1]
    assert two_phases["ft"].history.epochs == [2]


def test_training_false_alone_does_not_protect_batchnorm(data, family):
    """Why the guard exists: on this Keras, base(x, training=False) is overridden by fit().

    Same model, same unfreezing, but BatchNorm left trainable (bn_policy='train'): the moving
    statistics of the unfrozen blocks change although the model calls its base with
    training=False. If this test ever fails, Keras has fixed it and the guard is belt and braces.
    """
    m = fresh_model(data, family)
    base = model_lib.get_base(m)
    before = snapshot(base)
    run_phase(
        m,
        Phase("ft", "blocks:2", 1, 1e-3),
        data,
        backbone=family,
        bn_policy="train",
        progress="lines",
    )
    moved = bn_stat_paths(base) & changed(before, snapshot(base))
    assert moved, "BN statistics did not move: training=False alone protected them on this Keras"
    assert {p.split("/")[0] for p in moved} == FAMILIES[family][2]


def test_calibrate_batchnorm_changes_only_statistics(data):
    keras.utils.set_random_seed(0)
    m = model_lib.build_model(BACKBONE, 3, image_size=SIZE, weights=None, alpha=ALPHA)
    base = model_lib.get_base(m)
    before = snapshot(base)
    assert model_lib.calibrate_batchnorm(m, data.train_epochs(0, 1).take(2)) == 2
    assert changed(before, snapshot(base)) == bn_stat_paths(base)
    assert not base.trainable and all(not layer.trainable for layer in base.layers)
    features = keras.Model(m.input, m.get_layer("avg_pool").output)
    images, _ = next(iter(data.train))
    assert float(np.std(features(images))) > 1e-3  # without calibration: about 1e-18


def test_rng_state_survives_save_and_load(tmp_path):
    """Keras does not save dropout RNG state in .keras files; get/set_rng_state carries it."""
    m = model_lib.build_model(BACKBONE, 3, image_size=SIZE, weights=None, alpha=ALPHA, seed=0)
    x = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    for _ in range(3):
        m(x, training=True)  # advances the head dropout's generator
    state = model_lib.get_rng_state(m)
    assert state == {"head_dropout#0": [0, 3]}
    m.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert model_lib.get_rng_state(loaded) == {"head_dropout#0": [0, 0]}  # the Keras gap
    model_lib.set_rng_state(loaded, state)
    np.testing.assert_array_equal(m(x, training=True), loaded(x, training=True))
    with pytest.raises(ValueError, match="does not have"):
        model_lib.set_rng_state(loaded, {"nope#0": [0, 1]})
