"""Kill points (rlver/faults.py) kill for real, where and when they are told; what a killed
atomic write leaves behind is cleared by the next write of the same output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlver.io import write_text

SCRIPT = """
import sys
from rlver import faults
for i in range(3):
    faults.point("update.step_end", iteration=int(sys.argv[1]))
    print(i, flush=True)
"""


@pytest.mark.parametrize(("kill_at", "iteration", "printed", "killed"), [
    ("update.step_end@1:2", 1, "0\n", True),  # the second time, in iteration 1
    ("update.step_end:1", 0, "", True),  # the first time, any iteration
    ("update.step_end@1", 0, "0\n1\n2\n", False),  # another iteration's stage
    ("report.before_rename", 1, "0\n1\n2\n", False),  # another point
])
def test_a_kill_point_kills_where_and_when_it_is_told(kill_at, iteration, printed, killed):
    env = os.environ | {"RLVER_KILL_AT": kill_at}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(iteration)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.stdout == printed
    assert (res.returncode == -signal.SIGKILL) == killed, res.stderr
    assert ("killed at update.step_end" in res.stderr) == killed


def test_a_killed_writers_leftovers_are_cleared_by_the_next_write(tmp_path: Path):
    left = tmp_path / ".out.txt.tmp-abc123"  # what atomic_path leaves when SIGKILLed
    (left / "out.txt").parent.mkdir(parents=True)
    (left / "out.txt").write_text("half")
    other = tmp_path / ".other.txt.tmp-def456"  # another output's: left alone
    other.mkdir()
    write_text(tmp_path / "out.txt", "whole")
    assert (tmp_path / "out.txt").read_text() == "whole"
    assert not left.exists() and other.exists()
