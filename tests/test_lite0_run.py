"""A whole run on EfficientNet-Lite0 with its converted ImageNet weights: train (fe, then ft on
its top two blocks), then evaluate, predict and export (SavedModel and TFLite, ONNX when the
`onnx` extra is installed), each export passing its parity check.

What a user runs as

    python -m tl_keras.weights --backbone=efficientnet_lite0 --out=lite0.weights.h5
    python -m tl_keras.train --backbone=efficientnet_lite0 --weights=lite0.weights.h5 ...

here through the same library functions, on 3 synthetic classes at 32 px.
"""

from __future__ import annotations

import importlib.util
import os

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tl_keras.model import pretrained

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime"))
# blocks:2 on Lite0 trains block7a and top; every other base weight must stay as converted.
UNFROZEN = {"block7a_expand_conv", "block7a_dwconv", "block7a_project_conv", "top_conv"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, shapes_dir):
    if not importlib.util.find_spec(pretrained.CHECKPOINT_MODULE):
        pytest.skip(f"{pretrained.CHECKPOINT_PACKAGE} not installed")
    from tl_keras.training.runner import train

    root = tmp_path_factory.mktemp("lite0_run")
    weights = pretrained.convert(pretrained.checkpoint_path(), str(root / "lite0.weights.h5"))
    workdir = str(root / "run")
    cfg = tiny_config(
        data_dir=shapes_dir, backbone="efficientnet_lite0", alpha=1.0, weights=weights
    )
    train(cfg, workdir)
    return workdir, weights


@pytest.mark.slow
def test_ft_trains_only_the_top_blocks_and_keeps_the_imagenet_statistics(run):
    from tl_keras.model import backbones

    workdir, weights = run
    converted = backbones.build_base(
        backbones.get("efficientnet_lite0"), image_size=32, weights=weights
    )
    model = keras.models.load_model(os.path.join(workdir, "ft", "model.keras"))
    base = model.get_layer("backbone")
    moved = set()
    for layer in base.layers:
        for got, want in zip(
            layer.get_weights(), converted.get_layer(layer.name).get_weights(), strict=True
        ):
            if not np.array_equal(got, want):
                moved.add(layer.name)
    assert moved == UNFROZEN  # no BatchNorm layer among them: statistics bitwise as converted


@pytest.mark.slow
def test_evaluate_predict_and_export_work_on_the_result(run, shapes_dir):
    from tl_keras.inference.evaluate import evaluate_workdir
    from tl_keras.inference.export.manifest import export_workdir
    from tl_keras.inference.predict import list_inputs, predict_workdir

    workdir, _ = run
    evaluation = evaluate_workdir(workdir, split="val")
    assert 0.0 <= evaluation.accuracy <= 1.0
    files = list_inputs([shapes_dir])[:4]
    predictions = predict_workdir(workdir, files, top_k=1)
    assert [p.error for p in predictions] == [None] * 4
    formats = ["saved_model", "tflite"] + (["onnx"] if HAS_ONNX else [])
    manifest = export_workdir(workdir, formats=formats, num_parity_images=4)
    artifacts = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}
    for fmt in formats:
        parity = manifest["artifacts"][artifacts[fmt]]["parity"]
        assert parity["passed"] and parity["num_images"] == 4, parity
