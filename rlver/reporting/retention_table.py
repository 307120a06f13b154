"""The general-ability table (the paper's Table 2): each measured iteration of a run
against its base model (iteration 0), with the paper's published rows beside them.

Reads only what the retention stage writes (`iter_<i>/retention/metrics.json`) and the
run's frozen config. One column per task, its primary metric (the first of lm-eval's
metric list: IFEval's prompt_level_strict_acc, MATH-500's exact_match) in percent with
its standard error; a measured iteration after the first also shows its change from
iteration 0. The paper's benchmarks map onto lm-eval's tasks by `PAPER_TASKS` (the
paper does not say which IFEval metric it reports; prompt-level strict accuracy is the
one usually quoted). Every metric of every task is in the CSV.
"""

from __future__ import annotations

import csv
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlver import layout
from rlver.errors import RlverInputError
from rlver.io import read_json_object
from rlver.reporting import paper_numbers
from rlver.reporting.table import load_run_config, setting_label, write_pair

#: The paper's benchmark -> lm-eval's task and metric (None: not in lm-eval).
PAPER_TASKS: dict[str, Optional[tuple[str, str]]] = {
    "MATH500": ("hendrycks_math500", "exact_match"),
    "LiveCodeBench": None,
    "IFEval": ("ifeval", "prompt_level_strict_acc"),
}
CSV_HEADER = ["source", "run", "iteration", "setting", "task", "metric", "filter", "n",
              "value_pct", "stderr_pct", "change_pct"]
_FIX = "delete it and rerun that retention measurement (rlver retention, or snakemake)."


@dataclass(frozen=True)
class Measure:
    """One number of the table: a task's metric at one iteration (or published)."""

    task: str
    metric: str
    filter: str
    n: Optional[int]
    value: float
    stderr: Optional[float]
    primary: bool


@dataclass(frozen=True)
class Row:
    """One measured policy of a run, or one row of the paper's Table 2."""

    source: str
    run: str
    iteration: Optional[int]
    setting: str
    measures: tuple[Measure, ...]


def read_metrics(path: Path) -> dict[str, Any]:
    """A retention metrics.json, checked for what the table reads."""
    obj = read_json_object(path, _FIX)
    rows, tasks = obj.get("metrics"), obj.get("tasks")
    ok = isinstance(rows, list) and isinstance(tasks, dict) and all(
        isinstance(r, dict) and isinstance(r.get("value"), (int, float))
        and r.get("task") in tasks and isinstance(r.get("metric"), str) for r in rows)
    if not ok:
        raise RlverInputError(f"{path}: not a retention metrics file (field metrics: a list "
                              f"of task, metric, value rows of its tasks). Fix: {_FIX}")
    return obj


def run_rows(run_dir: str | os.PathLike[str]) -> list[Row]:
    """The run's measured iterations in order (none yet: empty)."""
    run = layout.Run(run_dir)
    cfg = load_run_config(run.root)
    trained = setting_label(cfg.algorithm.name, cfg.template.name, cfg.simulator.difficulty)
    rows = []
    for i in run.iterations():
        if not run.retention_metrics(i).is_file():
            continue
        m = read_metrics(run.retention_metrics(i))
        measures = tuple(
            Measure(r["task"], r["metric"], str(r.get("filter", "none")), r.get("n"),
                    100.0 * float(r["value"]),
                    None if r.get("stderr") is None else 100.0 * float(r["stderr"]),
                    r["metric"] == m["tasks"][r["task"]].get("primary_metric"))
            for r in m["metrics"])
        rows.append(Row("run", str(cfg.run), i, "base" if i == 0 else trained, measures))
    return rows


def paper_rows() -> list[Row]:
    """Table 2 as published, its benchmarks under their lm-eval task and metric."""
    rows = []
    for r in paper_numbers.GENERAL_ABILITIES:
        setting = "base" if r.algorithm is None else setting_label(
            r.algorithm, r.template or "", "vanilla")
        measures = tuple(
            Measure(*(PAPER_TASKS[b] or (b, "")), "none", None, r.score(b), None, True)
            for b in paper_numbers.TABLE2_BENCHMARKS)
        rows.append(Row("paper Table 2", "", None, setting, measures))
    return rows


def build(run_dirs: list[str | os.PathLike[str]]) -> list[Row]:
    """Every run's measured rows, then the paper's; empty when no run has any."""
    rows = [r for d in run_dirs for r in run_rows(d)]
    return rows + paper_rows() if rows else []


def _columns(rows: list[Row]) -> list[tuple[str, str]]:
    """(task, metric) of every primary measure, the runs' tasks first, then the paper's."""
    out: list[tuple[str, str]] = []
    for row in sorted(rows, key=lambda r: r.source != "run"):
        for m in row.measures:
            if m.primary and (m.task, m.metric) not in out:
                out.append((m.task, m.metric))
    return out


def _header(task: str, metric: str) -> str:
    if not metric:  # a paper benchmark that lm-eval does not have
        return f"{task} (%)"
    paper = [b for b, t in PAPER_TASKS.items() if t == (task, metric)]
    return f"{paper[0] + ': ' if paper else ''}{task} {metric} (%)"


def _base(rows: list[Row], row: Row) -> Optional[Row]:
    """The run's iteration 0 row, for the change of a later one."""
    if row.source != "run" or row.iteration == 0:
        return None
    return next((r for r in rows if r.source == "run" and r.run == row.run
                 and r.iteration == 0), None)


def _change(rows: list[Row], row: Row, m: Measure) -> Optional[float]:
    base = _base(rows, row)
    if base is None:
        return None
    same = [b for b in base.measures if (b.task, b.metric, b.filter) == (m.task, m.metric,
                                                                         m.filter)]
    return m.value - same[0].value if same else None


def _cell(rows: list[Row], row: Row, task: str, metric: str) -> str:
    found = [m for m in row.measures if (m.task, m.metric) == (task, metric) and m.primary]
    if not found:
        return "—"
    m = found[0]
    text = f"{m.value:.1f}" + ("" if m.stderr is None else f" ± {m.stderr:.1f}")
    change = _change(rows, row, m)
    return text + ("" if change is None else f" ({change:+.1f})")


def _lines(rows: list[Row]) -> list[list[str]]:
    cols = _columns(rows)
    head = ["source", "run", "iteration", "setting", *(_header(t, m) for t, m in cols)]
    body = [[r.source, r.run, "" if r.iteration is None else str(r.iteration), r.setting,
             *(_cell(rows, r, t, m) for t, m in cols)] for r in rows]
    return [head, *body]


def to_markdown(rows: list[Row]) -> str:
    lines = _lines(rows)
    align = ["---"] * 2 + ["---:", "---"] + ["---:"] * (len(lines[0]) - 4)
    return "".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |\n"
                   for line in [lines[0], align, *lines[1:]])


def to_csv(rows: list[Row]) -> str:
    """Every measure of every row, in percent (long format)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for r in rows:
        for m in r.measures:
            change = _change(rows, r, m)
            writer.writerow([r.source, r.run, "" if r.iteration is None else r.iteration,
                             r.setting, m.task, m.metric, m.filter,
                             "" if m.n is None else m.n, f"{m.value:.2f}",
                             "" if m.stderr is None else f"{m.stderr:.2f}",
                             "" if change is None else f"{change:.2f}"])
    return buf.getvalue()


def write(rows: list[Row], prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """PREFIX.md and PREFIX.csv, each written atomically."""
    return write_pair(prefix, to_markdown(rows), to_csv(rows))


def report_section(run_dir: str | os.PathLike[str], out_dir: Path) -> str:
    """The report's section: the table as HTML (and retention.md/.csv in `out_dir`), or
    a line saying what is missing; nothing for a run without a retention stage."""
    cfg = load_run_config(Path(run_dir))
    if not cfg.retention.tasks:
        return ""
    rows = build([run_dir])
    head = "<h2>General abilities (the paper's Table 2)</h2>"
    if not rows:
        return head + "<p>No retention measurement yet (rlver retention).</p>"
    write(rows, out_dir / "retention")
    lines = _lines(rows)
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in lines[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>"
                   for line in lines[1:])
    n = sorted({(m.task, m.n) for r in rows for m in r.measures if m.n is not None})
    sizes = ", ".join(f"{task} {count} documents" for task, count in n)
    intro = (
        "lm-evaluation-harness's tasks on each measured policy (iteration 0: the base "
        "model), in percent with the standard error and, after iteration 0, the change "
        f"from it ({sizes}); then the paper's Table 2 (Qwen2.5-7B-Instruct, full "
        "benchmarks). Every metric: <a href=\"retention.csv\">retention.csv</a>, also "
        "<a href=\"retention.md\">retention.md</a>."
    )
    return (f"{head}<p>{intro}</p><table><thead><tr>{cells}</tr></thead>"
            f"<tbody>{body}</tbody></table>")
