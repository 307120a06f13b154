"""Snakemake's `--config`: the run it names (experiment, run name, Hydra overrides) and
where its files live (`STORAGE_KEYS`). `workflow/rules/common.smk` composes the run with
these; the run's config itself is `rlver.config`'s.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Optional

from rlver.errors import RlverInputError


def snakemake_overrides(snakemake_config: dict[str, Any]) -> tuple[str, Optional[str], list[str]]:
    """(experiment, run, Hydra overrides) from Snakemake's `--config` entries.

    Snakemake only accepts plain identifiers as keys, so nested keys come either as a
    YAML mapping (`rollout={shards: 4}`) or verbatim in `overrides="rollout.shards=4 seed=1"`;
    every other top-level key is an override too (`seed=1`, a group choice `scale=cpu`).
    """
    opts = {k: v for k, v in snakemake_config.items() if k not in STORAGE_KEYS}
    experiment = str(opts.pop("experiment", "smoke"))
    run = opts.pop("run", None)
    raw = str(opts.pop("overrides", "") or "")
    try:
        overrides = shlex.split(raw)
    except ValueError as exc:
        raise RlverInputError(
            f"--config overrides={raw!r}: {exc} (Snakemake strips quotes from --config "
            "values). Fix: give values with spaces in the mapping form, e.g. "
            "--config 'template={system_prompt: \"Be kind.\"}'."
        ) from exc

    def flatten(key: str, value: Any) -> list[str]:
        if isinstance(value, dict):
            return [o for k, v in value.items() for o in flatten(f"{key}.{k}", v)]
        if value is None:
            return [f"{key}=null"]
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not re.fullmatch(r"[\w.+\-/:]*", text):
            text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return [f"{key}={text}"]

    for key in sorted(opts):
        overrides += flatten(key, opts[key])
    return experiment, None if run is None else str(run), overrides


#: Snakemake `--config` keys that place a run's files, with their defaults: where they
#: are stored, not what is computed, so they are not part of the run's config (a run moved
#: elsewhere keeps its frozen config and hash). Relative paths are relative to Snakemake's
#: working directory.
STORAGE_KEYS = {"results_dir": "results", "resources_dir": "resources"}


def storage_dirs(snakemake_config: dict[str, Any]) -> tuple[Path, Path]:
    """(results folder, resources folder) from Snakemake's `--config` (`STORAGE_KEYS`)."""
    dirs = []
    for key, default in STORAGE_KEYS.items():
        value = str(snakemake_config.get(key, default) or "")
        if not value.strip():
            raise RlverInputError(f"--config {key}: empty. Fix: give a folder, e.g. "
                                  f"{key}=/scratch/$USER/rlver/{default}, or leave it out "
                                  f"({default}/ in the working directory).")
        dirs.append(Path(os.path.expanduser(value)))
    return dirs[0], dirs[1]
