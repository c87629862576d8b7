"""Augmentation: every preset works, runs on training batches only, and is a pure function of
(seed, epoch), so the same epoch gives the same augmented batches in any process."""

import hashlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from data_fixtures import batches, make_folder, tiny_data_config

from tl_keras.data import augment
from tl_keras.data.sources import load_data

# Each preset, and each per-batch option on top of one, as config overrides.
SETTINGS = {
    "none": dict(augment="none"),
    "light": dict(augment="light"),
    "strong": dict(augment="strong"),
    "mixup": dict(augment="light", mixup=0.4),
    "cutmix": dict(augment="none", cutmix=1.0),
    "mixup+cutmix+smoothing": dict(augment="light", mixup=0.2, cutmix=1.0, label_smoothing=0.1),
}
EVERYTHING = dict(augment="strong", mixup=0.2, cutmix=1.0, label_smoothing=0.1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("aug"), {"ant": 5, "bee": 5, "cat": 5})


def bundle(folder, **overrides):
    return load_data(tiny_data_config(folder, val_fraction=0.2, **overrides))


def digest(ds) -> str:
    h = hashlib.sha256()
    for x, y in batches(ds):
        h.update(x.tobytes())
        h.update(y.tobytes())
    return h.hexdigest()


def test_every_preset_is_registered_and_runs():
    assert augment.names() == ["none", "light", "strong"]
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (32, 32, 3)), tf.uint8)
    key = tf.constant([1, 2], tf.int64)
    for name in augment.names():
        fn = augment.get(name).build(32)
        if name == "none":
            assert fn is None
            continue
        out = fn(image, key).numpy()
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255 and not np.array_equal(out, image.numpy())
        np.testing.assert_array_equal(out, fn(image, key).numpy())
        assert not np.array_equal(out, fn(image, key + 1).numpy())


@pytest.mark.parametrize("name", SETTINGS)
def test_same_seed_and_epoch_give_bitwise_identical_batches(folder, name):
    """Epoch 1 alone (as a phase started in a new process sees it) equals epoch 1 after epoch 0
    (an uninterrupted run), from two fresh bundles; another epoch is augmented differently."""
    resumed = bundle(folder, **SETTINGS[name])
    uninterrupted = bundle(folder, **SETTINGS[name])
    epoch1 = batches(resumed.train_epochs(1, 1))
    both = batches(uninterrupted.train_epochs(0, 2))
    steps = resumed.steps_per_epoch
    assert len(both) == 2 * steps and len(epoch1) == steps
    for (xa, ya), (xb, yb) in zip(epoch1, both[steps:], strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    again = batches(resumed.train_epochs(1, 1))  # the same bundle, iterated again
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(epoch1, again, strict=True))
    assert not np.array_equal(both[0][0], epoch1[0][0])


def test_batches_are_identical_in_a_new_process(folder):
    """No state hides anywhere (no Keras global SeedGenerator, no per-process seed)."""
    here = {name: digest(bundle(folder, **s).train_epochs(2, 1)) for name, s in SETTINGS.items()}
    script = (
        "import hashlib, sys; sys.path.insert(0, 'tests')\n"
        "from test_augment import SETTINGS, bundle, digest\n"
        f"for name, s in SETTINGS.items(): print(name, digest(bundle({str(folder)!r}, **s)"
        ".train_epochs(2, 1)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    there = dict(line.split() for line in proc.stdout.splitlines() if line.split()[0] in SETTINGS)
    assert there == here


def test_validation_is_never_augmented(folder):
    plain, loud = bundle(folder), bundle(folder, **EVERYTHING)
    xa = np.concatenate([x for x, _ in batches(loud.train)])
    xp = np.concatenate([x for x, _ in batches(plain.train)])
    assert not np.array_equal(xa, xp)
    # Validation batches: bitwise the unaugmented images, with hard one-hot labels.
    for (xv, yv), (xq, yq) in zip(batches(loud.val), batches(plain.val), strict=True):
        np.testing.assert_array_equal(xv, xq)
        np.testing.assert_array_equal(yv, yq)
        assert set(np.unique(yv)) == {0.0, 1.0}


def test_test_split_is_never_augmented(tmp_path):
    make_folder(tmp_path / "train", ["ant", "bee"])
    make_folder(tmp_path / "test", ["ant", "bee"])
    loud = load_data(tiny_data_config(tmp_path, **EVERYTHING))
    quiet = load_data(tiny_data_config(tmp_path))
    assert loud.num_test == quiet.num_test == 12
    for (xa, ya), (xb, yb) in zip(batches(loud.test), batches(quiet.test), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_label_smoothing_and_mixing_targets(folder):
    smooth = bundle(folder, label_smoothing=0.1)
    y = np.concatenate([y for _, y in batches(smooth.train)])
    np.testing.assert_allclose(np.sort(np.unique(y)), [0.1 / 3, 0.9 + 0.1 / 3], rtol=1e-6)
    mixed = bundle(folder, mixup=0.4)
    y = np.concatenate([y for _, y in batches(mixed.train)])
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    assert ((y > 0.01) & (y < 0.99)).any()  # some targets really are mixtures


def test_light_warp_geometry():
    """The fused warp: a flip is an exact mirror, a quarter turn an exact rot90, zoom 1 identity,
    and both together are the turned image mirrored."""
    image = tf.constant(np.random.default_rng(1).uniform(0, 255, (9, 9, 3)), tf.float32)
    same = augment.affine(image, angle=0.0, zoom=1.0, flip=1.0)
    np.testing.assert_allclose(same, image, atol=1e-3)
    mirrored = augment.affine(image, angle=0.0, zoom=1.0, flip=-1.0)
    np.testing.assert_allclose(mirrored, image[:, ::-1], atol=1e-3)
    turned = augment.affine(image, angle=np.pi / 2, zoom=1.0, flip=1.0)
    np.testing.assert_allclose(turned, np.rot90(image.numpy(), k=1), atol=1e-3)
    zoomed = augment.affine(image, angle=0.0, zoom=3.0, flip=1.0)
    np.testing.assert_allclose(zoomed[4, 4], image[4, 4], atol=1e-3)  # the centre stays
    nearest = augment.affine(image, angle=np.pi / 2, zoom=1.0, flip=-1.0, interpolation="NEAREST")
    np.testing.assert_array_equal(nearest, np.rot90(image.numpy(), k=1)[:, ::-1])


def test_strong_uses_keras_rand_augment_ops_without_advancing_their_seed_generators():
    seeds = augment.fold_in_seeds_class()()
    ops = augment.rand_augment_ops(seeds)
    ra = keras.layers.RandAugment(value_range=(0, 255))
    assert [type(op) for op in ops] == [type(getattr(ra, n)) for n in ra._AUGMENT_LAYERS]
    own = [op.generator.state.numpy().copy() for op in ops if hasattr(op, "generator")]
    image = tf.constant(np.random.default_rng(2).uniform(0, 255, (16, 16, 3)), tf.float32)
    outs = []
    for op in ops:
        seeds.reset(tf.constant([3, 4], tf.int64))
        outs.append(op(image).numpy())
        seeds.reset(tf.constant([3, 4], tf.int64))
        np.testing.assert_array_equal(outs[-1], op(image).numpy())  # keyed, not stateful
    after = [op.generator.state.numpy() for op in ops if hasattr(op, "generator")]
    assert len(own) >= 9 and all(np.array_equal(a, b) for a, b in zip(own, after, strict=True))
    assert sum(not np.array_equal(o, image.numpy()) for o in outs) >= 9


def test_mixers_are_keyed_not_stateful():
    fn = augment.batch_fn(mixup=0.2, cutmix=1.0, label_smoothing=0.0)
    images = tf.constant(np.random.default_rng(3).uniform(0, 255, (4, 8, 8, 3)), tf.float32)
    labels = tf.one_hot([0, 1, 2, 0], 3)
    key = tf.constant([5, 6], tf.int64)
    x1, y1 = fn(images, labels, key)
    x2, y2 = fn(images, labels, key)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert augment.batch_fn(mixup=0.0, cutmix=0.0, label_smoothing=0.0) is None


def test_nearest_warp_gather_matches_the_tf_kernel():
    """light's warp runs as a gather of whole pixels; it must give ImageProjectiveTransformV3's
    NEAREST / REFLECT result, rotations, zooms in and out (reflected borders) and mirrors."""

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)] + [tf.TensorSpec([])] * 3
    )
    def kernel(image, angle, zoom, flip):  # unknown height and width: the TF kernel itself
        return augment.affine(image, angle=angle, zoom=zoom, flip=flip, interpolation="NEAREST")

    rng = np.random.default_rng(3)
    image = tf.constant(rng.integers(0, 256, (37, 29, 3)), tf.uint8)
    for _ in range(40):
        angle, zoom, flip = rng.uniform(-0.6, 0.6), rng.uniform(0.6, 1.4), rng.choice([-1.0, 1.0])
        fast = augment.affine(image, angle=angle, zoom=zoom, flip=flip, interpolation="NEAREST")
        assert fast.dtype == tf.uint8 and fast.shape == image.shape
        differ = np.any(fast.numpy() != kernel(image, angle, zoom, flip).numpy(), axis=-1)
        # Only a coordinate within float rounding of a half-pixel can round the other way.
        assert differ.mean() <= 0.002, (angle, zoom, flip, differ.sum())
