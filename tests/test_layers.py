"""The package's layers, read from its imports (`ast`, nothing imported): no cycle; no
stage reaches another stage's modules; the update stage reaches no rollout, evaluation
or simulator; no module over about 600 lines; no benchmark imports the tests.

Every import counts, inside functions too: a late import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import ROOT

PACKAGE = ROOT / "rlver"

#: The stages of the README's layout, each as the module prefixes that make it up.
#: The personas package is the personas stage but for its record (`personas.schema`),
#: which the simulator and the dialogue loop share.
STAGES: dict[str, tuple[str, ...]] = {
    "personas": ("rlver.personas",),
    "rollout": ("rlver.rollout",),
    "update": ("rlver.train",),
    "evaluate": ("rlver.evaluate",),
    "report": ("rlver.reporting",),
    "block": ("rlver.resident",),
}
SHARED = ("rlver.personas.schema",)
#: A block orchestrates the stages (one job for several iterations): it sits above them.
ABOVE_STAGES = ("block",)
#: What the update stage (rlver/train/) must not reach.
NOT_IN_UPDATE = ("rlver.rollout", "rlver.evaluate", "rlver.dialogue", "rlver.simulator")
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules of `known` that the file imports: `from a import b` is module a.b when
    there is one, else a."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(path, name, known) for name, path in mods.items()}


def reachable(g: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module `start` reaches, with one import path to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        here = todo.pop()
        for nxt in sorted(g[here]):
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                todo.append(nxt)
    return paths


def stage_of(module: str) -> str | None:
    if module in SHARED:
        return None
    for stage, prefixes in STAGES.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return stage
    return None


def test_the_import_graph_is_read() -> None:
    g = graph()
    assert "rlver.train.trainer" in g["rlver.train.launch"]
    assert "rlver.train.state" in g["rlver.train.trainer"]
    assert "rlver.personas.schema" in g["rlver.personas"]


def test_no_import_cycle() -> None:
    g = graph()
    reach = {name: reachable(g, name) for name in g}
    cycles = {}
    for name in sorted(g):
        loop = next((reach[nxt][name] for nxt in sorted(g[name]) if name in reach[nxt]), None)
        members = frozenset(m for m in g if m in reach[name] and name in reach[m])
        if loop is not None and members not in cycles:
            cycles[members] = " -> ".join([name, *loop])
    assert not cycles, "import cycles, one per group of modules:\n" + "\n".join(
        cycles.values())


def test_no_stage_reaches_another_stage() -> None:
    g = graph()
    found: dict[tuple[str, str], str] = {}  # (module, the stage it reaches): one path
    for name in sorted(g):
        stage = stage_of(name)
        if stage is None or stage in ABOVE_STAGES:
            continue
        for target, path in sorted(reachable(g, name).items(), key=lambda kv: len(kv[1])):
            other = stage_of(target)
            if other not in (None, stage):
                found.setdefault((name, other), f"{stage} -> {other}: {' -> '.join(path)}")
    assert not found, "a stage imports another stage:\n" + "\n".join(found.values())


def test_the_update_stage_reaches_no_rollout_evaluation_or_simulator() -> None:
    g = graph()
    found = {name: " -> ".join(path) for name in sorted(g) if stage_of(name) == "update"
             for target, path in sorted(reachable(g, name).items(), key=lambda kv: -len(kv[1]))
             if any(target == p or target.startswith(p + ".") for p in NOT_IN_UPDATE)}
    assert not found, "rlver/train/ imports:\n" + "\n".join(found.values())


def test_no_module_over_600_lines() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split by concern): {long}"


def test_no_benchmark_imports_the_tests() -> None:
    found = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "tests"]
    assert not found, "bench/ imports tests/ (shared code goes in bench/support.py):\n" + \
        "\n".join(found)
