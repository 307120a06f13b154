"""Named moments where a process can be killed on purpose, to check that whatever breaks,
a rerun ends with the outputs of an uninterrupted run (bench/faults.py, tests).

With `RLVER_KILL_AT=<point>[@<iteration>][:<n>]` in its environment (the n-th time, of
that iteration's stage only), a process that reaches that point sends itself SIGKILL: a
real kill, at a moment a timer could not hit reliably (between two optimizer steps,
half-way through a checkpoint, just before an output is renamed into place). Without the
variable a point costs one lookup.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

#: The points, in the order a run meets them; bench/faults.py kills at each.
POINTS = (
    "prepare_model.before_rename",
    "rollout.dialogue_end",
    "update.step_end",
    "update.save_state",
    "update.export_before_rename",
    "evaluate.dialogue_end",
    "report.before_rename",
)

_passed: Counter[str] = Counter()


def point(name: str, iteration: int | None = None) -> None:
    """Die here (SIGKILL) if RLVER_KILL_AT names this point (and this iteration) and its
    count is reached."""
    wanted = os.environ.get("RLVER_KILL_AT")
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    target, _, at = target.partition("@")
    if target != name or (at and iteration != int(at)):
        return
    _passed[name] += 1
    if _passed[name] >= int(nth or 1):
        print(f"faults: pid {os.getpid()} killed at {name} (RLVER_KILL_AT={wanted})",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
