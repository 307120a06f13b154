"""What a run directory holds, per iteration, for the report: rollout rewards and
outcomes, update and evaluation metrics, the evaluation's dialogues."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rlver import layout
from rlver.errors import RlverInputError
from rlver.fallbacks import RATE_KEY, fallback_stats
from rlver.io import read_json_object
from rlver.schema import OUTCOMES, read_metadata

#: Columns the report needs from rollout files; token columns are skipped (large).
_TRAIN_COLUMNS = ["sample", "reward", "outcome", "final_emotion", "num_turns", "parse_error",
                  "reason"]
#: Columns the report needs from eval dialogues.
_EVAL_COLUMNS = [
    "dialogue",
    "sample",
    "persona_id",
    "messages",
    "emotion_start",
    "emotion",
    "delta",
    "reason",
    "parse_error",
    "truncated",
    "num_turns",
    "outcome",
    "final_emotion",
]


@dataclass
class Iteration:
    """What the run directory holds for one iteration; None/empty where not written yet."""

    index: int
    train_dialogues: int = 0
    train_reward: float | None = None
    train_outcomes: dict[str, int] = field(default_factory=dict)
    train_fallback_rate: float | None = None
    update: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    eval_dialogues_path: Path | None = None


def scan(run_dir: Path) -> list[Iteration]:
    """Collect per-iteration numbers from every iteration folder, in iteration order."""
    run = layout.Run(run_dir)
    found: list[Iteration] = []
    for i in run.iterations():
        it = Iteration(index=i)
        shards = sorted(run.rollouts_dir(i).glob("shard_*.parquet"))
        if shards:
            _read_train(it, shards)
        if run.update_metrics(i).is_file():
            it.update = _read_json(run.update_metrics(i))
        if run.eval_metrics(i).is_file():
            it.eval = _read_json(run.eval_metrics(i))
        if run.eval_dialogues(i).is_file():
            it.eval_dialogues_path = run.eval_dialogues(i)
        if shards or it.update or it.eval or it.eval_dialogues_path:
            found.append(it)
    return found


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "delete it and rerun the stage that writes it.")


def _read_columns(path: Path, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of a validated trajectory file, only `columns` (token columns can be huge)."""
    read_metadata(path)  # schema version and columns checked, with a clear error
    try:
        return pq.read_table(path, columns=columns).to_pylist()
    except Exception as exc:  # pyarrow raises several types for damaged pages
        raise RlverInputError(
            f"{path}: cannot read the Parquet data ({exc}). "
            "Fix: delete the file and rerun the stage that writes it."
        ) from exc


def _read_train(it: Iteration, shards: list[Path]) -> None:
    """Train reward and outcomes per dialogue: rows with sample == 0 (one per dialogue)."""
    rows = [r for p in shards for r in _read_columns(p, _TRAIN_COLUMNS) if r["sample"] == 0]
    it.train_dialogues = len(rows)
    if rows:
        it.train_reward = statistics.fmean(float(r["reward"]) for r in rows)
    it.train_outcomes = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    it.train_fallback_rate = fallback_stats(rows)[RATE_KEY]


def read_eval_rows(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    rows = [r for r in _read_columns(path, _EVAL_COLUMNS) if r["sample"] == 0]
    return sorted(rows, key=lambda r: r["dialogue"])


def reward_of(it: Iteration) -> float | None:
    """Rollout mean reward, else the update's reward_mean (rollouts may be cleaned up)."""
    if it.train_reward is not None:
        return it.train_reward
    if it.update is not None and it.update.get("reward_mean") is not None:
        return float(it.update["reward_mean"])
    return None
