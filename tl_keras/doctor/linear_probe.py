"""A linear probe on frozen features, in numpy: softmax regression and its out-of-fold predictions.

The doctor asks "what would a classifier that never saw this image call it?" for every image.
A probe on the frozen base's features answers it in a second on a CPU: multinomial logistic
regression with an L2 penalty, fitted by Nesterov-accelerated gradient descent (deterministic,
no step size to tune, no scipy), over stratified folds.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number of each image: every class spread evenly over the folds, in a seeded order."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)  # small classes start where the last one stopped: folds stay even
    return fold


def fit_softmax_probe(
    x: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    l2: float,
    max_iterations: int = 300,
    tolerance: float = 1e-4,
    start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by Nesterov-accelerated gradient descent (deterministic).

    Minimises `sum(cross-entropy) + l2 / 2 * |W|^2` (the bias unpenalised). The step is 1 / L with
    Böhning's bound on the curvature, `L = lambda_max(X'X) / 2 + l2`, so it never diverges; it
    stops when no weight moves by more than `tolerance` (relative) in a step. float32: the probe
    ranks images, it does not need more digits, and a step costs a third of float64's.

    Args:
      start: (D + 1) x K weights and bias to start from (a neighbouring fold's solution);
        None = zeros.

    Returns:
      (weights D x K, bias K), float64.
    """
    n, d = x.shape
    xb = np.hstack([np.asarray(x, dtype=np.float32), np.ones((n, 1), dtype=np.float32)])
    xbt = np.ascontiguousarray(xb.T)  # the gradient's product runs on contiguous memory
    y = np.eye(num_classes, dtype=np.float32)[labels]
    lipschitz = 0.5 * _largest_eigenvalue(xbt @ xb) + l2
    mu = max(l2, 1e-12)
    momentum = np.float32((1 - math.sqrt(mu / lipschitz)) / (1 + math.sqrt(mu / lipschitz)))
    penalty = np.full((d + 1, 1), l2, dtype=np.float32)
    penalty[-1] = 0.0
    step = np.float32(1.0 / lipschitz)
    w = np.zeros((d + 1, num_classes), dtype=np.float32)
    if start is not None:
        w = np.asarray(start, dtype=np.float32).copy()
    w_prev = w
    for _ in range(max_iterations):
        v = w + momentum * (w - w_prev)
        grad = xbt @ (softmax(xb @ v) - y) + penalty * v
        w_prev, w = w, v - step * grad
        if np.max(np.abs(w - w_prev)) <= tolerance * max(1.0, float(np.max(np.abs(w)))):
            break
    w = w.astype(np.float64)
    return w[:-1], w[-1]


def _largest_eigenvalue(gram: np.ndarray, iterations: int = 100) -> float:
    """Power iteration on a symmetric PSD matrix, 10% added as a margin: an upper bound in practice.

    (LAPACK's eigvalsh is exact but takes half a second on a busy 2-core machine; this is ~1 ms.)
    """
    g = gram.astype(np.float64)
    v = np.ones(len(g)) / math.sqrt(len(g))
    value = 0.0
    for _ in range(iterations):
        w = g @ v
        value = float(np.linalg.norm(w))
        if value == 0.0:
            return 0.0
        v = w / value
    return 1.1 * value


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for any finite logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def out_of_fold_probabilities(
    z: np.ndarray, labels: np.ndarray, num_classes: int, *, folds: int, l2: float, seed: int
) -> np.ndarray:
    """Each image's class probabilities from a softmax probe that never saw it (k-fold).

    The features are standardised with the training folds' mean and standard deviation.
    """
    fold = stratified_folds(labels, folds, seed)
    probs = np.zeros((len(labels), num_classes))
    start = None
    with one_blas_thread():
        for f in range(folds):
            start = _fit_fold(z, labels, fold == f, probs, num_classes, l2=l2, start=start)
    return probs


def one_blas_thread():
    """BLAS limited to one thread, when threadpoolctl is installed (it comes with scikit-learn).

    The probe's products are thin (N x D by D x K): OpenBLAS's threads cost more than they
    save, most on a busy machine (on 2 busy cores diagnose ran up to 3x faster with one).
    Without threadpoolctl, nothing changes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _fit_fold(z, labels, test, probs, num_classes: int, *, l2: float, start):
    """Fits the probe on the other folds, writes the held-out fold's probabilities; returns
    the solution (the next fold starts from it)."""
    train = ~test
    if not test.any() or not train.any():
        return start
    mean = z[train].mean(axis=0)
    std = z[train].std(axis=0) + 1e-6
    # Folds share most of their training images: each starts from the last one's solution.
    w, b = fit_softmax_probe(
        (z[train] - mean) / std, labels[train], num_classes, l2=l2, start=start
    )
    probs[test] = softmax(((z[test] - mean) / std) @ w + b)
    return np.vstack([w, b[None]])


__all__ = ["fit_softmax_probe", "out_of_fold_probabilities", "softmax", "stratified_folds"]
