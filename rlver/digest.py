"""A run's outputs as hashes: what two runs must share to have produced the same results.

`rlver digest RUN_DIR` prints, for every trajectory file (rollout shards, evaluation
dialogues) a sha256 per column, for every policy the sha256 of its weights (a LoRA
adapter's with its base's digest), and every update's, evaluation's and retention
measurement's metrics, all without the columns and keys that depend on wall-clock time.
Two digests are compared key by key (`rlver digest RUN --compare OTHER.json`): a
refactor, a resumed run or a rerun must change none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlver import layout
from rlver.errors import RlverInputError
from rlver.io import ADAPTER_WEIGHTS, read_json_object

#: Metrics that depend on wall-clock time or on how a job was interrupted, not on results.
TIMING_KEYS = ("seconds", "tokens_per_s", "resumed_at_steps")


def column_hashes(path: Path) -> dict[str, str]:
    """sha256 of each column's values (as exact JSON) of a trajectory file, timing
    columns left out."""
    from rlver.schema import TIMING_COLUMNS, column_sha256, read_trajectories

    table, _ = read_trajectories(path)
    return {name: column_sha256(table.column(name)) for name in table.column_names
            if name not in TIMING_COLUMNS}


def _metrics(path: Path) -> dict[str, Any]:
    data = read_json_object(path, "delete it and rerun the stage that writes it.")
    for key in TIMING_KEYS:
        data.pop(key, None)
    return data


def digest(run_dir: str | Path) -> dict[str, Any]:
    """{relative path: hashes or metrics} for every output of the run found on disk."""
    from rlver.io import weights_sha256

    run = layout.Run(run_dir)
    if not run.config.is_file():
        raise RlverInputError(f"{run.config}: not found; {run.root} is not a run folder. "
                              "Fix: pass results/<run>.")
    out: dict[str, Any] = {}
    for i in run.iterations():
        for path in sorted(run.rollouts_dir(i).glob("shard_*.parquet")):
            out[run.relative(path)] = column_hashes(path)
        if any((run.policy(i) / f).is_file() for f in ("model.safetensors", ADAPTER_WEIGHTS)):
            out[run.relative(run.policy(i))] = weights_sha256(run.policy(i))
        if run.update_metrics(i).is_file():
            out[run.relative(run.update_metrics(i))] = _metrics(run.update_metrics(i))
        if run.eval_dialogues(i).is_file():
            out[run.relative(run.eval_dialogues(i))] = column_hashes(run.eval_dialogues(i))
        if run.eval_metrics(i).is_file():
            out[run.relative(run.eval_metrics(i))] = _metrics(run.eval_metrics(i))
        if run.retention_metrics(i).is_file():
            out[run.relative(run.retention_metrics(i))] = _metrics(run.retention_metrics(i))
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two digests (empty: the same outputs)."""
    lines = []
    for key in sorted(a.keys() | b.keys()):
        if key not in a or key not in b:
            lines.append(f"{key}: only in the {'first' if key in a else 'second'}")
        elif a[key] != b[key]:
            va, vb = a[key], b[key]
            if isinstance(va, dict) and isinstance(vb, dict):
                keys = sorted(k for k in va.keys() | vb.keys() if va.get(k) != vb.get(k))
                lines.append(f"{key}: differs in {', '.join(keys)}")
            else:
                lines.append(f"{key}: differs")
    return lines
