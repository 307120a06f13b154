"""Finished files damaged later: the next stage that reads one stops before using it, with
a message naming the file and what remakes it. The damage is real (bytes flipped on disk);
nothing is mocked."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from bench.support import trajectory_row
from rlver import config, io, schema
from rlver.errors import RlverInputError
from rlver.personas import build_persona_sets
from rlver.rollout import rollout_shard

from .helpers import TINY
from .test_schema import write


def flip(path: Path, pos: int, mask: int = 0xFF) -> bytes:
    """Flip the bits `mask` of the byte at `pos` of `path`; returns the original content."""
    data = path.read_bytes()
    damaged = bytearray(data)
    damaged[pos] ^= mask
    path.write_bytes(bytes(damaged))
    return data


def test_no_flipped_byte_of_a_trajectory_file_is_read_as_good_data(tmp_path):
    """Single-byte flips of a small rollout file (every 7th byte: ~1,000 reads), one at a
    time: each read either refuses the file (page CRC, footer, content hash) or returns
    exactly what was written (the flip hit bytes no reader uses, e.g. statistics)."""
    path = tmp_path / "shard_000.parquet"
    write(path, [trajectory_row(i) for i in range(4)])
    good_table, good_meta = schema.read_trajectories(path)
    refused = 0
    positions = range(4, path.stat().st_size - 4, 7)  # the magic words aside
    for pos in positions:
        original = flip(path, pos)
        try:
            table, meta = schema.read_trajectories(path)
        except RlverInputError as exc:
            assert str(path) in str(exc) and "Fix: delete" in str(exc), exc
            refused += 1
        else:
            assert table.equals(good_table) and meta == good_meta, f"byte {pos} read as data"
        path.write_bytes(original)
    assert refused > len(positions) // 2


def test_a_file_changed_after_writing_is_refused_by_its_content_hash(tmp_path):
    """A rewritten file whose columns and metadata still parse (here: one reward and the
    config hash changed, the recorded content_sha256 kept) is refused."""
    path = tmp_path / "shard_000.parquet"
    write(path)
    table = pq.read_table(path)
    meta = dict(table.schema.metadata) | {b"rlver.config_hash": b"d" * 16}
    rewards = table.column("reward").to_pylist()
    table = table.set_column(table.column_names.index("reward"), "reward",
                             pa.array([rewards[0] + 0.25, *rewards[1:]], pa.float32()))
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(RlverInputError, match="content_sha256 recorded"):
        schema.read_trajectories(path)


def policy(folder: Path) -> Path:
    """A policy folder as rlver writes one: weights and their recorded sha256."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.arange(64, dtype=torch.float32)}, folder / "model.safetensors")
    io.record_weights_sha256(folder)
    return folder


def test_a_damaged_policy_is_refused_naming_what_remakes_it(tmp_path):
    p = policy(tmp_path / "run" / "iter_0003" / "policy")
    sha = io.checked_weights_sha256(p)
    assert sha == io.weights_sha256(p)
    flip(p / "model.safetensors", p.joinpath("model.safetensors").stat().st_size - 3)
    with pytest.raises(RlverInputError) as exc:
        io.checked_weights_sha256(p)
    msg = str(exc.value)
    assert str(p) in msg and "damaged" in msg and "the update of iteration 2" in msg


def test_a_rollout_stops_on_a_damaged_policy_before_any_output(tmp_path):
    cfg = config.compose("smoke", TINY, run="tiny")
    config.freeze(cfg, tmp_path / "config.yaml")
    build_persona_sets(cfg.personas, tmp_path / "train.parquet", tmp_path / "test.parquet")
    p = policy(tmp_path / "iter_0000" / "policy")
    flip(p / "model.safetensors", p.joinpath("model.safetensors").stat().st_size - 5)  # data
    out = tmp_path / "shard_000.parquet"
    with pytest.raises(RlverInputError, match="prepare_model"):
        rollout_shard(str(tmp_path / "config.yaml"), 0, 0, str(p), str(tmp_path / "train.parquet"),
                      str(out))
    assert not out.exists()
