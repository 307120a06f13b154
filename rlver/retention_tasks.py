"""The retention stage's settings as the workflow and the config checks read them: which
iterations are measured, where each task's data lies, and what is wrong with them.

Light on purpose (no lm-eval import): the Snakefile and `rlver.config` call it on every
start. The stage itself is `rlver.retention`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from rlver.errors import RlverInputError

#: `data: package:<file>` names a file under rlver/data/retention/.
PACKAGE_PREFIX = "package:"
#: Data file suffix -> the `datasets` builder lm-eval loads it with (offline: local files).
DATA_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

Check = tuple[str, bool, str]


def enabled(cfg: Any) -> bool:
    """Whether the run has a retention stage (any task configured)."""
    return bool(cfg.retention.tasks)


def retention_iterations(cfg: Any) -> list[int]:
    """The iterations whose policy the retention stage measures: the first and the last
    always, and every `retention.every`-th; none without tasks."""
    if not enabled(cfg):
        return []
    n, every = cfg.iterations, cfg.retention.every
    return sorted({0, n} | (set(range(0, n + 1, every)) if every else set()))


def data_path(data: str) -> Path:
    """The data file a task's `data` names (`package:<file>`: rlver/data/retention/)."""
    if data.startswith(PACKAGE_PREFIX):
        name = data[len(PACKAGE_PREFIX):]
        return Path(str(resources.files("rlver.data"))) / "retention" / name
    return Path(data).expanduser()


def unset(cfg: Any) -> list[tuple[str, str]]:
    """(key, what to give) for every task whose data file is not set."""
    return [(f"retention.tasks.{name}.data",
             f"a local copy of lm-eval task {name}'s data (docs/experiments.md, Table 2)")
            for name, task in cfg.retention.tasks.items() if not task.data]


def checks(cfg: Any) -> list[Check]:
    """The retention keys' values, without looking at the file system."""
    ret = cfg.retention
    every = max(cfg.evaluation.every, 1)  # 0 is refused by its own check
    out: list[Check] = [
        ("retention.every", ret.every >= 0 and ret.every % every == 0,
         f"0 or a multiple of evaluation.every ({every}): the policies in between are "
         "not kept"),
        ("retention.batch_size", ret.batch_size >= 1, "at least 1"),
    ]
    for name, task in ret.tasks.items():
        key = f"retention.tasks.{name}"
        out += [
            (f"{key}.limit", task.limit is None or task.limit >= 1, "null or at least 1"),
            (f"{key}.max_gen_toks", task.max_gen_toks >= 0, "0 (the task's own) or more"),
            (f"{key}.data", not task.data or data_path(task.data).suffix in DATA_BUILDERS,
             "a file ending in " + ", ".join(DATA_BUILDERS)),
        ]
    return out


def check_data(cfg: Any, where: str = "config") -> None:
    """Refuse, naming the keys (of the config at `where`), tasks whose data file does not
    exist."""
    missing = [(name, data_path(task.data)) for name, task in cfg.retention.tasks.items()
               if task.data and not data_path(task.data).is_file()]
    if missing:
        what = "; ".join(f"field retention.tasks.{name}.data: {path} not found"
                         for name, path in missing)
        raise RlverInputError(
            f"{where}: {what}. Fix: set each to a local file of the task's data, e.g. "
            f'overrides="retention.tasks.{missing[0][0]}.data=/data/{missing[0][0]}.jsonl" '
            "(docs/experiments.md, Table 2), or retention=none to run without the "
            "retention stage."
        )
