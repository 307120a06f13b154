"""Calibrate a simulator against logged SAGE dialogues: does it feel what the logged one did?

The reward of training is the simulator's emotion change, so a candidate simulator is only
as good as its agreement with a reference one. This replays each logged dialogue turn by
turn: for every assistant reply the candidate sees the logged history up to that reply and
the logged emotion before it, and its proposed change is compared with the logged change.
Turn k of all dialogues goes to `feel` as one batch, as in a rollout.

Metrics per group (all turns, each file, each character type): Spearman rank correlation
(ties get average ranks), mean absolute error, sign agreement (0 is its own sign) and the
mean of both deltas. The candidate's proposal is compared unclipped.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from rlver.config import derive_seed
from rlver.errors import RlverInputError
from rlver.io import atomic_path
from rlver.personas import CHARACTER_TYPES
from rlver.simulator import SimRequest, Simulator
from rlver.tools.benchmark_logs import SageDialogue, format_table, read_sage_dialogues

#: The per-turn rows written by `--out`.
TURN_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("persona_id", pa.string()),
        ("character_type", pa.string()),
        ("turn", pa.int32()),
        ("logged_delta", pa.int32()),
        ("predicted_delta", pa.int32()),
        ("logged_emotion_before", pa.int32()),
        ("reason", pa.string()),
    ]
)

METRIC_KEYS = ("turns", "spearman", "mae", "sign_agreement", "mean_logged", "mean_predicted")


# --- statistics ------------------------------------------------------------------------


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; nan when either side is constant (no ranking to compare)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho with ties: the Pearson correlation of average ranks (scipy's rule)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    if len(x) < 2:
        return math.nan
    return pearson(average_ranks(x), average_ranks(y))


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def agreement(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The metrics of a set of turn rows (see METRIC_KEYS)."""
    logged = [r["logged_delta"] for r in rows]
    pred = [r["predicted_delta"] for r in rows]
    n = len(rows)
    if n == 0:
        return {k: (0 if k == "turns" else math.nan) for k in METRIC_KEYS}
    pairs = list(zip(logged, pred, strict=True))
    return {
        "turns": n,
        "spearman": spearman(logged, pred),
        "mae": sum(abs(a - b) for a, b in pairs) / n,
        "sign_agreement": sum(_sign(a) == _sign(b) for a, b in pairs) / n,
        "mean_logged": sum(logged) / n,
        "mean_predicted": sum(pred) / n,
    }


def group_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Metrics for all turns, each file (when there are several) and each character type."""
    groups: dict[str, list[dict[str, Any]]] = {"all": list(rows)}
    files = list(dict.fromkeys(r["file"] for r in rows))
    if len(files) > 1:
        for f in files:
            groups[Path(f).name] = [r for r in rows if r["file"] == f]
    for t in CHARACTER_TYPES:
        groups[t] = [r for r in rows if r["character_type"] == t]
    return {name: agreement(rs) for name, rs in groups.items()}


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """One aligned row per group."""
    def cell(key: str, v: float) -> str:
        if key == "turns":
            return str(int(v))
        return "n/a" if math.isnan(v) else f"{v:.3f}" if key != "mae" else f"{v:.2f}"

    rows = [[name] + [cell(k, m[k]) for k in METRIC_KEYS] for name, m in metrics.items()]
    return format_table(["group", *METRIC_KEYS], rows)


# --- replay ----------------------------------------------------------------------------


def replay(dialogues: Sequence[SageDialogue], simulator: Simulator,
           label: str = "calibrate") -> list[dict[str, Any]]:
    """The candidate's delta for every logged turn that has a logged delta.

    Turn k of all dialogues is one `feel` batch; rows come out by dialogue, then turn.
    """
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    most = max((len(d.turns) for d in dialogues), default=0)
    for k in range(most):
        batch = [(i, d, d.turns[k]) for i, d in enumerate(dialogues)
                 if k < len(d.turns) and d.turns[k].logged_delta is not None]
        if not batch:
            continue
        requests = [
            SimRequest(d.persona, t.history, t.emotion_before, t.turn,
                       derive_seed("calibrate", Path(d.file).name, d.line, t.turn))
            for _, d, t in batch
        ]
        feelings = simulator.feel(requests)
        for (i, d, t), f in zip(batch, feelings, strict=True):
            rows[(i, k)] = {
                "file": d.file, "persona_id": d.persona.persona_id,
                "character_type": d.persona.character_type, "turn": t.turn,
                "logged_delta": t.logged_delta, "predicted_delta": f.delta,
                "logged_emotion_before": t.emotion_before, "reason": f.reason,
            }
        print(f"{label}: turn {k + 1}: {len(batch)} replies judged", file=sys.stderr)
    return [rows[key] for key in sorted(rows)]


def write_turns(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """The per-turn rows as Parquet, written atomically."""
    table = pa.Table.from_pylist(rows, schema=TURN_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def simulator_config(backend: str, difficulty: str, sets: Sequence[str] = ()) -> Any:
    """The composed `simulator` group for a candidate; `sets` are simulator keys (k=v)."""
    from rlver.config import compose

    extra = [s if s.startswith("simulator.") else f"simulator.{s}" for s in sets]
    overrides = [f"simulator.backend={backend}", f"simulator.difficulty={difficulty}", *extra]
    return compose("smoke", overrides).simulator


def calibrate(logs: Sequence[str | os.PathLike[str]], backend: str = "heuristic",
              difficulty: str = "vanilla", sets: Sequence[str] = (),
              out: Optional[str | os.PathLike[str]] = None,
              limit: Optional[int] = None) -> dict[str, dict[str, float]]:
    """Replay the logs through the candidate simulator; print and return group metrics."""
    from rlver.simulator import make_simulator

    try:
        simulator = make_simulator(simulator_config(backend, difficulty, sets))
    except ValueError as exc:  # a backend the config allows but this build cannot make
        raise RlverInputError(
            f"--simulator {backend}: {exc}. Fix: pick a backend that is available here."
        ) from exc
    dialogues = [d for path in logs for d in read_sage_dialogues(path, limit)]
    print(f"calibrate: {len(dialogues)} dialogues from {len(logs)} log(s), simulator "
          f"{backend} ({difficulty})", file=sys.stderr)
    rows = replay(dialogues, simulator)
    metrics = group_metrics(rows)
    print(format_metrics(metrics))
    if out is not None:
        write_turns(out, rows)
        print(f"calibrate: wrote {len(rows)} turns to {out}", file=sys.stderr)
    return metrics
