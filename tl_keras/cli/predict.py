"""Command line: `python -m tl_keras.predict --workdir=DIR [--top_k=K] [--output=F.csv|.json] PATH...`.

A thin layer over `tl_keras.inference.predict.predict_workdir`: one row per image file, on
stdout (the log goes to stderr) or in `--output`. A file that is not an image is reported on its
own row and on stderr; the command fails only when no file at all could be read.

  python -m tl_keras.predict --workdir=runs/b0 photo.jpg more_photos/
  python -m tl_keras.predict --workdir=runs/b0 --top_k=3 --output=predictions.csv more_photos/
"""

from __future__ import annotations

import sys

from tl_keras.cli import common
from tl_keras.errors import DataError
from tl_keras.inference import predict as predict_lib


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Folder of a training run (its final model is used).")
    flags.DEFINE_integer(
        "top_k", predict_lib.DEFAULT_TOP_K, "Labels per image, most probable first."
    )
    flags.DEFINE_string(
        "output", None, "Write to this .csv or .json file instead of printing a table."
    )
    flags.DEFINE_string("phase", None, "Use this phase's model (default: the final one).")
    flags.DEFINE_integer("batch_size", predict_lib.DEFAULT_BATCH_SIZE, "Images per forward pass.")
    common.define_verbose()
    common.define_trust_flag()


def main(argv: list[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    common.setup_logging(stream=sys.stderr)  # stdout carries the predictions only

    def body() -> int:
        common.require_workdir(FLAGS.workdir, "the folder of a training run")
        if FLAGS.output:  # a bad suffix fails before the model loads
            predict_lib.check_output(FLAGS.output)
        predictions = predict_lib.predict_workdir(
            FLAGS.workdir,
            argv[1:],
            phase=FLAGS.phase,
            top_k=FLAGS.top_k,
            batch_size=FLAGS.batch_size,
            trust_code=FLAGS.trust_model_code,
        )
        failed = [p for p in predictions if not p.ok]  # each was logged on stderr
        if FLAGS.output:
            predict_lib.write_predictions(predictions, FLAGS.output)
            print(
                f"{len(predictions) - len(failed)} of {len(predictions)} files classified, "
                f"written to {FLAGS.output}",
                file=sys.stderr,
            )
        else:
            sys.stdout.write(predict_lib.to_text(predictions))
        if len(failed) == len(predictions):
            raise DataError(f"none of the {len(predictions)} files could be read as an image")
        return common.EXIT_OK

    return common.report_errors(body, verbose=FLAGS.verbose)


def run_main() -> None:
    """Entry point of `python -m tl_keras.predict`."""
    common.run_main(define_flags, main)
