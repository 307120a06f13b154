"""The run report: one self-contained HTML page plus PNG figures and the paper-style table
(table.md, table.csv; rlver.reporting.table), from whatever exists.

The report reads a run directory as it stands (a run may be half-way through, with no
update or evaluation yet) and writes nothing but `out_dir`, built in a temporary
directory and renamed into place, so a crash never leaves a half report.
Figures use fixed sizes and PNG metadata without the matplotlib version, so rerunning
the report on the same run gives byte-identical files.

By section: `iterations` reads the run's files, `figures` draws, `page` writes the HTML.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rlver import config as rconfig
from rlver import faults
from rlver.errors import RlverInputError
from rlver.io import atomic_path
from rlver.reporting import findings, retention_table, settings
from rlver.reporting import table as rtable
from rlver.reporting.figures import FIGURES, plot_all
from rlver.reporting.iterations import read_eval_rows, scan
from rlver.reporting.page import paper_table, render_page


def build_report(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write `out_dir/index.html` and its PNG figures for the run in `run_dir`.

    Plain path arguments and a returned path so a CLI can call it directly; bad input
    raises RlverInputError (file + fix). Returns the path of `index.html`.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise RlverInputError(
            f"{cfg_path}: frozen run config not found, so {run_dir} is not a run directory. "
            "Fix: pass results/<run> of a started run (snakemake writes config.yaml first)."
        )
    cfg = rconfig.load(cfg_path)
    cfg_dict = rconfig.to_container(cfg)
    iterations = scan(run_dir)
    evaluated = [it for it in iterations if it.eval_dialogues_path is not None]
    last_eval = evaluated[-1] if evaluated else None
    eval_rows = read_eval_rows(last_eval.eval_dialogues_path) if last_eval else []
    first_eval = evaluated[0] if len(evaluated) > 1 else None
    notes = findings.notes(
        cfg_dict, [(it.index, it.update) for it in iterations if it.update is not None],
        (first_eval.index, read_eval_rows(first_eval.eval_dialogues_path))
        if first_eval else None,
        (last_eval.index, eval_rows) if last_eval else None)
    own_rows = rtable.run_rows(run_dir)
    table_rows = own_rows + rtable.paper_rows(run_dir)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        plot_all(iterations, last_eval, eval_rows, tmp)
        images = {name: (tmp / name).read_bytes() for name in FIGURES}
        rtable.write_table(table_rows, tmp / "table")
        page = render_page(
            cfg_dict, rconfig.run_hash(cfg_path), iterations, last_eval, eval_rows, images,
            paper_table(table_rows, bool(own_rows))
            + retention_table.report_section(run_dir, tmp),
            settings.rows(cfg_dict, run_dir), notes,
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        faults.point("report.before_rename")
    index = out_dir / "index.html"
    n_eval = sum(it.eval is not None for it in iterations)
    print(
        f"report: wrote {index} ({len(iterations)} iterations, {n_eval} evaluated)",
        file=sys.stderr,
    )
    return index
