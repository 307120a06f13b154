"""`rlver calibrate`: replaying logged SAGE turns through a simulator, and the statistics."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlver.errors import RlverInputError
from rlver.tools.benchmark_logs import read_sage_dialogues
from rlver.tools.calibrate import (
    METRIC_KEYS,
    TURN_SCHEMA,
    agreement,
    average_ranks,
    calibrate,
    spearman,
)

from .helpers import shared

LISTEN = "你希望对方用心倾听你的情绪宣泄"


def sage_row(**extra) -> dict:
    """A small SAGE dialogue: emotion 40 (implicit) -> 45 -> (missing) -> 50."""
    history = [
        {"role": "user", "content": "最近好烦。"},
        {"role": "assistant", "content": "听起来你很累，愿意说说吗？"},
        {"role": "user", "content": "嗯。", "emotion-point": "45"},
        {"role": "assistant", "content": "我在听。"},
        {"role": "user", "content": "就是这样。"},
        {"role": "assistant", "content": "慢慢来，不着急。"},
        {"role": "user", "content": "谢谢。", "emotion-point": 50},
        {"role": "assistant", "content": "随时找我。"},
    ]
    return {"id": "x1", "player": "* 姓名：李明\n* 年龄：30岁\n", "scene": "李明和同事吵架了。",
            "character": "被动型", "topic": "同事矛盾", "task": LISTEN, "emo_point": 50,
            "history": history} | extra


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_average_ranks_share_tied_ranks():
    assert average_ranks([10, 20, 20, 20, 5]) == [2.0, 4.0, 4.0, 4.0, 1.0]
    assert average_ranks([3, 1, 2]) == [3.0, 1.0, 2.0]


def test_spearman_against_hand_computed_values():
    # No ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 4 / 120.
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # Ties: ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]; rho = 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    # Deltas as the logs have them: ties on both sides.
    # x ranks [1.5, 1.5, 3.5, 3.5, 5], y ranks [2, 2, 2, 4.5, 4.5]; sxy 6.25, sxx 9, syy 7.5.
    assert spearman([-5, -5, 5, 5, 10], [0, 0, 0, 3, 3]) == pytest.approx(
        6.25 / math.sqrt(9 * 7.5))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))


def test_agreement_metrics():
    rows = [{"logged_delta": a, "predicted_delta": b} for a, b in
            [(5, 3), (-5, 0), (10, 12), (-10, -1)]]
    m = agreement(rows)
    assert set(m) == set(METRIC_KEYS) and m["turns"] == 4
    assert m["mae"] == pytest.approx((2 + 5 + 2 + 9) / 4)
    assert m["sign_agreement"] == pytest.approx(3 / 4)  # 0 is not negative
    assert m["mean_logged"] == 0 and m["mean_predicted"] == pytest.approx(14 / 4)


def test_turns_use_the_logged_emotions(tmp_path):
    (d,) = read_sage_dialogues(write_jsonl(tmp_path / "s.jsonl", [sage_row()]))
    got = [(t.turn, t.emotion_before, t.logged_delta, len(t.history)) for t in d.turns]
    assert got == [(1, 40, 5, 2), (2, 45, None, 4), (3, 45, 5, 6), (4, 50, None, 8)]
    assert d.turns[0].history[-1].role == "assistant"
    p = d.persona
    assert (p.persona_id, p.language, p.character_type, p.need) == (
        "x1", "zh", "passive", "be_heard")
    assert (p.name, p.topic, p.opening_line) == ("李明", "同事矛盾", "最近好烦。")


def test_calibrate_skips_turns_without_a_logged_delta(tmp_path):
    log = write_jsonl(tmp_path / "s.jsonl", [sage_row(), sage_row(id="x2", character="负面型")])
    out = tmp_path / "calib.parquet"
    metrics = calibrate([log], out=out)
    table = pq.read_table(out)
    assert table.schema.equals(TURN_SCHEMA) and table.num_rows == 4
    rows = table.to_pylist()
    assert [r["turn"] for r in rows] == [1, 3, 1, 3]
    assert [r["logged_emotion_before"] for r in rows] == [40, 45, 40, 45]
    assert {r["character_type"] for r in rows} == {"passive", "negative"}
    assert all(r["reason"] for r in rows)
    assert metrics["all"]["turns"] == 4 and metrics["avoidant"]["turns"] == 0


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"character": "开朗型"}, r"line 1: field 'character'.*Fix"),
        ({"task": "别的"}, r"line 1: unknown value .* field 'task'.*Fix"),
        ({"history": []}, r"line 1: field 'history'.*Fix"),
    ],
)
def test_bad_dialogues_name_the_field(tmp_path, change, pattern):
    log = write_jsonl(tmp_path / "s.jsonl", [sage_row() | change])
    with pytest.raises(RlverInputError, match=pattern):
        read_sage_dialogues(log)


def test_bad_emotion_point_names_the_message(tmp_path):
    row = sage_row()
    row["history"][2]["emotion-point"] = "calm"
    log = write_jsonl(tmp_path / "s.jsonl", [sage_row(id="ok"), row])
    with pytest.raises(RlverInputError, match=r"line 2: field 'history\[2\].emotion-point'"):
        read_sage_dialogues(log)


def test_cli_on_logged_dialogues(tmp_path):
    log = shared("data/sage_logs/gpt-4.1.jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines()[:3]]
    expected = sum(
        m["role"] == "assistant" and i + 1 < len(r["history"])
        and "emotion-point" in r["history"][i + 1]
        for r in rows for i, m in enumerate(r["history"])
    )
    out = tmp_path / "calib.parquet"
    res = subprocess.run([sys.executable, "-m", "rlver", "calibrate", "--logs", str(log),
                          "--simulator", "heuristic", "--limit", "3", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    header = res.stdout.splitlines()[0].split()
    assert header == ["group", *METRIC_KEYS]
    groups = [line.split()[0] for line in res.stdout.splitlines()[1:]]
    assert groups == ["all", "negative", "passive", "avoidant"]
    assert "turn 1:" in res.stderr
    table = pq.read_table(out)
    assert table.column_names == [f.name for f in TURN_SCHEMA]
    assert table.num_rows == expected > 0
    assert set(table.column("file").to_pylist()) == {str(log)}


def test_parquet_log_is_refused(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(RlverInputError, match="SAGE .jsonl"):
        read_sage_dialogues(path)
