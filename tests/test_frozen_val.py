"""Validation through the frozen bottom once a phase: the same metrics and the same training."""

import numpy as np
import pytest
from conftest import run_log_and_calibration, tiny_config

from tl_keras import config as config_lib
from tl_keras.data import sources
from tl_keras.model.classifier import get_base, set_trainable
from tl_keras.training import bottom_views, frozen_val, runner
from tl_keras.training.start import load_phase_model

SHORTCUT_LINE = "validation: the frozen blocks run once"


def ft_run(**overrides):
    # Two ft epochs on the top 2 of the tiny base's blocks: its bottom stays frozen.
    values = dict(epochs_fe=1, epochs_ft=2, unfreeze="blocks:2", checkpoint_every=0)
    return tiny_config(**{**values, **overrides})


@pytest.fixture(scope="module")
def full_and_shortcut(tmp_path_factory):
    """The same run twice: Keras's validation pass over the whole model, then the shortcut."""
    with run_log_and_calibration() as (lines, answered_by):
        bottom_views.ENABLED = False  # the live steps, validated either way (test_bottom_views.py)
        try:
            frozen_val.ENABLED = False
            full = runner.train(ft_run(), str(tmp_path_factory.mktemp("full")))
            assert not any(SHORTCUT_LINE in line for line in lines)
            frozen_val.ENABLED = True
            shortcut_dir = str(tmp_path_factory.mktemp("shortcut"))
            shortcut = runner.train(ft_run(), shortcut_dir)
        finally:
            frozen_val.ENABLED = bottom_views.ENABLED = True
    assert any(SHORTCUT_LINE in line for line in lines)  # the shortcut ran in the second run
    assert answered_by[-1] == "validation_top"  # and calibration used its cached outputs
    assert answered_by[0] != "validation_top"
    return full, shortcut, shortcut_dir


def assert_same_metrics(full, other) -> None:
    """Every epoch's loss, accuracy and validation metrics, to float precision."""
    assert full.history.epochs == other.history.epochs == [1, 2, 3]
    for a, b in zip(full.history.records, other.history.records, strict=True):
        for key in ("val_loss", "val_accuracy", "loss", "accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["epoch"], key)


def assert_same_weights(full, other) -> None:
    for a, b in zip(full.model.weights, other.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_the_shortcut_reports_the_full_models_validation_metrics(full_and_shortcut):
    full, shortcut, _ = full_and_shortcut
    assert_same_metrics(full, shortcut)


def test_the_shortcut_trains_the_same_weights(full_and_shortcut):
    full, shortcut, _ = full_and_shortcut
    assert_same_weights(full, shortcut)


def test_the_saved_model_is_the_trained_one(full_and_shortcut):
    """Building the validation top calls the model's layers again: what the phase saved still
    loads as the model it trained."""
    _, shortcut, workdir = full_and_shortcut
    saved = load_phase_model(runner.Workdir(workdir), "ft")
    assert [layer.name for layer in saved.layers] == [layer.name for layer in shortcut.model.layers]
    for a, b in zip(saved.weights, shortcut.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), np.asarray(b.numpy()), err_msg=a.path)


@pytest.mark.parametrize("unfreeze", ["all", "none"])
def test_no_cut_where_nothing_or_everything_is_frozen(tmp_path, unfreeze):
    """No frozen bottom to cut at: validation is the folded pass of the whole model."""
    checked = config_lib.check(tiny_config(unfreeze=unfreeze))
    data = sources.load(checked.data, workdir=str(tmp_path))
    model = checked.model.build(data.num_classes)
    set_trainable(model, checked.model.backbone, unfreeze)
    assert frozen_val.frozen_cut(get_base(model)) is None
    compiled = []
    callback = frozen_val.for_phase(
        model, data.val, num_val=data.num_val, compile_top=compiled.append
    )
    assert isinstance(callback, frozen_val.FoldedValidation)
    assert [m.name for m in compiled] == ["validation_outputs"]
    assert frozen_val.for_phase(model, None, num_val=0, compile_top=compiled.append) is None


def whole_base_run(**overrides):
    # Two ft epochs of the whole tiny base: no frozen bottom, every BatchNorm frozen.
    values = dict(epochs_fe=1, epochs_ft=2, unfreeze="all", checkpoint_every=0)
    return tiny_config(**{**values, **overrides})


FOLDED_LINE = "validation: each epoch, one pass of the whole model"


@pytest.fixture(scope="module")
def full_and_folded(tmp_path_factory):
    """The same whole-base run twice: Keras's validation pass, then the folded one."""
    with run_log_and_calibration() as (lines, answered_by):
        try:
            frozen_val.ENABLED = False
            full = runner.train(whole_base_run(), str(tmp_path_factory.mktemp("full")))
            assert not any(FOLDED_LINE in line for line in lines)
            frozen_val.ENABLED = True
            folded = runner.train(whole_base_run(), str(tmp_path_factory.mktemp("folded")))
        finally:
            frozen_val.ENABLED = True
    assert any(FOLDED_LINE in line for line in lines)
    assert answered_by[-1] == "validation_outputs"  # calibration reused the last epoch's pass
    assert answered_by[0] != "validation_outputs"
    return full, folded


def test_the_folded_pass_reports_kerass_validation_metrics_and_trains_the_same(full_and_folded):
    full, folded = full_and_folded
    assert_same_metrics(full, folded)
    assert_same_weights(full, folded)


def test_calibration_on_the_last_folded_pass_fits_the_same_temperature(full_and_folded):
    full, folded = full_and_folded
    assert_same_inference(full.workdir, folded.workdir)


def test_the_last_pass_is_reused_only_while_the_weights_are_its_own(tmp_path):
    """Best weights, averaged weights or early stopping's restore change the model after its
    last epoch: then calibration must run the model, not reuse that epoch's outputs."""
    from tl_keras.model import forward as forward_lib

    checked = config_lib.check(whole_base_run())
    data = sources.load(checked.data, workdir=str(tmp_path))
    model = checked.model.build(data.num_classes)
    set_trainable(model, checked.model.backbone, "all")
    callback = frozen_val.for_phase(
        model, data.val, num_val=data.num_val, compile_top=lambda m: m.compile(loss="mse")
    )
    assert callback.reusable(model) is None  # no pass yet
    logs = {}
    callback.on_epoch_end(0, logs)
    assert set(logs) == {"val_loss"}
    assert forward_lib._TRACED[model]["folded"] is not None  # the pass ran with BatchNorm folded
    scorer, outputs = callback.reusable(model)
    (reused,) = [x for x, _ in outputs.take(1)]
    images = next(iter(data.val))[0]
    expected = model(images[: len(reused)], training=False)
    np.testing.assert_allclose(np.asarray(reused), np.asarray(expected), rtol=1e-5, atol=1e-6)
    kernel = model.trainable_weights[0]
    kernel.assign(kernel + 1e-3)
    assert callback.reusable(model) is None


def test_the_bottom_is_a_model_the_forward_pass_traces_once_and_folds(tmp_path):
    """The frozen bottom's passes (each epoch's views, the validation outputs) run as one traced,
    BatchNorm-folded function, not op by op: the bottom is a Keras model `forward` keeps."""
    import keras

    from tl_keras.model import forward as forward_lib

    checked = config_lib.check(tiny_config(unfreeze="blocks:2"))
    data = sources.load(checked.data, workdir=str(tmp_path))
    model = checked.model.build(data.num_classes)
    set_trainable(model, checked.model.backbone, "blocks:2")
    bottom, top = frozen_val.split(model)
    assert isinstance(bottom, keras.Model)
    images = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    for batches in ([images, images[:3]], [images[:2]]):  # two passes, short batches
        outs = [out for _, out in forward_lib.forward(bottom, batches, fold_batchnorm=True)]
    kept = forward_lib._TRACED[bottom]
    assert kept["folded"] is not None and kept["folded_step"].experimental_get_tracing_count() == 1
    expected = np.asarray(top(bottom(images[:2], training=False)))
    np.testing.assert_allclose(np.asarray(top(outs[0])), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model(images[:2], training=False)), expected, atol=1e-6)


def test_calibration_on_the_cached_outputs_fits_the_same_temperature(full_and_shortcut):
    """Calibration runs the last phase's validation top on the frozen blocks' cached outputs:
    the same answers, so the same temperature and scores, as a pass of the whole model."""
    full, _, workdir = full_and_shortcut
    assert_same_inference(full.workdir, workdir)


def assert_same_inference(workdir_a: str, workdir_b: str) -> None:
    """Two runs' run.json "inference" sections: the same keys, temperature, ECE and scores."""
    a = runner.Workdir(workdir_a).read_run()["inference"]
    b = runner.Workdir(workdir_b).read_run()["inference"]
    assert a.keys() == b.keys() and "ece_before" in a
    for key in a:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
        else:
            assert a[key] == b[key], key
