"""The learning-rate range test's suggestion, read off its smoothed loss curve (numpy only).

`suggest_lr(lrs, smoothed, rule)` applies one rule of `SUGGEST_RULES` ('valley', 'steepest'), with
fastai's fallback (the rate of the lowest loss / 10) where the rule finds nothing;
`suggestions` gives what every rule says. The sweep that records the curve is
`tl_keras.training.lr_finder`.
"""

from __future__ import annotations

import numpy as np

# How a suggestion is read off the smoothed loss curve (`find_lr(suggest=...)`, `--suggest`).
# 'valley' (fastai's default since 2.5): half-way along the longest stretch over which the loss
# keeps falling. 'steepest' (fastai's old 'steep'): the steepest fall before the minimum; one
# noisy step in the flat start can win it (on the shared flowers it said 9e-7, where the loss
# visibly falls between 1e-4 and 1e-2), which is why it is no longer the default.
SUGGEST_RULES = ("valley", "steepest")


def _finite_prefix(lrs: list[float], smoothed: list[float]) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(values)
    n = int(np.argmax(~finite)) if not finite.all() else len(values)
    return np.asarray(lrs[:n], dtype=float), values[:n]


def _steepest(lrs: np.ndarray, values: np.ndarray) -> int | None:
    """Index of the steepest descent (per log-lr) before the minimum, or None."""
    best = int(np.argmin(values))
    if best < 2:
        return None
    # Only the stretch before the minimum: past it the loss is heading up, and a steep fall
    # there can only be noise.
    slopes = np.gradient(values[: best + 1], np.log(lrs[: best + 1]))
    steepest = int(np.argmin(slopes))
    return steepest if slopes[steepest] < 0 else None


def _valley(values: np.ndarray) -> int | None:
    """Index half-way along the longest valley, as fastai's `valley` finds it, or None.

    The valley is the longest decreasing subsequence of the smoothed loss (ending at index
    `end`, `length` points long, so starting about `end - length`); the suggestion sits
    a half of its length in (fastai: start + a third + a sixth). The first tenth of the steps
    is left out, as fastai does: a bias-corrected average of a handful of losses is noise.
    """
    skip = len(values) // 10 if len(values) >= 20 else 0
    v = values[skip:]
    n = len(v)
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if v[i] < v[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[i] > longest[end]:
            end = i
            start = end - longest[end]
    if longest[end] < 3:  # fewer than 3 falling points: no valley to speak of
        return None
    third = (end - start) / 3
    return skip + max(0, start + int(third) + int(third / 2))


def suggest_lr(
    lrs: list[float], smoothed: list[float], rule: str = "valley"
) -> tuple[float | None, str | None]:
    """The suggested rate by `rule` ('valley' or 'steepest'), read off the smoothed losses up to
    the first non-finite one; where the rule finds nothing, the rate of the lowest loss / 10
    ('min/10', never below the first rate).

    Returns:
      (rate, the rule that gave it), or (None, None) with fewer than 2 finite losses.
    """
    if rule not in SUGGEST_RULES:
        raise ValueError(f"suggest={rule!r} is unknown; use one of {', '.join(SUGGEST_RULES)}")
    rates, values = _finite_prefix(lrs, smoothed)
    if len(values) < 2:
        return None, None
    index = _valley(values) if rule == "valley" else _steepest(rates, values)
    if index is not None:
        return float(rates[index]), rule
    best = int(np.argmin(values))
    return float(max(rates[best] / 10.0, rates[0])), "min/10"


def suggestions(lrs: list[float], smoothed: list[float]) -> dict[str, float | None]:
    """What every rule suggests for one curve (the JSON and the plot show them side by side)."""
    return {rule: suggest_lr(lrs, smoothed, rule)[0] for rule in SUGGEST_RULES}


__all__ = ["SUGGEST_RULES", "suggest_lr", "suggestions"]
