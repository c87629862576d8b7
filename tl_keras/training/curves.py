"""Training curves across phases, with each phase shaded and every switch marked (`plot_history`).

The boundary line and the spans come from `History.spans()`, i.e. from the epochs that actually
ran, so a phase cut short by early stopping is drawn where it really ended. Epochs are whole
numbers on the axis; the learning rate is drawn as what it is, one rate per epoch (the rate its
first step used), so a phase switch shows as a step at the boundary, never as a slope across
it; the epoch whose weights a phase handed on, when not its last (early stopping, rollback), is
ringed on the validation curves (`History.kept`).
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tl_keras.plotting import PHASE_COLORS, new_figure, save_figure
from tl_keras.training.history import History

BOUNDARY_GID = "phase-boundary"  # matplotlib gid, so tests and tools can find the lines
SPAN_GID = "phase-span"
KEPT_GID = "kept-weights"
LR_GID = "learning-rate"
SPAN_ALPHA = 0.2  # phase shading: visible on screen and in print, curves still on top


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
      The matplotlib Figure (on its own Agg canvas, never in pyplot's registry: in a notebook,
      `display(fig)` shows it).
    """
    panels = [m for m in metrics if any(v is not None for v in history.metric(m))]
    if show_lr:
        panels.append("lr")
    fig = new_figure(figsize=(5.5 * max(len(panels), 1), 4))
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=False):
        _shade_phases(ax, history)
        if name == "lr":
            _plot_lr(ax, history)
        else:
            _plot_metric(ax, history, name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        # Whole epochs only: a 3-epoch run gets ticks 1, 2, 3, never 1.5.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if history.epochs:
            ax.set_xlim(history.epochs[0] - 0.5, history.epochs[-1] + 0.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path:
        save_figure(fig, path)
    return fig


def _shade_phases(ax, history: History) -> None:
    """Each phase's epochs shaded in its colour, a dotted line at every switch, the phase names
    above the panel (in axes coordinates, so they never hide data)."""
    spans = history.spans()
    for i, span in enumerate(spans):
        ax.axvspan(
            span.first - 0.5,
            span.last + 0.5,
            color=PHASE_COLORS[i % len(PHASE_COLORS)],
            alpha=SPAN_ALPHA,
            linewidth=0,
            gid=SPAN_GID,
            label=None,
        )
    for x in history.boundaries():
        ax.axvline(x, color="0.2", linestyle=":", linewidth=1.8, gid=BOUNDARY_GID)
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


def _plot_metric(ax, history: History, name: str) -> None:
    epochs = history.epochs
    ax.plot(epochs, history.metric(name), marker=".", label=f"train {name}")
    val = history.metric(f"val_{name}")
    shown = val if any(v is not None for v in val) else history.metric(name)
    if shown is val:
        ax.plot(epochs, val, marker=".", linestyle="--", label=f"validation {name}")
    for i, kept in enumerate(history.kept):
        if kept.epoch not in epochs or shown[epochs.index(kept.epoch)] is None:
            continue
        ax.plot(
            [kept.epoch],
            [shown[epochs.index(kept.epoch)]],
            linestyle="none",
            marker="o",
            markersize=11,
            markerfacecolor="none",
            markeredgecolor="black",
            markeredgewidth=1.6,
            gid=KEPT_GID,
            label="weights kept" if i == 0 else None,
        )
        ax.annotate(
            f"kept ({kept.reason})",
            (kept.epoch, shown[epochs.index(kept.epoch)]),
            xytext=(0, -16),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"},
        )


def _plot_lr(ax, history: History) -> None:
    """One rate per epoch, drawn flat over the epoch: a step at every change, and so at every
    phase switch a vertical step at the boundary itself."""
    epochs, lrs = history.epochs, history.metric("lr")
    if epochs:
        edges = [e - 0.5 for e in epochs] + [epochs[-1] + 0.5]
        ax.plot(
            edges,
            [*lrs, lrs[-1]],
            drawstyle="steps-post",
            color="0.2",
            gid=LR_GID,
            label="learning rate",
        )
    positive = [v for v in lrs if v is not None and v > 0]
    if positive and len(positive) < len([v for v in lrs if v is not None]):
        # A warm-up's first epoch starts at 0, which a log axis cannot show: linear
        # below the smallest positive rate, logarithmic above it.
        ax.set_yscale("symlog", linthresh=min(positive))
    elif positive:
        ax.set_yscale("log")


__all__ = ["BOUNDARY_GID", "KEPT_GID", "LR_GID", "SPAN_GID", "plot_history"]
