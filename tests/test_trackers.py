"""The trackers beside TensorBoard (`logging.backends`): the real W&B (offline) and MLflow
(its SQLite store in the run folder) get the same points as TensorBoard, into one tracker
run per rlver run whichever process writes, without the network; a tracker that fails
loses its points, never the stage. The points of a finished workflow run through the
trackers: tests/test_workflow.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rlver import config, scalars
from rlver.errors import RlverInputError
from rlver.trackers import mlflow_run, wandb_run

from . import tracker_points
from .helpers import ROOT

ALL = "logging.backends=[tensorboard,wandb,mlflow]"


def _frozen(tmp_path: Path, *overrides: str) -> Path:
    path = tmp_path / "run" / "config.yaml"
    config.freeze(config.compose("smoke", list(overrides), run="run"), path)
    return path


def test_rows_put_each_prefix_and_step_in_one_row():
    points = [("update/loss", 1.0, 3), ("update/lr", 0.1, 3), ("step/loss", 2.0, 12),
              ("step/loss", 2.5, 13), ("update/loss", 1.5, 3)]
    assert wandb_run.rows(points) == [
        {"update/step": 3, "update/loss": 1.0, "update/lr": 0.1},
        {"step/step": 12, "step/loss": 2.0},
        {"step/step": 13, "step/loss": 2.5},
        {"update/step": 3, "update/loss": 1.5},  # a second point at a step: its own row
    ]
    with pytest.raises(ValueError, match="update/step"):
        wandb_run.rows([("update/step", 1.0, 0)])


def test_params_are_the_config_in_dotted_keys():
    assert mlflow_run.params({"seed": 0, "model": {"name": "m", "dtype": "float32"},
                              "logging": {"backends": ["tensorboard", "mlflow"]}}) == {
        "seed": "0", "model.name": "m", "model.dtype": "float32",
        "logging.backends": '["tensorboard", "mlflow"]'}


def test_where_scalars_go_is_not_part_of_the_config_hash(tmp_path):
    plain = config.compose("smoke", run="run")
    tracked = config.compose("smoke", [ALL, "logging.wandb.project=p"], run="run")
    assert config.config_hash(plain) == config.config_hash(tracked)
    assert "logging" not in config.to_yaml(plain)  # the default, as before the key existed
    assert "wandb" in config.to_yaml(tracked)


@pytest.mark.parametrize(("value", "message"), [
    ("[tensorboard,comet]", "one of: mlflow, tensorboard, wandb"),
    ("[wandb,wandb]", "without repeats"),
])
def test_unknown_or_repeated_backend_is_refused(value, message):
    with pytest.raises(RlverInputError, match="logging.backends") as err:
        config.compose("smoke", [f"logging.backends={value}"])
    assert message in str(err.value)


def test_unknown_wandb_mode_is_refused():
    with pytest.raises(RlverInputError, match="logging.wandb.mode must be one of"):
        config.compose("smoke", ["logging.wandb.mode=sometimes"])


def test_a_failing_tracker_loses_its_points_not_the_stage(tmp_path, capsys):
    """MLflow's store under a path that is a file, not a folder: the write fails for real."""
    (tmp_path / "a-file").write_text("")
    path = _frozen(tmp_path, "logging.backends=[tensorboard,mlflow]",
                   f"logging.mlflow.tracking_uri=sqlite:///{tmp_path}/a-file/mlflow.db")
    points = [("eval/score", 31.0, 2), ("eval/n", 4.0, 2)]
    assert scalars.write(path, "evaluate", 2, points) == {"tensorboard": 0, "mlflow": 2}
    assert "mlflow lost 2 of 2 points (100%) of evaluate iter 2" in capsys.readouterr().err
    assert (tmp_path / "run" / "tensorboard" / "events.out.tfevents.evaluate.iter_0002").is_file()


class Recorder:
    """A TCP listener on the loopback that counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


#: One job in its own process, as a stage runs: its points to every backend.
JOB = """
import json, sys
from rlver import scalars
path, stage, iteration, shard, points = sys.argv[1:]
lost = scalars.write(path, stage, int(iteration), [tuple(p) for p in json.loads(points)],
                     None if shard == "-" else int(shard))
sys.exit(1 if any(lost.values()) else 0)
"""


def _job(env: dict[str, str], path: Path, stage: str, iteration: int, shard: int | None,
         metrics: dict, prefix: str, step: int) -> subprocess.Popen[str]:
    points = scalars.numbers(metrics, prefix, step)
    return subprocess.Popen(
        [sys.executable, "-c", JOB, str(path), stage, str(iteration),
         "-" if shard is None else str(shard), json.dumps(points)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_jobs_at_once_and_after_a_restart_write_one_tracker_run(tmp_path):
    """Two rollout shards and an evaluation at the same time, then (the run restarted)
    an update and the next iteration's shard, each in its own process: every point is
    in one W&B run and one MLflow run, equal to TensorBoard's. W&B's mode, MLflow's
    tracking URI and their telemetry switches unset; W&B's server and any proxy point at
    a listener on the loopback, which nothing connects to."""
    recorder = Recorder()
    unset = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_ERROR_REPORTING", "MLFLOW_TRACKING_URI",
             "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "CI", "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if k not in unset} | {
        "WANDB_BASE_URL": recorder.url, "HTTP_PROXY": recorder.url,
        "HTTPS_PROXY": recorder.url, "ALL_PROXY": recorder.url, "NO_PROXY": ""}
    path = _frozen(tmp_path, ALL)
    rollout = {"reward_mean": 0.25, "outcome_share": {"success": 0.5, "failure": 0.0}}
    at_once = [_job(env, path, "rollout", 0, s, rollout | {"reward_mean": 0.1 * s},
                    "rollout", 0) for s in (0, 1)]
    at_once.append(_job(env, path, "evaluate", 0, None, {"score": 30.5, "n": 4}, "eval", 0))
    outputs = [p.communicate(timeout=600)[0] for p in at_once]
    assert [p.returncode for p in at_once] == [0, 0, 0], outputs
    update = {"iteration": 0, "loss": 0.5, "grad_norm": 1.25}
    restarted = [_job(env, path, "update", 0, None, update, "update", 0),
                 _job(env, path, "rollout", 1, 0, rollout, "rollout", 1)]
    outputs = [p.communicate(timeout=600)[0] for p in restarted]
    assert [p.returncode for p in restarted] == [0, 0], outputs

    run = path.parent
    tensorboard = tracker_points.tensorboard(run / "tensorboard")
    assert len(tensorboard) == 3 * 3 + 2 + 2
    wandb, wandb_ids = tracker_points.wandb(run)
    assert len(tracker_points.wandb_runs(run)) == 5
    assert wandb_ids == {json.loads((run / "trackers" / "wandb.json").read_text())["run"]["id"]}
    assert tracker_points.same(wandb, tensorboard)
    mlflow, mlflow_ids = tracker_points.mlflow(f"sqlite:///{run / 'mlflow.db'}")
    kept = json.loads((run / "trackers" / "mlflow.json").read_text())
    assert mlflow_ids == [kept["local"]["run_id"]]
    assert tracker_points.same(mlflow, tensorboard)
    assert recorder.connections == 0
