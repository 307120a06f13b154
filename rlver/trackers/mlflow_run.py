"""MLflow: each job's points into the run's one MLflow run, in a local store by default.

Store: `logging.mlflow.tracking_uri`, else $MLFLOW_TRACKING_URI, else an SQLite file in
the run folder, `results/<run>/mlflow.db` (`mlflow ui --backend-store-uri
sqlite:///results/<run>/mlflow.db` shows it; no server, no network). MLflow's file store
(`mlruns/`) is in maintenance mode and refused by MLflow unless opted into; SQLite is its
successor, and the run's tracker lock (rlver.trackers) lets one job at a time at it.
MLflow's usage telemetry is off unless $MLFLOW_DISABLE_TELEMETRY says otherwise.

The experiment is `logging.mlflow.experiment`, else the run's experiment; the MLflow run
is named after the run. Its parameters are the frozen config, flattened to dotted keys
(MLflow's parameters cannot change; the changes of an extended run are its tag
`rlver.config_changes`). Points keep TensorBoard's tags and steps. MLflow keeps every
point it is sent: a rerun of a stage adds its points again beside the first ones.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any

from rlver import trackers
from rlver.scalars import Job, LostPoints, Point

#: MLflow's limits per log_batch call.
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100
_PARAM_LENGTH = 6000


def tracking_uri(job: Job) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else the run's own SQLite store."""
    return str(job.cfg.logging.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
               or local_uri(job))


def local_uri(job: Job) -> str:
    return f"sqlite:///{job.run.mlflow_db.resolve()}"


def params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow parameters: dotted keys, text values (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= params(value, f"{prefix}{key}.")
        else:
            text = json.dumps(value) if isinstance(value, list) else str(value)
            out[f"{prefix}{key}"] = text[:_PARAM_LENGTH]
    return out


def write(job: Job, points: list[Point]) -> None:
    """Log `points` into the run's MLflow run (made, with the config, by the first job)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(job)
    local = uri == local_uri(job)
    config = trackers.frozen_config(job.config_path)
    changes = config.pop("config_changes", [])

    def new_run() -> dict[str, Any]:
        name = str(job.cfg.logging.mlflow.experiment or job.cfg.experiment)
        found = client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else client.create_experiment(name)
        made = client.create_run(experiment, run_name=str(job.cfg.run),
                                 tags={"rlver.run_dir": str(job.run.root.resolve())})
        flat = [Param(k, v) for k, v in sorted(params(config).items())]
        for i in range(0, len(flat), _PARAMS_PER_BATCH):
            client.log_batch(made.info.run_id, params=flat[i:i + _PARAMS_PER_BATCH])
        return {"run_id": made.info.run_id, "experiment_id": experiment}

    with trackers.locked(job.run):
        # A new SQLite store gets its tables here, from one job alone.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # alembic's notes on MLflow's tables
            client = MlflowClient(tracking_uri=uri)
        # Keyed by store: the local store moves with the run folder.
        run_id = trackers.run_ids(job.run, "mlflow", "local" if local else uri,
                                  new_run)["run_id"]
        client.update_run(run_id, status="RUNNING")
        if changes:
            client.set_tag(run_id, "rlver.config_changes", json.dumps(changes))
        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, value, step in points]
        for i in range(0, len(metrics), _METRICS_PER_BATCH):
            try:
                client.log_batch(run_id, metrics=metrics[i:i + _METRICS_PER_BATCH])
            except Exception as exc:
                raise LostPoints(len(metrics) - i, exc) from exc
        # FINISHED until the next job's points: a run between jobs is not running.
        client.set_terminated(run_id)
