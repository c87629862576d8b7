"""One history across all phases.

Keras returns a fresh `History` from every `fit`, numbered from `initial_epoch`, with no idea of
phases. Here each epoch is one record: the global epoch (1-based, continuing across phases), the
phase, the learning rate actually used, and every metric. Phase spans and boundaries are computed
from the records, so an early-stopped phase moves the boundary to where training really switched.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tl_keras import schema
from tl_keras.io import atomic_write_text

# Columns written first in the CSV, in this order; metrics follow alphabetically.
LEADING_COLUMNS = ("epoch", "phase", "lr")
# One epoch's record as history.json and a checkpoint's state.json hold it.
RECORD_SHAPE = schema.Obj(
    {"epoch": schema.Int, "phase": schema.Name}, optional={"lr": schema.Maybe(schema.Num)}
)
HISTORY_SHAPE = schema.Obj({"records": schema.ListOf(RECORD_SHAPE)})


@dataclasses.dataclass(frozen=True)
class PhaseSpan:
    """The epochs a phase actually ran: `first`..`last` inclusive (global, 1-based)."""

    phase: str
    first: int
    last: int

    @property
    def epochs(self) -> int:
        return self.last - self.first + 1


@dataclasses.dataclass(frozen=True)
class KeptEpoch:
    """The weights a phase handed on are those of an earlier epoch than its last one.

    Attributes:
      phase: the phase that handed them on.
      epoch: the global epoch (1-based) whose weights were kept; under rollback, an epoch of an
        earlier phase.
      reason: why, in a few words ('early stopping', 'rollback').
    """

    phase: str
    epoch: int
    reason: str


@dataclasses.dataclass
class History:
    """Per-epoch records of a whole run, in epoch order, and which epochs' weights were kept
    where a phase did not hand on its last epoch's (`kept`)."""

    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    kept: list[KeptEpoch] = dataclasses.field(default_factory=list)

    # --- building -----------------------------------------------------------------------------
    def append(self, phase: str, epoch: int, lr: float | None, logs: Mapping[str, Any]) -> None:
        """Adds one epoch. `epoch` is global and 1-based; it must follow the last one."""
        if self.records and epoch != self.last_epoch + 1:
            raise ValueError(
                f"epoch {epoch} of phase {phase!r} does not follow epoch {self.last_epoch}: "
                "a history must have every epoch exactly once"
            )
        record: dict[str, Any] = {"epoch": int(epoch), "phase": phase, "lr": _num(lr)}
        for key, value in logs.items():
            if key not in LEADING_COLUMNS and key != "learning_rate":
                record[key] = _num(value)
        self.records.append(record)

    def extend(self, other: History) -> None:
        for r in other.records:
            self.append(r["phase"], r["epoch"], r.get("lr"), r)
        self.kept += other.kept

    def mark_kept(self, phase: str, epoch: int, reason: str) -> None:
        """Records that `phase` handed on the weights of `epoch` (early stopping, rollback)."""
        self.kept = [k for k in self.kept if k.phase != phase] + [KeptEpoch(phase, epoch, reason)]

    def truncate(self, last_epoch: int) -> History:
        """Returns the records up to and including `last_epoch` (and the kept marks of the
        phases that ended by then)."""
        records = [dict(r) for r in self.records if r["epoch"] <= last_epoch]
        ended = {s.phase for s in self.spans() if s.last <= last_epoch}
        return History(records, [k for k in self.kept if k.phase in ended])

    # --- reading ------------------------------------------------------------------------------
    @property
    def last_epoch(self) -> int:
        """The last global epoch recorded (0 when empty): the next phase's `initial_epoch`."""
        return self.records[-1]["epoch"] if self.records else 0

    def __len__(self) -> int:
        return len(self.records)

    @property
    def epochs(self) -> list[int]:
        return [r["epoch"] for r in self.records]

    def metric(self, name: str) -> list[float | None]:
        """Returns one value per epoch (None where the metric was not logged)."""
        return [r.get(name) for r in self.records]

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for r in self.records:
            names += [k for k in r if k not in LEADING_COLUMNS and k not in names]
        return sorted(names)

    def spans(self) -> list[PhaseSpan]:
        """Returns each phase's actual epochs, in order of appearance."""
        spans: list[PhaseSpan] = []
        for r in self.records:
            if spans and spans[-1].phase == r["phase"]:
                spans[-1] = dataclasses.replace(spans[-1], last=r["epoch"])
            else:
                spans.append(PhaseSpan(r["phase"], r["epoch"], r["epoch"]))
        return spans

    def boundaries(self) -> list[float]:
        """Returns the x position of each phase switch: halfway between the two epochs."""
        return [span.last + 0.5 for span in self.spans()[:-1]]

    # --- (de)serialisation --------------------------------------------------------------------
    def to_json(self) -> str:
        payload = {
            "records": self.records,
            "spans": [dataclasses.asdict(s) for s in self.spans()],
            "kept": [dataclasses.asdict(k) for k in self.kept],
        }
        return json.dumps(payload, indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> History:
        payload = json.loads(text)
        history = cls()
        for r in payload["records"]:
            history.append(r["phase"], r["epoch"], r.get("lr"), r)
        history.kept = [KeptEpoch(**k) for k in payload.get("kept", [])]
        return history

    def to_csv(self) -> str:
        columns = list(LEADING_COLUMNS) + self.metric_names()
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in self.records:
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})
        return out.getvalue()

    def save(self, json_path: str, csv_path: str | None = None) -> None:
        """Writes the history as JSON (and CSV), each file atomically."""
        atomic_write_text(json_path, self.to_json())
        if csv_path:
            atomic_write_text(csv_path, self.to_csv())

    @classmethod
    def load(
        cls, json_path: str, *, fix: str = "rerun the phase that wrote it with --overwrite"
    ) -> History:
        """Reads a history.json, checked (see `from_records`).

        Raises:
          DamagedFileError: the file is not a history: naming it and `fix`, the way out.
        """
        payload = schema.read_json(json_path, HISTORY_SHAPE, fix=fix)
        history = cls.from_records(payload["records"], source=json_path, fix=fix)
        history.kept = _kept_marks(payload.get("kept", []), source=json_path, fix=fix)
        return history

    @classmethod
    def from_records(
        cls, records: list, *, source: str, fix: str = "rerun the phase that wrote it"
    ) -> History:
        """A history from saved records: each of `RECORD_SHAPE`, metrics numbers or null, and
        every epoch once, in order.

        Raises:
          DamagedFileError: naming `source` and `fix`.
        """
        history = cls()
        for i, r in enumerate(records):
            if (p := schema.problem(r, RECORD_SHAPE)) is not None:
                raise schema.damaged(source, f"epoch record {i}: {p}", fix)
            bad = [k for k, v in r.items() if k not in ("phase",) and not _is_num_or_null(v)]
            if bad:
                raise schema.damaged(source, f"epoch record {i}: {bad[0]!r} is not a number", fix)
            try:
                history.append(r["phase"], r["epoch"], r.get("lr"), r)
            except ValueError as e:
                raise schema.damaged(source, str(e).split(":")[0], fix) from None
        return history


def _kept_marks(marks: Any, *, source: str, fix: str) -> list[KeptEpoch]:
    """The kept-epoch marks of a saved history, checked like its records."""
    try:
        return [KeptEpoch(str(k["phase"]), int(k["epoch"]), str(k["reason"])) for k in marks]
    except (TypeError, KeyError, ValueError):
        raise schema.damaged(
            source, "its 'kept' marks are not (phase, epoch, reason)", fix
        ) from None


def stitch(
    parts: Iterable[tuple[str, Mapping[str, Sequence[float]]]],
    lrs: Sequence[Sequence[float]] | None = None,
) -> History:
    """Stitches per-phase Keras histories (`fit(...).history` dicts) into one.

    For histories produced outside the runner (for example by hand-written `fit` calls in a
    notebook). Each phase's epochs continue from the previous phase's last epoch.

    Args:
      parts: (phase name, `keras.callbacks.History.history`) in the order they ran.
      lrs: optional learning rate per epoch for each part; otherwise taken from a
        'learning_rate' metric when Keras logged one.
    """
    history = History()
    for i, (phase, logs) in enumerate(parts):
        n = max((len(v) for v in logs.values()), default=0)
        for j in range(n):
            epoch_logs = {k: v[j] for k, v in logs.items() if j < len(v)}
            lr = lrs[i][j] if lrs is not None else epoch_logs.get("learning_rate")
            history.append(phase, history.last_epoch + 1, lr, epoch_logs)
    return history


def _is_num_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
