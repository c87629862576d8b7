"""The backbone registry: every entry builds, has blocks, and loads local weights correctly."""

import warnings

import h5py
import keras
import numpy as np
import pytest
from conftest import MOBILENET_025_NOTOP_SHA256, sha256

from tl_keras import recipe
from tl_keras.errors import BackboneError
from tl_keras.model import backbones

# One test case per registry entry (image size 32 px, the minimum Keras accepts, random weights).
# Adding a backbone without adding it here fails test_every_registry_entry_has_a_test_case.
CASES = {
    **{f"efficientnet_b{i}": {} for i in range(8)},
    **{f"efficientnet_v2_{v}": {} for v in ("b0", "b1", "b2", "b3", "s", "m", "l")},
    "efficientnet_lite0": {},
    "mobilenet": {"alpha": 0.25},
    "mobilenet_v2": {"alpha": 0.35},
    "mobilenet_v3_small": {"alpha": 0.75},
    "mobilenet_v3_large": {},
    "tiny": {},  # the test backbone: registered, not listed
}


def test_every_registry_entry_has_a_test_case():
    assert set(CASES) == set(backbones.names()) | set(backbones.UNLISTED)


@pytest.fixture
def zero_kernels(monkeypatch):
    """Zeros for every VarianceScaling draw (Glorot, He, Lecun: every conv and dense kernel of these
    bases): the tests using it check structure, not values, and drawing the random kernels was
    most of a large base's build (EfficientNetV2-M, 3.4 CPU-s with them, 1.2 without)."""
    monkeypatch.setattr(
        keras.initializers.VarianceScaling,
        "__call__",
        lambda self, shape, dtype=None: keras.ops.zeros(shape, dtype=dtype),
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_registry_entry_builds_with_blocks(name, zero_kernels):
    spec = backbones.get(name)
    # Every layer built as in a real build, its variables left to Keras to make when first read
    # (a stateless scope: each read draws the initializer's value, zeros for the kernels here):
    # making a TensorFlow variable was about 45% of a large base's build (EfficientNetV2-L 2.4
    # CPU-s with them, 1.4 without), and these checks read the structure and one forward pass.
    with keras.StatelessScope():
        base = backbones.build_base(spec, image_size=32, weights=None, **CASES[name])
    try:
        assert base.name == "backbone"
        out = base(np.zeros((1, 32, 32, 3), np.float32))
        assert out.shape[0] == 1 and out.shape[-1] > 0
        infos = backbones.layer_infos(spec, base)
        order = recipe.block_order(infos)
        assert order[0] == "stem" and len(order) >= 5
        # Every layer with trainable weights belongs to a block, and blocks are contiguous.
        assert all(i.block is not None for i in infos if base.get_layer(i.name).trainable_weights)
        seen, last = set(), None
        for i in infos:
            if i.block != last and i.block is not None:
                assert i.block not in seen, f"block {i.block} is split in two"
                seen.add(i.block)
                last = i.block
        # The top block really is the top: unfreezing 1 block trains the last weighted layer.
        top = recipe.trainable_layers(infos, "blocks:1", bn_policy="train")
        assert [i.name for i in infos if i.has_weights][-1] in top
    finally:
        keras.backend.clear_session()


def test_preprocessing_kinds():
    assert backbones.get("mobilenet").preprocessing == backbones.SCALE_MINUS1_1
    assert backbones.get("mobilenet_v2").preprocessing == backbones.SCALE_MINUS1_1
    for name in (
        "efficientnet_b0",
        "efficientnet_v2_s",
        "mobilenet_v3_small",
        "efficientnet_lite0",
    ):
        assert backbones.get(name).preprocessing == backbones.BUILTIN


@pytest.mark.parametrize(
    "alias", ["EfficientNetB0", "efficientnet-b0", "EFFICIENTNET_B0", "efficientnetb0"]
)
def test_aliases(alias):
    assert backbones.get(alias).name == "efficientnet_b0"


@pytest.mark.parametrize("alias", ["EfficientNet-Lite0", "efficientnetlite0", "EfficientNetLite0"])
def test_lite0_aliases(alias):
    assert backbones.get(alias).name == "efficientnet_lite0"


def test_lite0_blocks_are_its_mbconv_blocks_with_stem_and_top():
    """Like the EfficientNet entries: one block per MBConv block (block1a..block7a), stem, top."""
    from tl_keras.model import efficientnet_lite

    spec = backbones.get("efficientnet_lite0")
    base = backbones.build_base(spec, image_size=32, weights=None)
    order = recipe.block_order(backbones.layer_infos(spec, base))
    assert order == ["stem", *efficientnet_lite.block_names(), "top"]
    assert len(efficientnet_lite.block_names()) == 16
    top = recipe.trainable_layers(backbones.layer_infos(spec, base), "blocks:1")
    assert "top_conv" in top and "top_bn" not in top and "block7a_project_conv" not in top


def test_unknown_backbone_lists_names():
    with pytest.raises(
        BackboneError,
        match=r"unknown backbone 'efficentnet_b0' \(did you mean 'efficientnet_b0'\?\).*mobilenet_v3_large",
    ):
        backbones.get("efficentnet_b0")


def test_tiny_backbone_is_registered_but_not_listed():
    """`tiny` is reached by name (configs, --backbone) like any backbone; names(), the list of
    ImageNet backbones users choose from, and the unknown-name message leave it out."""
    spec = backbones.get("tiny")
    assert spec is backbones.get("TINY") and spec.preprocessing == backbones.SCALE_MINUS1_1
    assert "tiny" not in backbones.names()
    with pytest.raises(BackboneError) as e:
        backbones.get("resnet50")
    assert "tiny" not in str(e.value)
    with pytest.raises(BackboneError, match=r"tiny has no ImageNet weights.*weights='none'"):
        backbones.check_alpha(spec, 1.0, "imagenet")
    with pytest.raises(BackboneError, match=r"image_size=8 is too small for tiny.*at least 16 px"):
        backbones.check_image_size(spec, 8)
    base = backbones.build_base(spec, image_size=16, weights=None)  # 16 px works
    assert base(np.zeros((2, 16, 16, 3), np.float32)).shape == (2, 2, 2, 128)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in base.layers) == 5


def test_default_sizes():
    assert backbones.get("efficientnet_b7").default_size == 600
    assert backbones.get("efficientnet_v2_s").default_size == 384
    assert backbones.get("mobilenet_v3_small").default_size == 224


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(
        BackboneError, match=r"weights file '.*nope.h5' does not exist; use 'imagenet', 'none'"
    ):
        backbones.build_base(
            backbones.get("mobilenet"), image_size=32, weights=str(tmp_path / "nope.h5"), alpha=0.25
        )


def test_non_weights_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not an hdf5 file")
    with pytest.raises(BackboneError, match="does not fit mobilenet"):
        backbones.build_base(
            backbones.get("mobilenet"), image_size=32, weights=str(junk), alpha=0.25
        )


def test_weights_round_trip_through_a_local_file(tmp_path):
    """weights=PATH loads exactly what was saved (tested without ../shared)."""
    spec = backbones.get("mobilenet_v2")
    keras.utils.set_random_seed(1)
    src = backbones.build_base(spec, image_size=32, weights=None, alpha=0.35)
    path = str(tmp_path / "v2.weights.h5")
    src.save_weights(path)
    keras.utils.set_random_seed(2)
    dst = backbones.build_base(spec, image_size=32, weights=path, alpha=0.35)
    for a, b in zip(src.weights, dst.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = str(tmp_path / "v2.weights.h5")
    backbones.build_base(
        backbones.get("mobilenet_v2"), image_size=32, weights=None, alpha=0.35
    ).save_weights(path)
    with pytest.raises(
        BackboneError, match=r"(does not fit|only partly fits) mobilenet\b.*--backbone and --alpha"
    ):
        backbones.build_base(backbones.get("mobilenet"), image_size=32, weights=path, alpha=0.25)


def test_efficientnet_normalization_fix_applies_only_to_imagenet_stddev():
    """A local copy of Keras's EfficientNet file stores stddev as variance; we square it back."""
    spec = backbones.get("efficientnet_b0")
    base = backbones.build_base(spec, image_size=32, weights=None)
    (norm,) = [layer for layer in base.layers if isinstance(layer, keras.layers.Normalization)]
    norm.adapt_variance.assign(
        np.array([0.229, 0.224, 0.225], np.float32).reshape(norm.adapt_variance.shape)
    )
    norm.finalize_state()
    assert backbones._fix_efficientnet_normalization(base)
    np.testing.assert_allclose(np.ravel(norm.variance), np.square([0.229, 0.224, 0.225]), rtol=1e-6)
    assert not backbones._fix_efficientnet_normalization(base)  # already fixed: untouched


@pytest.mark.shared
def test_shared_mobilenet_weights_load_bit_exactly(shared_weights):
    """The real ImageNet MobileNet-0.25 file gives exactly the published weights."""
    import pathlib

    assert sha256(pathlib.Path(shared_weights)) == MOBILENET_025_NOTOP_SHA256
    spec = backbones.get("mobilenet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a partial load would warn: none allowed
        base = backbones.build_base(spec, image_size=64, weights=shared_weights, alpha=0.25)
    stored = {}
    with h5py.File(shared_weights, "r") as f:
        f.visititems(
            lambda name, obj: (
                stored.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    arrays = list(stored.values())
    assert len(arrays) == len(base.weights)
    for w in base.weights:
        matches = [a for a in arrays if a.shape == tuple(w.shape) and np.array_equal(a, w.numpy())]
        assert matches, f"{w.path} does not equal any array in the file"
    # Pretrained statistics are not the initial (0, 1): this is what the BN guard protects.
    bn = base.get_layer("conv1_bn")
    assert not np.allclose(bn.moving_variance.numpy(), 1.0)


@pytest.mark.shared
def test_shared_weights_refused_at_another_width(shared_weights):
    with pytest.raises(BackboneError, match=r"does not fit mobilenet .*alpha"):
        backbones.build_base(
            backbones.get("mobilenet"), image_size=32, weights=shared_weights, alpha=0.5
        )
