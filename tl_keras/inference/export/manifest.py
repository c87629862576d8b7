"""Exporting a trained workdir: its model, checked on the run's own validation images, recorded.

`export_workdir` writes the artifacts with `labels.txt`, `export.json` (each artifact's size,
source model, parity report and, for a quantised file, its accuracy) and the model card
(`model_card.json`, `model_card.md`: `tl_keras.inference.export.card`); `verify_workdir`
re-checks every artifact listed there later. What is exported is the model as the workdir answers
(`TrainedModel.served`): run.json's test-time augmentation and temperature are baked into every
artifact's graph, and the parity check compares each artifact with that same Keras graph, the
one `predict` runs. `python -m tl_keras.export` is a thin layer over those two:

  python -m tl_keras.export --workdir=runs/b0 --formats=saved_model,tflite,onnx
  python -m tl_keras.export --workdir=runs/b0 --formats=tflite --quantization=float16
  python -m tl_keras.export --workdir=runs/b0 --verify

A parity failure prints one ``error:`` line and exits 1; bad input exits 2.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tl_keras import schema
from tl_keras.errors import ExportError, ExportParityError
from tl_keras.inference.export.card import write_model_card
from tl_keras.inference.export.formats import (
    ARTIFACT_NAMES,
    FORMATS,
    OUTPUT_NAME,
    check_formats,
    check_quantization,
    input_spec,
)
from tl_keras.inference.export.parity import (
    ParityReport,
    export,
    parity_check,
    quantization_accuracy,
)

MANIFEST_FILE = "export.json"
_ENTRY = schema.Obj(
    {"format": schema.Str},
    optional={
        "quantization": schema.Maybe(schema.Str),
        "bytes": schema.Int,
        "phase": schema.Maybe(schema.Name),
        "model_sha256": schema.Str,
    },
)
# What export.json must hold before verify trusts it: artifact names are the known file names,
# so an edited manifest cannot point outside its folder.
MANIFEST_SHAPE = schema.Obj(
    {}, optional={"class_names": schema.ListOf(schema.Str), "artifacts": schema.DictOf(_ENTRY)}
)
MANIFEST_FIX = "delete it and export again"


LABELS_FILE = "labels.txt"


DEFAULT_PARITY_IMAGES = 32  # validation images each artifact is checked on


def parity_images(workdir: str, num_images: int, *, data_dir: str | None = None) -> np.ndarray:
    """The first `num_images` validation images of a workdir's data (training's own split).

    Falls back to the first training batches when the run kept no validation split.

    Args:
      workdir: a folder written by `tl_keras.train`.
      num_images: how many images (at least 1).
      data_dir: the data's folder, if it moved since training.

    Returns:
      Raw float32 pixels shaped (N, size, size, 3), N <= num_images.

    Raises:
      DataError: the workdir's data cannot be found or read.
    """
    from tl_keras.inference.trained import load_run_data

    bundle = load_run_data(workdir, data_dir=data_dir)
    source = bundle.val if bundle.val is not None else bundle.train
    batches, count = [], 0
    for images, _ in source.as_numpy_iterator():
        batches.append(images[: num_images - count])
        count += len(batches[-1])
        if count >= num_images:
            break
    return np.concatenate(batches).astype(np.float32)


def _validation_set(workdir: str, class_names: list[str], data_dir: str | None):
    """The validation split with labels as the model's class indices, or None without one."""
    from tl_keras.inference.trained import check_class_names, load_run_data

    bundle = load_run_data(workdir, data_dir=data_dir)
    if bundle.val is None:
        return None
    to_model = tf.constant(check_class_names(class_names, bundle.class_names, bundle.source))
    return bundle.val.map(lambda x, y: (x, tf.gather(to_model, tf.argmax(y, axis=-1))))


def _read_manifest(path: Path) -> dict[str, Any]:
    """export.json, checked: its shape, and that each artifact is a file name export writes.

    Raises:
      DamagedFileError: naming the file and the way out (delete it and export again).
    """
    if not path.is_file():
        return {}
    manifest = schema.read_json(str(path), MANIFEST_SHAPE, fix=MANIFEST_FIX)
    for name, entry in manifest.get("artifacts", {}).items():
        if name not in ARTIFACT_NAMES.values() or entry["format"] not in FORMATS:
            raise schema.damaged(
                str(path),
                f"it lists {name[:80]!r} ({entry['format'][:20]!r}), not an artifact export "
                f"writes ({', '.join(ARTIFACT_NAMES.values())})",
                MANIFEST_FIX,
            )
    return manifest


def _write_manifest(out_dir: Path, manifest: dict[str, Any], class_names: list[str]) -> None:
    from tl_keras import io

    io.atomic_write_text(str(out_dir / LABELS_FILE), "".join(f"{c}\n" for c in class_names))
    io.atomic_write_json(str(out_dir / MANIFEST_FILE), manifest)


def export_workdir(
    workdir: str,
    *,
    formats: Iterable[str] = ("saved_model", "tflite"),
    quantization: str | None = None,
    out_dir: str | None = None,
    phase: str | None = None,
    num_parity_images: int = DEFAULT_PARITY_IMAGES,
    data_dir: str | None = None,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Exports a workdir's model, checks each artifact, and records what was made.

    What `python -m tl_keras.export` does. Each artifact must pass `parity_check` on the first
    `num_parity_images` validation images of the run's data before it replaces anything. With a
    quantisation, the TFLite file's accuracy is also measured against the float Keras model on
    the whole validation split. The out_dir gets `labels.txt` (class names, one a line, in
    output order) and `export.json` (input and output conventions, and per artifact its size,
    source model, parity report and accuracy); exports made later into the same folder are
    added to it.

    Args:
      workdir: a folder written by `tl_keras.train`.
      formats: any of 'saved_model', 'tflite', 'onnx'.
      quantization: None, 'float16' or 'dynamic' (TFLite only).
      out_dir: where to write; default `<workdir>/export`.
      phase: which phase's model; None = the final one.
      num_parity_images: images for the parity check; 0 skips it (not recommended).
      data_dir: the data's folder, if it moved since training.
      trust_code: load a model file that runs code (see `load_trained`).

    Returns:
      The manifest written to `export.json`.

    Raises:
      ExportError: bad formats or quantisation (before anything is written).
      ExportParityError: an artifact does not reproduce the model (it is not kept).
      WorkdirError, DataError: no trained model, its data cannot be found, or `out_dir` (by
        default inside the workdir) cannot be written.

    Example:
      >>> manifest = export_workdir("runs/b0", formats=["tflite"], quantization="dynamic")
      >>> manifest["artifacts"]["model_dynamic.tflite"]["accuracy"]["accuracy_drop"]
    """
    from tl_keras.inference.trained import load_trained, read_run, writable_output

    requested = check_formats(formats)
    check_quantization(quantization)
    if num_parity_images < 0:
        raise ExportError(f"num_parity_images={num_parity_images} must be 0 (skip) or more")
    read_run(workdir)  # no run there: that error first
    out = Path(out_dir or os.path.join(os.path.abspath(workdir), "export"))
    writable_output(str(out), "--out_dir=FOLDER")  # before any work
    _read_manifest(out / MANIFEST_FILE)  # a damaged one: before any work, too
    trained = load_trained(workdir, phase=phase, trust_code=trust_code)
    images = None
    if num_parity_images:
        images = parity_images(workdir, num_parity_images, data_dir=data_dir)
    else:
        warnings.warn("num_parity_images=0: the exports are not checked", stacklevel=2)
    result = export(trained.served, out, requested, quantization=quantization, check_images=images)
    manifest = _read_manifest(out / MANIFEST_FILE)
    if manifest.get("class_names") not in (None, trained.class_names):
        manifest = {}  # artifacts of another run: their entries no longer describe this folder
    artifacts = manifest.get("artifacts", {})
    fingerprint = trained.fingerprint()
    for fmt, path in result["paths"].items():
        entry = {
            "format": fmt,
            "quantization": quantization if fmt == "tflite" else None,
            "bytes": _size(Path(path)),
            "phase": trained.phase,
            "model_sha256": fingerprint,
            "inference": trained.inference.to_dict(),
            "parity": result["parity"][fmt].as_dict() if fmt in result["parity"] else None,
        }
        if fmt == "tflite" and quantization is not None:
            val = _validation_set(workdir, trained.class_names, data_dir)
            if val is not None:
                entry["accuracy"] = quantization_accuracy(trained.served, path, val)
        artifacts[os.path.basename(path)] = entry
    manifest = _manifest(trained, artifacts)
    _write_manifest(out, manifest, trained.class_names)
    write_model_card(trained, manifest, out, data_dir=data_dir)
    return manifest


def _manifest(trained, artifacts: dict[str, Any]) -> dict[str, Any]:
    """`export.json`: the model's input and output conventions, and every artifact's entry."""
    return {
        "workdir": trained.workdir,
        "backbone": trained.backbone,
        "image_size": trained.image_size,
        "class_names": trained.class_names,
        "input": {
            "name": input_spec(trained.model).name,
            "dtype": "float32",
            "shape": [None, trained.image_size, trained.image_size, 3],
            "pixels": "RGB, raw 0..255 (preprocessing is inside the model)",
        },
        "output": {
            "name": OUTPUT_NAME,
            "meaning": f"class probabilities (softmax), in {LABELS_FILE} order, after the "
            "inference settings below (test-time augmentation, then the temperature)",
        },
        "inference": trained.inference.to_dict(),
        "artifacts": dict(sorted(artifacts.items())),
    }


def verify_workdir(
    workdir: str,
    *,
    out_dir: str | None = None,
    phase: str | None = None,
    num_parity_images: int = DEFAULT_PARITY_IMAGES,
    data_dir: str | None = None,
    trust_code: bool = False,
) -> list[ParityReport]:
    """Checks every artifact listed in an export folder's `export.json` against the Keras model.

    Use it before shipping artifacts that may have been copied, edited or exported from an
    older model: each one runs on the same validation images as the workdir's model.

    Args:
      workdir: a folder written by `tl_keras.train`.
      out_dir: the export folder; default `<workdir>/export`.
      phase: compare with this phase's model; None = the phase each artifact was exported from.
      num_parity_images: images to check on (at least 1).
      data_dir: the data's folder, if it moved since training.
      trust_code: load a model file that runs code (see `load_trained`).

    Returns:
      One passing `ParityReport` per artifact.

    Raises:
      ExportError: no export.json there, or an artifact it lists is missing.
      ExportParityError: an artifact does not reproduce the model; its report is the first
        failure, and the message names every failing artifact.
    """
    from tl_keras.inference.trained import load_trained

    if num_parity_images < 1:
        raise ExportError(f"num_parity_images={num_parity_images}: verifying needs at least 1")
    out = Path(out_dir or os.path.join(os.path.abspath(workdir), "export"))
    artifacts = _read_manifest(out / MANIFEST_FILE).get("artifacts")
    if not artifacts:
        raise ExportError(f"{out / MANIFEST_FILE} lists no exports to verify; run the export first")
    missing = [name for name in artifacts if not (out / name).exists()]
    if missing:
        raise ExportError(f"{out} lacks {', '.join(missing)}, listed in {MANIFEST_FILE}")
    images = parity_images(workdir, num_parity_images, data_dir=data_dir)
    models: dict[str, keras.Model] = {}
    reports, failures = [], []
    for name, entry in artifacts.items():
        source = phase or entry.get("phase")
        if source not in models:  # as the workdir answers now: a changed temperature fails
            models[source] = load_trained(workdir, phase=source, trust_code=trust_code).served
        try:
            reports.append(
                parity_check(
                    models[source],
                    out / name,
                    entry["format"],
                    images,
                    quantization=entry.get("quantization"),
                )
            )
        except ExportParityError as err:
            failures.append(err.report)
    if failures:
        names = ", ".join(Path(r.path).name for r in failures)
        raise ExportParityError(
            failures[0],
            advice=f"{len(failures)} of {len(artifacts)} artifacts fail ({names}): they were "
            "altered or exported from another model. Export again from this workdir.",
        )
    return reports


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
