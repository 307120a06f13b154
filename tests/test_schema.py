from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.support import trajectory_row
from rlver import schema
from rlver.errors import RlverInputError


def write(path, rows=None):
    schema.write_trajectories(path, rows or [trajectory_row(0), trajectory_row(1)],
                              config_hash="c" * 16, policy_sha256="p" * 64, kind="rollout")


def test_roundtrip_with_metadata(tmp_path):
    write(tmp_path / "s.parquet")
    table, meta = schema.read_trajectories(tmp_path / "s.parquet")
    assert table.num_rows == 2 and table.schema.equals(schema.TRAJECTORY_SCHEMA)
    assert meta["schema_version"] == schema.SCHEMA_VERSION
    assert meta["config_hash"] == "c" * 16 and meta["policy_sha256"] == "p" * 64
    assert meta["kind"] == "rollout" and meta["code_version"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_inconsistent_row_is_refused(tmp_path):
    bad = trajectory_row() | {"loss_mask": [0, 1]}
    with pytest.raises(ValueError, match="differ in length"):
        write(tmp_path / "s.parquet", [bad])
    with pytest.raises(ValueError, match="outcome"):
        write(tmp_path / "s.parquet", [trajectory_row() | {"outcome": "won"}])
    assert not (tmp_path / "s.parquet").exists()


def test_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "s.parquet"
    write(path)
    table = pq.read_table(path)
    meta = dict(table.schema.metadata) | {b"rlver.schema_version": b"0"}
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(RlverInputError, match="schema version 0.*schema_version"):
        schema.read_trajectories(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "s.parquet"
    write(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RlverInputError, match="s.parquet.*truncated.*Fix"):
        schema.read_trajectories(path)


def test_foreign_parquet_is_refused(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(RlverInputError, match="schema_version"):
        schema.read_trajectories(path)
