"""Rewrite the `$ rlver budget ...` output blocks of docs/scale.md with what the command
prints today (tests/test_budget.py checks that they are).

    python tools/docs_budget.py           # rewrite docs/scale.md in place
    python tools/docs_budget.py --check   # exit 1 if a block differs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "scale.md"
BLOCK = re.compile(r"```\n\$ (rlver budget [^\n]*)\n(.*?)```", re.S)


def printed(command: str) -> str:
    """What `command` (an `rlver budget ...` line) prints."""
    from rlver.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(shlex.split(command)[1:])
    if code != 0:
        raise SystemExit(f"docs_budget: `{command}` failed ({code})")
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    text = DOC.read_text(encoding="utf-8")
    new = BLOCK.sub(lambda m: f"```\n$ {m.group(1)}\n{printed(m.group(1))}```", text)
    if new == text:
        print("docs_budget: docs/scale.md is current")
        return 0
    if a.check:
        print("docs_budget: docs/scale.md differs; run python tools/docs_budget.py")
        return 1
    DOC.write_text(new, encoding="utf-8")
    print("docs_budget: rewrote docs/scale.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
