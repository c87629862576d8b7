"""Exporting a trained workdir: its model, checked on the run's own validation images, recorded.

`export_workdir` writes the artifacts with `labels.txt` and `export.json` (each artifact's size,
source model, parity report and, for a quantised file, its accuracy); `verify_workdir` re-checks
every artifact listed there later. Command line, a thin layer over those two:

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

from tl_keras.errors import ExportError, ExportParityError
from tl_keras.inference.export.formats import (
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
    import json

    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportError(f"{path} is unreadable ({err}); delete it and export again") from None


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

    Returns:
      The manifest written to `export.json`.

    Raises:
      ExportError: bad formats or quantisation (before anything is written).
      ExportParityError: an artifact does not reproduce the model (it is not kept).
      WorkdirError, DataError: no trained model, or its data cannot be found.

    Example:
      >>> manifest = export_workdir("runs/b0", formats=["tflite"], quantization="dynamic")
      >>> manifest["artifacts"]["model_dynamic.tflite"]["accuracy"]["accuracy_drop"]
    """
    from tl_keras.inference.trained import load_trained

    requested = check_formats(formats)
    check_quantization(quantization)
    if num_parity_images < 0:
        raise ExportError(f"num_parity_images={num_parity_images} must be 0 (skip) or more")
    trained = load_trained(workdir, phase=phase)
    out = Path(out_dir or os.path.join(trained.workdir, "export"))
    images = None
    if num_parity_images:
        images = parity_images(workdir, num_parity_images, data_dir=data_dir)
    else:
        warnings.warn("num_parity_images=0: the exports are not checked", stacklevel=2)
    result = export(trained.model, out, requested, quantization=quantization, check_images=images)
    manifest = _read_manifest(out / MANIFEST_FILE)
    if manifest.get("class_names") not in (None, trained.class_names):
        manifest = {}  # artifacts of another run: their entries no longer describe this folder
    fingerprint = trained.fingerprint()
    artifacts = manifest.get("artifacts", {})
    for fmt, path in result["paths"].items():
        fmt_quant = quantization if fmt == "tflite" else None
        entry: dict[str, Any] = {
            "format": fmt,
            "quantization": fmt_quant,
            "bytes": _size(Path(path)),
            "phase": trained.phase,
            "model_sha256": fingerprint,
            "parity": result["parity"][fmt].as_dict() if fmt in result["parity"] else None,
        }
        if fmt == "tflite" and fmt_quant is not None:
            val = _validation_set(workdir, trained.class_names, data_dir)
            if val is not None:
                entry["accuracy"] = quantization_accuracy(trained.model, path, val)
        artifacts[os.path.basename(path)] = entry
    manifest = {
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
            "meaning": f"class probabilities (softmax), in {LABELS_FILE} order",
        },
        "artifacts": dict(sorted(artifacts.items())),
    }
    _write_manifest(out, manifest, trained.class_names)
    return manifest


def verify_workdir(
    workdir: str,
    *,
    out_dir: str | None = None,
    phase: str | None = None,
    num_parity_images: int = DEFAULT_PARITY_IMAGES,
    data_dir: str | None = None,
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
        if source not in models:
            models[source] = load_trained(workdir, phase=source).model
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


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Folder of a training run (its final model is used).")
    flags.DEFINE_list(
        "formats", ["saved_model", "tflite"], f"Comma-separated, any of {', '.join(FORMATS)}."
    )
    flags.DEFINE_enum(
        "quantization",
        "none",
        ["none", "float16", "dynamic"],
        "TFLite post-training quantisation; its accuracy is measured on the validation split.",
    )
    flags.DEFINE_string("out_dir", None, "Output folder [default: <workdir>/export].")
    flags.DEFINE_string("phase", None, "Export this phase's model (default: the final one).")
    flags.DEFINE_integer(
        "parity_images",
        DEFAULT_PARITY_IMAGES,
        "Validation images each artifact is checked on; 0 skips the check.",
    )
    flags.DEFINE_string("data_dir", None, "The run's data folder, if it moved since training.")
    flags.DEFINE_boolean(
        "verify", False, "Export nothing: check the artifacts listed in <out_dir>/export.json."
    )
    flags.DEFINE_boolean("verbose", False, "Show tracebacks for bad-input errors.")


def main(argv: list[str]) -> int:
    import logging
    import sys

    from absl import flags

    from tl_keras import cli

    FLAGS = flags.FLAGS
    log = logging.getLogger("tl_keras")
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; every setting is a --flag", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    cli.setup_logging()

    def show(report: ParityReport) -> None:
        log.info(
            "parity %s: %s on %d images, max |diff| %.2g, mean %.2g, top-1 agreement %.1f%%",
            "ok" if report.passed else "FAILED",
            Path(report.path).name,
            report.num_images,
            report.max_abs_diff,
            report.mean_abs_diff,
            100 * report.top1_agreement,
        )

    def body() -> int:
        if not FLAGS.workdir:
            raise ExportError("--workdir is required: the folder of a training run")
        common = dict(phase=FLAGS.phase, data_dir=FLAGS.data_dir, out_dir=FLAGS.out_dir)
        if FLAGS.verify:
            for report in verify_workdir(
                FLAGS.workdir, num_parity_images=FLAGS.parity_images, **common
            ):
                show(report)
            log.info("verified: every artifact reproduces the model")
            return cli.EXIT_OK
        quantization = None if FLAGS.quantization == "none" else FLAGS.quantization
        manifest = export_workdir(
            FLAGS.workdir,
            formats=FLAGS.formats,
            quantization=quantization,
            num_parity_images=FLAGS.parity_images,
            **common,
        )
        out = Path(FLAGS.out_dir or os.path.join(manifest["workdir"], "export"))
        for name, entry in manifest["artifacts"].items():
            if entry["format"] not in FLAGS.formats or entry["quantization"] != quantization:
                continue  # from an earlier export into the same folder
            if entry["parity"]:
                show(ParityReport(**entry["parity"]))
            if "accuracy" in entry:
                acc = entry["accuracy"]
                log.info(
                    "accuracy on %d validation images: keras %.4f, %s %.4f (drop %.4f), "
                    "top-1 agreement %.1f%%",
                    acc["num_examples"],
                    acc["keras_accuracy"],
                    name,
                    acc["tflite_accuracy"],
                    acc["accuracy_drop"],
                    100 * acc["top1_agreement"],
                )
            print(f"{out / name}  ({entry['bytes']:,} bytes)")
        print(f"{out / MANIFEST_FILE}")
        return cli.EXIT_OK

    return cli.report_errors(body, verbose=FLAGS.verbose)


def run_main() -> None:
    """Entry point of `python -m tl_keras.export` (flags are defined only here)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run_main()
