"""Atomic writes and content hashes shared by every stage.

A killed stage must leave nothing that looks finished, so every output is written to a
temporary sibling and renamed into place only when complete (rename is atomic on POSIX
within one file system).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `final`; rename it onto `final` on success.

    Works for files and directories alike. On error the temporary path is removed and
    `final` is left untouched. What a killed writer of `final` left behind (its temporary
    folder: a killed export leaves a whole model) is removed first: a stage's outputs have
    one writer at a time.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically, keys sorted so reruns are byte-identical."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json_object(path: str | os.PathLike[str], fix: str) -> dict[str, Any]:
    """A JSON object from `path`; anything else raises RlverInputError naming the file
    and `fix` (what the user should do)."""
    from rlver.errors import RlverInputError

    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RlverInputError(f"{path}: not readable JSON ({exc}). Fix: {fix}") from exc
    if not isinstance(obj, dict):
        raise RlverInputError(f"{path}: expected a JSON object. Fix: {fix}")
    return obj


def jsonl_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) for each non-blank line of a JSONL file; invalid
    JSON raises RlverInputError naming the file and the line."""
    from rlver.errors import RlverInputError

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RlverInputError(
                    f"{path}: line {lineno}: invalid JSON ({exc.msg} at column {exc.colno}). "
                    "Fix: one complete JSON object per line."
                ) from exc


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(model_dir: str | os.PathLike[str]) -> str:
    """sha256 over a model directory's weight files (name and content, sorted by name).

    Rollout files record it, so a rollout can always be traced to the exact policy.
    """
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir() if p.suffix in {".safetensors", ".bin"})
    if not files:
        from rlver.errors import RlverInputError

        raise RlverInputError(
            f"{model_dir}: no weight files (*.safetensors or *.bin). "
            "Fix: point the config at a Hugging Face model directory."
        )
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()
