"""Balanced accuracy and macro F1, spread over seeds, paired intervals and their verdicts."""

import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from tl_keras import metrics, stats
from tl_keras.errors import DataError
from tl_keras.stats import PairedInterval


def test_new_cores_import_neither_tensorflow_nor_matplotlib():
    code = (
        "import sys; import tl_keras.metrics, tl_keras.stats, tl_keras.calibration, "
        "tl_keras.doctor.analysis; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib', 'sklearn', 'scipy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- metrics --------------------------------------------------------------------------------------


def test_99_to_1_majority_guess_scores_high_accuracy_and_half_balanced_accuracy():
    y_true = np.array([0] * 99 + [1])
    y_pred = np.zeros(100, dtype=int)
    assert metrics.accuracy(y_true, y_pred) == 0.99
    assert metrics.balanced_accuracy(y_true, y_pred) == 0.5
    # F1: class 0 = 2 * 0.99 * 1 / 1.99, class 1 = 0.
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((2 * 0.99 / 1.99) / 2)


def test_metrics_by_hand():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    assert metrics.confusion_matrix(y_true, y_pred).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics.balanced_accuracy(y_true, y_pred) == pytest.approx((0.5 + 1 + 0.5) / 3)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5]
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(np.mean(f1))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_agree_with_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true = rng.integers(0, 5, 200)
        y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 6, 200))  # 5: extra
        assert metrics.balanced_accuracy(y_true, y_pred) == pytest.approx(
            sk.balanced_accuracy_score(y_true, y_pred)
        )
        assert metrics.macro_f1(y_true, y_pred) == pytest.approx(
            sk.f1_score(y_true, y_pred, average="macro", zero_division=0)
        )
        assert metrics.macro_f1(y_true, y_pred, num_classes=8) == pytest.approx(
            sk.f1_score(y_true, y_pred, labels=range(8), average="macro", zero_division=0)
        )


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1], [0], "equal length"),
        ([], [], "non-empty"),
        ([0.5, 1], [0, 1], "class indices"),
        ([0, -1], [0, 1], "class indices"),
    ],
)
def test_metrics_refuse_bad_labels(y_true, y_pred, match):
    with pytest.raises(DataError, match=match):
        metrics.balanced_accuracy(np.asarray(y_true), np.asarray(y_pred))


# --- spread and intervals -------------------------------------------------------------------------


def test_mean_std_over_seeds():
    s = stats.mean_std([0.70, 0.72, 0.74])
    assert (s.mean, s.n) == (pytest.approx(0.72), 3)
    assert s.std == pytest.approx(0.02)
    assert stats.mean_std([0.7]).std is None
    assert str(stats.mean_std([0.7])) == "0.7000"
    with pytest.raises(DataError, match="empty"):
        stats.mean_std([])
    with pytest.raises(DataError, match="NaN"):
        stats.mean_std([0.7, math.nan])


@pytest.mark.parametrize(
    ("p", "df", "expected"),  # textbook table values
    [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 9, 2.2622),
     (0.995, 9, 3.2498), (0.95, 29, 1.6991), (0.975, 10**6, 1.9600)],
)  # fmt: skip
def test_t_quantile_matches_the_table(p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=1e-4)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-4)


def test_t_quantile_matches_scipy():
    t = pytest.importorskip("scipy.stats").t
    for df in (1, 2, 3, 5, 7, 19, 50):
        for p in (0.55, 0.9, 0.975, 0.999):
            assert stats.t_quantile(p, df) == pytest.approx(t.ppf(p, df), rel=1e-9)


def test_paired_t_interval_by_hand():
    # d = [1, 2, 3]: mean 2, sd 1, n 3 -> 2 +- t(0.975, 2) / sqrt(3).
    iv = stats.paired_t_interval([2, 3, 4], [1, 1, 1])
    half = 4.302652729911275 / math.sqrt(3)
    assert (iv.difference, iv.low, iv.high) == pytest.approx((2, 2 - half, 2 + half))
    assert iv.n == 3 and iv.method == "paired t over 3 seeds"


def test_paired_t_interval_with_one_seed_gives_no_interval():
    iv = stats.paired_t_interval([0.71], [0.69])
    assert iv.low is None and iv.high is None and not iv.significant
    assert iv.verdict("fe_ft", "fe") == (
        "fe_ft vs fe: +2.0 points from 1 seed: no interval (needs 2 or more seeds)"
    )


def _paired_correctness(rng, n, acc_a, acc_b, shared=0.7):
    """Per-image correctness of two models that agree on `shared` of the images."""
    a = rng.random(n) < acc_a
    b = np.where(rng.random(n) < shared, a, rng.random(n) < acc_b)
    return a, b


def test_paired_bootstrap_contains_the_true_difference():
    # With `shared` agreement, b's accuracy is 0.7 * 0.8 + 0.3 * 0.7 = 0.77: true difference 0.03.
    a, b = _paired_correctness(np.random.default_rng(1), 5000, 0.8, 0.7)
    iv = stats.paired_bootstrap(a, b, seed=0)
    assert iv.low < 0.03 < iv.high
    assert iv.difference == pytest.approx(a.mean() - b.mean())
    assert iv.low < iv.difference < iv.high
    assert iv.high - iv.low < 0.03  # pairing: far narrower than two independent intervals


def test_paired_bootstrap_covers_about_95_percent():
    rng = np.random.default_rng(2)
    hits = 0
    for seed in range(200):
        a, b = _paired_correctness(rng, 400, 0.8, 0.7)
        iv = stats.paired_bootstrap(a, b, resamples=2000, seed=seed)
        hits += iv.low <= 0.03 <= iv.high
    assert 0.9 <= hits / 200 <= 0.99


def test_paired_bootstrap_is_seeded_and_agrees_with_plain_resampling():
    rng = np.random.default_rng(3)
    a, b = _paired_correctness(rng, 300, 0.75, 0.7)
    one = stats.paired_bootstrap(a, b, seed=5)
    assert one == stats.paired_bootstrap(a, b, seed=5)
    # The multinomial shortcut and resampling indices are the same distribution.
    idx = np.random.default_rng(9).integers(0, 300, (20000, 300))
    plain = np.quantile((a.astype(float) - b)[idx].mean(axis=1), [0.025, 0.975])
    assert (one.low, one.high) == pytest.approx(tuple(plain), abs=0.006)
    # Real-valued scores (more than 64 distinct differences) take the resampling path.
    x, y = rng.normal(0.5, 1, 300), rng.normal(0.3, 1, 300)
    iv = stats.paired_bootstrap(x, y, seed=0)
    plain = np.quantile((x - y)[idx].mean(axis=1), [0.025, 0.975])
    assert (iv.low, iv.high) == pytest.approx(tuple(plain), abs=0.03)


def test_paired_bootstrap_of_identical_models_is_exactly_zero():
    a = np.array([1, 0, 1, 1, 0] * 20)
    iv = stats.paired_bootstrap(a, a)
    assert (iv.difference, iv.low, iv.high) == (0.0, 0.0, 0.0)
    assert iv.verdict("x", "y") == "x vs y: within noise, +0.0 points, 95% CI [0.0, 0.0] contains 0"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(scores_a=[1, 0, 1], scores_b=[1, 0]), "same images"),
        (dict(scores_a=[], scores_b=[]), "empty"),
        (dict(scores_a=[1, math.nan], scores_b=[1, 0]), "NaN"),
        (dict(scores_a=[1, 0], scores_b=[1, 0], confidence=95), "confidence"),
        (dict(scores_a=[1, 0], scores_b=[1, 0], resamples=10), "resamples"),
    ],
)
def test_paired_bootstrap_refuses_bad_input(kwargs, match):
    with pytest.raises(DataError, match=match):
        stats.paired_bootstrap(**kwargs)


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ((0.026, 0.004, 0.048), "fe_ft beats fe by 2.6 points, 95% CI [0.4, 4.8]"),
        ((0.014, -0.011, 0.039), "fe_ft vs fe: within noise, +1.4 points, 95% CI [-1.1, 3.9] contains 0"),
        ((-0.03, -0.05, -0.01), "fe beats fe_ft by 3.0 points, 95% CI [1.0, 5.0]"),
        ((0.02, 0.0, 0.04), "fe_ft vs fe: within noise, +2.0 points, 95% CI [0.0, 4.0] contains 0"),
    ],
)  # fmt: skip
def test_verdict_in_plain_words(interval, expected):
    iv = PairedInterval(*interval, confidence=0.95, method="test", n=100)
    assert iv.verdict("fe_ft", "fe") == expected
    assert iv.significant == ("beats" in expected)
    assert iv.to_dict()["significant"] == iv.significant
