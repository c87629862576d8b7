"""Evaluate a workdir's model and write the report (what `python -m tl_keras.evaluate` does).

`evaluate_workdir` (what `python -m tl_keras.evaluate` does) writes, under `<workdir>/evaluation/<data>/` (or `--out_dir`):

  metrics.json            accuracy, balanced accuracy and macro F1 with 95% bootstrap intervals,
                          loss, top-k accuracy, per-class precision / recall / F1 / support,
                          macro and weighted averages (`tl_keras.metrics`, their one definition),
                          the confusion matrix, calibration (ECE before and after the workdir's
                          temperature), and the most confident mistakes
  confusion_matrix.png    counts, and rows normalised to recall
  confident_errors.png    the misclassified images the model was surest about
  reliability.png         reliability diagrams before and after the temperature

The numbers come from `tl_keras.inference.evaluation.evaluate(model, dataset, class_names)`
(any model and data in memory), the figures from `tl_keras.inference.evaluation_plots`; this
module picks the workdir's model and data and writes the files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from tl_keras import io, plotting
from tl_keras.errors import ConfigError, DataError
from tl_keras.inference.evaluation import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_NUM_ERRORS,
    DEFAULT_TOP_K,
    Evaluation,
    evaluate,
)
from tl_keras.inference.evaluation_plots import plot_confident_errors, plot_confusion_matrix
from tl_keras.model.served import InferenceSettings, inference_model

log = logging.getLogger("tl_keras")

SPLITS = ("test", "val")
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
ERRORS_FILE = "confident_errors.png"
RELIABILITY_FILE = "reliability.png"


def write_report(
    evaluation: Evaluation, out_dir: str, *, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """Writes metrics.json, confusion_matrix.png, confident_errors.png and reliability.png.

    Each file is written atomically.

    Args:
      evaluation: what `evaluate` returned.
      out_dir: the folder (created if missing).
      extra: more JSON fields for metrics.json (which model, which data).

    Returns:
      name -> path of each file written (also stored in `evaluation.paths`).
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "metrics": os.path.join(out_dir, METRICS_FILE),
        "confusion_matrix": os.path.join(out_dir, CONFUSION_FILE),
        "confident_errors": os.path.join(out_dir, ERRORS_FILE),
    }
    plot_confusion_matrix(evaluation, paths["confusion_matrix"])
    plot_confident_errors(evaluation, paths["confident_errors"])
    c = evaluation.calibration
    if c:
        paths["reliability"] = os.path.join(out_dir, RELIABILITY_FILE)
        plotting.plot_reliability(
            [c["reliability_before"], c["reliability_after"]],
            paths["reliability"],
            titles=[
                f"as the model answers: ECE {100 * c['ece_before']:.1f}%",
                f"temperature {c['temperature']:.2f}: ECE {100 * c['ece_after']:.1f}%",
            ],
            suptitle=f"{evaluation.num_images} images",
        )
    io.atomic_write_json(paths["metrics"], {**(extra or {}), **evaluation.as_dict()})
    evaluation.paths = paths
    return paths


# --- a workdir --------------------------------------------------------------------------------------
def evaluate_workdir(
    workdir: str,
    *,
    data_dir: str | None = None,
    split: str | None = None,
    phase: str | None = None,
    out_dir: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    num_errors: int = DEFAULT_NUM_ERRORS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    trust_code: bool = False,
) -> Evaluation:
    """Evaluates a workdir's model and writes the report (what `python -m tl_keras.evaluate` does).

    Args:
      workdir: a folder written by `tl_keras.train`.
      data_dir: an image-folder tree evaluated whole (one sub-folder per class, the model's
        classes). Exclusive with `split`.
      split: 'test' (the workdir data's test split, when its source has one) or 'val' (the
        validation split training held out; not a test figure). Default: 'test'.
      phase: which phase's model; None = the final one.
      out_dir: where to write; default `<workdir>/evaluation/<split or data folder name>`.
      top_k, num_errors, batch_size: as in `evaluate`.
      trust_code: load a model file that runs code (see `load_trained`).

    Returns:
      The `Evaluation`, with `paths` of the files written.

    Raises:
      ConfigError: both data_dir and split, or an unknown split.
      WorkdirError: no trained model in the workdir, or `out_dir` (by default inside the
        workdir) cannot be written.
      DataError: the data is missing, has no such split, or has other classes than the model.
    """
    if data_dir and split:
        raise ConfigError(
            f"--data_dir={data_dir!r} and --split={split!r} both say what to evaluate; give one"
        )
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split={split!r} is not known; use one of {', '.join(SPLITS)}")
    if batch_size < 1 or top_k < 0 or num_errors < 0:
        raise ConfigError(
            f"batch_size={batch_size} must be positive, top_k={top_k} 0 (the default for the "
            f"number of classes) or more, and num_errors={num_errors} at least 0"
        )
    from tl_keras.inference.trained import read_run, writable_output

    read_run(workdir)  # no run there: that error first
    tag = _folder_tag(data_dir) if data_dir else split or "test"
    out_dir = out_dir or os.path.join(os.path.abspath(workdir), "evaluation", tag)
    writable_output(out_dir, "--out_dir=FOLDER")  # before any work
    if data_dir:
        data = _folder_data(workdir, data_dir, phase=phase, batch_size=batch_size, trust=trust_code)
    else:
        data = _split_data(workdir, split or "test", phase=phase, trust=trust_code)
    run = data.run
    # TTA in the graph, the temperature on its output: the figures before and after it.
    tta_only = inference_model(run.model, InferenceSettings(1.0, run.inference.tta))
    evaluation = evaluate(
        tta_only,
        data.dataset,
        run.class_names,
        data_class_names=data.class_names,
        files=data.files,
        names=data.names,
        top_k=top_k,
        num_errors=num_errors,
        batch_size=batch_size,
        temperature=run.inference.temperature,
    )
    extra = {
        "model": {
            "workdir": run.workdir,
            "phase": run.phase,
            "backbone": run.backbone,
            "image_size": run.image_size,
            "model_sha256": run.fingerprint(),
            "inference": run.inference.to_dict(),
        },
        "data": {"source": data.source, "split": data.split},
    }
    write_report(evaluation, out_dir, extra=extra)
    return evaluation


@dataclasses.dataclass
class _Evaluated:
    """A workdir's model and the data to evaluate it on, with where that data comes from."""

    run: Any  # tl_keras.inference.trained.TrainedModel
    dataset: Any
    class_names: list[str]
    files: list[str] | None
    tag: str  # the folder under <workdir>/evaluation/
    source: str
    split: str | None
    names: list[str] | None = None  # the source's name of each image, when not files


def _folder_data(
    workdir: str, data_dir: str, *, phase: str | None, batch_size: int, trust: bool
) -> _Evaluated:
    """A whole image-folder tree, decoded and resized as training did; classes checked first."""
    from tl_keras.data import pipeline, sources
    from tl_keras.inference import trained as trained_lib

    listing = sources.list_image_folder(data_dir)
    model_classes = trained_lib.read_run(workdir)["class_names"]
    trained_lib.check_class_names(model_classes, listing.class_names, repr(data_dir))  # fail fast
    run = trained_lib.load_trained(workdir, phase=phase, trust_code=trust)
    config = trained_lib.run_config(workdir)  # resize as training did
    settings = pipeline.Pipeline(
        image_size=run.image_size,
        batch_size=batch_size,
        resize_mode=config.resize_mode,
        resize_method=config.resize_method,
        max_skipped_fraction=config.max_skipped_fraction,
    )
    dataset, listing, _ = sources.folder_dataset(data_dir, settings)
    return _Evaluated(
        run,
        dataset,
        listing.class_names,
        listing.files,
        _folder_tag(data_dir),
        os.path.abspath(data_dir),
        None,
    )


def _split_data(workdir: str, split: str, *, phase: str | None, trust: bool) -> _Evaluated:
    """The test or validation split of the workdir's own data, split exactly as in training."""
    from tl_keras.inference import trained as trained_lib

    run = trained_lib.load_trained(workdir, phase=phase, trust_code=trust)
    bundle = trained_lib.load_run_data(workdir)
    dataset = bundle.val if split == "val" else getattr(bundle, "test", None)
    if dataset is None:
        hint = (
            "pass --data_dir=FOLDER of held-out images (one sub-folder per class)"
            if split == "test"
            else "it was trained with val_fraction=0; pass --data_dir=FOLDER"
        )
        raise DataError(
            f"the data of workdir {workdir!r} ({bundle.source}) has no {split} split; {hint}"
            + ("; or --split=val for the validation split" if split == "test" else "")
        )
    return _Evaluated(
        run,
        dataset,
        bundle.class_names,
        bundle.image_files.get(split),
        split,
        bundle.source,
        split,
        names=bundle.image_names.get(split),
    )


def _folder_tag(data_dir: str) -> str:
    name = os.path.basename(os.path.normpath(os.path.abspath(data_dir)))
    return "data-" + ("".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "root")


__all__ = [
    "CONFUSION_FILE",
    "ERRORS_FILE",
    "METRICS_FILE",
    "RELIABILITY_FILE",
    "SPLITS",
    "evaluate",
    "evaluate_workdir",
    "write_report",
]
