"""Cached features for feature extraction: the same training as the live path, faster."""

import logging

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tl_keras.model.classifier import get_base
from tl_keras.training import features, runner

HEAD = ("head_dense", "predictions")


@pytest.fixture
def log_lines(caplog):
    caplog.set_level(logging.INFO, logger="tl_keras")
    logger = logging.getLogger("tl_keras")
    propagate, logger.propagate = logger.propagate, True
    yield lambda: [r.getMessage() for r in caplog.records]
    logger.propagate = propagate


def fe_only(**overrides):
    # No dropout, so the two paths draw no random numbers at all: the same seed, the same run.
    values = dict(epochs_fe=3, epochs_ft=0, dropout=0.0, label_smoothing=0.1)
    return tiny_config(**{**values, **overrides})


@pytest.fixture(scope="module")
def live_and_cached(tmp_path_factory):
    features._MEMORY.clear()
    live = runner.train(fe_only(feature_cache="off"), str(tmp_path_factory.mktemp("live")))
    cached = runner.train(fe_only(feature_cache="memory"), str(tmp_path_factory.mktemp("cached")))
    return live, cached


def test_cached_and_live_train_the_same_head(live_and_cached):
    live, cached = live_and_cached
    for name in HEAD:
        for a, b in zip(
            live.model.get_layer(name).weights, cached.model.get_layer(name).weights, strict=True
        ):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)


def test_cached_and_live_report_the_same_metrics(live_and_cached):
    live, cached = live_and_cached
    assert live.history.epochs == cached.history.epochs == [1, 2, 3]
    for a, b in zip(live.history.records, cached.history.records, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["epoch"], key)


def test_cached_fe_leaves_the_base_bitwise_unchanged(live_and_cached):
    live, cached = live_and_cached
    for a, b in zip(get_base(live.model).weights, get_base(cached.model).weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_cache_is_used_and_says_so(tmp_path, log_lines):
    runner.train(fe_only(), str(tmp_path))  # feature_cache defaults to 'memory'
    lines = [ln for ln in log_lines() if "cached features" in ln]
    assert len(lines) == 1 and "the head trains on them" in lines[0]


def test_augmentation_falls_back_to_the_live_path_with_a_reason(tmp_path, log_lines):
    runner.train(fe_only(augment="light", epochs_fe=1), str(tmp_path))
    assert any(
        "feature extraction runs the base every epoch: augmentation changes the images" in ln
        for ln in log_lines()
    )
    assert not any("cached features" in ln for ln in log_lines())


def test_file_cache_is_reused_and_never_stale(tmp_path, log_lines):
    features._MEMORY.clear()
    workdir = tmp_path / "run"
    runner.train(fe_only(feature_cache="file", epochs_fe=1), str(workdir))
    entries = sorted((workdir / "cache" / "features").iterdir())
    assert len(entries) == 1
    features._MEMORY.clear()  # a new process: only the file remains
    runner.train(fe_only(feature_cache="file", epochs_fe=1), str(workdir), overwrite=True)
    assert any("reused the features of" in ln for ln in log_lines())
    # Another image size and another seed (other random base weights): other features, other keys.
    runner.train(
        fe_only(feature_cache="file", epochs_fe=1, image_size=48), str(workdir), overwrite=True
    )
    runner.train(fe_only(feature_cache="file", epochs_fe=1, seed=3), str(workdir), overwrite=True)
    assert len(list((workdir / "cache" / "features").iterdir())) == 3


def test_a_phase_that_trains_the_base_always_runs_live():
    from tl_keras.data.pipeline import Pipeline
    from tl_keras.recipe import Phase

    p = Pipeline(image_size=32, batch_size=8)
    assert features.why_not_cached(Phase("fe", "none", 1, 1e-3), p) is None
    assert "trains part of the base" in features.why_not_cached(Phase("ft", "blocks:2", 1, 1e-4), p)


class _Probe(keras.callbacks.Callback):
    """Records the model a user's callback sees, and asks to stop after the first epoch."""

    def __init__(self):
        super().__init__()
        self.seen, self.epochs = [], []

    def on_train_begin(self, logs=None):
        self.seen.append(get_base(self.model).name)  # fails on the head alone

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.model.stop_training = True


def test_user_callbacks_see_the_whole_model_and_can_stop_training(tmp_path, log_lines):
    probe = _Probe()
    result = runner.train(fe_only(), str(tmp_path), callbacks=[probe])
    assert any("cached features" in ln for ln in log_lines())  # the cached path ran
    assert probe.seen == [get_base(result.model).name]
    assert probe.epochs == [0] and result.history.epochs == [1]  # the stop request reached fit


def test_file_cache_in_shards_trains_the_same_head_as_memory(tmp_path, monkeypatch, log_lines):
    """feature_cache='file' writes the features in shards as the pass goes and trains on them
    read back memory-mapped: the same head, bit for bit, as the features kept in memory."""
    monkeypatch.setattr(features, "SHARD_ROWS", 5)  # several shards even for 18 images
    features._MEMORY.clear()
    memory = runner.train(fe_only(feature_cache="memory"), str(tmp_path / "m"))
    features._MEMORY.clear()
    on_disk = runner.train(fe_only(feature_cache="file"), str(tmp_path / "f"))
    (entry,) = (tmp_path / "f" / "cache" / "features").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == [
        "index.json", "train-00000.npy", "train-00001.npy", "train-00002.npy",
        "train-00003.npy", "val-00000.npy", "val-00001.npy",
    ]  # fmt: skip
    features._MEMORY.clear()  # a new process: only the shard files remain
    again = runner.train(fe_only(feature_cache="file"), str(tmp_path / "f"), overwrite=True)
    assert any("reused the features of" in ln for ln in log_lines())
    for result in (on_disk, again):
        for name in HEAD:
            for a, b in zip(
                memory.model.get_layer(name).weights,
                result.model.get_layer(name).weights,
                strict=True,
            ):
                np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_forward_traces_a_model_once_and_matches_the_fixed_size_graph():
    # The doctor's feature pass reads the train split, then the val split, each with a short last
    # batch: one trace for all of it, with the outputs a graph traced at each batch's own size
    # gives, bitwise; and the kept function goes with its model.
    import gc
    import weakref

    from tl_keras.model import forward as forward_lib

    model = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()]
    )
    rng = np.random.default_rng(0)
    train = [rng.uniform(0, 255, (n, 16, 16, 3)).astype("float32") for n in (8, 8, 3)]
    val = [rng.uniform(0, 255, (n, 16, 16, 3)).astype("float32") for n in (8, 5)]
    got = [out for split in (train, val) for _, out in forward_lib.forward(model, split)]
    assert forward_lib._TRACED[model]["step"].experimental_get_tracing_count() == 1
    for images, out in zip(train + val, got, strict=True):
        np.testing.assert_array_equal(out, _traced_at_its_size(model, images))
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None  # the kept function held it only weakly


def _traced_at_its_size(model, images):
    import tensorflow as tf

    return np.asarray(tf.function(lambda x: model(x, training=False))(images))
