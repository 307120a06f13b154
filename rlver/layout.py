"""Where a run's files live: every path under `results/<run>/`, named once.

The Snakemake rules and the Python code both take their paths from here, so the layout
of a run (README, "What a run produces") is written in one place:

    results/<run>/config.yaml                          the frozen config
    results/<run>/config_changes.yaml                  keys changed since (extended runs)
    results/<run>/iter_<i>/policy/                     the policy of iteration i
    results/<run>/iter_<i>/rollouts/shard_<s>.parquet  its training dialogues
    results/<run>/iter_<i>/update/                     update i: metrics.json,
        submitit/, job.json, state/, critic/, resume/
    results/<run>/iter_<i>/eval/                       metrics.json, dialogues.parquet
    results/<run>/iter_<i>/retention/                  metrics.json, samples_<task>.jsonl,
        tasks/ (lm-eval's task files it ran)
    results/<run>/iter_<i>/block/                      the job of a resident block
        starting at i (cluster.iterations_per_job > 1): submitit/, job.json
    results/<run>/tensorboard/                         every stage's scalars, one
        event file per stage, iteration and shard (rlver/scalars.py)
    results/<run>/trackers/                            the run's W&B and MLflow run ids
    results/<run>/wandb/<stage>.iter_<i>[.shard_<s>]/  W&B's files of one job
    results/<run>/mlflow.db                            the local MLflow store
    results/<run>/simulator/                           the served simulated user
        (simulator.backend=served): endpoint.json, api_key (mode 0600), lease.json,
        replicas/, submitit/ (Slurm) or local/ (subprocess logs)
    results/<run>/report/, results/<run>/logs/

Iterations and shards are numbers; a string is passed through unchanged, so the rules can
ask for the same paths with wildcards (`run.shard("{iteration}", "{shard}")`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Union

Index = Union[int, str]

_ITERATION_DIR = re.compile(r"iter_(\d+)$")


def it(i: Index) -> str:
    """An iteration as it appears in paths: 3 -> "0003"; a wildcard stays as it is."""
    return i if isinstance(i, str) else f"{i:04d}"


def sh(s: Index) -> str:
    """A shard as it appears in paths: 1 -> "001"; a wildcard stays as it is."""
    return s if isinstance(s, str) else f"{s:03d}"


def model_dir(name: str, resources: str | os.PathLike[str] = "resources") -> Path:
    """A base model in HF format, shared by runs (rule prepare_model)."""
    return Path(resources) / "models" / name


def persona_dir(name: str, resources: str | os.PathLike[str] = "resources") -> Path:
    """A persona set, `train.parquet` and `test.parquet`, shared by runs."""
    return Path(resources) / "personas" / name


def iteration_of(path: str | os.PathLike[str]) -> int:
    """The iteration of an `iter_<i>` folder."""
    match = _ITERATION_DIR.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not an iter_<i> folder")
    return int(match.group(1))


class Run:
    """The files of one run, rooted at `results/<run>` (or any folder)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def of_config(cls, config_path: str | os.PathLike[str]) -> Run:
        """The run whose frozen config is `config_path`."""
        return cls(Path(config_path).parent)

    @classmethod
    def of_update_dir(cls, update_dir: str | os.PathLike[str]) -> Run:
        """The run an `iter_<i>/update` folder belongs to."""
        return cls(Path(update_dir).parents[1])

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def config_changes(self) -> Path:
        """The changes of extendable keys made since the config was frozen
        (rlver.config.EXTENDABLE), each with its UTC time."""
        return self.root / "config_changes.yaml"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str, i: Index | None = None, shard: Index | None = None) -> Path:
        """logs/<stage>.log, logs/<stage>/iter_<i>.log or .../iter_<i>_shard_<s>.log."""
        if i is None:
            return self.logs / f"{stage}.log"
        name = f"iter_{it(i)}" + ("" if shard is None else f"_shard_{sh(shard)}")
        return self.logs / stage / f"{name}.log"

    @property
    def tensorboard(self) -> Path:
        """The run's one TensorBoard folder: `tensorboard --logdir results` shows one run
        per run, whichever stages and jobs wrote into it."""
        return self.root / "tensorboard"

    def events(self, stage: str, i: Index, shard: Index | None = None) -> Path:
        """The event file of one writer: a stage of iteration i (and shard s). Its name is
        fixed, so a rerun replaces it; TensorBoard reads any name holding "tfevents"."""
        name = f"events.out.tfevents.{stage}.iter_{it(i)}"
        return self.tensorboard / (name + ("" if shard is None else f".shard_{sh(shard)}"))

    @property
    def trackers(self) -> Path:
        """The run's tracker ids (`<backend>.json`) and the lock their writers take
        (rlver/trackers/)."""
        return self.root / "trackers"

    @property
    def wandb(self) -> Path:
        """W&B's run folders, one per job (`<stage>.iter_<i>[.shard_<s>]`)."""
        return self.root / "wandb"

    @property
    def mlflow_db(self) -> Path:
        """The MLflow store (SQLite) used when no tracking URI is set."""
        return self.root / "mlflow.db"

    def iteration(self, i: Index) -> Path:
        return self.root / f"iter_{it(i)}"

    def policy(self, i: Index) -> Path:
        return self.iteration(i) / "policy"

    @property
    def reference_policy(self) -> Path:
        """The base policy (iteration 0's), the KL reference."""
        return self.policy(0)

    def rollouts_dir(self, i: Index) -> Path:
        return self.iteration(i) / "rollouts"

    def shard(self, i: Index, s: Index) -> Path:
        return self.rollouts_dir(i) / f"shard_{sh(s)}.parquet"

    def shards(self, i: int, n: int) -> list[Path]:
        return [self.shard(i, s) for s in range(n)]

    def update_dir(self, i: Index) -> Path:
        return self.iteration(i) / "update"

    def update_metrics(self, i: Index) -> Path:
        return self.update_dir(i) / "metrics.json"

    def state(self, i: Index) -> Path:
        """The optimizer state update i leaves for update i+1 (DeepSpeed checkpoints)."""
        return self.update_dir(i) / "state"

    def critic(self, i: Index) -> Path:
        """The PPO critic update i leaves for update i+1 (safetensors)."""
        return self.update_dir(i) / "critic"

    def resume(self, i: Index) -> Path:
        """Update i's checkpoint at a preemption, for its requeued job."""
        return self.update_dir(i) / "resume"

    def block_dir(self, first: Index) -> Path:
        """The job of the resident block that starts at iteration `first`: submitit/,
        job.json."""
        return self.iteration(first) / "block"

    @property
    def simulator(self) -> Path:
        """The served simulated user's folder (rlver.served.files names what is in it)."""
        return self.root / "simulator"

    def eval_dir(self, i: Index) -> Path:
        return self.iteration(i) / "eval"

    def eval_metrics(self, i: Index) -> Path:
        return self.eval_dir(i) / "metrics.json"

    def eval_dialogues(self, i: Index) -> Path:
        return self.eval_dir(i) / "dialogues.parquet"

    def retention_dir(self, i: Index) -> Path:
        """The retention stage's lm-eval results for policy i."""
        return self.iteration(i) / "retention"

    def retention_metrics(self, i: Index) -> Path:
        return self.retention_dir(i) / "metrics.json"

    def iterations(self) -> list[int]:
        """The iterations that have a folder, in order."""
        if not self.root.is_dir():
            return []
        return sorted(iteration_of(d) for d in self.root.iterdir()
                      if d.is_dir() and _ITERATION_DIR.match(d.name))

    def relative(self, path: str | os.PathLike[str]) -> str:
        return Path(path).relative_to(self.root).as_posix()
