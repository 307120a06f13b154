"""A run's scalars for TensorBoard: one folder per run, one event file per writer.

Every stage job writes its own event file into `results/<run>/tensorboard/`
(`layout.Run.events`): the update of iteration i (`update/*` at step i, `step/*` at each
optimizer step's global step, i * steps per iteration + k), each rollout shard
(`rollout/*` at step i, one point per shard) and each evaluation (`eval/*` at step i).
TensorBoard merges the event files of one folder into one run, so
`tensorboard --logdir results` shows one run per run, side by side.

Why one file per writer, named by stage, iteration and shard: jobs that run at the same
time (the shards of an iteration, an evaluation beside a rollout) never write into the
same file, and a rerun of a stage replaces its file instead of adding a second copy of
its points. The file is written whole in a temporary folder and renamed into place, so a
killed job leaves no half file. The names sort by iteration within a stage, so each tag's
steps rise in the order TensorBoard reads the files (it drops points that step back).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rlver import layout

#: (tag, value, step)
Point = tuple[str, float, int]


def numbers(metrics: Mapping[str, Any], prefix: str, step: int,
            skip: tuple[str, ...] = ("iteration",)) -> list[Point]:
    """The numbers of a metrics dict as points at `step`, tagged `prefix/key`; a dict of
    numbers (outcome counts) becomes `prefix/key/name`. Text and lists are left out."""
    points: list[Point] = []
    for key, value in metrics.items():
        if key in skip:
            continue
        if isinstance(value, Mapping):
            points += numbers(value, f"{prefix}/{key}", step, ())
        elif isinstance(value, (int, float)):
            points.append((f"{prefix}/{key}", float(value), step))
    return points


def write(run: layout.Run, stage: str, iteration: int, points: Iterable[Point],
          shard: int | None = None) -> Path:
    """Replace the event file of `stage` at `iteration` (and `shard`) with `points`."""
    from torch.utils.tensorboard import SummaryWriter

    final = run.events(stage, iteration, shard)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Written outside the run: a folder holding an event file is a run to TensorBoard.
    with tempfile.TemporaryDirectory(prefix="rlver-events-") as tmp:
        with SummaryWriter(tmp) as writer:
            for tag, value, step in points:
                writer.add_scalar(tag, value, step)
        (written,) = Path(tmp).iterdir()
        # The partial copy's name lacks "tfevents", so TensorBoard never reads it.
        partial = final.with_name(f".partial-{stage}-{os.getpid()}")
        shutil.copyfile(written, partial)
        os.replace(partial, final)
    return final
