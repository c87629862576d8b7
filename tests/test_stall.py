"""Issue 24's end-of-phase stall stays removed: what the package iterates runs without tf.data's
autotuning thread, whose lost wake-up made deleting an iterator wait up to 60 s
(`tl_keras.data.images.untuned`; the gaps themselves: benchmarks/bench_stall.py)."""

import sys

import numpy as np
from conftest import REPO

from tl_keras.data.images import untuned
from tl_keras.data.sources import from_arrays
from tl_keras.training import features

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_stall  # noqa: E402


def _bundle(make_config):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    y = np.arange(24) % 3
    return from_arrays(make_config(image_size=16, batch_size=8, val_fraction=0.25), x, y)


def _untuned(ds) -> bool:
    return ds.options().autotune.enabled is False  # None: not set, so on (tf.data's default)


def test_training_and_evaluation_datasets_run_without_the_autotuning_thread(make_config):
    data = _bundle(make_config)
    assert _untuned(data.train_epochs(0, 3))  # the one iterator that lives a whole phase
    assert _untuned(data.val)  # Keras iterates it again every epoch
    assert _untuned(data.train_in_order)  # the feature pass and the doctor read it
    augmented = data.with_training(augment="light")
    assert _untuned(augmented.train_epochs(1, 2))
    cached = features.feature_bundle(  # what fe fits on: the head over cached features
        data,
        {
            "train": np.zeros((data.num_train, 4), np.float32),
            "val": np.zeros((data.num_val, 4), np.float32),
        },
    )
    assert _untuned(cached.train_epochs(0, 2)) and _untuned(cached.val)


def test_untuned_keeps_the_elements():
    import tensorflow as tf

    ds = tf.data.Dataset.range(10).map(lambda i: i * 2, num_parallel_calls=tf.data.AUTOTUNE)
    assert list(untuned(ds.prefetch(tf.data.AUTOTUNE)).as_numpy_iterator()) == list(range(0, 20, 2))


def test_bench_gap_is_from_a_phase_last_line_to_the_next():
    lines = [
        (0.0, "12:00:00 [fe] epoch 1 (1/2) - 0.3s - loss 1.0"),
        (1.0, "12:00:01 [fe] epoch 2 (2/2) - 0.3s - loss 0.9"),
        (1.5, "12:00:01 [ft] unfreeze=all: ..."),
        (9.0, "12:00:09 [ft] epoch 3 (1/5) - 7.0s - loss 0.8"),
        (9.1, "12:00:09 time budget: epoch 3 took 7.0s; ... so the phase stops here"),
        (31.1, "12:00:31 [calibration] temperature 0.9; ..."),
    ]
    # The process's threads, sampled: busy after fe; after the guard's stop, idle from 9.3 s to
    # 30.9 s, then busy (calibration).
    samples = [(t / 10, True) for t in range(0, 93)] + [(t / 10, False) for t in range(93, 310)]
    samples += [(t / 10, True) for t in range(310, 320)]
    gaps = bench_stall.phase_gaps(lines, samples)
    assert gaps["fe"]["gap_s"] == 0.5 and gaps["fe"]["next_line"].endswith("unfreeze=all: ...")
    assert gaps["fe"]["idle_s"] == 0.0
    assert gaps["ft"] == {
        "gap_s": 22.0,
        "idle_s": 21.6,
        "next_line": "12:00:31 [calibration] temperature 0.9; ...",
        "guard_stopped": True,
    }


def test_evaluation_datasets_know_their_length(make_config):
    """Keras then knows the validation batches from the start, instead of warning "Your input
    ran out of data" after the first epoch of a phase on images."""
    data = _bundle(make_config)
    batches = -(-data.num_val // 8)
    assert int(data.val.cardinality()) == batches == len(list(data.val))
    assert int(data.train_in_order.cardinality()) == -(-data.num_train // 8)
