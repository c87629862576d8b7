"""Command line: `python -m tl_keras.export --workdir=DIR [--formats=...] [--quantization=...] [--verify]`.

A thin layer over `tl_keras.inference.export.export_workdir` and `verify_workdir`:

  python -m tl_keras.export --workdir=runs/b0 --formats=saved_model,tflite,onnx
  python -m tl_keras.export --workdir=runs/b0 --formats=tflite --quantization=float16
  python -m tl_keras.export --workdir=runs/b0 --verify

A parity failure prints one `error:` line and exits 1; bad input exits 2.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tl_keras.cli import common
from tl_keras.inference import export as export_lib

log = logging.getLogger("tl_keras")


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Folder of a training run (its final model is used).")
    flags.DEFINE_list(
        "formats",
        ["saved_model", "tflite"],
        f"Comma-separated, any of {', '.join(export_lib.FORMATS)}.",
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
        export_lib.DEFAULT_PARITY_IMAGES,
        "Validation images each artifact is checked on; 0 skips the check.",
    )
    flags.DEFINE_string("data_dir", None, "The run's data folder, if it moved since training.")
    flags.DEFINE_boolean(
        "verify", False, "Export nothing: check the artifacts listed in <out_dir>/export.json."
    )
    common.define_verbose()
    common.define_trust_flag()


def main(argv: list[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    common.setup_logging()

    def body() -> int:
        common.no_arguments(argv)
        common.require_workdir(FLAGS.workdir, "the folder of a training run")
        where = dict(
            phase=FLAGS.phase,
            data_dir=FLAGS.data_dir,
            out_dir=FLAGS.out_dir,
            trust_code=FLAGS.trust_model_code,
        )
        if FLAGS.verify:
            for report in export_lib.verify_workdir(
                FLAGS.workdir, num_parity_images=FLAGS.parity_images, **where
            ):
                _show(report)
            log.info("verified: every artifact reproduces the model")
            return common.EXIT_OK
        quantization = None if FLAGS.quantization == "none" else FLAGS.quantization
        manifest = export_lib.export_workdir(
            FLAGS.workdir,
            formats=FLAGS.formats,
            quantization=quantization,
            num_parity_images=FLAGS.parity_images,
            **where,
        )
        _print_made(manifest, FLAGS.formats, quantization, FLAGS.out_dir)
        return common.EXIT_OK

    return common.report_errors(body, verbose=FLAGS.verbose)


def _show(report) -> None:
    log.info(
        "parity %s: %s on %d images, max |diff| %.2g, mean %.2g, top-1 agreement %.1f%%",
        "ok" if report.passed else "FAILED",
        Path(report.path).name,
        report.num_images,
        report.max_abs_diff,
        report.mean_abs_diff,
        100 * report.top1_agreement,
    )


def _print_made(manifest: dict, formats: list[str], quantization, out_dir: str | None) -> None:
    """Logs each artifact this export made (parity, accuracy) and prints its path and size."""
    out = Path(out_dir or os.path.join(manifest["workdir"], "export"))
    for name, entry in manifest["artifacts"].items():
        if entry["format"] not in formats or entry["quantization"] != quantization:
            continue  # from an earlier export into the same folder
        if entry["parity"]:
            _show(export_lib.ParityReport(**entry["parity"]))
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
    print(f"{out / export_lib.MANIFEST_FILE}")


def run_main() -> None:
    """Entry point of `python -m tl_keras.export`."""
    common.run_main(define_flags, main)
