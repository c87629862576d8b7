"""What every figure of the package shares: its own Agg canvas (`new_figure`), the atomic write
(`save_figure`), the phases' palette, and the reliability diagrams that the run's calibration and
`evaluate` both draw (`plot_reliability`). The training curves are `tl_keras.training.curves`.

Figures are drawn on their own Agg canvas (`new_figure`), never through pyplot: the package
does not choose the program's matplotlib backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tl_keras import io

# One colour per phase, in order: the training curves, the comparison plot, notebook 3.
PHASE_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def new_figure(**kwargs) -> Figure:
    """A matplotlib Figure on its own Agg canvas, outside pyplot.

    The package draws only through these: it never chooses the program's matplotlib backend
    (`matplotlib.use`) nor leaves figures in pyplot's registry, so a notebook's own
    `plt.show()` after `train()` still shows inline, and nothing piles up in a long run.
    """
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str, dpi: int = 110) -> None:
    """Saves a figure atomically (the format follows the path's suffix)."""
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.rsplit(".", 1)[-1])


# --- calibration ----------------------------------------------------------------------------------
def plot_reliability(
    diagrams: Sequence[dict[str, Any]],
    path: str | None = None,
    *,
    titles: Sequence[str] | None = None,
    suptitle: str = "",
):
    """Reliability diagrams side by side (e.g. before and after temperature scaling).

    Each panel: the accuracy of every confidence bin (bars), the gap to its mean confidence
    (red), the diagonal of perfect calibration, and the ECE. Drawn on a matplotlib `Figure` with
    the Agg canvas, so it never touches pyplot's global state or needs a display.

    Args:
      diagrams: `tl_keras.calibration.reliability_diagram` results.
      path: PNG to write (atomically); None = do not save.
      titles: one per panel; default 'ECE x.x%'.
      suptitle: figure title.

    Returns:
      The matplotlib Figure.
    """
    fig = new_figure(figsize=(4.6 * len(diagrams), 4.4))
    axes = fig.subplots(1, len(diagrams), squeeze=False)[0]
    for i, (ax, d) in enumerate(zip(axes, diagrams, strict=True)):
        width = 1.0 / d["n_bins"]
        lefts = [b["lower"] for b in d["bins"] if b["count"]]
        accs = [b["accuracy"] for b in d["bins"] if b["count"]]
        confs = [b["confidence"] for b in d["bins"] if b["count"]]
        ax.bar(
            lefts,
            accs,
            width=width,
            align="edge",
            color="#4c72b0",
            edgecolor="white",
            label="accuracy",
        )
        ax.bar(
            lefts,
            [c - a for a, c in zip(accs, confs, strict=True)],
            bottom=accs,
            width=width,
            align="edge",
            color="#c44e52",
            alpha=0.35,
            edgecolor="#c44e52",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.3", linewidth=1, label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        default = f"ECE {100 * d['ece']:.1f}%  ({d['num_images']} images)"
        ax.set_title(titles[i] if titles else default, fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    if path:
        save_figure(fig, path)
    return fig
