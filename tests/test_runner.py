"""The library runner `train()`: artifacts, stitching, phase handoff and refusals."""

import json
import os
import pathlib
import signal

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tl_keras.errors import TrainingError, WorkdirError
from tl_keras.training import callbacks, runner
from tl_keras.training.history import History, KeptEpoch


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete fe -> ft run (1 + 1 epochs), shared by the tests that only read it."""
    workdir = str(tmp_path_factory.mktemp("run"))
    result = runner.train(tiny_config(), workdir)
    return workdir, result


def test_all_writes_every_artifact(finished):
    workdir, result = finished
    for name in ("run.json", "config.json", "history.json", "history.csv", "curves.png"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    for phase in ("fe", "ft"):
        for name in ("model.keras", "history.json", "config.json", "summary.json"):
            assert os.path.isfile(os.path.join(workdir, phase, name)), f"{phase}/{name}"
    assert not [f for f in os.listdir(workdir) if ".tmp-" in f], "temporary files left behind"
    run = json.loads(pathlib.Path(os.path.join(workdir, "run.json")).read_text())
    assert run["backbone"] == "tiny" and run["image_size"] == 32
    assert run["class_names"] == ["circle", "square", "triangle"] == result.class_names
    assert run["phases"]["fe"]["last_epoch"] == 1 and run["phases"]["ft"]["first_epoch"] == 2


def test_history_is_stitched_and_saved(finished):
    workdir, result = finished
    saved = History.load(os.path.join(workdir, "history.json"))
    assert saved.records == result.history.records
    assert [(r["epoch"], r["phase"]) for r in saved.records] == [(1, "fe"), (2, "ft")]
    assert saved.records[0]["lr"] == pytest.approx(1e-3)
    assert saved.records[1]["lr"] == pytest.approx(1e-4)  # lr / ft_lr_factor (10)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(saved.records[0])


def test_phase_summary_reports_trainable_and_frozen(finished):
    workdir, _ = finished
    fe = json.loads(pathlib.Path(os.path.join(workdir, "fe", "summary.json")).read_text())
    ft = json.loads(pathlib.Path(os.path.join(workdir, "ft", "summary.json")).read_text())
    assert fe["trainability"]["trainable_params"] < ft["trainability"]["trainable_params"]
    assert ft["trainability"]["unfrozen_blocks"] == ["block_3", "block_4"]  # tiny's top two
    assert (
        fe["trainability"]["frozen_batchnorm_layers"]
        == ft["trainability"]["frozen_batchnorm_layers"]
        == 5  # every BatchNorm layer of tiny's base
    )


def _autos(value, path: str) -> list[str]:
    """The places in a (decided) value that still say 'auto'."""
    import dataclasses

    if isinstance(value, str):
        return [path] if value == "auto" else []
    if dataclasses.is_dataclass(value):
        return [
            p
            for f in dataclasses.fields(value)
            for p in _autos(getattr(value, f.name), f"{path}.{f.name}")
        ]
    if isinstance(value, tuple | list):
        return [p for i, v in enumerate(value) for p in _autos(v, f"{path}[{i}]")]
    return []


def test_a_run_resolves_once_into_a_spec_with_nothing_left_auto(tmp_path, monkeypatch):
    """Each `train` call resolves its config once, the first phase (card decided from facts), a
    later one (card read back), a --resume that only calibrates and an --overwrite alike, and
    loads its data once; the spec holds no 'auto' (only settings whose own mode is called so:
    progress, jit_compile, doctor, and the data cache, which loading resolves from the image
    count). config.json keeps the config as given, 'auto' where the recipe decided."""
    from tl_keras import config as config_lib
    from tl_keras.data import sources

    specs, loads = [], []
    resolve, assemble = config_lib.resolve, sources.assemble
    monkeypatch.setattr(
        config_lib, "resolve", lambda *a, **k: specs.append(resolve(*a, **k)) or specs[-1]
    )
    monkeypatch.setattr(sources, "assemble", lambda *a, **k: loads.append(1) or assemble(*a, **k))
    cfg = tiny_config(recipe="auto")  # the card decides lr, its schedule, augmentation, ...
    workdir = str(tmp_path / "w")
    runner.train(cfg, workdir, phase="fe")
    assert len(specs) == len(loads) == 1
    runner.train(cfg, workdir, phase="ft")
    assert len(specs) == len(loads) == 2
    modes = {".run.progress", ".run.jit_compile", ".run.doctor", ".data.cache"}
    for spec in specs:
        sections = {
            f: getattr(spec, f) for f in ("data", "augmentation", "model", "run", "schedule", "tta")
        }
        left = {p for name, value in sections.items() for p in _autos(value, f".{name}")}
        assert left <= modes, left
    assert specs[0].schedule == specs[1].schedule and specs[0].augmentation.augment == "light"
    saved = json.loads(pathlib.Path(workdir, "config.json").read_text())
    assert saved["lr"] == saved["augment"] == "auto"

    # --resume of a run killed during its calibration (what `save_phase` leaves: no temperature)
    # fits it with the spec its card decided: one resolve, one load, the decided tta.
    path = pathlib.Path(workdir, "run.json")
    run = json.loads(path.read_text())
    path.write_text(json.dumps({**run, "inference": {"tta": run["inference"]["tta"]}}))
    runner.train(cfg, workdir, resume=True)
    assert len(specs) == len(loads) == 3 and specs[2].schedule == specs[0].schedule
    assert "temperature" in json.loads(path.read_text())["inference"]
    runner.train(cfg, workdir, resume=True)  # calibrated: nothing to decide, nothing to load
    assert len(specs) == len(loads) == 3
    # --overwrite of the whole run (a transaction): one resolve, one load for both phases.
    runner.train(cfg, workdir, overwrite=True)
    assert len(specs) == len(loads) == 4 and specs[3].schedule == specs[0].schedule
    # Stopped inside a phase, then --resume from its checkpoint: once each, both times.
    from tl_keras import interrupt

    class StopAtSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise interrupt.Interrupted(signal.SIGTERM)

    cfg = tiny_config(recipe="auto", epochs_fe=2, checkpoint_every=0)
    workdir = str(tmp_path / "stopped")
    with pytest.raises(interrupt.Interrupted):
        runner.train(cfg, workdir, callbacks=[StopAtSecondEpoch()])
    assert len(specs) == len(loads) == 5
    runner.train(cfg, workdir, resume=True)
    assert len(specs) == len(loads) == 6 and specs[5].schedule == specs[4].schedule


def test_finished_workdir_is_not_overwritten_without_asking(finished):
    workdir, _ = finished
    before = pathlib.Path(os.path.join(workdir, "history.json")).read_text()
    with pytest.raises(
        WorkdirError,
        match=r"already holds a run \(phases done: fe, ft\); rerun with --resume to continue it, --overwrite to replace it",
    ):
        runner.train(tiny_config(), workdir)
    with pytest.raises(WorkdirError, match=r"phase\(s\) ft already done .* --overwrite"):
        runner.train(tiny_config(), workdir, phase="ft")
    assert pathlib.Path(os.path.join(workdir, "history.json")).read_text() == before


@pytest.mark.parametrize(
    "overrides, field",
    [
        (
            dict(backbone="mobilenet_v2", alpha=0.35),
            "backbone: saved 'tiny', given 'mobilenet_v2'",
        ),
        (dict(image_size=48), "image_size: saved 32, given 48"),
        (dict(head_units=16), "head_units: saved 8, given 16"),
    ],
)
def test_later_phase_refuses_a_different_model(finished, overrides, field):
    workdir, _ = finished
    with pytest.raises(WorkdirError, match=f"holds a different run .*{field}"):
        runner.train(tiny_config(**overrides), workdir, phase="ft", overwrite=True)


def test_later_phase_refuses_different_classes(finished, tmp_path):
    workdir, _ = finished
    from tl_keras.data.sources import synthetic

    other = tmp_path / "other"
    synthetic.make_shapes(str(other), images_per_class=4, image_size=32)
    os.rename(other / "triangle", other / "star")
    with pytest.raises(
        WorkdirError,
        match=r"classes: saved 3 \['circle', 'square', 'triangle'\], data has 3 \['circle', 'square', 'star'\]",
    ):
        runner.train(tiny_config(data_dir=str(other)), workdir, phase="ft", overwrite=True)


def test_ft_without_fe_is_refused(tmp_path):
    with pytest.raises(
        WorkdirError, match="--phase=ft needs phase 'fe' done .* run --phase=fe there first"
    ):
        runner.train(tiny_config(), str(tmp_path), phase="ft")
    assert not os.path.exists(tmp_path / "run.json")


def test_early_stopping_moves_the_boundary(tmp_path):
    """fe is configured for 4 epochs but stops after 2: ft starts at epoch 3, boundary at 2.5.

    A learning rate of 1e-30 leaves the weights unchanged, so val_loss cannot improve and
    early stopping (patience 1) ends each phase after its second epoch.
    """
    cfg = tiny_config(epochs_fe=4, epochs_ft=3, early_stopping_patience=1, lr=1e-30)
    result = runner.train(cfg, str(tmp_path))
    assert [(s.phase, s.first, s.last) for s in result.history.spans()] == [
        ("fe", 1, 2),
        ("ft", 3, 4),
    ]
    assert result.history.boundaries() == [2.5]
    assert [p.stopped_early for p in result.phases] == [True, True]
    run = json.loads(pathlib.Path(tmp_path / "run.json").read_text())
    assert run["phases"]["fe"]["last_epoch"] == 2 and run["phases"]["fe"]["stopped_early"]
    # Each phase handed on its first epoch's weights (val_loss never improved after it): the
    # history says so, for the curves to ring those epochs.
    kept = [KeptEpoch("fe", 1, "early stopping"), KeptEpoch("ft", 3, "early stopping")]
    assert result.history.kept == kept
    assert History.load(str(tmp_path / "history.json")).kept == kept


def test_overwrite_replaces_a_run(tmp_path):
    runner.train(tiny_config(epochs_ft=0), str(tmp_path))
    result = runner.train(tiny_config(epochs_fe=2, epochs_ft=0), str(tmp_path), overwrite=True)
    assert result.history.epochs == [1, 2]
    assert History.load(str(tmp_path / "history.json")).epochs == [1, 2]


def test_same_seed_gives_the_same_history_and_model(finished, tmp_path):
    """Determinism on CPU: a second run with the same config repeats the first bit for bit."""
    _, first = finished
    again = runner.train(tiny_config(), str(tmp_path))
    assert again.history.records == first.history.records
    for a, b in zip(first.model.weights, again.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


NAN_CASES = {
    # Targets NaN: the loss is NaN on any CPU.
    "targets": r"the loss became nan in phase 'fe', epoch 2, batch 0.*checkpoint of epoch 1.*--phase=fe --overwrite",
    # Images NaN: where TF fuses Dense + ReLU (oneDNN CPUs) the fused ReLU maps NaN to 0, so the
    # loss stays finite while the weights turn NaN; either way the phase must stop at epoch 2.
    "images": r"became (nan|NaN).* in phase 'fe', epoch 2.*checkpoint of epoch 1.*NaN or infinite values",
}


@pytest.mark.parametrize("poison", list(NAN_CASES))
def test_nan_stops_the_phase_and_keeps_the_last_good_checkpoint(poison, tmp_path):
    """Images or targets turn to NaN from epoch 2 on: the phase stops with a clear error, the
    checkpoint of epoch 1 stays the last, and no diverged model is saved."""
    import tensorflow as tf

    from tl_keras.data.bundle import DataBundle
    from tl_keras.data.sources import load_data
    from tl_keras.training import checkpoint

    cfg = tiny_config(epochs_fe=3, epochs_ft=1, checkpoint_every=0)
    good = load_data(cfg, workdir=str(tmp_path))

    def poisoned(epoch):
        scale = tf.where(epoch >= 1, tf.constant(float("nan")), tf.constant(1.0))
        if poison == "images":
            return good.make_train_epoch(epoch).map(lambda x, y: (x * scale, y))
        return good.make_train_epoch(epoch).map(lambda x, y: (x, y * scale))

    data = DataBundle(
        poisoned, good.val, good.class_names, good.num_train, good.num_val, good.batch_size
    )
    with pytest.raises(TrainingError, match=NAN_CASES[poison]):
        runner.train(cfg, str(tmp_path), data=data)
    ckpt = checkpoint.latest(str(tmp_path))
    assert (ckpt.phase, ckpt.epoch) == ("fe", 1)
    assert all(np.isfinite(w).all() for w in ckpt.load_model().get_weights())
    assert json.loads((tmp_path / "run.json").read_text())["phases"] == {}
    assert not (tmp_path / "fe" / "model.keras").exists()


def test_guard_catches_nan_weights_when_the_loss_is_finite():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")], name="m")
    model.get_layer("d").bias.assign([float("nan")])
    guard = callbacks.NonFiniteGuard()
    guard.set_model(model)
    guard.on_epoch_begin(4)
    guard.on_train_batch_end(0, {"loss": 0.5})
    assert guard.bad is None
    guard.on_epoch_end(4)
    assert guard.bad == (
        5,
        None,
        "the weights became NaN or infinite (m/d/bias) although the loss stayed finite",
        "nan",
    )
    assert model.stop_training


HEAD_ONLY_WARNING = "training only the head learns what random features carry"


def test_a_random_base_warns_of_head_only_training_only_when_the_head_trains_first(
    tmp_path, caplog
):
    """A random base's first phase training only the head earns the warning, once; a scratch
    run (compare's `scratch`: weights none, everything trains from the first step) does not:
    the sentence would be false there (it showed in notebooks 4 and 9)."""
    import logging

    from tl_keras.training.compare import strategy_configs

    base = tiny_config(stages="fe:none:1")
    scratch = strategy_configs(base, ["scratch"])["scratch"]
    assert scratch.weights == "none" and scratch.stages.split(":")[1] == "all"
    with caplog.at_level(logging.INFO, logger="tl_keras"):
        runner.train(scratch, str(tmp_path / "scratch"))
    said = [r for r in caplog.records if "weights=none" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO  # the calibration, at INFO only
    assert HEAD_ONLY_WARNING not in said[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tl_keras"):
        runner.train(base, str(tmp_path / "fe"))
    warned = [r for r in caplog.records if HEAD_ONLY_WARNING in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
