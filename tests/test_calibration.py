"""Temperature scaling, expected calibration error and reliability diagrams."""

import json
import math
import os

import numpy as np
import pytest

from tl_keras import calibration, plotting
from tl_keras.errors import DataError


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _one_confidence(p, share_right, n=1000):
    """Every image gets [p, 1 - p]; class 0 is right for `share_right` of them."""
    probs = np.tile([p, 1 - p], (n, 1))
    labels = (np.arange(n) >= share_right * n).astype(int)
    return probs, labels


@pytest.mark.parametrize(
    ("p", "share_right"),
    [(0.9, 0.75), (0.75, 0.9), (0.99, 0.6)],
    ids=["overconfident", "underconfident", "very-overconfident"],
)
def test_temperature_known_by_construction(p, share_right):
    # softmax(log[p, 1-p] / T)[0] = share_right  <=>  T = logit(p) / logit(share_right).
    probs, labels = _one_confidence(p, share_right)
    expected = math.log(p / (1 - p)) / math.log(share_right / (1 - share_right))
    t = calibration.fit_temperature(probs, labels)
    assert t == pytest.approx(expected, rel=1e-6)
    assert calibration.apply_temperature(probs, t)[0, 0] == pytest.approx(share_right, rel=1e-5)


def test_temperature_recovered_from_samples():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 5))
    labels = np.array([rng.choice(5, p=q) for q in _softmax(logits / 2.5)])
    t = calibration.fit_temperature(_softmax(logits), labels)
    assert t == pytest.approx(2.5, rel=0.05)
    calibrated = np.array([rng.choice(5, p=q) for q in _softmax(logits)])
    assert calibration.fit_temperature(_softmax(logits), calibrated) == pytest.approx(1.0, rel=0.05)


def test_temperature_on_probabilities_equals_temperature_on_logits():
    logits = np.random.default_rng(1).normal(0, 4, (50, 6))
    for t in (0.5, 1.0, 3.0):
        assert np.allclose(
            calibration.apply_temperature(_softmax(logits), t), _softmax(logits / t), atol=1e-12
        )


def test_temperature_scaling_keeps_predictions_and_lowers_nll_and_ece():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (3000, 5))
    labels = np.array([rng.choice(5, p=q) for q in _softmax(logits / 3)])
    probs = _softmax(logits)  # three times too sharp
    t = calibration.fit_temperature(probs, labels)
    report = calibration.calibration_report(probs, labels, t)
    after = calibration.apply_temperature(probs, t)
    assert np.array_equal(after.argmax(1), probs.argmax(1))
    assert report["nll_after"] < report["nll_before"]
    assert report["ece_after"] < report["ece_before"] / 2
    assert not report["at_bound"]
    json.dumps(report, allow_nan=False)


def test_fit_stops_at_the_bounds():
    probs, labels = _one_confidence(0.9, 1.0)  # every answer right: sharper is always better
    low, high = calibration.TEMPERATURE_BOUNDS
    assert calibration.fit_temperature(probs, labels) == low
    assert calibration.calibration_report(probs, labels, low)["at_bound"]
    uniform = np.full((10, 2), 0.5)
    assert calibration.fit_temperature(uniform, np.arange(10) % 2) == high  # flat NLL: softest


def test_zero_probabilities_do_not_make_the_fit_infinite():
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 1])  # two confident mistakes at probability 0
    t = calibration.fit_temperature(probs, labels)
    assert math.isfinite(t) and t > 1
    assert math.isfinite(calibration.negative_log_likelihood(probs, labels))


def test_ece_by_hand():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # Bins of 0.1: (0.9, 1.0] holds two at 0.95 with one right; (0.5, 0.6] holds 0.6, right;
    # (0.6, 0.7] holds 0.7, right.  ECE = 2/4 * 0.45 + 1/4 * 0.4 + 1/4 * 0.3 = 0.4.
    assert calibration.expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.4)
    diagram = calibration.reliability_diagram(probs, labels, n_bins=10)
    counts = [b["count"] for b in diagram["bins"]]
    assert counts == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    assert diagram["bins"][9]["accuracy"] == 0.5
    assert diagram["bins"][9]["confidence"] == pytest.approx(0.95)
    assert diagram["bins"][0]["accuracy"] is None
    assert diagram["accuracy"] == 0.75 and diagram["num_images"] == 4
    assert (
        calibration.DEFAULT_BINS == 15
        and len(calibration.reliability_diagram(probs, labels)["bins"]) == 15
    )


def test_perfectly_calibrated_bins_have_zero_ece():
    probs, labels = _one_confidence(0.8, 0.8)
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_reliability_plot_before_and_after(tmp_path):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (500, 4))
    labels = np.array([rng.choice(4, p=q) for q in _softmax(logits / 2)])
    probs = _softmax(logits)
    t = calibration.fit_temperature(probs, labels)
    report = calibration.calibration_report(probs, labels, t)
    path = tmp_path / "reliability.png"
    fig = plotting.plot_reliability(
        [report["reliability_before"], report["reliability_after"]],
        str(path),
        titles=["before", f"after (T = {t:.2f})"],
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["reliability.png"]  # no temporary file left behind
    assert [ax.get_title() for ax in fig.axes] == ["before", f"after (T = {t:.2f})"]
    assert (
        plotting.plot_reliability([report["reliability_after"]])
        .axes[0]
        .get_title()
        .startswith("ECE ")
    )


@pytest.mark.parametrize("t", [0, -1.0, math.nan, math.inf, "warm", None])
def test_apply_temperature_refuses_a_bad_temperature(t):
    with pytest.raises(DataError, match="temperature must be"):
        calibration.apply_temperature(np.array([[0.5, 0.5]]), t)


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.array([0.5, 0.5]), [0], "N x K"),
        (np.array([[1.0]]), [0], "N x K"),
        (np.array([[0.5, math.nan]]), [0], "finite"),
        (np.array([[0.5, 0.5]]), [2], r"in \[0, 2\)"),
        (np.array([[0.5, 0.5]]), [0, 1], "1 class indices"),
        (np.array([[0.5, 0.5]]), [0.0], "class indices"),
    ],
)
def test_fit_refuses_bad_input(probs, labels, match):
    with pytest.raises(DataError, match=match):
        calibration.fit_temperature(probs, np.asarray(labels))
