"""Fine-tuning the top on the frozen bottom's outputs: the live path's training, in fewer steps."""

import numpy as np
import pytest
from conftest import run_log_and_calibration, tiny_config

from tl_keras import config as config_lib
from tl_keras.data import sources
from tl_keras.model.classifier import get_base, set_trainable
from tl_keras.recipe import Phase
from tl_keras.training import bottom_views, frozen_val, runner
from tl_keras.training.start import load_phase_model

VIEWS_LINE = "the frozen blocks ran once over the augmented images"


def ft_run(**overrides):
    # Three ft epochs on the top 2 of the tiny base's blocks, augmented: each epoch's images differ.
    values = dict(epochs_fe=1, epochs_ft=3, unfreeze="blocks:2", augment="light")
    return tiny_config(**{**values, **overrides})


@pytest.fixture(scope="module")
def live_and_views(tmp_path_factory):
    """The same run twice: Keras's steps over the whole model, then the top on the views."""
    with run_log_and_calibration() as (lines, answered_by):
        try:
            bottom_views.ENABLED = False
            live = runner.train(ft_run(), str(tmp_path_factory.mktemp("live")))
            assert not any(VIEWS_LINE in line for line in lines)
            bottom_views.ENABLED = True
            workdir = str(tmp_path_factory.mktemp("views"))
            views = runner.train(ft_run(), workdir)
        finally:
            bottom_views.ENABLED = True
    assert any(VIEWS_LINE in line for line in lines)
    assert any("run once, first, over the augmented images of each" in x for x in lines)
    assert answered_by[-1] == "validation_top"  # calibration ran on the cached outputs
    return live, views, workdir


def test_the_views_train_what_the_live_path_trains(live_and_views):
    """The tiny base has no stochastic depth: the same batches give the same training, to
    float precision, epoch by epoch."""
    live, views, _ = live_and_views
    assert live.history.epochs == views.history.epochs == [1, 2, 3, 4]
    for a, b in zip(live.history.records, views.history.records, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
    for a, b in zip(live.model.weights, views.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_the_frozen_bottom_and_its_batchnorm_stay_bitwise_as_fe_left_them(live_and_views):
    _, views, workdir = live_and_views
    fe = load_phase_model(runner.Workdir(workdir), "fe")
    base, fe_base = get_base(views.model), get_base(fe)
    trained = {id(w) for w in views.model.trainable_weights}
    frozen = [(w, v) for w, v in zip(base.weights, fe_base.weights, strict=True)]
    checked = 0
    for w, before in frozen:
        if id(w) in trained:
            continue
        np.testing.assert_array_equal(w.numpy(), before.numpy(), err_msg=w.path)
        checked += 1
    moving = [w for w, _ in frozen if "moving" in w.path]
    assert moving and checked > len(moving)  # BatchNorm statistics among them


def test_the_saved_model_is_the_trained_one(live_and_views):
    _, views, workdir = live_and_views
    saved = load_phase_model(runner.Workdir(workdir), "ft")
    assert [layer.name for layer in saved.layers] == [layer.name for layer in views.model.layers]
    for a, b in zip(saved.weights, views.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), np.asarray(b.numpy()), err_msg=a.path)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    checked = config_lib.check(ft_run())
    data = sources.load(checked.data, workdir=str(tmp_path_factory.mktemp("data")))
    data = data.for_training(checked.given.augmentation)
    model = checked.model.build(data.num_classes)
    set_trainable(model, checked.model.backbone, "blocks:2")
    return data, model


def test_epoch_e_trains_on_the_bottom_of_epoch_e_images_in_epoch_e_order(bundle):
    data, model = bundle
    views = bottom_views.make_views(model, data, first_epoch=3, epochs=2)
    fit_data = bottom_views.views_bundle(data, views)
    bottom, _ = frozen_val.split(model)
    for epoch in (3, 4):
        live = list(data.train_epochs(epoch, 1))
        cached = list(fit_data.train_epochs(epoch, 1))
        assert len(live) == len(cached) == data.steps_per_epoch
        for (x, y), (f, g) in zip(live, cached, strict=True):
            np.testing.assert_allclose(bottom(x).numpy(), f.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(y.numpy(), g.numpy())
    assert not np.array_equal(views.train[0], views.train[1])  # each epoch its own draws


def test_outputs_past_the_memory_bound_leave_the_phase_live(bundle, monkeypatch):
    data, model = bundle
    monkeypatch.setattr(bottom_views, "MAX_BYTES", 1000)
    why = bottom_views.make_views(model, data, first_epoch=0, epochs=2)
    assert isinstance(why, str) and "MiB" in why and "2 epoch(s)" in why


def test_no_views_where_only_preprocessing_is_frozen_below_what_trains(tmp_path):
    """EfficientNet's keras.applications base rescales and normalises inside itself: with the
    whole base training, those layers are all that is frozen, and caching their outputs (the
    images, rescaled) would only cost memory."""
    checked = config_lib.check(ft_run(backbone="efficientnet_b0", image_size=32))
    data = sources.load(checked.data, workdir=str(tmp_path))
    data = data.for_training(checked.given.augmentation)
    model = checked.model.build(data.num_classes)
    set_trainable(model, "efficientnet_b0", "all")
    assert frozen_val.frozen_cut(get_base(model)) is not None  # the rescaling sits below
    assert bottom_views.make_views(model, data, first_epoch=0, epochs=1) is None


def test_no_views_where_nothing_is_frozen_below_what_trains(bundle):
    data, model = bundle
    set_trainable(model, "tiny", "all")
    try:
        why = bottom_views.make_views(model, data, first_epoch=0, epochs=1)
    finally:
        set_trainable(model, "tiny", "blocks:2")
    assert why is None  # nothing to say: the live path is the only one


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(feature_cache="off"), "feature_cache='off'"),
        (dict(mixup=0.2), "MixUp / CutMix"),
        (dict(replicas=2), "2 replicas"),
        (dict(budgeted=True), "a time budget"),  # its resumed part too: as it trained unresumed
    ],
)
def test_why_the_live_path_runs(bundle, change, reason):
    import dataclasses

    data, _ = bundle
    if "mixup" in change:
        data = dataclasses.replace(
            data, pipeline=dataclasses.replace(data.pipeline, mixup=change["mixup"])
        )
    why = bottom_views.why_not(
        Phase("ft", "blocks:2", 2, 1e-4),
        data,
        replicas=change.get("replicas", 1),
        feature_cache=change.get("feature_cache", "memory"),
        budgeted=change.get("budgeted", False),
    )
    assert why is not None and reason in why
    head_only = bottom_views.why_not(
        Phase("fe", "none", 2, 1e-3), data, replicas=1, feature_cache="memory"
    )
    assert head_only == "the phase trains no part of the base"
