"""Experiment trackers beside TensorBoard: Weights & Biases (`wandb_run`) and MLflow
(`mlflow_run`), backends of `logging.backends` that rlver.scalars calls with each job's
points.

One tracker run per rlver run: its id is kept in `results/<run>/trackers/<backend>.json`,
made by the first job that writes, so every later job (other stages, a restarted or
requeued job, a resident block, the added iterations of an extended run) writes into
the same tracker run. The tracker gets the frozen config (config.yaml as frozen, with
the changes recorded since, config_changes.yaml) as the run's config.

Jobs of a run write at the same time (the shards of an iteration, an evaluation beside a
rollout, the ranks of a block), possibly on several nodes. Every tracker write holds the
run's lock (`trackers/.lock`, flock on the run's file system) from reading the id to the
last point: the first job makes the id alone, and the writes reach a store one job at a
time, which MLflow's file store (one file per metric, appended to) and a W&B run resumed
online (its history continues from the last step the server has) need. A job waits at
most for the other jobs' tracker writes, seconds each.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rlver import config, layout
from rlver.io import read_json_object, write_json


@contextlib.contextmanager
def locked(run: layout.Run) -> Iterator[None]:
    """Hold the run's tracker lock. A file system without locks gets a warning and the
    writes go on unlocked."""
    run.trackers.mkdir(parents=True, exist_ok=True)
    with open(run.trackers / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:
            print(f"scalars: WARNING: cannot lock {run.trackers / '.lock'} ({exc}); "
                  "tracker writes of jobs running at the same time may interleave",
                  file=sys.stderr)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)


def run_ids(run: layout.Run, backend: str, key: str,
            new: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The tracker run of `backend` under `key` (a store), made by `new` the first time
    and kept in `trackers/<backend>.json`. Call with the lock held."""
    path = run.trackers / f"{backend}.json"
    fix = "delete it to start a new tracker run for this run."
    kept = read_json_object(path, fix) if path.is_file() else {}
    if key not in kept:
        kept[key] = new()
        write_json(path, kept)
    entry: dict[str, Any] = kept[key]
    return entry


def frozen_config(config_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's config as frozen, and the changes recorded since (extended runs)."""
    frozen = config.to_container(config.load(config_path, with_changes=False))
    changes = config.recorded_changes(config_path)
    return frozen | ({"config_changes": changes} if changes else {})
