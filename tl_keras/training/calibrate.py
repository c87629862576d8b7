"""After training: fit the temperature on the validation split, and say how the model scores there.

The last step of `train`, once the run's last phase is saved:

1. one pass of the final model over the validation split (`tl_keras.model.forward`), through
   the served model with the run's test-time augmentation (`tl_keras.model.served`; TTA comes
   before the temperature, so the temperature is fitted on what users will get);
2. the temperature T that minimises the validation NLL, and the expected calibration error
   (ECE) and reliability diagram before and after it (`tl_keras.calibration`: the maths, and
   `fitted_temperature`, the rule for when T is used);
3. `<workdir>/calibration/calibration.json` and `reliability.png`, then run.json's "inference"
   section (`{"temperature", "tta", "phase", ...}`), which predict, evaluate and export apply.

One log line says what came of it, with the validation accuracy, balanced accuracy and macro F1
(the last two tell an imbalanced set's truth). T is kept at 1 when it cannot be fitted honestly:
no validation split, fewer than `calibration.MIN_IMAGES` validation images, or a fit that ends
at a bound of `calibration.TEMPERATURE_BOUNDS` (every validation answer right: the NLL keeps falling as the
answers get sharper, which says nothing about new images).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from tl_keras import calibration, io, metrics, plotting
from tl_keras.model.forward import forward
from tl_keras.model.served import INFERENCE_KEY, InferenceSettings, inference_model

log = logging.getLogger("tl_keras")

FOLDER = "calibration"
REPORT_FILE = "calibration.json"
DIAGRAM_FILE = "reliability.png"


def decided_tta(config) -> str:
    """The test-time augmentation the run's recipe decided ('none' until issue 10's `tta`)."""
    return str(getattr(config, "tta", "none"))


def _answers(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and class indices of a batched (images, one-hot labels) dataset (the one
    forward pass, `tl_keras.model.forward`)."""
    probs, labels = [], []
    for (_, onehot), out in forward(model, dataset):
        probs.append(np.asarray(out, np.float64))
        labels.append(np.asarray(onehot).argmax(axis=-1))
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, np.int64)
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)


def forget_temperature(run: dict[str, Any]) -> None:
    """Drops a fitted temperature from run.json's section: the final model is about to change.

    The TTA decision stays (it belongs to the recipe, not to one model).
    """
    section = run.get(INFERENCE_KEY)
    if isinstance(section, dict):
        run[INFERENCE_KEY] = {k: v for k, v in section.items() if k == "tta"}


def is_fitted(run: dict[str, Any]) -> bool:
    """Whether run.json records a temperature for the run's final model: False from the moment
    a phase is saved (`forget_temperature`) until `calibrate_run` has written one."""
    section = run.get(INFERENCE_KEY)
    return isinstance(section, dict) and "temperature" in section


def calibrate_run(
    wd, run: dict[str, Any], model, data, config, phase: str, *, frozen=None
) -> dict[str, Any]:
    """Fits T for `phase`'s model on the validation split, writes the report and run.json.

    Args:
      wd: the `Workdir` written to.
      run: run.json as the runner holds it (updated and written here).
      model: the phase's model.
      data: the run's `DataBundle`.
      config: the run's config (its `tta`).
      phase: the phase whose model this is.
      frozen: that phase's validation callback (`tl_keras.training.frozen_val`), which gives
        the model's answers without running the base again where it can: the top on the frozen
        blocks' cached outputs, or the last epoch's folded pass when the weights are still that
        epoch's (without test-time augmentation: the served model is the model).

    Returns:
      The "inference" section written to run.json.
    """
    tta = decided_tta(config)
    section: dict[str, Any] = {"temperature": 1.0, "tta": tta, "phase": phase}
    if data.val is None:
        section["fitted"] = "no: no validation split (val_fraction=0)"
        log.info("[calibration] temperature kept at 1: the run has no validation split")
        return _commit(wd, run, section, None)
    served = InferenceSettings(1.0, tta)
    reused = frozen.reusable(model) if frozen is not None and served.is_identity else None
    if reused is not None:
        probs, labels = _answers(*reused)
    else:
        probs, labels = _answers(inference_model(model, served), data.val)
    scores = validation_scores(probs, labels, len(data.class_names))
    t, section["fitted"] = calibration.fitted_temperature(probs, labels)
    report = calibration.calibration_report(probs, labels, t)
    section.update(
        temperature=t,
        ece_before=round(report["ece_before"], 6),
        ece_after=round(report["ece_after"], 6),
        report=f"{FOLDER}/{REPORT_FILE}",
    )
    _write_report(wd, section, report, scores)
    log.info(
        "[calibration] %s; ECE on validation %.3f -> %.3f, NLL %.3f -> %.3f; validation accuracy "
        "%.4f, balanced accuracy %.4f, macro F1 %.4f",
        f"temperature {t:.3f}" if t != 1.0 else f"temperature 1 ({section['fitted']})",
        report["ece_before"],
        report["ece_after"],
        report["nll_before"],
        report["nll_after"],
        scores["accuracy"],
        scores["balanced_accuracy"],
        scores["macro_f1"],
    )
    return _commit(wd, run, section, scores)


def validation_scores(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Accuracy, balanced accuracy and macro F1 of the answers (a temperature changes none)."""
    report = metrics.classification_report(labels, probs.argmax(axis=1), num_classes)
    return {
        "num_images": len(labels),
        **{k: report[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
    }


def _write_report(wd, section: dict, report: dict, scores: dict) -> None:
    folder = wd.file(FOLDER)
    os.makedirs(folder, exist_ok=True)
    plotting.plot_reliability(
        [report["reliability_before"], report["reliability_after"]],
        os.path.join(folder, DIAGRAM_FILE),
        titles=[
            f"before: ECE {100 * report['ece_before']:.1f}%",
            f"after T={report['temperature']:.2f}: ECE {100 * report['ece_after']:.1f}%",
        ],
        suptitle=f"validation split, {scores['num_images']} images",
    )
    io.atomic_write_json(
        os.path.join(folder, REPORT_FILE),
        {"inference": section, "validation": scores, "calibration": report},
    )


def _commit(wd, run: dict, section: dict, scores: dict | None) -> dict:
    if scores is not None:
        section["validation"] = {k: round(v, 6) for k, v in scores.items()}
    run[INFERENCE_KEY] = section
    wd.write_run(run)
    return section


__all__ = ["calibrate_run", "decided_tta", "forget_temperature", "is_fitted"]
