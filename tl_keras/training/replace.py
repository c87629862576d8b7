"""`--overwrite` of a run as a transaction: what it replaces, where the new run trains, and the
one line when it fails before its new run finished a phase.

The mechanism (a staging folder, a commit record, a swap, recovery after a kill) and why it was
chosen are in `tl_keras.transaction`. Here, for `train`:

- `staged(plan, overwrite=...)`: an --overwrite of a workdir that holds a run (all phases, or
  `--phase=NAME` of a finished phase) gets a plan whose `outdir` is the staging folder; the
  runner's `Workdir.commit` after each saved phase swaps it in after the first.
- a failure before that discards the staged run, and its error says so in its one line: what
  stopped the new run, without the checkpoint and `--resume` it mentions (both went with the
  staged run), then "nothing was replaced: WORKDIR still holds the run --overwrite was
  replacing (phases done: ...), untouched". A signal (`interrupt.Interrupted`) carries the same
  sentence in `outcome`, for the command's `interrupted:` line. Bad input (exit status 2) keeps
  its line: nothing is ever half-written by it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import re
from collections.abc import Iterator

from tl_keras import interrupt, transaction
from tl_keras.errors import TLKerasError
from tl_keras.workdir import CHECKPOINTS, RUN_FILE

log = logging.getLogger("tl_keras")

# What a stopped run's message says it kept, or advises from it: untrue once the staged run, its
# checkpoints included, is discarded (tl_keras.training.phase, runner._disk_full).
_STALE = (
    (re.compile(r" and the last good (?:state|checkpoint) was kept(?: \([^)]*\))?"), ""),
    (re.compile(r"; the newest complete checkpoint \([^)]*\) is kept"), ""),
    (re.compile(r"; phases done: [^.;]*"), ""),
    (re.compile(r"rerun the phase with --phase=\S+ --overwrite"), "run the same command again"),
    (re.compile(r"continue with --resume"), "run the same command again"),
)


def redone_phases(plan) -> list[str]:
    """The finished phases a run from `plan.targets[0]` on redoes (and so drops): that phase
    and every phase after it in the schedule that is done."""
    names = [p.name for p in plan.schedule]
    first = names.index(plan.targets[0].name)
    return [n for n in plan.done if n in names and names.index(n) >= first]


def is_replacement(plan, *, overwrite: bool) -> bool:
    """Whether the plan replaces a run: --overwrite of a workdir that holds one, from its first
    phase, or of finished phases (the chief only: other workers write to scratch)."""
    if not (overwrite and plan.chief and plan.run is not None and plan.targets):
        return False
    return plan.previous is None or bool(redone_phases(plan))


@contextlib.contextmanager
def staged(plan, *, overwrite: bool) -> Iterator:
    """The plan to run: for a replacement, writing to a staging folder until it commits.

    Args:
      plan: the `RunPlan` (the caller holds the workdir's lock).
      overwrite: --overwrite was given.

    Yields:
      `plan`, or for a replacement the plan with `outdir` the staging folder.

    Raises:
      What the block raised; before the commit point with the sentence that the old run is in
      place (`TLKerasError`s a run raises, exit status 1) or in `Interrupted.outcome`.
    """
    if not is_replacement(plan, overwrite=overwrite):
        yield plan
        return
    wd, old = plan.workdir, list(plan.done)
    redone = [] if plan.previous is None else redone_phases(plan)
    dropped = {*redone, RUN_FILE, CHECKPOINTS, "calibration"}  # the new run writes these
    keep = [e for e in wd.run_entries() if e not in dropped] if plan.previous else []
    out = wd.stage(keep=keep, replacing={"phases_done": old, "redone": redone or old})
    log.info(
        "--overwrite: the new run is staged in %s; %s holds the run it replaces (phases done: "
        "%s) for every reader until the new run has finished a phase",
        out.path,
        wd.path,
        ", ".join(old) or "none",
    )
    try:
        yield dataclasses.replace(plan, outdir=out)
    except BaseException as e:
        if transaction.end(wd.path) != "abandoned":
            raise
        note = (
            f"nothing was replaced: {wd.path} still holds the run --overwrite was replacing "
            f"(phases done: {', '.join(old) or 'none'}), untouched"
        )
        changed = _with_note(e, note)
        if changed is e:
            raise
        raise changed from e
    transaction.end(wd.path)  # committed and swapped in by the run (else: nothing to keep)


def _with_note(error: BaseException, note: str) -> BaseException:
    """The error to raise once a replacement was abandoned: its one line says so."""
    if isinstance(error, interrupt.Interrupted):
        error.outcome = f"{note}. Run the same command again to replace it"
        return error
    if isinstance(error, TLKerasError):
        if error.bad_input:  # refused before it could write anything: its line is the whole story
            return error
        message = str(error)
        for pattern, replacement in _STALE:
            message = pattern.sub(replacement, message)
        changed = copy.copy(error)
        changed.args = (f"{message.rstrip('. ')}. {note[0].upper()}{note[1:]}",)
        return changed
    log.error("the --overwrite stopped before its new run finished a phase: %s", note)
    return error
