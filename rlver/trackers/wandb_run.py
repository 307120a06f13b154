"""Weights & Biases: each job's points into the run's one W&B run, offline by default.

Mode: `logging.wandb.mode`, else $WANDB_MODE, else `offline` (compute nodes often have no
internet): the job's W&B run folder goes to
`results/<run>/wandb/<stage>.iter_<i>[.shard_<s>]/offline-run-<time>-<id>/` and nothing
is sent; `wandb sync results/<run>/wandb/*/offline-run-*` uploads them later into one
W&B run (the folders share its id; W&B syncs the files of one run in the order they were
started). Each job's folder is written whole beside its place and renamed into it, so a
rerun of a stage replaces its folder, as it replaces its TensorBoard file.

Every job resumes the run by its id (`resume="allow"`). Tags keep TensorBoard's names;
each prefix has its own x axis, `<prefix>/step` (`update/step` is the iteration,
`step/step` the global optimizer step), so points of jobs that come in any order (two
shards of one iteration, a rerun) land at their TensorBoard step, whatever the order of
W&B's own row counter. No system metrics, git state, code or console capture: a job's
stdout and stderr stay its own.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from rlver import trackers
from rlver.io import atomic_path
from rlver.scalars import Job, Point

#: The project when neither logging.wandb.project nor $WANDB_PROJECT names one.
PROJECT = "rlver"


def mode(job: Job) -> str:
    """The configured mode, else $WANDB_MODE, else offline."""
    return str(job.cfg.logging.wandb.mode or os.environ.get("WANDB_MODE") or "offline")


def rows(points: list[Point]) -> list[dict[str, Any]]:
    """The points as W&B rows: one per prefix and step, `<prefix>/step` its x value."""
    out: list[dict[str, Any]] = []
    open_rows: dict[tuple[str, int], dict[str, Any]] = {}
    for tag, value, step in points:
        prefix = tag.split("/", 1)[0]
        axis = f"{prefix}/step"
        if tag == axis:
            raise ValueError(f"{tag}: a tag named like W&B's x axis of its prefix")
        row = open_rows.get((prefix, step))
        if row is None or tag in row:
            row = open_rows[(prefix, step)] = {axis: step}
            out.append(row)
        row[tag] = value
    return out


def write(job: Job, points: list[Point]) -> None:
    """Log `points` into the run's W&B run; the job's W&B folder replaces any earlier one."""
    chosen = mode(job)
    if chosen == "disabled":
        return
    # W&B reports its own errors to its servers unless told not to.
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    import wandb
    from wandb.sdk.lib.runid import generate_id

    settings = job.cfg.logging.wandb
    with trackers.locked(job.run):
        ids = trackers.run_ids(job.run, "wandb", "run", lambda: {"id": generate_id()})
        with atomic_path(job.run.wandb / job.name) as target:
            target.mkdir()
            run = wandb.init(
                project=settings.project or os.environ.get("WANDB_PROJECT") or PROJECT,
                entity=settings.entity or None, id=ids["id"], resume="allow",
                name=str(job.cfg.run), group=str(job.cfg.experiment), job_type=job.stage,
                config=trackers.frozen_config(job.config_path), dir=target,
                mode=chosen, reinit="create_new",  # type: ignore[arg-type]
                settings=wandb.Settings(console="off", x_disable_stats=True,
                                        x_disable_meta=True, disable_git=True,
                                        save_code=False, disable_job_creation=True,
                                        x_save_requirements=False, silent=True))
            try:
                for prefix in sorted({tag.split("/", 1)[0] for tag, _, _ in points}):
                    run.define_metric(f"{prefix}/step", hidden=True)
                    run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step")
                for row in rows(points):
                    run.log(row)
            finally:
                run.finish()
            # wandb.init(dir=D) writes D/wandb/<offline-run|run>-<time>-<id>/; `wandb sync`
            # tells offline runs by that name.
            (made,) = (target / "wandb").glob(f"*run-*-{ids['id']}")
            made.rename(target / made.name)
            shutil.rmtree(target / "wandb")
