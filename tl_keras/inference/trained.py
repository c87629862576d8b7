"""A trained run, read back from its workdir: the model, its classes, and the data it was made on.

Evaluation, prediction and export all start here. The model of a workdir is the model of its last
phase done in schedule order (`run.json` lists the schedule and the phases done), unless a phase
is named. It answers through run.json's "inference" settings (test-time augmentation, then the
temperature fitted on validation; `tl_keras.model.served`): `TrainedModel.served` is the model
as predict, evaluate and every export use it. It is loaded for inference only (`compile=False`, `safe_mode=True`): the optimizer is
not rebuilt, so a model compiled with any optimizer loads. Class names, backbone and image size
come from `run.json`, which the training run wrote; nothing is guessed from the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Any

from tl_keras import config as config_lib
from tl_keras import io
from tl_keras.errors import DataError, WorkdirError
from tl_keras.model.served import InferenceSettings, inference_model, settings_from_run
from tl_keras.workdir import Workdir

log = logging.getLogger("tl_keras")


@dataclasses.dataclass
class TrainedModel:
    """A workdir's model with what it was trained on.

    Attributes:
      model: the Keras classifier (raw 0..255 float32 pixels in, probabilities out).
      class_names: label index to class name, as the training data had them.
      image_size: the square input size in pixels.
      backbone: the backbone's registry name.
      phase: the phase whose model this is.
      workdir: the run's folder (absolute).
      model_path: the `.keras` file loaded.
      inference: the temperature and TTA run.json gives this phase's model.
      served: `model` wrapped by `inference` (the model itself when T = 1 and no TTA): what
        predict, evaluate and every export run.
    """

    model: Any
    class_names: list[str]
    image_size: int
    backbone: str
    phase: str
    workdir: str
    model_path: str
    inference: InferenceSettings = dataclasses.field(default_factory=InferenceSettings)
    served: Any = None

    def __post_init__(self):
        if self.served is None:
            self.served = inference_model(self.model, self.inference)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """sha256 of the model file: names exactly which weights an artifact came from."""
        digest = hashlib.sha256()
        with open(self.model_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def final_phase(run: dict[str, Any]) -> str:
    """The last phase done, in schedule order (the model a finished run delivers).

    Raises:
      WorkdirError: no phase is done yet.
    """
    done = run.get("phases") or {}
    if not done:
        raise WorkdirError("the workdir has no phase done yet; train it first")
    order = [p["name"] for p in run.get("schedule") or []]
    in_schedule = [name for name in order if name in done]
    if in_schedule:
        return in_schedule[-1]
    # A run.json without a schedule: the phase that ended last.
    return max(done, key=lambda name: done[name].get("last_epoch") or 0)


def read_run(workdir: str) -> dict[str, Any]:
    """The workdir's run.json (backbone, image size, class names, phases done); no TensorFlow.

    Raises:
      WorkdirError: no workdir or no run in it.
    """
    return _read_run(workdir)[1]


def _read_run(workdir: str) -> tuple[Workdir, dict[str, Any]]:
    wd = Workdir(workdir)
    if not os.path.isdir(wd.path):
        raise WorkdirError(
            f"workdir {workdir!r} does not exist; pass the --workdir a training run wrote"
        )
    run = wd.read_run()
    if run is None:
        raise WorkdirError(
            f"workdir {workdir!r} holds no run.json, so no trained model; train one with "
            f"`python -m tl_keras.train --workdir={workdir}` first"
        )
    return wd, run


def load_trained(
    workdir: str, *, phase: str | None = None, trust_code: bool = False
) -> TrainedModel:
    """Loads a workdir's model for inference, with its class names and input size.

    Args:
      workdir: a folder written by `tl_keras.train`.
      phase: which phase's model; None = the final one (last phase done in schedule order).
      trust_code: load a model file whose config runs Python code (`--trust_model_code`);
        tl_keras never writes one, so only for a file you made yourself.

    Returns:
      The model with its class names, image size, backbone and phase.

    Raises:
      WorkdirError: no run there, the phase is not done, or its model does not load (one that
        would run code: `UnsafeModelError`, unless `trust_code`).

    Example:
      >>> trained = load_trained("runs/demo")
      >>> trained.phase, trained.class_names
      ('ft', ['circle', 'square', 'triangle'])
    """
    from tl_keras.model.classifier import load_model  # TensorFlow: after the cheap checks

    wd, run = _read_run(workdir)
    done = run.get("phases") or {}
    if phase is None:
        phase = final_phase(run)
    elif phase not in done:
        raise WorkdirError(
            f"phase={phase!r} is not done in {wd.path!r}; phases done: "
            f"{', '.join(done) or 'none'} (omit --phase for the final model)"
        )
    inference = settings_from_run(run, phase, where=wd.file("run.json"))  # before the slow load
    path = wd.model_path(phase)
    model = load_model(path, trust_code=trust_code, fix=f"rerun phase {phase!r}")
    class_names = [str(c) for c in run["class_names"]]
    image_size = int(run["image_size"])
    shape = tuple(model.inputs[0].shape[1:])
    outputs = int(model.outputs[0].shape[-1])
    if shape != (image_size, image_size, 3) or outputs != len(class_names):
        raise WorkdirError(
            f"{path} takes {shape} and gives {outputs} classes, but run.json says "
            f"{image_size} px and {len(class_names)} classes: the workdir is inconsistent"
        )
    return TrainedModel(
        model=model,
        class_names=class_names,
        image_size=image_size,
        backbone=str(run["backbone"]),
        phase=phase,
        workdir=wd.path,
        model_path=path,
        inference=inference,
    )


def run_config(workdir: str) -> config_lib.Config:
    """The resolved config the workdir's latest training command saved (`config.json`).

    Raises:
      DamagedFileError: the file is missing, unreadable, or not a config.
    """
    wd, _ = _read_run(workdir)
    return config_lib.read_saved(wd.file("config.json"), fix="start the run again with --overwrite")


def load_run_data(workdir: str, *, data_dir: str | None = None):
    """Loads the data a workdir was trained on, split exactly as in training.

    The split is a pure function of the saved config (data_dir, val_fraction, seed), so the
    validation images are the ones training held out.

    Args:
      workdir: a folder written by `tl_keras.train`.
      data_dir: use this data instead of the saved `data_dir` (the same classes), e.g. when the
        images moved.

    Returns:
      A `tl_keras.data.pipeline.DataBundle` (validation split under `.val`).

    Raises:
      WorkdirError: the saved config is missing or unreadable.
      DataError: the data is gone or unreadable; the message says how to point at it.
    """
    from tl_keras.data.sources import load_data

    config = run_config(workdir)
    if data_dir:
        config = config_lib.replace(config, {"data_dir": data_dir}, "--data_dir")
    try:
        return load_data(config, workdir=Workdir(workdir).path)
    except DataError as e:
        raise DataError(
            f"{e} (this is the data of workdir {workdir!r}; pass --data_dir=FOLDER if it moved)"
        ) from None


def writable_output(folder: str, option: str) -> None:
    """Proves a command can write its output to `folder` (creating it), before any work.

    Raises:
      WorkdirError: it cannot (a read-only workdir, another user's folder), pointing at
        `option`, the flag that writes elsewhere.
    """
    try:
        io.check_writable(folder)
    except OSError as e:
        raise WorkdirError(
            f"cannot write to {folder} ({e.strerror or e}): it is read-only or not yours; pass "
            f"{option} to write the results elsewhere"
        ) from None


def check_class_names(model_classes: list[str], data_classes: list[str], source: str) -> list[int]:
    """Maps the data's label indices onto the model's, refusing data of other classes.

    Args:
      model_classes: the classes the model was trained on, in its output order.
      data_classes: the classes of the data, in its label order.
      source: where the data comes from, for the message.

    Returns:
      For each data label index, the model's index of that class (the identity when the lists
      are equal; a permutation when only the order differs).

    Raises:
      DataError: the two sets of class names differ; names the missing and the extra ones.
    """
    model_classes, data_classes = [str(c) for c in model_classes], [str(c) for c in data_classes]
    if sorted(model_classes) != sorted(data_classes) or len(set(data_classes)) != len(data_classes):
        missing = [c for c in model_classes if c not in data_classes]
        extra = [c for c in data_classes if c not in model_classes]
        raise DataError(
            f"the data in {source} has classes {_short(data_classes)} but the model was trained "
            f"on {_short(model_classes)}"
            + (f"; missing from the data: {_short(missing)}" if missing else "")
            + (f"; not known to the model: {_short(extra)}" if extra else "")
            + ". Evaluate on data with exactly the model's classes (one sub-folder each)"
        )
    if model_classes != data_classes:
        log.info("the data lists the model's classes in another order; labels are remapped")
    return [model_classes.index(c) for c in data_classes]


def _short(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}] ({len(names)})"
