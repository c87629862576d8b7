"""What a strategy comparison says, and how sure it is: the table, the paired intervals, the plot.

`compare` (`tl_keras.training.compare`) trains every strategy on every seed and hands each run's
per-image right / wrong answers here. For each strategy: its accuracy, balanced accuracy and
macro F1 on the evaluation split (mean and standard deviation over seeds). For each pair of
strategies (A after B in the order given), the difference A - B in accuracy with two 95%
intervals, both paired (`tl_keras.stats`):

* over seeds: the paired t-interval of the per-seed differences (it measures how much the
  training run itself varies; it needs 2 seeds or more);
* over images: the paired bootstrap over the evaluation images of every seed (each image scored
  by both strategies of the same seed; it measures how much a different set of images would
  move the figure).

The verdict is conservative: "A beats B" only when every interval there is excludes 0 on the
same side; otherwise it says "within noise" and which interval contains 0. With one seed the
training-run spread is not measured, and the verdict says so.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from tl_keras import stats

SCORES = ("accuracy", "balanced_accuracy", "macro_f1")


@dataclasses.dataclass
class StrategyResult:
    """One row of the comparison: one strategy over every seed.

    `final_val_accuracy`, `best_val_accuracy` and `wall_time_s` are means over the seeds (each
    seed's in `per_seed`); `phases`, `epochs_run`, `best_epoch`, `trainable_params` and
    `workdir` are the first seed's. `scores`: accuracy, balanced accuracy and macro F1 of the
    final model on the evaluation split, each {'mean', 'std', 'n'}.
    """

    strategy: str
    phases: str
    epochs_run: int
    final_val_accuracy: float | None
    best_val_accuracy: float | None
    best_epoch: int | None
    wall_time_s: float
    trainable_params: int
    workdir: str
    seeds: list[int] = dataclasses.field(default_factory=list)
    per_seed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    scores: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Comparison:
    """What `compare` did: one row per strategy, the paired differences, where the files are."""

    rows: list[StrategyResult]
    budget: int
    workdir: str
    histories: dict = dataclasses.field(default_factory=dict, repr=False)  # the first seed's
    seeds: list[int] = dataclasses.field(default_factory=list)
    eval_split: str = "val"
    differences: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    descriptions: dict[str, str] = dataclasses.field(default_factory=dict)
    all_histories: dict = dataclasses.field(default_factory=dict, repr=False)  # name -> [seed]

    def to_markdown(self) -> str:
        done = [s for s in self.seeds if all(s in r.seeds for r in self.rows)] or self.seeds
        n, seeds = len(done), ", ".join(map(str, done))
        lines = [
            f"Scores of each final model on the {self.eval_split} split, over {n} seed"
            f"{'s' * (n != 1)} ({seeds}): mean" + (" ± standard deviation" if n > 1 else "") + ".",
            "",
            "| strategy | phases (epochs) | accuracy | balanced accuracy | macro F1 | "
            "best val acc (epoch) | wall time | trainable params |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            best = (
                f"{r.best_val_accuracy:.4f} ({r.best_epoch})"
                if r.best_val_accuracy is not None
                else "-"
            )
            scores = " | ".join(_spread(r.scores.get(k)) for k in SCORES)
            lines.append(
                f"| {r.strategy} | {r.phases} | {scores} | {best} | {r.wall_time_s:.0f} s | "
                f"{r.trainable_params:,} |"
            )
        if self.differences:
            lines += [
                "",
                "Differences in accuracy (points), 95% intervals, paired: over seeds (t) and over "
                f"the {self.eval_split} images of every seed (bootstrap).",
                "",
                "| difference | mean | over seeds | over images | verdict |",
                "|---|---|---|---|---|",
            ]
            for d in self.differences:
                lines.append(
                    f"| {d['a']} - {d['b']} | {100 * d['difference']:+.1f} | "
                    f"{_interval(d['over_seeds'])} | {_interval(d['over_images'])} | "
                    f"{d['verdict']} |"
                )
        notes = [f"- `{r.strategy}`: {self.descriptions.get(r.strategy, '')}" for r in self.rows]
        return "\n".join(lines + ["", *notes]) + "\n"

    def to_dict(self) -> dict:
        return {
            "budget_epochs": self.budget,
            "seeds": self.seeds,
            "eval_split": self.eval_split,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "differences": self.differences,
        }


def _spread(s: dict | None) -> str:
    if not s:
        return "-"
    return f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s.get("std") is not None else "")


def _interval(i: dict | None) -> str:
    if not i or i.get("low") is None:
        return "-"
    return f"[{100 * i['low']:+.1f}, {100 * i['high']:+.1f}]"


def seed_scores(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro F1 of one run (`tl_keras.metrics`' definitions)."""
    from tl_keras import metrics

    report = metrics.classification_report(labels, predicted, num_classes)
    return {k: report[k] for k in SCORES}


def summarize(row: StrategyResult) -> None:
    """Fills a row's means over seeds and its score spreads from `per_seed`."""
    first = row.per_seed[0]
    for key in ("final_val_accuracy", "best_val_accuracy"):
        values = [s[key] for s in row.per_seed if s[key] is not None]
        setattr(row, key, float(np.mean(values)) if values else None)
    row.wall_time_s = round(float(np.mean([s["wall_time_s"] for s in row.per_seed])), 1)
    row.workdir, row.seeds = first["workdir"], [s["seed"] for s in row.per_seed]
    row.scores = {k: stats.mean_std([s[k] for s in row.per_seed]).to_dict() for k in SCORES}


def differences(rows: list[StrategyResult], correct: dict[str, list[np.ndarray]]) -> list[dict]:
    """Every pair (A later in the order than B): A - B in accuracy, both intervals, a verdict.

    Args:
      rows: the strategies, in the order given.
      correct: strategy -> one boolean array per seed (each image right or wrong), the same
        images in the same order for every strategy of a seed.
    """
    out = []
    for i, a in enumerate(rows):
        for b in rows[:i]:
            per_seed_a = [s["accuracy"] for s in a.per_seed]
            per_seed_b = [s["accuracy"] for s in b.per_seed]
            seeds = stats.paired_t_interval(per_seed_a, per_seed_b)
            images = stats.paired_bootstrap(
                np.concatenate(correct[a.strategy]), np.concatenate(correct[b.strategy])
            )
            out.append(
                {
                    "a": a.strategy,
                    "b": b.strategy,
                    "difference": float(np.mean(per_seed_a) - np.mean(per_seed_b)),
                    "over_seeds": seeds.to_dict(),
                    "over_images": images.to_dict(),
                    "verdict": verdict(a.strategy, b.strategy, seeds, images),
                }
            )
    return out


def verdict(a: str, b: str, seeds: stats.PairedInterval, images: stats.PairedInterval) -> str:
    """One plain sentence: a winner only when every interval there agrees."""
    measured = [(n, i) for n, i in (("seeds", seeds), ("images", images)) if i.low is not None]
    d = 100 * (seeds.difference if seeds.low is not None else images.difference)
    one_seed = "" if seeds.low is not None else " (one seed: run-to-run spread not measured)"
    if all(i.low > 0 for _, i in measured):
        return f"{a} beats {b} by {d:.1f} points{one_seed}"
    if all(i.high < 0 for _, i in measured):
        return f"{b} beats {a} by {-d:.1f} points{one_seed}"
    noisy = [n for n, i in measured if not i.significant]
    where = f"the interval over {' and '.join(noisy)} contains 0" if noisy else "they disagree"
    return f"within noise ({d:+.1f} points; {where}){one_seed}"


def plot_comparison(comparison: Comparison, path: str | None = None, *, title: str = ""):
    """One figure: validation accuracy and loss of every strategy, phase boundaries marked.

    With several seeds, each seed's curve is drawn thinner in its strategy's colour (the label
    and the boundaries are the first seed's).

    Returns:
      The matplotlib Figure.
    """
    from matplotlib.ticker import MaxNLocator

    from tl_keras.plotting import PHASE_COLORS, new_figure, save_figure
    from tl_keras.training.curves import BOUNDARY_GID

    fig = new_figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    for i, (name, history) in enumerate(comparison.histories.items()):
        color = PHASE_COLORS[i % len(PHASE_COLORS)]
        for ax, metric in zip(axes, ("val_accuracy", "val_loss"), strict=True):
            ax.plot(
                history.epochs, _finite(history.metric(metric)), marker=".", color=color, label=name
            )
            for other in comparison.all_histories.get(name, [])[1:]:
                ax.plot(
                    other.epochs,
                    _finite(other.metric(metric)),
                    color=color,
                    linewidth=0.6,
                    alpha=0.5,
                )
            for x in history.boundaries():
                ax.axvline(x, color=color, linestyle=":", linewidth=1, gid=BOUNDARY_GID)
    for ax, metric in zip(axes, ("validation accuracy", "validation loss"), strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(f"{title} (dotted: phase boundaries)")
    fig.tight_layout()
    if path:
        save_figure(fig, path)
    return fig


def _finite(values) -> list:
    return [v if v is not None and math.isfinite(v) else None for v in values]


__all__ = [
    "Comparison",
    "StrategyResult",
    "differences",
    "plot_comparison",
    "seed_scores",
    "summarize",
    "verdict",
]
