"""The trajectory Parquet schema: the contract between rollout, update, evaluate and report.

One row is one training sample. In `nothink` mode that is one whole dialogue (the
assistant turns form several spans of `loss_mask`); in `think` mode each assistant turn
is its own sample carrying the dialogue's reward. Rows store exactly what training needs,
so the trainer never re-tokenises text:

- `input_ids`: the whole token sequence (prompt, assistant tokens, simulator turns).
- `loss_mask`: 1 on tokens the policy sampled, 0 elsewhere.
- `logprobs`: the sampling log-probability of each sampled token (0.0 where mask is 0).
- `emotion`, `delta`, `reason`, `parse_error`: the simulator's trajectory, one entry per
  assistant reply; `emotion_start` is the score before the first reply.
- `truncated`: per assistant reply, whether it was cut at `rollout.max_new_tokens`
  (no stop token) instead of ending on its own.
- `outcome` and `reward`: how the dialogue ended and final emotion / 100, floored at 0.

File metadata: schema version, config hash, code version, the sha256 of the policy
weights that sampled the file, the file's kind (rollout or eval); a rollout shard also has
its simulator's fallback numbers (`simulator_fallback_rate` and the others of
rlver.fallbacks.fallback_stats); and `content_sha256` over all of that and every
column's values but timings. Readers refuse a file written by another schema version, and
a file damaged after it was written: the pages carry Parquet's own CRC32 checksums
(verified on read), and the content hash catches what a damaged footer would change.
Files without `content_sha256` (written before it existed) are read unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from rlver import __version__
from rlver.errors import RlverInputError
from rlver.io import atomic_path

#: Version 2 added `truncated`.
SCHEMA_VERSION = "2"

OUTCOMES = ("success", "failure", "goodbye", "max_turns", "error")

#: Columns whose values depend on wall-clock time; excluded from determinism checks.
TIMING_COLUMNS = ("seconds",)

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

TRAJECTORY_SCHEMA = pa.schema(
    [
        ("iteration", pa.int32()),
        ("shard", pa.int32()),
        ("dialogue", pa.int32()),  # index of the dialogue within the iteration
        ("sample", pa.int32()),  # index of the sample within the dialogue (think mode)
        ("persona_id", pa.string()),
        ("group_id", pa.string()),  # dialogues of one persona in one iteration (GRPO)
        ("seed", pa.int64()),
        ("messages", pa.list_(MESSAGE)),  # the dialogue as the simulator saw it
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.int8())),
        ("logprobs", pa.list_(pa.float32())),
        ("emotion_start", pa.int32()),
        ("emotion", pa.list_(pa.int32())),
        ("delta", pa.list_(pa.int32())),
        ("reason", pa.list_(pa.string())),
        ("parse_error", pa.list_(pa.bool_())),
        ("truncated", pa.list_(pa.bool_())),  # per reply: cut at max_new_tokens
        ("num_turns", pa.int32()),
        ("outcome", pa.string()),
        ("final_emotion", pa.int32()),
        ("reward", pa.float32()),
        ("seconds", pa.float32()),
    ]
)

META_KEYS = ("schema_version", "config_hash", "code_version", "policy_sha256", "kind")


def write_trajectories(
    path: str | os.PathLike[str],
    rows: list[dict[str, Any]],
    *,
    config_hash: str,
    policy_sha256: str,
    kind: str,
    extra: Optional[dict[str, Any]] = None,
) -> None:
    """Validate `rows` against the schema and write them atomically with metadata;
    `extra`: more `rlver.<key>` metadata (the stage's metrics), stored as strings."""
    for i, row in enumerate(rows):
        _check_row(row, f"{path}: row {i}")
    table = pa.Table.from_pylist(rows, schema=TRAJECTORY_SCHEMA)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "config_hash": config_hash,
        "code_version": __version__,
        "policy_sha256": policy_sha256,
        "kind": kind,
    } | {k: str(v) for k, v in (extra or {}).items()}
    meta["content_sha256"] = content_sha256(table, meta)
    table = table.replace_schema_metadata({f"rlver.{k}": v for k, v in meta.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)


def column_sha256(column: pa.ChunkedArray) -> str:
    """sha256 of a column's values as exact JSON: independent of how Parquet chunked,
    padded or compressed them."""
    return hashlib.sha256(json.dumps(column.to_pylist(), sort_keys=True).encode()).hexdigest()


def content_sha256(table: pa.Table, meta: dict[str, str]) -> str:
    """sha256 over the metadata (but this hash) and every column's values but timings:
    a rerun writes the same metadata; timing pages are still covered by their CRC."""
    parts = {k: v for k, v in meta.items() if k != "content_sha256"}
    parts |= {f"column.{name}": column_sha256(table.column(name))
              for name in table.column_names if name not in TIMING_COLUMNS}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The rlver metadata of a trajectory file, validated."""
    return _open(path)[1]


def read_trajectories(path: str | os.PathLike[str]) -> tuple[pa.Table, dict[str, str]]:
    """Read and validate one trajectory file: (table, metadata)."""
    pf, meta = _open(path)
    try:
        table = pf.read()
    except Exception as exc:  # pyarrow raises several types for damaged pages
        raise RlverInputError(
            f"{path}: cannot read the Parquet data ({exc}); it was damaged after it was "
            "written. Fix: delete the file and rerun the stage that writes it."
        ) from exc
    want = meta.get("content_sha256")
    if want is not None and content_sha256(table, meta) != want:
        raise RlverInputError(
            f"{path}: its content does not match the content_sha256 recorded when it was "
            "written: it was damaged since. Fix: delete the file and rerun the stage that "
            "writes it."
        )
    return table, meta


def read_rows(paths: list[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """All rows of several trajectory files, in file order."""
    rows: list[dict[str, Any]] = []
    for p in paths:
        rows.extend(read_trajectories(p)[0].to_pylist())
    return rows


def _open(path: str | os.PathLike[str]) -> tuple[pq.ParquetFile, dict[str, str]]:
    path = Path(path)
    if not path.exists():
        raise RlverInputError(f"{path}: file not found. Fix: run the stage that writes it.")
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as exc:
        raise RlverInputError(
            f"{path}: not a readable Parquet file ({exc}); it may be truncated or damaged. "
            "Fix: delete it and rerun the stage that writes it."
        ) from exc
    raw = pf.schema_arrow.metadata or {}
    try:
        meta = {
            k.decode()[len("rlver.") :]: v.decode()
            for k, v in raw.items()
            if k.decode().startswith("rlver.")
        }
    except UnicodeDecodeError as exc:
        raise RlverInputError(
            f"{path}: its metadata is not UTF-8 text ({exc}); it was damaged after it was "
            "written. Fix: delete the file and rerun the stage that writes it."
        ) from exc
    version = meta.get("schema_version")
    if version is None:
        raise RlverInputError(
            f"{path}: no rlver metadata (field schema_version); not a trajectory file "
            "written by rlver. Fix: pass a rollout or eval file."
        )
    if version != SCHEMA_VERSION:
        raise RlverInputError(
            f"{path}: written with trajectory schema version {version}, this rlver reads "
            f"version {SCHEMA_VERSION} (field schema_version). Fix: rerun the stage that "
            "wrote it with this rlver, or use the rlver version that wrote it."
        )
    missing = [f.name for f in TRAJECTORY_SCHEMA if f.name not in pf.schema_arrow.names]
    if missing:
        raise RlverInputError(
            f"{path}: missing columns {missing}. Fix: rerun the stage that writes it."
        )
    for field in TRAJECTORY_SCHEMA:
        got = pf.schema_arrow.field(field.name).type
        if got != field.type:
            raise RlverInputError(
                f"{path}: column {field.name} has type {got}, not {field.type}. "
                "Fix: delete the file and rerun the stage that writes it."
            )
    return pf, meta


def _check_row(row: dict[str, Any], where: str) -> None:
    n = len(row["input_ids"])
    if len(row["loss_mask"]) != n or len(row["logprobs"]) != n:
        raise ValueError(f"{where}: input_ids, loss_mask and logprobs differ in length")
    turns = len(row["emotion"])
    for key in ("delta", "reason", "parse_error"):
        if len(row[key]) != turns:
            raise ValueError(f"{where}: {key} has {len(row[key])} entries, emotion {turns}")
    if row.get("truncated") is None:
        raise ValueError(f"{where}: truncated is missing (one flag per reply)")
    if row["outcome"] not in OUTCOMES:
        raise ValueError(f"{where}: outcome {row['outcome']!r} not in {OUTCOMES}")
