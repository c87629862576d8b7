"""tl_keras: two-phase transfer learning of ImageNet CNNs with Keras 3, correct by default.

The library API (the CLI `python -m tl_keras.train` is a thin layer over it):

    from tl_keras import Config, train, build_model, set_trainable, run_phase, plot_history
    from tl_keras import evaluate_workdir, predict_workdir, export_workdir, doctor_workdir

Names are imported lazily, so `import tl_keras` and the pure modules (`tl_keras.config`,
`tl_keras.recipe`, `tl_keras.model.backbones`, `tl_keras.data.augment`) do not import TensorFlow.

The package reads as the story of a run: `config` (every setting, resolved once into a
`RunSpec`), `recipe` (the rules, no TensorFlow), `data`, `model`, `training`, `inference`, and
`cli` (the commands). The README's "How the code is laid out" lists every module.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "tl_keras.config",
    "Phase": "tl_keras.recipe",
    "build_schedule": "tl_keras.recipe",
    "build_model": "tl_keras.model.classifier",
    "set_trainable": "tl_keras.model.classifier",
    "load_data": "tl_keras.data.sources",
    "from_arrays": "tl_keras.data.sources",
    "DataBundle": "tl_keras.data.pipeline",
    "train": "tl_keras.training.runner",
    "run_phase": "tl_keras.training.phase",
    "PhaseOptions": "tl_keras.training.phase",
    "History": "tl_keras.training.history",
    "stitch": "tl_keras.training.history",
    "plot_history": "tl_keras.training.curves",
    "TLKerasError": "tl_keras.errors",
    # After training (the commands python -m tl_keras.evaluate / .predict / .export call these).
    "load_trained": "tl_keras.inference.trained",
    "evaluate_workdir": "tl_keras.inference.evaluate",
    "predict_workdir": "tl_keras.inference.predict",
    "export_workdir": "tl_keras.inference.export.manifest",
    # The data doctor (python -m tl_keras.doctor calls this).
    "doctor_workdir": "tl_keras.doctor.workflow",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tl_keras' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
