"""The paper-style table: benchmark score, success and failure per run and iteration.

Reads only what the evaluate stage writes (`iter_<i>/eval/metrics.json`) and the run's
frozen config, so it works on finished and half-finished runs alike. Iteration 0 is the
base model's row. The paper's published rows for each run's setting follow, for
reference (rlver.reporting.paper_numbers). Numbers are rounded as published tables are: the score
half up to one decimal, success and failure half up to whole percent.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

from rlver import config as rconfig
from rlver import layout
from rlver.errors import RlverInputError
from rlver.io import read_json_object, write_text
from rlver.metrics import round_half_up
from rlver.reporting import paper_numbers

HEADER = ["source", "run", "iteration", "model", "setting", "benchmark", "n", "score",
          "success", "failure"]
_CSV_HEADER = [*HEADER[:-2], "success_pct", "failure_pct"]


@dataclass(frozen=True)
class Row:
    """One line of the table: one evaluated policy of a run, or one published result."""

    source: str
    run: str
    iteration: Optional[int]
    model: str
    setting: str
    benchmark: str
    n: int
    score: Decimal
    success_pct: Optional[Decimal]
    failure_pct: Optional[Decimal]

    def cells(self) -> list[str]:
        """Display strings, as the paper prints them (79.2, 42%); a dash where unpublished."""
        def pct(v: Optional[Decimal]) -> str:
            return "—" if v is None else f"{v}%"

        return [*self.csv_cells()[:-2], pct(self.success_pct), pct(self.failure_pct)]

    def csv_cells(self) -> list[str]:
        def num(v: Any) -> str:
            return "" if v is None else str(v)

        return [self.source, self.run, num(self.iteration), self.model, self.setting,
                self.benchmark, str(self.n), str(self.score), num(self.success_pct),
                num(self.failure_pct)]


def setting_label(algorithm: str, template: str, difficulty: str) -> str:
    """The paper's row names: `PPO, think`, plus the training simulator if challenging."""
    label = f"{algorithm.upper()}, {'think' if template == 'think' else 'no think'}"
    return label + (", challenging simulator" if difficulty == "challenging" else "")


def run_rows(run_dir: str | os.PathLike[str], last_only: bool = False) -> list[Row]:
    """A run's evaluated iterations in order (none yet: empty). `last_only` keeps the
    base model's row and the last evaluated iteration."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    evals = _read_evals(run_dir)
    if last_only and evals:
        evals = [e for e in evals if e[0] == 0 or e is evals[-1]]
    trained = setting_label(cfg.algorithm.name, cfg.template.name, cfg.simulator.difficulty)
    bench = f"{cfg.simulator.backend}, {cfg.simulator.difficulty}"
    return [
        Row("run", str(cfg.run), i, str(cfg.model.name), "base" if i == 0 else trained, bench,
            int(m["n"]), rounded_score(m["score"]), _pct(m["success"], m["n"]),
            _pct(m["failure"], m["n"]))
        for i, m in evals
    ]


def paper_rows(run_dir: str | os.PathLike[str]) -> list[Row]:
    """The paper's published rows for the run's setting (the base model's at least)."""
    cfg = load_run_config(Path(run_dir))
    return [
        Row(f"paper {r.table}", "", None, paper_numbers.BASE_MODEL,
            "base" if r.algorithm is None
            else setting_label(r.algorithm, r.template or "", r.difficulty or ""),
            r.benchmark, 100, Decimal(str(r.score)).quantize(Decimal("0.1")),
            None if r.success_pct is None else Decimal(r.success_pct),
            None if r.failure_pct is None else Decimal(r.failure_pct))
        for r in paper_numbers.for_setting(cfg.algorithm.name, cfg.template.name,
                                           cfg.simulator.difficulty)
    ]


def build_table(run_dirs: list[str | os.PathLike[str]], last_only: bool = False) -> list[Row]:
    """Every run's rows, then the paper's rows for their settings (each once).

    A run directory without any evaluation is refused: a table of it would be empty.
    """
    rows: list[Row] = []
    for d in run_dirs:
        own = run_rows(d, last_only)
        if not own:
            raise RlverInputError(
                f"{d}: no evaluation results (no iter_*/eval/metrics.json). Fix: run the "
                "run's evaluate stage first (its snakemake command again, or `rlver evaluate "
                f"--config {Path(d) / 'config.yaml'} --iteration 0 ...`), or pass the "
                "directory of an evaluated run (results/<run>)."
            )
        rows += own
    paper: list[Row] = []
    for d in run_dirs:
        paper += [r for r in paper_rows(d) if r not in paper]
    return rows + paper


def to_markdown(rows: list[Row]) -> str:
    align = ["---" if h in {"source", "run", "model", "setting", "benchmark"} else "---:"
             for h in HEADER]
    lines = [HEADER, align, *(r.cells() for r in rows)]
    return "".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |\n"
                   for line in lines)


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_CSV_HEADER)
    writer.writerows(r.csv_cells() for r in rows)
    return buf.getvalue()


def write_table(rows: list[Row], prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """PREFIX.md and PREFIX.csv, each written atomically."""
    return write_pair(prefix, to_markdown(rows), to_csv(rows))


def write_pair(prefix: str | os.PathLike[str], markdown: str, csv_text: str
               ) -> tuple[Path, Path]:
    """A table as PREFIX.md and PREFIX.csv, each written atomically."""
    md, csv_path = Path(f"{prefix}.md"), Path(f"{prefix}.csv")
    write_text(md, markdown)
    write_text(csv_path, csv_text)
    return md, csv_path


# --------------------------------------------------------------------------- reading


def load_run_config(run_dir: Path) -> Any:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RlverInputError(
            f"{run_dir}: not a run directory ({path.name} missing). Fix: pass results/<run> "
            "of a started run (snakemake writes config.yaml first)."
        )
    return rconfig.load(path)


def _read_evals(run_dir: Path) -> list[tuple[int, dict[str, Any]]]:
    """(iteration, metrics) of every evaluation of the run, in iteration order."""
    run = layout.Run(run_dir)
    return [(i, read_eval_metrics(run.eval_metrics(i))) for i in run.iterations()
            if run.eval_metrics(i).is_file()]


def read_eval_metrics(path: Path) -> dict[str, Any]:
    obj = read_json_object(path, "delete it and rerun that evaluation.")
    bad = [k for k in ("n", "score", "success", "failure")
           if not isinstance(obj.get(k), (int, float))]
    if bad or obj["n"] < 1:
        raise RlverInputError(
            f"{path}: not an evaluate metrics file (missing or bad: {', '.join(bad) or 'n'}). "
            "Fix: delete it and rerun that evaluation."
        )
    return obj


def rounded_score(value: float) -> Decimal:
    """A score half up to one decimal on the shortest decimal of the float: 68.15 ->
    68.2, as published (the report, the table and docs/results.md print it so)."""
    return round_half_up(Decimal(repr(float(value))))


def _pct(count: int, n: int) -> Decimal:
    return round_half_up(Decimal(count) * 100 / Decimal(n), 0)
