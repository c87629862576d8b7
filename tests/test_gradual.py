"""Beyond two phases, on a real (tiny) model: gradual unfreezing, discriminative learning rates
and LR schedules as the runner applies them. The model is the test backbone `tiny`; one test
checks the grouped rates on the real MobileNet's 14 blocks."""

import dataclasses
import json
import os
import pathlib
import shutil

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tl_keras.data.sources import load_data
from tl_keras.model.classifier import get_base
from tl_keras.recipe import LRSchedule, Phase
from tl_keras.training import optim, runner, start
from tl_keras.training.history import History
from tl_keras.training.schedules import lr_at_epoch

STAGES = "fe:none:1,ft1:blocks:1:1,ft2:blocks:3:1,ft3:all:1"
BLOCKS = ["stem", "block_1", "block_2", "block_3", "block_4"]  # tiny's, input to output
BACKBONE = "tiny"


def run_names():
    return ["fe", "ft1", "ft2", "ft3"]


class ChangedLayers(keras.callbacks.Callback):
    """Records, per fit, which base layers' weights changed (bitwise)."""

    def __init__(self):
        super().__init__()
        self.changed: list[set[str]] = []

    def on_train_begin(self, logs=None):
        self._before = {
            layer.name: [w.numpy().copy() for w in layer.weights]
            for layer in get_base(self.model).layers
        }

    def on_train_end(self, logs=None):
        self.changed.append(
            {
                layer.name
                for layer in get_base(self.model).layers
                if any(
                    not np.array_equal(a, w.numpy())
                    for a, w in zip(self._before[layer.name], layer.weights, strict=True)
                )
            }
        )


@pytest.fixture(scope="module")
def gradual(tmp_path_factory):
    """A 4-stage gradual-unfreezing run, one epoch per stage, lr / (10 * 2**j) per stage."""
    workdir = str(tmp_path_factory.mktemp("gradual"))
    probe = ChangedLayers()
    cfg = tiny_config(stages=STAGES, stage_lr_decay=2.0)
    result = runner.train(cfg, workdir, callbacks=[probe])
    return workdir, result, probe


def _summary(workdir, phase):
    return json.loads(pathlib.Path(workdir, phase, "summary.json").read_text())


def test_stages_are_stitched_with_every_boundary(gradual):
    workdir, result, _ = gradual
    history = History.load(os.path.join(workdir, "history.json"))
    assert [(s.phase, s.first, s.last) for s in history.spans()] == [
        ("fe", 1, 1),
        ("ft1", 2, 2),
        ("ft2", 3, 3),
        ("ft3", 4, 4),
    ]
    assert history.boundaries() == [1.5, 2.5, 3.5]
    assert history.metric("lr") == pytest.approx([1e-3, 1e-4, 5e-5, 2.5e-5])
    run = json.loads(pathlib.Path(workdir, "run.json").read_text())
    assert list(run["phases"]) == ["fe", "ft1", "ft2", "ft3"]
    assert [p["name"] for p in run["schedule"]] == ["fe", "ft1", "ft2", "ft3"]


def test_each_stage_trains_exactly_its_blocks(gradual):
    workdir, result, probe = gradual
    blocks = [_summary(workdir, p)["trainability"]["unfrozen_blocks"] for p in run_names()]
    assert blocks[0] == []
    assert blocks[1] == BLOCKS[-1:]
    assert blocks[2] == BLOCKS[-3:]
    assert blocks[3] == BLOCKS
    params = [_summary(workdir, p)["trainability"]["trainable_params"] for p in run_names()]
    assert params == sorted(set(params)), params  # strictly more trains at each stage
    assert {
        _summary(workdir, p)["trainability"]["frozen_batchnorm_layers"] for p in run_names()
    } == {5}  # every BatchNorm layer of tiny's base, in every stage
    # Bitwise: only the stage's trainable base layers changed, and every one of them did.
    for phase_result, changed in zip(result.phases, probe.changed, strict=True):
        trainable = set(phase_result.report.trainable_base_layers)
        assert changed == trainable, phase_result.phase.name
        assert not any("bn" in name for name in changed)


def test_a_stage_runs_alone_from_the_previous_stage(gradual, tmp_path):
    """--phase=NAME works for stage names: ft2 alone continues from what ft1 saved."""
    workdir, _, _ = gradual
    copy = tmp_path / "again"
    shutil.copytree(workdir, copy)
    cfg = tiny_config(stages=STAGES, stage_lr_decay=2.0)
    runner.train(cfg, str(copy), phase="ft2", overwrite=True)
    a = History.load(os.path.join(workdir, "history.json"))
    b = History.load(str(copy / "history.json"))
    # ft2 was redone from ft1's model and ft3, which came after it, dropped.
    assert [(r["epoch"], r["phase"]) for r in b.records] == [(1, "fe"), (2, "ft1"), (3, "ft2")]
    assert list(json.loads((copy / "run.json").read_text())["phases"]) == ["fe", "ft1", "ft2"]
    for key in ("loss", "val_loss", "lr"):
        assert a.records[2][key] == pytest.approx(b.records[2][key], rel=1e-5, abs=1e-6), key


# --- discriminative learning rates and schedules in a real phase ---------------------------------
@pytest.fixture(scope="module")
def one_step(tmp_path_factory, shapes_dir):
    """A calibrated random `tiny` model and data of exactly one batch per epoch."""
    cfg = tiny_config(data_dir=shapes_dir, batch_size=64, dropout=0.0)
    data = load_data(cfg)
    assert data.steps_per_epoch == 1
    keras.utils.set_random_seed(0)
    model = start.build_initial_model(cfg.model, data)
    return model, data, model.get_weights()


def _deltas(model, data, phase, initial):
    """How far each trainable variable moved in one phase started from `initial`."""
    model.set_weights(initial)
    before = {v.path: v.numpy() for v in model.weights}
    runner.run_phase(model, phase, data, backbone=BACKBONE, progress="lines")
    return {v.path: v.numpy() - before[v.path] for v in model.trainable_variables}


def test_layer_decay_gives_each_variable_its_own_step_size(one_step):
    model, data, initial = one_step
    phase = Phase("ft", "blocks:3", 1, 1e-3)
    plain = _deltas(model, data, phase, initial)
    decayed = _deltas(model, data, dataclasses.replace(phase, layer_decay=0.5), initial)
    multipliers = optim.discriminative_multipliers(model, BACKBONE, 0.5)
    assert set(multipliers) == set(plain) == set(decayed)
    by_prefix = {  # the convolutions of the top 3 blocks (their BatchNorm stays frozen)
        "block_4_conv": 0.5,
        "block_3_conv": 0.25,
        "block_2_conv": 0.125,
        "head_dense": 1.0,
        "predictions": 1.0,
    }
    assert {p.split("/")[0] for p in plain} == set(by_prefix)
    for path, delta in plain.items():
        expected = by_prefix[path.split("/")[0]]
        assert multipliers[path] == expected
        assert np.abs(delta).max() > 1e-5, path  # the variable really moved
        # Adam's step is linear in the learning rate: each variable moved `expected` times as far.
        # (atol: the deltas are differences of float32 weights, a few ulps of |w| < 1 apart.)
        np.testing.assert_allclose(decayed[path], expected * delta, rtol=1e-4, atol=1e-7)


def test_cosine_warmup_rates_recorded_per_epoch(one_step, shapes_dir):
    model, _, initial = one_step
    data = load_data(tiny_config(data_dir=shapes_dir, batch_size=8))  # several steps per epoch
    model.set_weights(initial)
    schedule = LRSchedule("cosine", warmup_epochs=1, min_lr_ratio=0.1)
    phase = Phase("fe", "none", 4, 1e-2, lr_schedule=schedule)
    result = runner.run_phase(model, phase, data, backbone=BACKBONE, progress="lines")
    expected = [
        lr_at_epoch(schedule, e, base_lr=1e-2, steps_per_epoch=data.steps_per_epoch, epochs=4)
        for e in range(4)
    ]
    assert expected[0] == 0.0 and expected[1] == pytest.approx(1e-2)
    assert result.history.metric("lr") == pytest.approx(expected, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize(
    "schedule, lr, expected",
    [
        (LRSchedule("step", step_every=1, gamma=0.5), 1e-2, [1e-2, 5e-3, 2.5e-3]),
        # A rate too small to move any weight: val_loss stays, so each epoch is a plateau.
        (LRSchedule("plateau", plateau_patience=1, plateau_factor=0.5), 1e-30, None),
    ],
    ids=["step", "plateau"],
)
def test_step_and_plateau_rates_recorded_per_epoch(one_step, schedule, lr, expected):
    model, data, initial = one_step
    model.set_weights(initial)
    phase = Phase("fe", "none", 3, lr, lr_schedule=schedule)
    result = runner.run_phase(model, phase, data, backbone=BACKBONE, progress="lines")
    if expected is None:
        expected = [
            lr_at_epoch(
                schedule,
                e,
                base_lr=lr,
                steps_per_epoch=1,
                epochs=3,
                monitor_values=result.history.metric("val_loss"),
            )
            for e in range(3)
        ]
        assert expected == pytest.approx([1e-30, 1e-30, 5e-31])
    assert result.history.metric("lr") == pytest.approx(expected, rel=1e-5, abs=0)


def test_curves_show_the_lr_panel(gradual):
    workdir, _, _ = gradual
    assert pathlib.Path(workdir, "curves.png").stat().st_size > 10_000


def test_saved_model_with_lr_multipliers_loads(tmp_path):
    """A phase compiled with per-variable rates saves a `.keras` file the runner loads back."""
    cfg = tiny_config(epochs_fe=1, epochs_ft=1, layer_decay=0.5)
    result = runner.train(cfg, str(tmp_path))
    assert type(result.model.optimizer).__name__ == "LRMultiplierAdam"
    loaded = keras.models.load_model(str(tmp_path / "ft" / "model.keras"))
    assert loaded.optimizer.lr_multipliers == result.model.optimizer.lr_multipliers


def test_layer_decay_groups_give_five_rates_three_times_apart(tmp_path):
    """Exercise (c)'s schedule on the real MobileNet: head 1, then 4 runs of blocks at 1/3,
    1/9, 1/27, 1/81 down to the stem; every trainable variable of a run at its run's rate."""
    from tl_keras.model.backbones import get, layer_infos
    from tl_keras.model.classifier import build_model, set_trainable
    from tl_keras.recipe import block_order, group_blocks

    model = build_model("mobilenet", 3, image_size=32, weights=None, alpha=0.25)
    set_trainable(model, "mobilenet", "all")
    multipliers = optim.discriminative_multipliers(model, "mobilenet", 1 / 3, groups=4)
    assert sorted({round(m, 9) for m in multipliers.values()}) == [
        round(3.0**-k, 9) for k in (4, 3, 2, 1, 0)
    ]
    infos = layer_infos(get("mobilenet"), get_base(model))
    runs = group_blocks(block_order(infos), 4)
    top_run = {info.name for info in infos if info.block in runs[-1]}
    in_top = {p: m for p, m in multipliers.items() if p.split("/")[-2] in top_run}
    assert in_top and all(m == pytest.approx(1 / 3) for m in in_top.values())


def test_too_many_layer_decay_groups_are_refused_before_anything_trains(tmp_path):
    from tl_keras.errors import ConfigError

    cfg = tiny_config(layer_decay=0.5, layer_decay_groups=99)
    with pytest.raises(ConfigError, match="layer_decay_groups=99 is not allowed: the base has 5"):
        runner.train(cfg, str(tmp_path))
    assert not os.path.exists(tmp_path / "run.json") and not os.path.exists(tmp_path / "fe")
