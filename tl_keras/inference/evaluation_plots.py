"""The figures of an evaluation: the confusion matrix (counts, and rows normalised to recall)
and the gallery of the most confident mistakes; drawn on their own Agg canvas
(`tl_keras.plotting.new_figure`), each written atomically.
"""

from __future__ import annotations

import math

import numpy as np

from tl_keras.inference.evaluation import Evaluation
from tl_keras.plotting import new_figure, save_figure


def plot_confusion_matrix(evaluation: Evaluation, path: str | None = None):
    """Draws the confusion matrix twice: counts, and rows normalised (recall on the diagonal).

    Args:
      evaluation: what `evaluate` returned.
      path: PNG to write (atomically); None = do not save.

    Returns:
      The matplotlib Figure.
    """
    names = evaluation.class_names
    n = len(names)
    side = min(4 + 0.45 * n, 14)
    fig = new_figure(figsize=(2 * side + 1.5, side))
    axes = fig.subplots(1, 2, squeeze=False)
    panels = (
        (evaluation.confusion, "counts", "d"),
        (evaluation.normalized_confusion(), "normalised by true class (row = recall)", ".2f"),
    )
    for ax, (matrix, title, fmt) in zip(axes[0], panels, strict=True):
        vmax = max(float(matrix.max()), 1e-9)
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(
            range(n), names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center"
        )
        ax.set_yticks(range(n), names)
        if n <= 25:  # beyond that the numbers are unreadable; the colours still tell
            for (i, j), value in np.ndenumerate(matrix):
                ax.text(
                    j,
                    i,
                    format(value, fmt),
                    ha="center",
                    va="center",
                    fontsize=8 if n > 10 else 10,
                    color="white" if value > 0.6 * vmax else "black",
                )
    fig.suptitle(
        f"{evaluation.num_images} images, accuracy {evaluation.accuracy:.3f}, "
        f"{evaluation.num_errors} errors"
    )
    fig.tight_layout()
    if path:
        save_figure(fig, path)
    return fig


def plot_confident_errors(evaluation: Evaluation, path: str | None = None, *, columns: int = 4):
    """Draws the most confident mistakes, each titled with its true and predicted class.

    Args:
      evaluation: what `evaluate` returned (with images kept in `confident_errors`).
      path: PNG to write (atomically); None = do not save.
      columns: images per row.

    Returns:
      The matplotlib Figure.
    """
    errors = [e for e in evaluation.confident_errors if e.image is not None]
    if not errors:
        fig = new_figure(figsize=(5, 1.5), layout="constrained")
        ax = fig.subplots()
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            f"no misclassified images among {evaluation.num_images}",
            ha="center",
            va="center",
        )
    else:
        cols = min(columns, len(errors))
        rows = math.ceil(len(errors) / cols)
        # Constrained layout sizes the gaps from the captions themselves, so a three-line
        # caption never runs into the image above it (tight_layout let them overlap).
        fig = new_figure(figsize=(2.6 * cols, 3.2 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, error in zip(axes.ravel(), errors, strict=False):
            ax.imshow(error.image)
            ax.set_title(
                f"true {error.true_class}\npredicted {error.predicted_class} "
                f"({error.confidence:.2f})\n{_shorten(error.where, CAPTION_CHARS)}",
                fontsize=8,
                color="firebrick",
            )
        fig.suptitle(f"Most confident mistakes ({len(errors)} of {evaluation.num_errors})")
    if path:
        save_figure(fig, path)
    return fig


CAPTION_CHARS = 30  # a caption line longer than this would run into its neighbour's


def _shorten(text: str, limit: int) -> str:
    """`text`, or its start and end around an ellipsis when longer than `limit` characters."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head) :]}"


__all__ = ["plot_confident_errors", "plot_confusion_matrix"]
