"""Bad input through the `rlver` command: one clear line, exit 2, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys


def rlver(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlver", *args], capture_output=True,
                          text=True, timeout=300)


def test_persona_file_with_a_missing_field(tmp_path):
    good = {"id": "a", "player": "* 姓名：王\n", "scene": "s", "main_cha": "负面型",
            "cha_group": ["愤怒"], "task": "你希望对方用心倾听你的情绪宣泄", "first_talk": "hi"}
    bad = dict(good, id="b")
    del bad["task"]
    src = tmp_path / "profiles.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (good, bad)) + "\n")
    spec = json.dumps({"name": "x", "source": "rlver", "train_path": str(src),
                       "test_path": str(src)})
    out = tmp_path / "out"
    res = rlver("personas", "--spec", spec, "--train", str(out / "train.parquet"),
                "--test", str(out / "test.parquet"))
    assert res.returncode == 2
    assert "profiles.jsonl" in res.stderr and "line 2" in res.stderr and "'task'" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists() or not any(out.iterdir())


def test_truncated_rollout_file(tmp_path, tiny_run):
    run, _ = tiny_run
    shard = tmp_path / "shard_000.parquet"
    shard.write_bytes(b"PAR1" + b"\0" * 100)
    res = rlver("update", "--config", str(run / "config.yaml"), "--iteration", "0",
                "--policy", str(run / "iter_0000" / "policy"), "--rollouts", str(shard),
                "--out-policy", str(tmp_path / "new"), "--update-dir", str(tmp_path / "upd"))
    assert res.returncode == 2
    assert "shard_000.parquet" in res.stderr and "truncated" in res.stderr
    assert "Fix:" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "new").exists()


def test_missing_policy_directory(tmp_path, tiny_run):
    run, personas = tiny_run
    res = rlver("rollout", "--config", str(run / "config.yaml"), "--iteration", "0",
                "--shard", "0", "--policy", str(tmp_path / "nope"),
                "--personas", str(personas / "train.parquet"), "--out", str(tmp_path / "s.pq"))
    assert res.returncode == 2 and "nope" in res.stderr and "config.json" in res.stderr
    assert not (tmp_path / "s.pq").exists()
