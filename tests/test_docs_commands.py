"""Every `snakemake` and `rlver` command of the README, docs/*.md and the config comments
runs as written: Snakemake ones as dry runs (-n, in a temporary working directory with
the test model linked), rlver ones through the CLI's own argument parser (nothing runs).

Taken: lines of fenced code blocks (a leading `$ ` dropped, `\\` continuations joined),
inline code that passes `--config`, and `#` comment lines of config/, profiles/, the
Snakefile and workflow/rules/ that start with the command.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rlver.cli import build_parser
from rlver.models import link_tree

from .helpers import BIN, ROOT

pytestmark = pytest.mark.slow

COMMAND = re.compile(r"(?:\.venv/bin/)?(?:snakemake|rlver)(?: |$)")
#: Placeholders of the docs, and what a dry run uses instead: a paper-scale model path
#: becomes a directory holding only config.json (a dry run reads no weights).
PLACEHOLDERS = {"experiment=NAME": "experiment=smoke"}
MODEL_PATHS = ("/models/Qwen2.5-7B-Instruct", "/path/to/Qwen2.5-7B-Instruct")
#: The retention tasks' data of the docs, and files of their format (a dry run reads none).
DATA_PATHS = {
    "/data/ifeval.jsonl": str(ROOT / "rlver" / "data" / "retention" / "ifeval_rlver.jsonl"),
    "/data/math500.jsonl": str(ROOT / "tests" / "data" / "retention" / "math500_sample.jsonl"),
}
#: A paper experiment as written (not shrunk by scale=cpu).
PAPER_SCALE = re.compile(r"experiment=paper_(?!.*scale=cpu)")
#: Commands not run, and why.
SKIPPED = {
    "a synopsis, not a command ([optional] parts, `...`)": re.compile(r"\[|\.\.\."),
    "needs Snakemake's lock or metadata of a run (nothing to dry-run)": re.compile(
        r"--unlock|--lint"),
    "a line a command printed (`rlver budget: ...`), not a command": re.compile(
        r"^rlver [\w-]+: "),
}


def _fenced(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line.strip().removeprefix("$ "))
    return lines


def _commands(lines: list[str]) -> list[str]:
    """Commands among `lines`, continuation lines joined."""
    out: list[str] = []
    cmd: str | None = None
    for line in lines:
        if cmd is not None:
            cmd += " " + line
        elif COMMAND.match(line):
            cmd = line
        else:
            continue
        if cmd.endswith("\\"):
            cmd = cmd[:-1].rstrip()
            continue
        out.append(cmd)
        cmd = None
    return out


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) of every documented command."""
    found: list[tuple[str, str]] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        inline = [m for m in re.findall(r"`([^`]+)`", text.replace("\n", " "))
                  if COMMAND.match(m) and " --config " in m]
        found += [(path.name, c) for c in _commands(_fenced(text)) + inline]
    sources = [*sorted((ROOT / "config").rglob("*.yaml")), *sorted(
        (ROOT / "profiles").rglob("*.yaml")), ROOT / "Snakefile",
        *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    for path in sources:
        comments = [m.group(1).strip() if (m := re.match(r"\s*#(.*)", line)) else ""
                    for line in path.read_text(encoding="utf-8").splitlines()]
        found += [(str(path.relative_to(ROOT)), c) for c in _commands(comments)]
    return found


def _skip_reason(cmd: str) -> str | None:
    return next((why for why, pattern in SKIPPED.items() if pattern.search(cmd)), None)


def test_the_docs_hold_commands_of_both_kinds() -> None:
    """The extraction finds what it should (a broken one would pass everything)."""
    cmds = [c for _, c in documented_commands()]
    assert sum(c.startswith("snakemake") for c in cmds) >= 10
    assert sum(c.startswith("rlver") for c in cmds) >= 5
    assert any("llm_http" in c for c in cmds)  # the config comments are read


def test_rlver_commands_parse() -> None:
    parser = build_parser()
    for source, cmd in documented_commands():
        argv = shlex.split(cmd, comments=True)
        if not argv[0].endswith("rlver") or _skip_reason(cmd):
            continue
        # `;` and `>` belong to the shell: the first command's words only.
        words = [w for w in argv[1:] if w not in (">", ";")]
        try:
            parser.parse_args(words[: words.index(">")] if ">" in words else words)
        except SystemExit as exc:
            pytest.fail(f"{source}: {cmd!r} does not parse (exit {exc.code})")


def _dry_run_argv(cmd: str, stub: Path, workdir: Path) -> list[str]:
    for old, new in [*PLACEHOLDERS.items(), *((p, str(stub)) for p in MODEL_PATHS),
                     *DATA_PATHS.items()]:
        cmd = cmd.replace(old, new)
    argv = shlex.split(cmd, comments=True)
    argv[0] = str(BIN / "snakemake")
    if "--config" in argv and PAPER_SCALE.search(cmd):
        # 3 of the 1000 iterations: test_experiments plans the whole schedule once.
        argv.insert(argv.index("--config") + 1, "iterations=3")
    argv = [str(ROOT / a) if a.startswith("profiles/") else a for a in argv]
    # The Slurm profile's jobs planned by the local executor: the same DAG, and the test
    # machine need not be a Slurm submit host.
    slurm = ["--executor", "local"] if any("profiles/slurm" in a for a in argv) else []
    return [*argv[:1], "-n", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
            *slurm, *argv[1:]]


def test_snakemake_commands_dry_run(base_model: Path, stub_model: Path,
                                    tmp_path: Path) -> None:
    # One of the commands that differ in numbers alone (seeds 0, 1, 2 of docs/results.md).
    cmds = sorted({re.sub(r"\d+", "N", c): c for _, c in sorted(documented_commands())
                   if c.split()[0].endswith("snakemake") and not _skip_reason(c)}.values())
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}

    def dry_run(k_cmd: tuple[int, str]) -> tuple[str, subprocess.CompletedProcess[str]]:
        k, cmd = k_cmd
        workdir = tmp_path / f"wd{k}"  # one each: concurrent runs share no .snakemake/
        link_tree(base_model, workdir / "resources" / "models" / base_model.name)
        argv = _dry_run_argv(cmd, stub_model, workdir)
        return cmd, subprocess.run(argv, capture_output=True, text=True, env=env,
                                   timeout=300)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(dry_run, enumerate(cmds)))
    failed = [f"{cmd}\n{(res.stderr + res.stdout)[-1500:]}" for cmd, res in results
              if res.returncode != 0]
    assert not failed, "\n\n".join(failed)
    assert all("This was a dry-run" in res.stdout + res.stderr for _, res in results)
