"""The rows an update leaves out: dialogues ended by a full context or a failed
simulator (outcome error)."""

from __future__ import annotations

import pytest

from rlver import config
from rlver.errors import RlverInputError

from .helpers import update_spec


def test_rows_of_dialogues_ended_by_an_error_are_left_out_of_the_update(tmp_path, base_model,
                                                                       rows):
    """A dialogue ended by a full context or a failed simulator (outcome error) is not
    trained on: its rows leave the batch and its groups, and are counted."""
    from rlver.train.trainer import read_batch

    failed = [r | {"outcome": "error"} if i == 0 else r for i, r in enumerate(rows)]
    spec = update_spec(tmp_path, base_model, failed, "errors", "iterations=1")
    cfg = config.load(spec.config_path)
    batch = read_batch(spec, cfg, 0, 1)
    assert [r["outcome"] for r in batch.rows] == [r["outcome"] for r in rows[1:]]
    assert batch.excluded == 1
    spec = update_spec(tmp_path, base_model, [r | {"outcome": "error"} for r in rows],
                       "all_errors", "iterations=1")
    with pytest.raises(RlverInputError, match=r"all 4 rollout rows .* ended with outcome "
                                              r"error \(field outcome\): nothing to train on"):
        read_batch(spec, cfg, 0, 1)
