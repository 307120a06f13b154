"""A run's scalars: every job's points to each backend of `logging.backends`.

This is the one place scalars are written. Each stage job hands its points to `write`:
the update of iteration i (`update/*` at step i, `step/*` at each optimizer step's
global step, i * steps per iteration + k), each rollout shard (`rollout/*` at step i,
one point per shard) and each evaluation (`eval/*` at step i). Each backend of the
run's config (`rlver.registry.TRACKERS`: `tensorboard`, `wandb`, `mlflow`) gets the same
points, tags and steps, written by a function `fn(job, points)` that raises on failure.
A backend that fails never fails the stage: the job's log gets a warning with the share
of its points that backend lost.

TensorBoard: every job writes its own event file into `results/<run>/tensorboard/`
(`layout.Run.events`); TensorBoard merges the event files of one folder into one run, so
`tensorboard --logdir results` shows one run per run, side by side. Why one file per
writer, named by stage, iteration and shard: jobs that run at the same time (the shards
of an iteration, an evaluation beside a rollout) never write into the same file, and a
rerun of a stage replaces its file instead of adding a second copy of its points. The
file is written whole in a temporary folder and renamed into place, so a killed job
leaves no half file. The names sort by iteration within a stage, so each tag's steps
rise in the order TensorBoard reads the files (it drops points that step back).
The trackers (W&B, MLflow) are in rlver/trackers/.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlver import layout

#: (tag, value, step)
Point = tuple[str, float, int]


class LostPoints(Exception):
    """A backend wrote some of a job's points but not all: `lost` of them."""

    def __init__(self, lost: int, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.lost = lost


@dataclass(frozen=True)
class Job:
    """Who writes: a stage of one iteration (and shard) of a run, with its config (as
    frozen at `config_path`, with the changes recorded since)."""

    config_path: Path
    stage: str
    iteration: int
    shard: Optional[int]
    cfg: Any

    @property
    def run(self) -> layout.Run:
        return layout.Run.of_config(self.config_path)

    @property
    def name(self) -> str:
        """The writer's name in file names: `update.iter_0003`, `rollout.iter_0000.shard_001`."""
        name = f"{self.stage}.iter_{layout.it(self.iteration)}"
        return name + ("" if self.shard is None else f".shard_{layout.sh(self.shard)}")

    @property
    def label(self) -> str:
        """The job in messages: `rollout iter 0 shard 1`."""
        return f"{self.stage} iter {self.iteration}" + (
            "" if self.shard is None else f" shard {self.shard}")


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


def write(run: layout.Run | str | os.PathLike[str], stage: str, iteration: int,
          points: Iterable[Point], shard: int | None = None) -> dict[str, int]:
    """Send `points` of `stage` at `iteration` (and `shard`) to every backend of the run
    (a `layout.Run`, or the path of its frozen config). Returns the points each backend
    lost (0: all written); a loss is printed to stderr (the job's log), never raised."""
    from rlver import config
    from rlver.registry import TRACKERS

    config_path = run.config if isinstance(run, layout.Run) else Path(run)
    cfg = config.load(config_path)
    job = Job(config_path, stage, iteration, shard, cfg)
    points = list(points)
    lost: dict[str, int] = {}
    for name in cfg.logging.backends:
        try:
            TRACKERS.get(name)(job, points)
            lost[name] = 0
        except Exception as exc:  # any failure of a backend: its points are lost, no more
            lost[name] = exc.lost if isinstance(exc, LostPoints) else len(points)
            share = lost[name] / max(len(points), 1)
            keeps = [n for n in cfg.logging.backends if n != name]
            print(f"scalars: WARNING: {name} lost {lost[name]} of {len(points)} points "
                  f"({share:.0%}) of {job.label}: {exc}"
                  + (f"; {', '.join(keeps)} got them" if keeps else ""), file=sys.stderr)
    written = [name for name, n in lost.items() if n == 0]
    if written != ["tensorboard"] and written:
        print(f"scalars: {len(points)} points of {job.label} to {', '.join(written)}",
              file=sys.stderr)
    return lost


def tensorboard(job: Job, points: list[Point]) -> None:
    """Replace the job's event file in the run's TensorBoard folder with `points`."""
    from torch.utils.tensorboard import SummaryWriter

    final = job.run.events(job.stage, job.iteration, job.shard)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Written outside the run: a folder holding an event file is a run to TensorBoard.
    with tempfile.TemporaryDirectory(prefix="rlver-events-") as tmp:
        with SummaryWriter(tmp) as writer:
            for tag, value, step in points:
                writer.add_scalar(tag, value, step)
        (written,) = Path(tmp).iterdir()
        # The partial copy's name lacks "tfevents", so TensorBoard never reads it.
        partial = final.with_name(f".partial-{job.stage}-{os.getpid()}")
        shutil.copyfile(written, partial)
        os.replace(partial, final)
