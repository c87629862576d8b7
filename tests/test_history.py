"""Stitched history and its curves (no training: records are built by hand)."""

import csv
import io

import pytest

from tl_keras.training.curves import (
    BOUNDARY_GID,
    KEPT_GID,
    LR_GID,
    SPAN_ALPHA,
    SPAN_GID,
    plot_history,
)
from tl_keras.training.history import History, KeptEpoch, PhaseSpan, stitch


def make_history(fe_epochs=3, ft_epochs=4) -> History:
    h = History()
    for e in range(1, fe_epochs + 1):
        h.append(
            "fe",
            e,
            1e-3,
            {"loss": 1.0 / e, "accuracy": 0.5 + e / 20, "val_loss": 1.1 / e, "val_accuracy": 0.5},
        )
    for e in range(fe_epochs + 1, fe_epochs + ft_epochs + 1):
        h.append(
            "ft", e, 1e-4, {"loss": 0.2, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.85}
        )
    return h


def test_spans_and_boundary_come_from_records():
    h = make_history(2, 5)  # e.g. fe configured for 10 epochs, early-stopped after 2
    assert h.spans() == [PhaseSpan("fe", 1, 2), PhaseSpan("ft", 3, 7)]
    assert h.boundaries() == [2.5]
    assert h.last_epoch == 7


def test_epochs_must_be_continuous():
    h = make_history(2, 0)
    with pytest.raises(ValueError, match="epoch 4 of phase 'ft' does not follow epoch 2"):
        h.append("ft", 4, 1e-4, {"loss": 1.0})
    with pytest.raises(ValueError, match="exactly once"):
        h.append("ft", 2, 1e-4, {"loss": 1.0})


def test_json_round_trip_and_truncate():
    h = make_history()
    again = History.from_json(h.to_json())
    assert again.records == h.records
    assert again.truncate(3).spans() == [PhaseSpan("fe", 1, 3)]


def test_csv_has_epoch_phase_lr_and_every_metric():
    rows = list(csv.DictReader(io.StringIO(make_history().to_csv())))
    assert list(rows[0]) == ["epoch", "phase", "lr", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r["phase"] for r in rows] == ["fe"] * 3 + ["ft"] * 4
    assert rows[3]["epoch"] == "4" and float(rows[3]["lr"]) == pytest.approx(1e-4)


def test_non_finite_values_become_null():
    h = History()
    h.append("fe", 1, 1e-3, {"loss": float("nan")})
    assert h.records[0]["loss"] is None
    assert "NaN" not in h.to_json()


def test_stitch_keras_histories():
    h = stitch(
        [
            ("fe", {"loss": [3.0, 2.0], "accuracy": [0.1, 0.2]}),
            ("ft", {"loss": [1.0], "accuracy": [0.5]}),
        ],
        lrs=[[1e-3, 1e-3], [1e-4]],
    )
    assert h.epochs == [1, 2, 3]
    assert [r["phase"] for r in h.records] == ["fe", "fe", "ft"]
    assert h.boundaries() == [2.5]
    assert h.metric("lr") == [1e-3, 1e-3, 1e-4]


def span_x(patch) -> tuple[float, float]:
    """(left, right) of an axvspan: a Rectangle on matplotlib >= 3.9, a Polygon before."""
    if hasattr(patch, "get_width"):
        return (patch.get_x(), patch.get_x() + patch.get_width())
    xs = [x for x, _ in patch.get_xy()]
    return (min(xs), max(xs))


def test_plot_marks_boundary_and_shades_both_phases(tmp_path):
    h = make_history(2, 3)
    path = tmp_path / "curves.png"
    fig = plot_history(h, str(path), show_lr=True)
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 3  # accuracy, loss, lr
    for ax in fig.axes:
        lines = [ln for ln in ax.lines if ln.get_gid() == BOUNDARY_GID]
        assert len(lines) == 1 and list(lines[0].get_xdata()) == [2.5, 2.5]
        spans = [p for p in ax.patches if p.get_gid() == SPAN_GID]
        assert len(spans) == 2
        xs = sorted(span_x(p) for p in spans)
        assert xs == [(0.5, 2.5), (2.5, 5.5)]
        assert {t.get_text() for t in ax.texts} == {"fe (2 ep)", "ft (3 ep)"}
    acc = fig.axes[0]
    assert {ln.get_label() for ln in acc.lines if ln.get_gid() != BOUNDARY_GID} == {
        "train accuracy",
        "validation accuracy",
    }


def test_plot_single_phase_has_no_boundary():
    fig = plot_history(make_history(3, 0))
    assert not [ln for ln in fig.axes[0].lines if ln.get_gid() == BOUNDARY_GID]


def test_saved_files_get_the_usual_permissions(tmp_path):
    """Atomic writes keep the umask's permissions (a temporary file from mkstemp would be 0600)."""
    import os

    history = History()
    history.append("fe", 1, 1e-3, {"loss": 1.0})
    history.save(str(tmp_path / "history.json"))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "history.json").stat().st_mode & 0o777 == 0o666 & ~umask


# --- the fixes of issue 12: ticks, the LR step, shading, the kept epoch ---------------------------
def test_short_runs_get_whole_epoch_ticks():
    fig = plot_history(make_history(2, 1), show_lr=True)  # 3 epochs: matplotlib would put 1.5
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_learning_rate_steps_at_the_boundary_never_slopes_across_it():
    from matplotlib.cbook import STEP_LOOKUP_MAP

    h = make_history(2, 3)  # fe at 1e-3 (epochs 1-2), ft at 1e-4 (epochs 3-5)
    lr_axis = plot_history(h, show_lr=True).axes[2]
    (line,) = [ln for ln in lr_axis.lines if ln.get_gid() == LR_GID]
    # Each epoch's rate drawn flat over that epoch, from 0.5 to 5.5.
    assert list(line.get_xdata()) == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    xs, ys = STEP_LOOKUP_MAP[line.get_drawstyle()](line.get_xdata(), line.get_ydata())
    points = list(zip(xs, ys, strict=True))
    segments = list(zip(points, points[1:], strict=False))
    # As drawn: no segment changes epoch and rate at once (no slope), and the one change of
    # rate is a vertical step at the boundary, 2.5.
    assert not [s for s in segments if s[0][0] != s[1][0] and s[0][1] != s[1][1]]
    steps = [s for s in segments if s[0][1] != s[1][1]]
    assert steps == [((2.5, 1e-3), (2.5, 1e-4))]


def test_phase_shading_is_strong_enough_to_see():
    ax = plot_history(make_history(2, 3)).axes[0]
    spans = [p for p in ax.patches if p.get_gid() == SPAN_GID]
    assert spans and all(p.get_alpha() == SPAN_ALPHA >= 0.15 for p in spans)  # was 0.08


def test_the_epoch_whose_weights_were_kept_is_ringed_on_every_metric():
    h = make_history(3, 2)
    h.mark_kept("fe", 2, "early stopping")
    fig = plot_history(h, show_lr=True)
    for ax, metric in zip(fig.axes[:2], ("accuracy", "loss"), strict=True):
        (ring,) = [ln for ln in ax.lines if ln.get_gid() == KEPT_GID]
        assert list(ring.get_xdata()) == [2]
        assert list(ring.get_ydata()) == [h.records[1][f"val_{metric}"]]
        assert "kept (early stopping)" in {t.get_text() for t in ax.texts}
    assert not [ln for ln in fig.axes[2].lines if ln.get_gid() == KEPT_GID]  # not on the rate
    assert not [ln for ln in plot_history(make_history()).axes[0].lines if ln.get_gid() == KEPT_GID]


def test_kept_marks_survive_json_and_truncate_with_their_phase():
    h = make_history(3, 2)
    h.mark_kept("fe", 2, "early stopping")
    h.mark_kept("ft", 2, "rollback")  # ft rolled back to fe's epoch 2
    again = History.from_json(h.to_json())
    assert again.kept == [KeptEpoch("fe", 2, "early stopping"), KeptEpoch("ft", 2, "rollback")]
    assert again.truncate(4).kept == [KeptEpoch("fe", 2, "early stopping")]  # ft not over
    h.mark_kept("fe", 1, "early stopping")  # one mark per phase: the newest decision
    assert [k for k in h.kept if k.phase == "fe"] == [KeptEpoch("fe", 1, "early stopping")]


def test_drawing_leaves_the_programs_matplotlib_alone():
    """The package never picks a backend nor leaves figures in pyplot: a notebook's inline
    backend survives `train()`, and its own `plt.show()` still shows."""
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
        "import sys; sys.path.insert(0, 'tests')\n"
        "from test_history import make_history\n"
        "from tl_keras.training.curves import plot_history\n"
        "from tl_keras.inference import evaluate as ev\n"
        "from tl_keras.training import compare\n"
        "plot_history(make_history(), show_lr=True)\n"
        "print(matplotlib.get_backend(), plt.get_fignums())\n"
    )
    from conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "svg []"
