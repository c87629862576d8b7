"""Export a trained classifier to SavedModel, TFLite (LiteRT) and ONNX, and prove each export works.

    formats.py    how the model is written as each format, and each artifact run back
    parity.py     every artifact checked against the Keras model (`PARITY_TOLERANCES`); `export`
    manifest.py   a workdir's export: `export_workdir`, `verify_workdir`, `export.json`
    card.py       the model card beside the artifacts: model_card.json and model_card.md

The public names below are importable from `tl_keras.inference.export` itself; they are loaded
lazily, so importing the package does not import TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FORMATS": "formats",
    "QUANTIZATIONS": "formats",
    "export_saved_model": "formats",
    "export_tflite": "formats",
    "export_onnx": "formats",
    "load_artifact": "formats",
    "Tolerance": "parity",
    "PARITY_TOLERANCES": "parity",
    "ParityReport": "parity",
    "default_tolerance": "parity",
    "export": "parity",
    "parity_check": "parity",
    "quantization_accuracy": "parity",
    "MANIFEST_FILE": "manifest",
    "LABELS_FILE": "manifest",
    "DEFAULT_PARITY_IMAGES": "manifest",
    "parity_images": "manifest",
    "export_workdir": "manifest",
    "verify_workdir": "manifest",
    "CARD_JSON": "card",
    "CARD_MARKDOWN": "card",
    "model_card": "card",
    "ExportError": "tl_keras.errors",
    "MissingDependencyError": "tl_keras.errors",
    "ExportConversionError": "tl_keras.errors",
    "ExportParityError": "tl_keras.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = _EXPORTS[name]
        if "." not in module:
            module = f"{__name__}.{module}"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
