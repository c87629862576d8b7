"""Training curves across phases, with each phase shaded and every switch marked.

The boundary line and the spans come from `History.spans()`, i.e. from the epochs that actually
ran, so a phase cut short by early stopping is drawn where it really ended.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tl_keras import io  # noqa: E402
from tl_keras.history import History  # noqa: E402

PHASE_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
BOUNDARY_GID = "phase-boundary"  # matplotlib gid, so tests and tools can find the lines
SPAN_GID = "phase-span"


def plot_history(
    history: History,
    path: str | None = None,
    *,
    metrics: tuple[str, ...] = ("accuracy", "loss"),
    show_lr: bool = False,
    title: str | None = None,
) -> Figure:
    """Plots train and validation curves of each metric, phases shaded, boundaries marked.

    Args:
      history: the stitched history.
      path: where to save a PNG (written atomically); None = do not save.
      metrics: metrics to draw, one panel each; their 'val_' versions are drawn dashed.
      show_lr: add a panel with the learning rate per epoch (log scale).
      title: figure title.

    Returns:
      The matplotlib Figure (closed from pyplot's registry, so figures do not pile up).
    """
    panels = [m for m in metrics if any(v is not None for v in history.metric(m))]
    if show_lr:
        panels.append("lr")
    fig, axes = plt.subplots(
        1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4), squeeze=False
    )
    epochs = history.epochs
    spans = history.spans()
    for ax, name in zip(axes[0], panels, strict=False):
        for i, span in enumerate(spans):
            ax.axvspan(
                span.first - 0.5,
                span.last + 0.5,
                color=PHASE_COLORS[i % len(PHASE_COLORS)],
                alpha=0.08,
                gid=SPAN_GID,
                label=None,
            )
        for x in history.boundaries():
            ax.axvline(x, color="0.25", linestyle=":", linewidth=1.5, gid=BOUNDARY_GID)
        if name == "lr":
            lrs = history.metric("lr")
            ax.plot(epochs, lrs, marker=".", color="0.2", label="learning rate")
            positive = [v for v in lrs if v is not None and v > 0]
            if positive and len(positive) < len([v for v in lrs if v is not None]):
                # A warm-up's first epoch starts at 0, which a log axis cannot show: linear
                # below the smallest positive rate, logarithmic above it.
                ax.set_yscale("symlog", linthresh=min(positive))
            elif positive:
                ax.set_yscale("log")
        else:
            ax.plot(epochs, history.metric(name), marker=".", label=f"train {name}")
            val = history.metric(f"val_{name}")
            if any(v is not None for v in val):
                ax.plot(epochs, val, marker=".", linestyle="--", label=f"validation {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        # Label each phase at the top of its span, in axes coordinates so it never hides data.
        transform = ax.get_xaxis_transform()
        for span in spans:
            ax.text(
                (span.first + span.last) / 2,
                1.01,
                f"{span.phase} ({span.epochs} ep)",
                transform=transform,
                ha="center",
                va="bottom",
                fontsize=8,
            )
        if epochs:
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path:
        save_figure(fig, path)
    plt.close(fig)
    return fig


def save_figure(fig: Figure, path: str, dpi: int = 110) -> None:
    """Saves a figure atomically (the format follows the path's suffix)."""
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.rsplit(".", 1)[-1])
