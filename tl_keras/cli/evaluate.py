"""Command line: `python -m tl_keras.evaluate --workdir=DIR [--data_dir=FOLDER | --split=test|val]`.

A thin layer over `tl_keras.inference.evaluate.evaluate_workdir`: prints the summary and the
files written (metrics.json, confusion_matrix.png, confident_errors.png).

  python -m tl_keras.evaluate --workdir=runs/b0 --data_dir=photos_test/   # a held-out folder
  python -m tl_keras.evaluate --workdir=runs/b0 --split=test              # the data's test split
  python -m tl_keras.evaluate --workdir=runs/b0 --split=val               # the validation split
"""

from __future__ import annotations

from tl_keras.cli import common
from tl_keras.inference import evaluate as evaluate_lib


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Folder of a training run (its final model is used).")
    flags.DEFINE_string(
        "data_dir", None, "Image-folder tree to evaluate whole (the model's classes)."
    )
    flags.DEFINE_enum(
        "split",
        None,
        list(evaluate_lib.SPLITS),
        "Split of the workdir's data: test (default) or val.",
    )
    flags.DEFINE_string("phase", None, "Evaluate this phase's model (default: the final one).")
    flags.DEFINE_string("out_dir", None, "Output folder [default: <workdir>/evaluation/<data>].")
    flags.DEFINE_integer(
        "top_k",
        evaluate_lib.DEFAULT_TOP_K,
        "k of the top-k accuracy (at most classes - 1); 0 = top-5 from 20 classes, top-3 from "
        "12, top-2 from 8, else top-1 only.",
    )
    flags.DEFINE_integer(
        "num_errors", evaluate_lib.DEFAULT_NUM_ERRORS, "Confident mistakes in the gallery."
    )
    flags.DEFINE_integer("batch_size", evaluate_lib.DEFAULT_BATCH_SIZE, "Images per forward pass.")
    common.define_trust_flag()
    common.define_verbose()


def main(argv: list[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    common.setup_logging()

    def body() -> int:
        common.no_arguments(argv)
        common.require_workdir(FLAGS.workdir, "the folder of a training run")
        evaluation = evaluate_lib.evaluate_workdir(
            FLAGS.workdir,
            data_dir=FLAGS.data_dir,
            split=FLAGS.split,
            phase=FLAGS.phase,
            out_dir=FLAGS.out_dir,
            top_k=FLAGS.top_k,
            num_errors=FLAGS.num_errors,
            batch_size=FLAGS.batch_size,
            trust_code=FLAGS.trust_model_code,
        )
        print(evaluation.summary())
        for name, path in evaluation.paths.items():
            print(f"{name}: {path}")
        return common.EXIT_OK

    return common.report_errors(body, verbose=FLAGS.verbose)


def run_main() -> None:
    """Entry point of `python -m tl_keras.evaluate`."""
    common.run_main(define_flags, main)
