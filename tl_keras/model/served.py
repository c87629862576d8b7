"""The served model: how a trained classifier answers, flip test-time augmentation, then a
temperature (the graph predict, evaluate and every export run).

A workdir's `run.json` may hold an "inference" section, written after training
(`tl_keras.training.calibrate`):

    "inference": {"temperature": 1.43, "tta": "none", "phase": "ft", ...}

* `tta`: "none", or "flip": the class probabilities are the average of the model's answer for
  the image and for its horizontal mirror (issue 10's recipe decides it; it is applied here).
* `temperature`: T > 0 fitted on the validation split (`tl_keras.calibration`)
  after the TTA average: the answer is `softmax(log p / T)`, the one definition of
  `tl_keras.calibration.apply_temperature`, here as a float32 layer. T changes no prediction,
  only how sure each one says it is. It was fitted for one phase's model (`phase`): another
  phase's model answers with T = 1.

`inference_model(model, settings)` wraps a model so that predict, evaluate and every export run
the same graph; with T = 1 and no TTA it returns the model itself, so a workdir without the
section (made before it existed) answers exactly as before.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tl_keras.calibration import PROBABILITY_FLOOR
from tl_keras.errors import ConfigError, WorkdirError

TTA_MODES = ("none", "flip")
INFERENCE_KEY = "inference"  # the section of run.json


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """What happens between a model's softmax and the probabilities a user sees.

    Attributes:
      temperature: T > 0; the answer is softmax(log p / T). 1 = unchanged.
      tta: 'none' or 'flip' (average with the horizontal mirror, before the temperature).
    """

    temperature: float = 1.0
    tta: str = "none"

    def __post_init__(self):
        problem = _problem(self.temperature, self.tta)
        if problem:
            raise ConfigError(problem)

    @property
    def is_identity(self) -> bool:
        """True when the model's own probabilities are the answer (T = 1, no TTA)."""
        return self.temperature == 1.0 and self.tta == "none"

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature), "tta": self.tta}

    def describe(self) -> str:
        parts = [f"temperature {self.temperature:.3g}"]
        if self.tta != "none":
            parts.append(f"tta {self.tta}")
        return ", ".join(parts)


def _problem(temperature: Any, tta: Any) -> str | None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return f"temperature={temperature!r} must be a finite number > 0"
    if not (math.isfinite(temperature) and temperature > 0):
        return f"temperature={temperature!r} must be a finite number > 0"
    if tta not in TTA_MODES:
        return f"tta={tta!r} is not known; use one of {', '.join(TTA_MODES)}"
    return None


def settings_from_run(run: dict[str, Any], phase: str, *, where: str = "run.json"):
    """The inference settings run.json gives a phase's model (T = 1, no TTA without a section).

    The temperature applies only to the model of the phase it was fitted for (the section's
    `phase`; a section without one applies to any phase).

    Raises:
      WorkdirError: the section holds a temperature or TTA that cannot be used.
    """
    section = run.get(INFERENCE_KEY) or {}
    if not isinstance(section, dict):
        raise WorkdirError(f"{where}: 'inference' must be a JSON object; the workdir is damaged")
    tta = section.get("tta", "none")
    temperature = section.get("temperature", 1.0)
    problem = _problem(temperature, tta)
    if problem:
        raise WorkdirError(
            f"{where}: inference {problem}; the workdir is damaged: fix or delete its "
            "'inference' section, or retrain"
        )
    if section.get("phase", phase) != phase:
        temperature = 1.0  # fitted for another phase's model
    return InferenceSettings(float(temperature), str(tta))


def inference_model(model, settings: InferenceSettings | None = None):
    """The model as users get it: TTA, then temperature; the model itself when neither applies.

    The wrapper takes the same raw float32 pixels and returns probabilities (float32), so it can
    be exported, evaluated and used for prediction like the model.

    Args:
      model: a Keras classifier (raw 0..255 pixels in, softmax probabilities out).
      settings: None = unchanged.

    Returns:
      A `keras.Model`.
    """
    settings = settings or InferenceSettings()
    if settings.is_identity:
        return model
    import keras

    spec = model.inputs[0]
    inputs = keras.Input(shape=tuple(spec.shape[1:]), name=spec.name or "image")
    probs = model(inputs)
    if settings.tta == "flip":
        mirrored = model(keras.ops.flip(inputs, axis=2))  # NHWC: axis 2 is the width
        probs = keras.layers.Average(dtype="float32", name="tta_flip")([probs, mirrored])
    if settings.temperature != 1.0:
        probs = _temperature_layer(settings.temperature)(probs)
    return keras.Model(inputs, probs, name=f"{model.name}_inference")


def _temperature_layer(temperature: float):
    import keras

    class TemperatureScaling(keras.layers.Layer):
        """softmax(log(max(p, floor)) / T): `calibration.apply_temperature` as a layer."""

        def __init__(self, temperature: float, **kwargs):
            kwargs.setdefault(
                "dtype", "float32"
            )  # probabilities stay float32 under mixed precision
            super().__init__(**kwargs)
            self.temperature = float(temperature)

        def call(self, probs):
            ops = keras.ops
            log_p = ops.log(ops.maximum(ops.cast(probs, "float32"), PROBABILITY_FLOOR))
            return ops.softmax(log_p / self.temperature, axis=-1)

        def get_config(self):
            return {**super().get_config(), "temperature": self.temperature}

    return TemperatureScaling(temperature, name="temperature")


__all__ = [
    "INFERENCE_KEY",
    "TTA_MODES",
    "InferenceSettings",
    "inference_model",
    "settings_from_run",
]
