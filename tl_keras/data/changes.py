"""Image files that changed while a run read them: named when a read inside `fit` fails.

Every image is decoded once before training (`tl_keras.data.pipeline`), so a file that cannot
be read later was removed, emptied or rewritten while the run went on (a sync tool, a cleanup
script, a colleague). TensorFlow's error names at most a missing file; `changed_files` looks at
the files again and names them, so the run can stop with one line instead of a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf

from tl_keras.data.bundle import shown
from tl_keras.data.images import decode as _decode
from tl_keras.data.images import tf_error_text as _tf_error_text

# TensorFlow ops whose failure inside `fit` means an image file could not be read or decoded.
_READ_OPS = ("ReadFile", "DecodeImage", "DecodeJpeg", "DecodePng", "DecodeBmp", "DecodeGif")


def changed_files(error: Exception, files: Sequence[str], *, limit: int = 5) -> str | None:
    """When a TensorFlow error raised in `fit` came from reading an image file: which files
    changed since the decode check (removed, emptied, no longer decodable), in words; else None.

    The error itself names at most a missing file, so the files are looked at again: first
    whether each still exists with content, then, if that finds nothing, whether it decodes.
    """
    text = getattr(error, "message", None) or str(error)
    if not (isinstance(error, tf.errors.NotFoundError) or any(op in text for op in _READ_OPS)):
        return None
    found = []
    for path in files:
        try:
            if os.path.getsize(path) == 0:
                found.append(f"{path} (now empty)")
        except OSError:
            found.append(f"{path} (removed)")
        if len(found) >= limit:
            break
    for path in files if not found else ():
        try:
            _decode(tf.io.read_file(path))
        except (tf.errors.OpError, ValueError) as e:
            found.append(f"{path} ({_tf_error_text(e)})")
            if len(found) >= limit:
                break
    return shown(found) if found else f"an image file ({_tf_error_text(error)})"
