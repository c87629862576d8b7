"""Learning-rate range test (Leslie Smith, 2015; the fastai `lr_find`).

`find_lr` trains a compiled model for up to `num_steps` batches while the learning rate grows
exponentially from `min_lr` to `max_lr`, records the loss of each step, and stops once the loss
clearly diverges. The model and its optimizer are left exactly as they were.

How the model is left untouched: the steps are taken by a *copy* of the model's optimizer
(same class and configuration via `get_config`/`from_config`, with a float learning rate that
the test sets before each step, and the original's state copied in if it is built). The copy is
swapped in as `model.optimizer` with a fresh train function, so the steps run the model's own
`train_step` and compiled loss; the original optimizer, its variables, its learning rate or
schedule object and the model's cached train function are put back afterwards. All model
variables (weights, BatchNormalization statistics, RNG seed states) and the metric variables
that existed before are restored from a snapshot. An optimizer that was not built stays unbuilt.

The suggestion is read off the curve by `tl_keras.training.lr_suggest`; the test of one
phase of a config, with its files in the workdir, is `tl_keras.training.lr_find.run_lr_find`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tl_keras import io
from tl_keras.progress import Progress
from tl_keras.training.lr_suggest import SUGGEST_RULES, suggest_lr, suggestions

if TYPE_CHECKING:
    import keras

log = logging.getLogger("tl_keras")

__all__ = ["LRFinderResult", "check_args", "find_lr"]

_WEIGHT_DECAY_EXCLUSION_ATTRS = (
    "_exclude_from_weight_decay",
    "_exclude_from_weight_decay_pattern",
)


@dataclasses.dataclass
class LRFinderResult:
    """Outcome of `find_lr`.

    Attributes:
        lrs: Learning rate of each step taken, increasing exponentially.
        losses: Raw training loss of each step (the last may be inf/nan if it diverged).
        smoothed_losses: Exponentially smoothed, bias-corrected losses.
        suggestion: Suggested learning rate (see `find_lr`); None if fewer than 2 finite losses.
        suggestion_method: "valley", "steepest" or "min/10", which rule produced `suggestion`.
        diverged: Whether the test stopped early because the loss diverged.
        suggestions: What each rule of `SUGGEST_RULES` suggests (None where none).
    """

    lrs: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    suggestion: float | None
    suggestion_method: str | None = None
    diverged: bool = False
    suggestions: dict[str, float | None] = dataclasses.field(default_factory=dict)

    def plot(self, path: str | os.PathLike | None = None) -> Figure:
        """Plot smoothed (and raw) loss against the learning rate on a log axis.

        Args:
            path: If given, also save the figure there (format from the suffix, e.g. `.png`).
                The file is written under a temporary name in the same folder and then renamed,
                so readers never see a partial file.

        Returns:
            The matplotlib Figure (Agg canvas; not registered with pyplot).

        Raises:
            OSError: If the file cannot be written.
        """
        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        lrs = np.asarray(self.lrs, dtype=float)
        if len(lrs):
            ax.plot(lrs, self.losses, color="0.75", linewidth=1, label="loss")
            ax.plot(lrs, self.smoothed_losses, color="C0", linewidth=2, label="smoothed loss")
            finite = np.asarray(self.smoothed_losses, dtype=float)
            finite = finite[np.isfinite(finite)]
            if finite.size:
                # The divergence dominates the y-range; cut it so that the descent up to the
                # minimum, where the suggestion lies, fills the plot.
                best = int(np.argmin(finite))
                low, high = float(finite[best]), float(finite[: best + 1].max())
                span = high - low if high > low else 0.05 * abs(low) + 1e-3
                ax.set_ylim(low - 0.1 * span, high + 0.5 * span)
        if self.suggestion is not None:
            ax.axvline(
                self.suggestion,
                color="C3",
                linestyle="--",
                label=f"suggestion {self.suggestion:.2e} ({self.suggestion_method})",
            )
        for rule, lr in self.suggestions.items():
            if lr is not None and rule != self.suggestion_method:
                ax.axvline(lr, color="0.45", linestyle=":", label=f"{rule} would say {lr:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title("Learning-rate range test")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
        fig.tight_layout()
        if path is not None:
            path = os.fspath(path)
            fmt = os.path.splitext(path)[1].lstrip(".").lower()
            with io.atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt or matplotlib.rcParams["savefig.format"])
        return fig


def _clone_with_float_lr(optimizer: keras.optimizers.Optimizer, lr: float):
    """A new, unbuilt optimizer configured like `optimizer` but with a settable float lr."""
    import keras

    loss_scale = getattr(keras.optimizers, "LossScaleOptimizer", None)
    if loss_scale is not None and isinstance(optimizer, loss_scale):
        inner = _clone_with_float_lr(optimizer.inner_optimizer, lr)
        return loss_scale(
            inner,
            initial_scale=optimizer.initial_scale,
            dynamic_growth_steps=optimizer.dynamic_growth_steps,
            name=optimizer.name,
        )
    multi = getattr(keras.optimizers, "MultiOptimizer", None)
    if multi is not None and isinstance(optimizer, multi):
        raise ValueError(
            "find_lr does not support MultiOptimizer: there is no single learning rate to sweep."
        )
    config = optimizer.get_config()
    config["learning_rate"] = float(lr)
    try:
        clone = type(optimizer).from_config(config)
    except Exception as error:
        raise ValueError(
            f"find_lr cannot copy optimizer {optimizer.name!r} ({type(optimizer).__name__}) "
            f"through get_config/from_config: {error}"
        ) from error
    for attr in _WEIGHT_DECAY_EXCLUSION_ATTRS:
        if hasattr(optimizer, attr):
            setattr(clone, attr, getattr(optimizer, attr))
    return clone


def _state_variables(optimizer) -> list:
    """The optimizer's variables except learning-rate variables, in a stable order.

    A float learning rate is a variable and a schedule is not, so the copy (always a float) may
    have one more variable than the original; everything else matches one to one.
    """
    import keras

    lr_ids = set()
    for opt in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if opt is None:
            continue
        # For a float learning rate this property returns the variable itself.
        lr = opt.learning_rate
        if isinstance(lr, keras.Variable):
            lr_ids.add(id(lr))
    return [v for v in optimizer.variables if id(v) not in lr_ids]


def _batches(dataset: Iterable) -> Iterator:
    """Yield batches, starting over when `dataset` is exhausted and can be iterated again."""
    while True:
        produced = False
        for batch in dataset:
            produced = True
            yield batch
        if not produced:
            return


def _unpack(batch):
    if isinstance(batch, tuple | list):
        if len(batch) == 2:
            return batch[0], batch[1], None
        if len(batch) == 3:
            return batch[0], batch[1], batch[2]
        if len(batch) == 1:
            return batch[0], None, None
    return batch, None, None


def find_lr(
    model: keras.Model,
    dataset: Iterable,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    divergence_factor: float = 4.0,
    suggest: str = "valley",
) -> LRFinderResult:
    """Run a learning-rate range test on a compiled model, leaving it unchanged.

    Step `i` (0-based) trains on one batch with learning rate
    `min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))`, using the model's own `train_step`,
    loss and a copy of its optimizer (per-layer learning-rate multipliers included: the swept
    rate is the base rate). The smoothed loss is `avg_i / (1 - smoothing ** (i + 1))` with
    `avg_i = smoothing * avg_{i-1} + (1 - smoothing) * loss_i`. The test stops early when a loss
    is not finite or the smoothed loss exceeds `divergence_factor` times its best value so far
    (losses are assumed positive), and when a non-repeatable `dataset` runs out.

    The suggestion follows `suggest`. 'valley' (the default, fastai's since 2.5): the rate
    half-way along the longest stretch over which the smoothed loss keeps falling, a rate that
    makes steady progress well below where training becomes unstable. 'steepest': where the
    smoothed loss falls fastest per log-lr step before its minimum (fastai's old 'steep'); one
    noisy step early in the flat start can win it, so it may sit orders of magnitude too low.
    Where the rule finds nothing (no descent before the minimum), the rate at the minimum
    divided by 10 (fastai's "lr_min"), clipped to `min_lr`. `LRFinderResult.suggestions` holds
    what every rule says.

    Args:
        model: A built, compiled Keras model (its optimizer may be unbuilt).
        dataset: Training batches, `(x, y)` or `(x, y, sample_weight)`, e.g. a batched
            `tf.data.Dataset`; iterated again from the start if it runs out before `num_steps`.
        min_lr: First learning rate, > 0.
        max_lr: Last learning rate, > `min_lr`.
        num_steps: Number of steps (and learning rates), >= 2.
        smoothing: Exponential smoothing factor, in [0, 1).
        divergence_factor: Stop when the smoothed loss exceeds this times the best, > 1.
        suggest: 'valley' or 'steepest' (see above).

    Returns:
        An `LRFinderResult` with one entry per step taken.

    Raises:
        ValueError: If an argument is out of range, the model is not built or not compiled, or
            the optimizer cannot be copied (e.g. a `MultiOptimizer`, or a custom optimizer
            without a working `get_config`).
    """
    check_args(min_lr, max_lr, num_steps, smoothing, divergence_factor)
    if suggest not in SUGGEST_RULES:
        raise ValueError(f"suggest={suggest!r} is unknown; use one of {', '.join(SUGGEST_RULES)}")
    _check_model(model)
    clone = _clone_with_state(model.optimizer, model.trainable_variables, min_lr)
    original_optimizer, saved_train_function = model.optimizer, model.train_function
    model_state = [(v, v.numpy()) for v in model.variables]
    metric_state = [(v, v.numpy()) for v in model.metrics_variables]
    try:
        model.optimizer = clone
        model.train_function = None
        lrs, losses, smoothed, diverged = _sweep(
            model,
            clone,
            dataset,
            min_lr=min_lr,
            max_lr=max_lr,
            num_steps=num_steps,
            smoothing=smoothing,
            divergence_factor=divergence_factor,
        )
    finally:
        model.optimizer = original_optimizer
        model.train_function = saved_train_function
        for variable, value in model_state:
            variable.assign(value)
        # Metrics first built by the test start clean, like before any fit.
        model.reset_metrics()
        for variable, value in metric_state:
            variable.assign(value)

    suggestion, method = suggest_lr(lrs, smoothed, suggest)
    return LRFinderResult(
        lrs=lrs,
        losses=losses,
        smoothed_losses=smoothed,
        suggestion=suggestion,
        suggestion_method=method,
        diverged=diverged,
        suggestions=suggestions(lrs, smoothed),
    )


def _check_model(model: keras.Model) -> None:
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError(f"Model {model.name!r} must be compiled (with an optimizer) first.")
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built; its weights would be created by the test and "
            "could not be restored. Build it (call it on a batch or give it an input shape) first."
        )
    if not model.trainable_variables:
        raise ValueError(f"Model {model.name!r} has no trainable variables.")


def _clone_with_state(optimizer, variables, lr: float):
    """A built copy of `optimizer` at a float rate `lr`, with the original's state when built."""
    clone = _clone_with_float_lr(optimizer, lr)
    clone.build(variables)
    if optimizer.built:
        src, dst = _state_variables(optimizer), _state_variables(clone)
        if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src, dst, strict=True)):
            raise ValueError(
                f"Optimizer {optimizer.name!r} was built for different variables than "
                "the model's current trainable variables (did trainability change without "
                "recompiling?). Recompile the model before running find_lr."
            )
        for target, source in zip(dst, src, strict=True):
            target.assign(source)
    return clone


def _sweep(
    model, clone, dataset, *, min_lr, max_lr, num_steps, smoothing, divergence_factor
) -> tuple[list[float], list[float], list[float], bool]:
    """The test's steps: (learning rates, losses, smoothed losses, whether it diverged)."""
    factor = max_lr / min_lr
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best = 0.0, math.inf
    batches = _batches(dataset)
    diverged = False
    with Progress("lr range test", total=num_steps, unit="steps") as progress:
        for step in range(num_steps):
            try:
                batch = next(batches)
            except StopIteration:
                break
            lr = min_lr * factor ** (step / (num_steps - 1))
            clone.learning_rate = lr
            x, y, sample_weight = _unpack(batch)
            logs = model.train_on_batch(x, y, sample_weight=sample_weight, return_dict=True)
            progress.update()
            loss = float(logs["loss"])
            lrs.append(lr)
            losses.append(loss)
            if not math.isfinite(loss):
                smoothed.append(math.nan)
                diverged = True
                break
            avg = smoothing * avg + (1.0 - smoothing) * loss
            value = avg / (1.0 - smoothing ** (step + 1))
            smoothed.append(value)
            if step > 0 and value > divergence_factor * best:
                diverged = True
                break
            best = min(best, value)
    return lrs, losses, smoothed, diverged


def check_args(min_lr, max_lr, num_steps, smoothing, divergence_factor) -> None:
    """Raises ValueError naming the first argument of `find_lr` that is out of range."""

    def number(value) -> bool:
        return (
            isinstance(value, int | float | np.integer | np.floating)
            and not isinstance(value, bool)
            and math.isfinite(value)
        )

    if not (number(min_lr) and min_lr > 0):
        raise ValueError(f"min_lr must be a finite number > 0; received {min_lr!r}.")
    if not (number(max_lr) and max_lr > min_lr):
        raise ValueError(f"max_lr must be a finite number > min_lr ({min_lr}); got {max_lr!r}.")
    if not (isinstance(num_steps, int | np.integer) and not isinstance(num_steps, bool)):
        raise ValueError(f"num_steps must be an integer >= 2; received {num_steps!r}.")
    if num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2; received {num_steps!r}.")
    if not (number(smoothing) and 0 <= smoothing < 1):
        raise ValueError(f"smoothing must be in [0, 1); received {smoothing!r}.")
    if not (number(divergence_factor) and divergence_factor > 1):
        raise ValueError(f"divergence_factor must be a number > 1; received {divergence_factor!r}.")
