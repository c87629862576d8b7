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
(seed, epoch)). With `seeds=N` (`--seeds=N`) every strategy runs once per seed (`config.seed`,
`+1`, ...; each in `<strategy>/seed-<seed>/`; the seed draws the split too, and all strategies of a
seed share it). Each run's final model answers the evaluation split (test when the data has one,
else validation), and its per-image right / wrong answers are saved in `predictions.npz` for
the paired intervals (`tl_keras.training.compare_report`). The data doctor examines the first
seed's data once (not every run). The comparison writes `comparison.md` (the table: mean and
standard deviation over seeds, each difference with its paired 95% intervals and a verdict in
words), `comparison.json` and `comparison.png` (validation accuracy and loss of every strategy
over the epochs, each strategy's phase boundaries marked).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from tl_keras import config as config_lib
from tl_keras import io, recipe
from tl_keras.config import Config
from tl_keras.errors import ConfigError, TLKerasError, WorkdirError
from tl_keras.training import compare_report
from tl_keras.training.compare_report import Comparison, StrategyResult, plot_comparison

log = logging.getLogger("tl_keras")

PREDICTIONS_FILE = "predictions.npz"  # each run's per-image answers on the evaluation split


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


def compare(
    config: Config,
    workdir: str,
    *,
    strategies: Sequence[str] = tuple(STRATEGIES),
    overwrite: bool = False,
    data=None,
    seeds: int = 1,
) -> Comparison:
    """Trains each strategy on the same data, seed and epoch budget, and writes the comparison.

    Args:
      config: the comparison's config: data, backbone, weights, `lr`, `epochs_fe`/`epochs_ft`
        (the budget and the `fe_ft` split), `unfreeze`, `stages` (for `gradual`).
      workdir: folder for `comparison.md|json|png` and one sub-folder per strategy (with
        several seeds, one per seed below it: `<strategy>/seed-<seed>/`).
      strategies: names from STRATEGIES, in the order to run and report them.
      overwrite: replace strategy runs already in `workdir` (otherwise refused up front).
      data: a ready `DataBundle`, used for every seed (the split then stays fixed and only
        training's randomness changes); default: load what `config.data_dir` names, once per
        seed (the seed also draws the validation split).
      seeds: how many seeds, `config.seed`, `config.seed + 1`, ...: every strategy runs on each.

    Returns:
      The comparison (rows in `strategies` order, then the paired differences).

    Raises:
      ConfigError, WorkdirError, DataError, BackboneError: bad input, before anything trains.

    Example:
      >>> comparison = compare(cfg, "runs/compare", strategies=["fe", "fe_ft"], seeds=3)
      >>> print(comparison.to_markdown())
    """
    from tl_keras.workdir import nothing_left_if_refused

    config = config_lib.validate(config)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r} must be a whole number of at least 1, e.g. 3")
    configs = strategy_configs(config, list(strategies))
    with nothing_left_if_refused(workdir) as made:  # until a strategy's run is done
        return _compare(config, workdir, configs, data, overwrite, seeds, made)


def _compare(config: Config, workdir: str, configs: dict, data, overwrite: bool, seeds: int, made):
    """`compare` once its arguments are checked; `made.keep()` once a run is done."""
    from tl_keras.workdir import Workdir

    seed_list = [config.seed + k for k in range(seeds)]
    wd = Workdir(workdir)
    wd.ensure_writable()
    taken = [n for n in configs if any(_taken(wd, n, s, seeds) for s in seed_list)]
    if taken and not overwrite:
        raise WorkdirError(
            f"{wd.path!r} already holds the strategies {', '.join(taken)}; pass --overwrite to "
            "run them again, or use another --workdir"
        )
    io.atomic_write_text(wd.file("config.json"), config_lib.to_json(config))
    comparison = Comparison(
        [],
        epoch_budget(config),
        wd.path,
        seeds=seed_list,
        descriptions={n: s.description for n, s in STRATEGIES.items()},
    )
    correct: dict[str, list] = {}
    for k, seed in enumerate(seed_list):
        seed_data = _seed_data(config, seed, data, wd.path, doctor=k == 0)
        for name, cfg in configs.items():
            cfg = dataclasses.replace(cfg, seed=seed, doctor="off")  # examined once, above
            run = _run_strategy(name, cfg, _run_dir(wd, name, seed, seeds), seed_data, overwrite)
            made.keep()  # a finished run: a later refusal leaves it
            comparison.eval_split = run.pop("split")
            correct.setdefault(name, []).append(run.pop("correct"))
            _add_run(comparison, name, run)
        _write(comparison, config, correct)  # after every seed: a partial table is still a table
    log.info("[compare] done: %s\n%s", wd.file("comparison.md"), comparison.to_markdown())
    return comparison


def _taken(wd, name: str, seed: int, seeds: int) -> bool:
    return os.path.isfile(os.path.join(_run_dir(wd, name, seed, seeds), "run.json"))


def _run_dir(wd, name: str, seed: int, seeds: int) -> str:
    """`<workdir>/<strategy>/`, or with several seeds `<workdir>/<strategy>/seed-<seed>/`."""
    return wd.file(name) if seeds == 1 else wd.file(name, f"seed-{seed}")


def _seed_data(config: Config, seed: int, data, workdir: str, *, doctor: bool):
    """The data every strategy of a seed trains on; the doctor examines the first seed's."""
    from tl_keras.data.sources import load_data

    seeded = dataclasses.replace(config, seed=seed)
    if data is None:
        data = load_data(seeded, workdir=workdir)
    if doctor and config.doctor != "off" and data.images is not None:
        from tl_keras.doctor import workflow

        workflow.doctor_workdir(
            seeded, workdir, data=data, deferred=workflow.deferred_for(config.doctor)
        )
    return data


def _run_strategy(name: str, cfg: Config, run_dir: str, data, overwrite: bool) -> dict:
    """Trains one strategy on one seed; its scores and per-image answers on the eval split."""
    from tl_keras.model.forward import forward
    from tl_keras.training import runner

    log.info(
        "[compare] %s, seed %d: %s (%d epochs)",
        name,
        cfg.seed,
        STRATEGIES[name].description,
        epoch_budget(cfg),
    )
    start = time.perf_counter()
    result = runner.train(cfg, run_dir, overwrite=overwrite, data=data)
    wall = time.perf_counter() - start
    split, dataset = ("test", data.test) if data.test is not None else ("val", data.val)
    if dataset is None:
        raise ConfigError(
            "the comparison scores every strategy on a held-out split, and this data has neither "
            "validation nor test images; set val_fraction > 0"
        )
    predicted, labels = [], []
    for (_, onehot), probs in forward(result.model, dataset):
        predicted.append(probs.argmax(axis=1))
        labels.append(np.asarray(onehot).argmax(axis=-1))
    predicted, labels = np.concatenate(predicted), np.concatenate(labels).astype(np.int64)
    # The per-image answers: what the paired bootstrap over images resamples.
    with io.atomic_path(os.path.join(run_dir, PREDICTIONS_FILE)) as tmp, open(tmp, "wb") as f:
        np.savez(f, labels=labels, predicted=predicted, correct=predicted == labels, split=split)
    history = result.history
    val = [(r["epoch"], r.get("val_accuracy")) for r in history.records]
    scored = [(e, v) for e, v in val if v is not None]
    best = max(scored, key=lambda ev: ev[1]) if scored else (None, None)
    return {
        "seed": cfg.seed,
        "workdir": result.workdir,
        "split": split,
        "correct": predicted == labels,
        "history": history,
        "phases": " -> ".join(f"{s.phase} {s.epochs}" for s in history.spans()),
        "epochs_run": len(history),
        "final_val_accuracy": val[-1][1] if val else None,
        "best_val_accuracy": best[1],
        "best_epoch": best[0],
        "wall_time_s": round(wall, 1),
        "trainable_params": result.phases[-1].report.trainable_params if result.phases else 0,
        **compare_report.seed_scores(labels, predicted, len(data.class_names)),
    }


def _add_run(comparison: Comparison, name: str, run: dict) -> None:
    """Adds one seed's run to its strategy's row (made on the first seed)."""
    history = run.pop("history")
    row = next((r for r in comparison.rows if r.strategy == name), None)
    if row is None:
        row = StrategyResult(
            strategy=name,
            phases=run["phases"],
            epochs_run=run["epochs_run"],
            final_val_accuracy=None,
            best_val_accuracy=None,
            best_epoch=run["best_epoch"],
            wall_time_s=0.0,
            trainable_params=run["trainable_params"],
            workdir=run["workdir"],
        )
        comparison.rows.append(row)
        comparison.histories[name] = history
    comparison.all_histories.setdefault(name, []).append(history)
    keep = ("phases", "epochs_run", "best_epoch", "trainable_params")
    row.per_seed.append({k: v for k, v in run.items() if k not in keep})
    compare_report.summarize(row)


def _write(comparison: Comparison, config: Config, correct: dict) -> None:
    comparison.differences = compare_report.differences(comparison.rows, correct)
    wd = comparison.workdir
    io.atomic_write_text(os.path.join(wd, "comparison.md"), comparison.to_markdown())
    io.atomic_write_json(os.path.join(wd, "comparison.json"), comparison.to_dict())
    n = len(comparison.seeds)
    plot_comparison(
        comparison,
        os.path.join(wd, "comparison.png"),
        title=f"{config.backbone}, {comparison.budget} epochs per strategy, "
        + (f"seed {config.seed}" if n == 1 else f"{n} seeds"),
    )


__all__ = ["STRATEGIES", "Comparison", "StrategyResult", "compare", "plot_comparison"]
