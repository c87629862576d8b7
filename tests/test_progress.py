"""The progress lines of long one-off passes: quiet when short, counted when long."""

import logging

from tl_keras import progress as progress_lib
from tl_keras.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "tl_keras"]


def test_a_short_pass_prints_nothing(caplog, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_lib.time, "monotonic", clock)
    with caplog.at_level(logging.INFO, logger="tl_keras"), Progress("decode check", 10) as p:
        for _ in range(10):
            clock.now += 0.1
            p.update()
    assert _lines(caplog) == []


def test_a_long_pass_logs_counts_every_interval_and_at_the_end(caplog, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_lib.time, "monotonic", clock)
    with (
        caplog.at_level(logging.INFO, logger="tl_keras"),
        Progress("decode check", 3439, every_s=5.0, quiet_s=2.0) as p,
    ):
        for _ in range(34):
            clock.now += 1.0
            p.update(100)
        clock.now += 1.0
        p.update(39)
    lines = _lines(caplog)
    assert lines[0] == "[decode check] 500 / 3,439 images (15%), 5.0 s"
    assert lines[-1] == "[decode check] 3,439 / 3,439 images (100%) in 35.0 s"
    assert len(lines) == 8  # every 5 s over 35 s, then the final line


def test_unknown_total_and_a_failed_pass(caplog, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_lib.time, "monotonic", clock)
    with caplog.at_level(logging.INFO, logger="tl_keras"):
        p = Progress("feature pass", unit="batches", quiet_s=0.0)
        clock.now += 3.0
        p.update(7)
        p.close()
        try:
            with Progress("read", 5, quiet_s=0.0) as q:
                q.update(1)
                raise RuntimeError("boom")
        except RuntimeError:
            pass
    assert _lines(caplog) == ["[feature pass] 7 batches in 3.0 s"]  # the failed read: silent
