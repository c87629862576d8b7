"""How sure a comparison is: spread over seeds, paired confidence intervals, plain-words verdicts.

Two strategies trained on the same data differ by a few points from one seed to the next, so
one run each says little. Two intervals for the difference A - B, both *paired* (the same test
images, or the same seeds, for both), which removes the variation the two share:

* `paired_bootstrap`: resample the test images with replacement and recompute the accuracy
  difference on each resample (per-image correctness of A and of B, same images, same order);
  the percentile interval. Seeded, so the same inputs give the same interval.
* `paired_t_interval`: over seeds (one score of A and one of B per seed), the t-interval of the
  mean difference, `mean(d) +- t(n-1) * sd(d) / sqrt(n)`; Student's t quantile is computed
  here (regularised incomplete beta), so no scipy is needed.

`bootstrap_scores` gives one model's accuracy, balanced accuracy and macro F1 their intervals
(resampling the test images; the metrics are `tl_keras.metrics.confusion_scores`, their one
definition).

`PairedInterval.verdict` says it plainly: "fe_ft beats fe by 2.6 points, 95% CI [0.4, 4.8]",
or "fe_ft vs fe: within noise, +1.4 points, 95% CI [-1.1, 3.9] contains 0".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_keras import metrics
from tl_keras.errors import DataError

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
_MULTINOMIAL_MAX_VALUES = 64  # per-image differences with this few distinct values: exact shortcut


@dataclasses.dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (n - 1) of one figure over seeds."""

    mean: float
    std: float | None  # None with a single value
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f}" + (f" ± {self.std:.4f}" if self.std is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mean_std(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation of `values` (e.g. one accuracy per seed).

    Raises:
      DataError: no values, or a value that is not a finite number.
    """
    v = _finite(values, "values")
    return Spread(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else None, n=len(v))


@dataclasses.dataclass(frozen=True)
class PairedInterval:
    """A difference A - B with its confidence interval (in the units of the scores: fractions)."""

    difference: float
    low: float | None  # None when no interval can be formed (a single seed)
    high: float | None
    confidence: float
    method: str
    n: int

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0 (A and B really differ, at this confidence)."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def verdict(self, a: str = "A", b: str = "B", *, scale: float = 100.0, unit="points") -> str:
        """One plain sentence; differences are shown times `scale` (100: accuracy points)."""
        level = f"{100 * self.confidence:g}% CI"
        if self.low is None:
            return (
                f"{a} vs {b}: {scale * self.difference:+.1f} {unit} from {self.n} seed: "
                "no interval (needs 2 or more seeds)"
            )
        lo, hi = scale * self.low, scale * self.high
        if self.low > 0:
            return f"{a} beats {b} by {scale * self.difference:.1f} {unit}, {level} [{lo:.1f}, {hi:.1f}]"
        if self.high < 0:
            return (
                f"{b} beats {a} by {-scale * self.difference:.1f} {unit}, {level} "
                f"[{-hi:.1f}, {-lo:.1f}]"
            )
        return (
            f"{a} vs {b}: within noise, {scale * self.difference:+.1f} {unit}, {level} "
            f"[{lo:.1f}, {hi:.1f}] contains 0"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "significant": self.significant}


def paired_bootstrap(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedInterval:
    """Percentile bootstrap interval of mean(A) - mean(B) over the same test images.

    Args:
      scores_a, scores_b: one score per test image (1/0 or True/False for correct; any number,
        e.g. a per-image loss, works), the same images in the same order.
      resamples: bootstrap resamples.
      confidence: e.g. 0.95.
      seed: the resampling's random seed.

    Resampling N images is a multinomial draw over the distinct values of the per-image
    difference, so correctness (differences -1, 0, 1) is resampled exactly in O(resamples),
    whatever N.

    Raises:
      DataError: lengths differ, empty input, non-finite scores, or a bad setting.
    """
    a = _finite(scores_a, "scores_a")
    b = _finite(scores_b, "scores_b")
    if len(a) != len(b):
        raise DataError(
            f"paired scores need the same images for A and B; got {len(a)} and {len(b)} scores"
        )
    _check_confidence(confidence)
    if not isinstance(resamples, int) or resamples < 100:
        raise DataError(f"resamples must be an integer >= 100; got {resamples!r}")
    d = a - b
    n = len(d)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(d, return_counts=True)
    if len(values) <= _MULTINOMIAL_MAX_VALUES:
        draws = rng.multinomial(n, counts / n, size=resamples)
        means = draws @ values / n
    else:
        means = np.empty(resamples)
        chunk = max(1, (1 << 22) // n)
        for start in range(0, resamples, chunk):
            stop = min(resamples, start + chunk)
            means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return PairedInterval(
        difference=float(d.mean()),
        low=float(low),
        high=float(high),
        confidence=confidence,
        method=f"paired bootstrap over {n} images, {resamples} resamples, seed {seed}",
        n=n,
    )


def paired_t_interval(
    scores_a: Sequence[float], scores_b: Sequence[float], *, confidence: float = DEFAULT_CONFIDENCE
) -> PairedInterval:
    """t-interval of the mean difference over seeds: one score of A and of B per seed.

    With one seed there is no interval (`low` and `high` None), and the verdict says so.

    Raises:
      DataError: lengths differ, empty input, or non-finite scores.
    """
    a = _finite(scores_a, "scores_a")
    b = _finite(scores_b, "scores_b")
    if len(a) != len(b):
        raise DataError(
            f"paired scores need the same seeds for A and B; got {len(a)} and {len(b)} scores"
        )
    _check_confidence(confidence)
    d = a - b
    n = len(d)
    method = f"paired t over {n} seed{'s' * (n != 1)}"
    if n < 2:
        return PairedInterval(float(d.mean()), None, None, confidence, method, n)
    half = t_quantile(0.5 + confidence / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    mean = float(d.mean())
    return PairedInterval(mean, mean - half, mean + half, confidence, method, n)


DEFAULT_SCORE_RESAMPLES = 2_000  # one model's intervals: enough for 2 digits of a 95% interval


def bootstrap_scores(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    num_classes: int,
    *,
    resamples: int = DEFAULT_SCORE_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of one model's scores over its test images.

    Each resample draws the images with replacement and scores its confusion matrix with
    `metrics.confusion_scores`, all resamples at once (a few hundred ms for thousands of images).

    Returns:
      {'accuracy', 'balanced_accuracy', 'macro_f1'} -> (low, high).

    Raises:
      DataError: lengths differ, empty input, labels out of range, or a bad setting.
    """
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if len(t) != len(p) or not len(t):
        raise DataError(f"need one prediction per label; got {len(t)} labels, {len(p)} predictions")
    if min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes:
        raise DataError(f"labels and predictions must be class indices in [0, {num_classes})")
    _check_confidence(confidence)
    if not isinstance(resamples, int) or resamples < 100:
        raise DataError(f"resamples must be an integer >= 100; got {resamples!r}")
    n, k = len(t), num_classes
    cell = t * k + p
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 22) // n)
    scores: dict[str, list[np.ndarray]] = {}
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        drawn = cell[rng.integers(0, n, size=(r, n))] + (np.arange(r) * k * k)[:, None]
        cm = np.bincount(drawn.ravel(), minlength=r * k * k).reshape(r, k, k)
        for name, values in metrics.confusion_scores(cm).items():
            scores.setdefault(name, []).append(values)
    alpha = 1.0 - confidence
    out = {}
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        low, high = np.quantile(np.concatenate(scores[name]), [alpha / 2, 1 - alpha / 2])
        out[name] = (float(low), float(high))
    return out


# --- Student's t, without scipy -------------------------------------------------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's continued fraction for the incomplete beta function (Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((a - 1.0 + m2) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF of a Beta(a, b) variable at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on `t_cdf`; 1e-12 relative)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise DataError(f"t_quantile needs 0 < p < 1 and df > 0; got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _finite(values, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(v):
        raise DataError(f"{name} is empty; pass one score per image or per seed")
    if not np.all(np.isfinite(v)):
        raise DataError(f"{name} holds NaN or infinite values; every score must be a number")
    return v


def _check_confidence(confidence: float) -> None:
    if not 0.5 <= confidence < 1.0:
        raise DataError(f"confidence must be in [0.5, 1), e.g. 0.95; got {confidence}")


__all__ = [
    "PairedInterval",
    "bootstrap_scores",
    "Spread",
    "mean_std",
    "paired_bootstrap",
    "paired_t_interval",
    "t_cdf",
    "t_quantile",
]
