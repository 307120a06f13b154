"""`rlver score`: published SAGE numbers, our eval files, rounding and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from rlver import schema
from rlver.errors import RlverInputError
from rlver.metrics import round_half_up
from rlver.tools.benchmark_logs import score_file

from .helpers import shared


def rlver(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlver", *args], capture_output=True,
                          text=True, timeout=300)


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def eval_row(i: int, final: int) -> dict:
    return {
        "iteration": 0, "shard": 0, "dialogue": i, "sample": 0, "persona_id": f"p{i}",
        "group_id": f"eval-p{i}", "seed": 1,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "input_ids": [1, 2, 3], "loss_mask": [0, 1, 1], "logprobs": [0.0, -0.5, -0.1],
        "emotion_start": 40, "emotion": [final], "delta": [final - 40], "reason": ["r"],
        "parse_error": [False],
        "truncated": [False], "num_turns": 1, "outcome": "max_turns", "final_emotion": final,
        "reward": final / 100, "seconds": 0.1,
    }


def write_eval(path: Path, finals: list[int], kind: str = "eval") -> Path:
    schema.write_trajectories(path, [eval_row(i, f) for i, f in enumerate(finals)],
                              config_hash="c" * 16, policy_sha256="p" * 64, kind=kind)
    return path


def test_sage_logs_give_the_published_numbers():
    gpt = score_file(shared("data/sage_logs/gpt-4.1.jsonl"))
    qwen = score_file(shared("data/sage_logs/qwen2.5-72b.jsonl"))
    assert (gpt.n, gpt.score, gpt.success, gpt.failure) == (100, Decimal("68.2"), 35, 13)
    assert (qwen.n, qwen.score, qwen.success, qwen.failure) == (100, Decimal("19.1"), 4, 70)


def test_cli_json_and_table():
    logs = [str(shared("data/sage_logs/gpt-4.1.jsonl")),
            str(shared("data/sage_logs/qwen2.5-72b.jsonl"))]
    res = rlver("score", "--json", *logs)
    assert res.returncode == 0, res.stderr
    objs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [list(o) for o in objs] == [["file", "n", "score", "success", "failure"]] * 2
    assert objs[0] == {"file": logs[0], "n": 100, "score": 68.2, "success": 35, "failure": 13}
    assert objs[1] == {"file": logs[1], "n": 100, "score": 19.1, "success": 4, "failure": 70}
    table = rlver("score", *logs).stdout.splitlines()
    assert table[0].split() == ["file", "n", "score", "success", "failure"]
    assert table[1].split()[1:] == ["100", "68.2", "35", "13"]
    assert len({len(line) for line in table}) == 1  # aligned


def test_eval_parquet_is_scored(tmp_path):
    path = write_eval(tmp_path / "dialogues.parquet", [100, 5, 40, 9, 10, 100])
    s = score_file(path)
    assert (s.n, s.score, s.success, s.failure) == (6, Decimal("44.0"), 2, 2)
    # Detected by content too, whatever the suffix.
    other = tmp_path / "dialogues.bin"
    other.write_bytes(path.read_bytes())
    assert score_file(other).n == 6


def test_rollout_parquet_is_refused(tmp_path):
    path = write_eval(tmp_path / "shard.parquet", [50], kind="rollout")
    with pytest.raises(RlverInputError, match="kind.*'rollout'.*Fix"):
        score_file(path)


def test_mean_of_exactly_x_x5_rounds_up(tmp_path):
    # 23 / 20 = 1.15 exactly; float rounding gives 1.1, the published rule 1.2.
    assert round(23 / 20, 1) == 1.1
    finals = [1] * 17 + [2] * 3
    log = write_jsonl(tmp_path / "m.jsonl", [{"id": str(i), "emo_point": e}
                                             for i, e in enumerate(finals)])
    assert score_file(log).score == Decimal("1.2")
    assert round_half_up(Decimal("2.25")) == Decimal("2.3")  # not banker's 2.2
    assert round_half_up(Decimal("68.15")) == Decimal("68.2")
    assert round_half_up(Decimal("68.149")) == Decimal("68.1")


def test_numeric_strings_are_accepted(tmp_path):
    log = write_jsonl(tmp_path / "s.jsonl", [{"emo_point": "100"}, {"emo_point": 5}])
    s = score_file(log)
    assert (s.n, s.score, s.success, s.failure) == (2, Decimal("52.5"), 1, 1)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ({"id": "b"}, r"line 2: missing field 'emo_point'.*Fix"),
        ('{"id": "b", "emo_point": ', r"line 2: invalid JSON.*Fix"),
        ({"id": "b", "emo_point": "high"}, r"line 2: field 'emo_point' must be a number.*Fix"),
        ({"id": "b", "emo_point": None}, r"line 2: field 'emo_point' must be a number.*Fix"),
        ([1, 2], r"line 2: expected a JSON object.*Fix"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, pattern):
    log = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "emo_point": 50}, line])
    with pytest.raises(RlverInputError, match=pattern) as info:
        score_file(log)
    assert "bad.jsonl" in str(info.value)


def test_cli_bad_input_is_one_line(tmp_path):
    log = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "emo_point": 50}, {"id": "b"}])
    res = rlver("score", str(log))
    assert res.returncode == 2
    assert "bad.jsonl: line 2: missing field 'emo_point'" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(RlverInputError, match="not found"):
        score_file(tmp_path / "none.jsonl")
    with pytest.raises(RlverInputError, match="no dialogues"):
        score_file(write_jsonl(tmp_path / "empty.jsonl", []))
