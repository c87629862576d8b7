"""Strategy comparison: the same data, seed and epoch budget, four ways to train.

    python -m tl_keras.compare --config=configs/compare_flowers.toml --workdir=runs/compare_flowers

(the command is `tl_keras.cli.compare`, a thin layer over `compare` here.)

The budget is `epochs_fe + epochs_ft` of the config, and every strategy gets exactly that many
epochs (early stopping, if the config asks for it, may end a phase sooner):

* `scratch`: random weights, the whole base and head train from the first step, BatchNorm
  included, at `lr` for the whole budget. From scratch there are no ImageNet statistics to
  protect, and a network whose BatchNorm layers stay at their initial statistics cannot learn, so
  here (and only here) `bn_policy = "train"` and the learning-rate factor rule does not apply.
* `fe`: feature extraction only: the pretrained base frozen, the head trains for the budget.
* `fe_ft`: `fe` for `epochs_fe`, then fine-tuning (`unfreeze`, `lr / ft_lr_factor`) for
  `epochs_ft`: the package's default recipe.
* `gradual`: the config's `stages` (gradual unfreezing), whose epochs must add up to the budget.

Each strategy runs `tl_keras.train` in `<workdir>/<strategy>/` (its own history, curves and
models), all on one `DataBundle` (the same split and the same order of batches, a pure function of
(seed, epoch)). The comparison writes `comparison.md` (a table), `comparison.json` and
`comparison.png` (validation accuracy and loss of every strategy over the epochs, each
strategy's phase boundaries marked).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence

from tl_keras import config as config_lib
from tl_keras import io, recipe
from tl_keras.config import Config
from tl_keras.errors import ConfigError, TLKerasError, WorkdirError

log = logging.getLogger("tl_keras")


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One way to train, derived from the comparison's config and its epoch budget."""

    name: str
    description: str
    make: Callable[[Config, int], Config]


def epoch_budget(config: Config) -> int:
    """The epochs every strategy gets: `epochs_fe + epochs_ft` (manual defaults for 'auto')."""
    config = config_lib.filled(config)
    return config.epochs_fe + config.epochs_ft


def _scratch(config: Config, budget: int) -> Config:
    return dataclasses.replace(
        config,
        weights="none",
        bn_policy="train",
        stages=f"scratch:all:{budget}:/1",
        allow_any_lr_factor=True,  # nothing pretrained to protect: everything trains at lr
        layer_decay=1.0,
        fe_switch_patience=0,
        rollback="",
    )


def _fe(config: Config, budget: int) -> Config:
    return dataclasses.replace(config, stages=f"fe:none:{budget}", rollback="")


def _fe_ft(config: Config, budget: int) -> Config:
    return dataclasses.replace(config, stages="")


def _gradual(config: Config, budget: int) -> Config:
    if not config.stages:
        raise ConfigError(
            "strategy 'gradual' needs `stages` in the config (gradual unfreezing), e.g. "
            f"'fe:none:{budget // 2},ft1:blocks:2:{budget // 4},ft2:blocks:4:"
            f"{budget - budget // 2 - budget // 4}'"
        )
    total = sum(s.epochs for s in recipe.parse_stages(config.stages))
    if total != budget:
        raise ConfigError(
            f"strategy 'gradual': the stages add up to {total} epochs but the budget "
            f"(epochs_fe + epochs_ft) is {budget}; every strategy needs the same budget, so "
            "change the stages' epochs or epochs_fe/epochs_ft"
        )
    return config


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "scratch", "random weights; base, head and BatchNorm train from the start", _scratch
        ),
        Strategy("fe", "feature extraction: pretrained base frozen, the head trains", _fe),
        Strategy("fe_ft", "fe for epochs_fe, then fine-tuning of `unfreeze` for epochs_ft", _fe_ft),
        Strategy("gradual", "gradual unfreezing: the config's stages", _gradual),
    )
}


def strategy_configs(config: Config, names: Sequence[str]) -> dict[str, Config]:
    """The validated config of each strategy (all checked before anything trains).

    Raises:
      ConfigError: an unknown strategy name, or a strategy's config that does not validate.
    """
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise ConfigError(
            f"strategies={','.join(names)!r}: unknown {', '.join(unknown) or '(none given)'}; "
            f"use a comma-separated list of {', '.join(STRATEGIES)}"
        )
    # Strategies compare ways to train at one epoch budget: their settings are fixed, not
    # decided per run (a setting left 'auto' takes recipe = "manual"'s default).
    config = dataclasses.replace(config_lib.filled(config), recipe="manual")
    budget = epoch_budget(config)
    if budget < 1:
        raise ConfigError("the epoch budget epochs_fe + epochs_ft must be at least 1")
    configs = {}
    for name in names:
        try:
            configs[name] = config_lib.validate(STRATEGIES[name].make(config, budget))
        except TLKerasError as e:
            raise type(e)(f"strategy {name!r}: {e}") from None
    return configs


@dataclasses.dataclass
class StrategyResult:
    """One row of the comparison."""

    strategy: str
    phases: str
    epochs_run: int
    final_val_accuracy: float | None
    best_val_accuracy: float | None
    best_epoch: int | None
    wall_time_s: float
    trainable_params: int
    workdir: str


@dataclasses.dataclass
class Comparison:
    """What `compare` did: one row per strategy and where its files are."""

    rows: list[StrategyResult]
    budget: int
    workdir: str
    histories: dict = dataclasses.field(default_factory=dict, repr=False)

    def to_markdown(self) -> str:
        lines = [
            "| strategy | phases (epochs) | final val acc | best val acc (epoch) | wall time | "
            "trainable params |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            best = (
                f"{r.best_val_accuracy:.4f} ({r.best_epoch})"
                if r.best_val_accuracy is not None
                else "-"
            )
            final = f"{r.final_val_accuracy:.4f}" if r.final_val_accuracy is not None else "-"
            lines.append(
                f"| {r.strategy} | {r.phases} | {final} | {best} | {r.wall_time_s:.0f} s | "
                f"{r.trainable_params:,} |"
            )
        notes = [f"- `{r.strategy}`: {STRATEGIES[r.strategy].description}" for r in self.rows]
        return "\n".join(lines + ["", *notes]) + "\n"

    def to_dict(self) -> dict:
        return {
            "budget_epochs": self.budget,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }


def compare(
    config: Config,
    workdir: str,
    *,
    strategies: Sequence[str] = tuple(STRATEGIES),
    overwrite: bool = False,
    data=None,
) -> Comparison:
    """Trains each strategy on the same data, seed and epoch budget, and writes the comparison.

    Args:
      config: the comparison's config: data, backbone, weights, `lr`, `epochs_fe`/`epochs_ft`
        (the budget and the `fe_ft` split), `unfreeze`, `stages` (for `gradual`).
      workdir: folder for `comparison.md|json|png` and one sub-folder per strategy.
      strategies: names from STRATEGIES, in the order to run and report them.
      overwrite: replace strategy runs already in `workdir` (otherwise refused up front).
      data: a ready `DataBundle`; default: load what `config.data_dir` names, once for all.

    Returns:
      The comparison (rows in `strategies` order).

    Raises:
      ConfigError, WorkdirError, DataError, BackboneError: bad input, before anything trains.

    Example:
      >>> comparison = compare(cfg, "runs/compare", strategies=["fe", "fe_ft"])
      >>> print(comparison.to_markdown())
    """
    from tl_keras.data.sources import load_data
    from tl_keras.training import runner
    from tl_keras.workdir import Workdir

    config = config_lib.validate(config)
    configs = strategy_configs(config, list(strategies))
    wd = Workdir(workdir)
    wd.ensure_writable()
    taken = [n for n in configs if os.path.isfile(wd.file(n, "run.json"))]
    if taken and not overwrite:
        raise WorkdirError(
            f"{wd.path!r} already holds the strategies {', '.join(taken)}; pass --overwrite to "
            "run them again, or use another --workdir"
        )
    if data is None:
        data = load_data(config, workdir=wd.path)
    io.atomic_write_text(wd.file("config.json"), config_lib.to_json(config))

    budget = epoch_budget(config)
    comparison = Comparison([], budget, wd.path)
    for name, cfg in configs.items():
        log.info("[compare] %s: %s (%d epochs)", name, STRATEGIES[name].description, budget)
        start = time.perf_counter()
        result = runner.train(cfg, wd.file(name), overwrite=overwrite, data=data)
        wall = time.perf_counter() - start
        comparison.rows.append(_row(name, result, wall))
        comparison.histories[name] = result.history
        _write(comparison, config)  # after every strategy: a partial table is still a table
    log.info("[compare] done: %s\n%s", wd.file("comparison.md"), comparison.to_markdown())
    return comparison


def _row(name: str, result, wall: float) -> StrategyResult:
    history = result.history
    val = [(r["epoch"], r.get("val_accuracy")) for r in history.records]
    scored = [(e, v) for e, v in val if v is not None]
    best = max(scored, key=lambda ev: ev[1]) if scored else (None, None)
    return StrategyResult(
        strategy=name,
        phases=" -> ".join(f"{s.phase} {s.epochs}" for s in history.spans()),
        epochs_run=len(history),
        final_val_accuracy=val[-1][1] if val else None,
        best_val_accuracy=best[1],
        best_epoch=best[0],
        wall_time_s=round(wall, 1),
        trainable_params=result.phases[-1].report.trainable_params if result.phases else 0,
        workdir=result.workdir,
    )


def _write(comparison: Comparison, config: Config) -> None:
    wd = comparison.workdir
    io.atomic_write_text(os.path.join(wd, "comparison.md"), comparison.to_markdown())
    io.atomic_write_json(os.path.join(wd, "comparison.json"), comparison.to_dict())
    plot_comparison(
        comparison,
        os.path.join(wd, "comparison.png"),
        title=f"{config.backbone}, {comparison.budget} epochs per strategy, seed {config.seed}",
    )


def plot_comparison(comparison: Comparison, path: str | None = None, *, title: str = ""):
    """One figure: validation accuracy and loss of every strategy, phase boundaries marked.

    Returns:
      The matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from tl_keras.plotting import BOUNDARY_GID, PHASE_COLORS, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, history) in enumerate(comparison.histories.items()):
        color = PHASE_COLORS[i % len(PHASE_COLORS)]
        for ax, metric in zip(axes, ("val_accuracy", "val_loss"), strict=True):
            values = [
                v if v is not None and math.isfinite(v) else None for v in history.metric(metric)
            ]
            ax.plot(history.epochs, values, marker=".", color=color, label=name)
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
    plt.close(fig)
    return fig
