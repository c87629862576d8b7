"""The progress lines of long one-off passes: quiet when short, counted when long."""

import functools
import logging

from tl_keras import progress as progress_lib
from tl_keras.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "tl_keras"]


def test_a_short_pass_prints_nothing(caplog, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_lib.time, "monotonic", clock)
    with caplog.at_level(logging.INFO, logger="tl_keras"), Progress("decode check", 10) as p:
        for _ in range(10):
            clock.now += 0.1
            p.update()
    assert _lines(caplog) == []


def test_a_long_pass_logs_counts_every_interval_and_at_the_end(caplog, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_lib.time, "monotonic", clock)
    with (
        caplog.at_level(logging.INFO, logger="tl_keras"),
        Progress("decode check", 3439, every_s=5.0, quiet_s=2.0) as p,
    ):
        for _ in range(34):
            clock.now += 1.0
            p.update(100)
        clock.now += 1.0
        p.update(39)
    lines = _lines(caplog)
    assert lines[0] == "[decode check] 500 / 3,439 images (15%), 5.0 s"
    assert lines[-1] == "[decode check] 3,439 / 3,439 images (100%) in 35.0 s"
    # every 5 s up to 30 s, then the final line: the tick due at 35 s, when the pass reached
    # its total, is the final line's (it said 100% twice before)
    assert len(lines) == 7
    assert sum("(100%)" in line for line in lines) == 1


def test_unknown_total_and_a_failed_pass(caplog, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_lib.time, "monotonic", clock)
    with caplog.at_level(logging.INFO, logger="tl_keras"):
        p = Progress("feature pass", unit="batches", quiet_s=0.0)
        clock.now += 3.0
        p.update(7)
        p.close()
        try:
            with Progress("read", 5, quiet_s=0.0) as q:
                q.update(1)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    assert _lines(caplog) == ["[feature pass] 7 batches in 3.0 s"]  # the failed read: silent


# --- progress without asking: where the lines go ----------------------------------------------------
def test_say_prints_when_the_program_configured_no_logging(capsys):
    bare = logging.getLogger("tl_keras_test.bare")
    bare.propagate = False  # no handler anywhere on its way, no level set: nothing configured
    assert not progress_lib.logging_configured(bare)
    progress_lib.say("[fe] epoch %d (%d/%d)", 3, 1, 5, logger=bare)
    assert capsys.readouterr().out == "[fe] epoch 3 (1/5)\n"


def test_say_logs_when_the_program_configured_logging(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="tl_keras"):
        assert progress_lib.logging_configured()
        progress_lib.say("[fe] epoch %d", 1)
    assert _lines(caplog) == ["[fe] epoch 1"] and capsys.readouterr().out == ""


def test_the_feature_pass_counts_the_images_it_runs_through(caplog, monkeypatch):
    import types

    import keras
    import numpy as np
    import tensorflow as tf

    from tl_keras.training import features

    monkeypatch.setattr(features, "Progress", functools.partial(Progress, quiet_s=0.0))
    extractor = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    data = types.SimpleNamespace(
        train_in_order=tf.data.Dataset.from_tensor_slices(np.zeros((45, 4), np.float32)).batch(8),
        val=None,
        num_train=45,
        num_val=0,
    )
    with caplog.at_level(logging.INFO, logger="tl_keras"):
        out = features._feature_pass(extractor, data, None)
    assert out["train"].shape == (45, 2) and out["counts"] == {"train": 45, "val": 0}
    assert _lines(caplog)[-1].startswith("[feature pass] 45 / 45 images (100%) in ")


BARE_TRAIN = """
import logging, sys
sys.path.insert(0, "tests")
from conftest import tiny_config
from tl_keras import train
result = train(tiny_config(progress="auto"), sys.argv[1])  # no logging set-up, stdout not a tty
root, package = logging.getLogger(), logging.getLogger("tl_keras")
print("ROOT", root.handlers, logging.getLevelName(root.level))
print("PACKAGE", package.handlers, logging.getLevelName(package.level), package.propagate)
"""


def test_train_in_a_bare_program_shows_its_epochs_and_configures_no_logger(tmp_path):
    """What a fresh notebook kernel or script gets from `train()` without any set-up call: one
    line per epoch (phase, epoch k/n, metrics, learning rate), and its logging left alone."""
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-c", BARE_TRAIN, str(tmp_path / "run")],
        cwd=REPO,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    fe = next(line for line in out.splitlines() if line.startswith("[fe] epoch 1 (1/1)"))
    ft = next(line for line in out.splitlines() if line.startswith("[ft] epoch 2 (1/1)"))
    for line in (fe, ft):
        assert " - loss " in line and " - val_accuracy " in line and " - lr " in line
    assert fe.endswith("lr 1.00e-03") and ft.endswith("lr 1.00e-04")
    assert "[fe] unfreeze=none:" in out and "[ft] unfreeze=blocks:2:" in out  # what trains
    assert "ROOT [] WARNING" in out  # the root logger: no handler added, level untouched
    assert "PACKAGE [] NOTSET True" in out  # the package's own logger untouched too


def test_the_terminal_bar_carries_the_phase_its_epoch_and_the_learning_rate(tmp_path, capsys):
    from conftest import tiny_config

    from tl_keras import train

    train(tiny_config(progress="bar", epochs_ft=0), str(tmp_path))
    out = capsys.readouterr().out
    assert "[fe] epoch 1 (1/1) - lr 1.00e-03" in out
    bar = out.split("[fe] epoch 1 (1/1) - lr 1.00e-03", 1)[1]
    assert "accuracy:" in bar and "val_loss:" in bar  # Keras's bar, with the epoch's metrics
    assert "Epoch 1/1" not in out  # Keras's own header, ambiguous across phases, is replaced


def test_a_pass_that_reaches_its_total_on_a_tick_says_100_percent_once(caplog, monkeypatch):
    # The feature pass of a walkthrough: its last batch came due for a progress line, and the
    # final line followed with the same count ("800 / 800 images (100%)" printed twice).
    clock = FakeClock()
    monkeypatch.setattr(progress_lib.time, "monotonic", clock)
    with (
        caplog.at_level(logging.INFO, logger="tl_keras"),
        Progress("feature pass", 800, every_s=5.0, quiet_s=2.0) as p,
    ):
        clock.now += 5.3
        p.update(800)
    assert _lines(caplog) == ["[feature pass] 800 / 800 images (100%) in 5.3 s"]
