"""Temperature scaling, its one home: the maths (numpy only), expected calibration error, and
the rule for when a fitted temperature is used.

The run fits it after training (`tl_keras.training.calibrate`: one pass over the validation
split, the report, run.json's "inference" section), and the served model applies it as a layer
(`tl_keras.model.served`); the reliability diagrams are drawn by `tl_keras.plotting`.

A network fine-tuned with cross-entropy is usually overconfident: among the images it calls 90%
sure, fewer than 90% are right. Temperature scaling (Guo et al., 2017) divides the logits by one
scalar T > 0 fitted on the validation split, minimising the negative log-likelihood. T changes
no prediction (the arg-max stays) and only makes the probabilities mean what they say.

Everything here works from the probabilities a model outputs, so no model is needed: with
`log p = logits - logsumexp(logits)`, `softmax(log p / T) == softmax(logits / T)` exactly, so a
temperature fitted here applies unchanged to the logits inside an exported model.

* `fit_temperature(probs, labels)`: the NLL is convex in 1/T, so its derivative is monotone and
  bisection on it finds the minimum: deterministic, no scipy, no step size to tune. T is kept in
  `TEMPERATURE_BOUNDS`; a fit that ends at a bound says so in `calibration_report`.
* `expected_calibration_error`: equal-width confidence bins (15 by default), bin i holding the
  top-1 confidences in (i/n, (i+1)/n] (the first bin also holds 0): `sum_b |B|/N |acc(B) -
  conf(B)|`.
* `reliability_diagram`: the numbers a reliability diagram draws.
* `fitted_temperature`: the temperature a run uses: T = 1 when it cannot be fitted honestly
  (fewer than `MIN_IMAGES` validation images, or a fit that ends at a bound).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tl_keras.errors import DataError

DEFAULT_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)  # beyond these a model is broken, not miscalibrated
PROBABILITY_FLOOR = 1e-12  # log(0) would make one confident mistake an infinite loss


def _checked(probs, labels=None) -> tuple[np.ndarray, np.ndarray | None]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or not len(p):
        raise DataError(f"probabilities must be N x K with N >= 1, K >= 2; got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise DataError("probabilities must be finite and >= 0 (pass the model's softmax output)")
    if labels is None:
        return p, None
    y = np.asarray(labels).reshape(-1)
    if len(y) != len(p) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be {len(p)} class indices; got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise DataError(f"labels must be in [0, {p.shape[1]}); got {int(y.min())}..{int(y.max())}")
    return p, y.astype(np.int64)


def _log_probs(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, PROBABILITY_FLOOR))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """`softmax(log p / T)`: the probabilities a model gives with its logits divided by T.

    Raises:
      DataError: T is not a finite number > 0, or the probabilities are not N x K.
    """
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise DataError(f"temperature must be a finite number > 0; got {temperature!r}")
    p, _ = _checked(probs)
    return _softmax(_log_probs(p) / t)


def negative_log_likelihood(probs, labels) -> float:
    """Mean `-log p[label]` (probabilities floored at PROBABILITY_FLOOR)."""
    p, y = _checked(probs, labels)
    return float(-np.mean(_log_probs(p)[np.arange(len(y)), y]))


def _nll_slope(log_p: np.ndarray, y: np.ndarray, beta: float) -> float:
    """d NLL / d beta at beta = 1 / T: mean of E_q[log p] - log p[y], q = softmax(beta log p)."""
    q = _softmax(beta * log_p)
    return float(np.mean(np.sum(q * log_p, axis=1) - log_p[np.arange(len(y)), y]))


def fit_temperature(
    probs,
    labels,
    *,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tolerance: float = 1e-7,
) -> float:
    """The temperature T > 0 that minimises the NLL of `apply_temperature(probs, T)`.

    Fit it on the validation split, never on the data you report calibration on.

    Args:
      probs: N x K validation probabilities (the model's softmax output).
      labels: N class indices.
      bounds: the range searched; the result is clipped to it.
      tolerance: relative precision of T.

    Returns:
      T (1.0 for an already calibrated model; > 1 softens an overconfident one).

    Raises:
      DataError: the probabilities or labels do not fit together.
    """
    p, y = _checked(probs, labels)
    log_p = _log_probs(p)
    lo, hi = math.log(1.0 / bounds[1]), math.log(1.0 / bounds[0])  # over log(beta), beta = 1/T
    if _nll_slope(log_p, y, math.exp(lo)) >= 0:
        return float(bounds[1])  # NLL rises from the softest end: the softest allowed
    if _nll_slope(log_p, y, math.exp(hi)) <= 0:
        return float(bounds[0])  # still falling at the sharpest end (every answer right)
    while hi - lo > tolerance:
        mid = 0.5 * (lo + hi)
        if _nll_slope(log_p, y, math.exp(mid)) > 0:
            hi = mid
        else:
            lo = mid
    return float(math.exp(-0.5 * (lo + hi)))


def _bin_index(confidence: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    return index, edges


def reliability_diagram(probs, labels, n_bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """What a reliability diagram draws: per confidence bin, how often the top-1 answer is right.

    Returns:
      {'n_bins', 'num_images', 'accuracy', 'mean_confidence', 'ece', 'bins': [{'lower',
      'upper', 'count', 'accuracy', 'confidence'}]}, accuracy and confidence None in empty bins.
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise DataError(f"n_bins must be an integer >= 1; got {n_bins!r}")
    p, y = _checked(probs, labels)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    index, edges = _bin_index(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins)
    acc_sum = np.bincount(index, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        acc = acc_sum[b] / count[b] if count[b] else None
        conf = conf_sum[b] / count[b] if count[b] else None
        if count[b]:
            ece += count[b] / len(y) * abs(acc - conf)
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": int(count[b]),
                "accuracy": None if acc is None else float(acc),
                "confidence": None if conf is None else float(conf),
            }
        )
    return {
        "n_bins": n_bins,
        "num_images": len(y),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(confidence.mean()),
        "ece": float(ece),
        "bins": bins,
    }


def expected_calibration_error(probs, labels, n_bins: int = DEFAULT_BINS) -> float:
    """ECE over `n_bins` equal-width bins of top-1 confidence (0 = perfectly calibrated)."""
    return reliability_diagram(probs, labels, n_bins)["ece"]


def calibration_report(
    probs, labels, temperature: float, *, n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """Before / after figures for a temperature (fitted on validation, or measured on test).

    Returns:
      {'temperature', 'at_bound', 'nll_before', 'nll_after', 'ece_before', 'ece_after',
      'reliability_before', 'reliability_after'}; JSON-serialisable.
    """
    after = apply_temperature(probs, temperature)
    before = reliability_diagram(probs, labels, n_bins)
    scaled = reliability_diagram(after, labels, n_bins)
    return {
        "temperature": float(temperature),
        "at_bound": bool(
            math.isclose(temperature, TEMPERATURE_BOUNDS[0])
            or math.isclose(temperature, TEMPERATURE_BOUNDS[1])
        ),
        "nll_before": negative_log_likelihood(probs, labels),
        "nll_after": negative_log_likelihood(after, labels),
        "ece_before": before["ece"],
        "ece_after": scaled["ece"],
        "reliability_before": before,
        "reliability_after": scaled,
    }


MIN_IMAGES = 20  # fewer validation images: one scalar is not worth fitting on them


def fitted_temperature(probs, labels) -> tuple[float, str]:
    """The temperature to use for a model, fitted on these validation answers, and in words
    whether it was fitted and why not: T = 1 below `MIN_IMAGES` images or at a bound.

    Returns:
      (T, 'yes: on N validation images') or (1.0, 'no: why').
    """
    n = len(labels)
    if n < MIN_IMAGES:
        return 1.0, f"no: {n} validation images (a temperature needs {MIN_IMAGES} or more)"
    t = fit_temperature(probs, labels)
    low, high = TEMPERATURE_BOUNDS
    if np.isclose(t, low) or np.isclose(t, high):
        return 1.0, f"no: the fit ran to the bound T={t:g} (every validation answer right?)"
    return t, f"yes: on {n} validation images"


__all__ = [
    "DEFAULT_BINS",
    "MIN_IMAGES",
    "TEMPERATURE_BOUNDS",
    "apply_temperature",
    "calibration_report",
    "expected_calibration_error",
    "fit_temperature",
    "fitted_temperature",
    "negative_log_likelihood",
    "reliability_diagram",
]
