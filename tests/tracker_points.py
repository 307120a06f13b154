"""A run's scalars read back through each backend's own library: TensorBoard's event
reader, W&B's reader of its offline files (`wandb leet inspect --json`), MLflow's client.
Each returns the points sorted as (tag, step, value)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from .helpers import BIN

Points = list[tuple[str, int, float]]


def _sorted(points: Points) -> Points:
    """By tag, step and value, NaN last (NaN compares with nothing)."""
    return sorted(points, key=lambda p: (p[0], p[1], math.isnan(p[2]),
                                         0.0 if math.isnan(p[2]) else p[2]))


def tensorboard(folder: Path) -> Points:
    """The points of a TensorBoard folder, or of one event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return _sorted([(tag, e.step, e.value) for tag in events.Tags()["scalars"]
                    for e in events.Scalars(tag)])


def wandb_runs(run_dir: Path) -> list[Path]:
    """The W&B run folders of a run, one per job."""
    return sorted((run_dir / "wandb").glob("*/offline-run-*"))


def wandb_records(folder: Path) -> list[dict]:
    """The records of one W&B run folder, as W&B's own reader prints them."""
    res = subprocess.run([str(BIN / "wandb"), "leet", "inspect", "--json", str(folder)],
                         capture_output=True, text=True, check=True, timeout=300)
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def wandb(run_dir: Path) -> tuple[Points, set[str]]:
    """Every job's points from its W&B files (each row's `<prefix>/step` is the step),
    and the W&B run ids they were written to."""
    points: Points = []
    ids: set[str] = set()
    for folder in wandb_runs(run_dir):
        for record in wandb_records(folder):
            if record["type"] == "run":
                ids.add(record["run"]["run_id"])
            if record["type"] != "history":
                continue
            item = record["history"]["item"]
            for key, value in item.items():
                prefix = key.split("/", 1)[0]
                if key.startswith("_") or key == f"{prefix}/step":
                    continue
                points.append((key, int(item[f"{prefix}/step"]), float(value)))
    return _sorted(points), ids


def mlflow(tracking_uri: str) -> tuple[Points, list[str]]:
    """Every point of every run in an MLflow store, and the ids of its runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = [r for e in client.search_experiments() for r in
            client.search_runs([e.experiment_id])]
    points: Points = []
    for run in runs:
        for key in run.data.metrics:
            points += [(m.key, m.step, m.value)
                       for m in client.get_metric_history(run.info.run_id, key)]
    return _sorted(points), [r.info.run_id for r in runs]


def same(a: Points, b: Points) -> bool:
    """Equal tags, steps and values (TensorBoard keeps float32; NaN equals NaN)."""
    def close(x: float, y: float) -> bool:
        return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-6 * max(1.0, abs(x))

    return len(a) == len(b) and all(ta == tb and sa == sb and close(va, vb)
                                    for (ta, sa, va), (tb, sb, vb) in zip(a, b, strict=True))
