"""Atomic writes and content hashes shared by every stage.

A killed stage must leave nothing that looks finished, so every output is written to a
temporary sibling and renamed into place only when complete (rename is atomic on POSIX
within one file system).
"""

from __future__ import annotations

import contextlib
import errno
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
        try:
            yield target
        except Exception as exc:  # safetensors' and pyarrow's own types wrap ENOSPC too
            if not is_disk_full(exc):
                raise
            raise disk_full_error(final, tmp) from exc
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or a quota, also as wrapped by pyarrow and safetensors (in their text)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


def disk_full_error(final: Path, partial: Path) -> Exception:
    """The message for an output that did not fit: where, what was written before the
    disk filled (the space needed is more than that), what is free."""
    from rlver.errors import RlverInputError

    written = sum(f.stat().st_size for f in partial.rglob("*") if f.is_file())
    free = shutil.disk_usage(final.parent).free
    return RlverInputError(
        f"{final}: the disk is full ({free / 2**20:.1f} MiB free on its file system; "
        f"{written / 2**20:.1f} MiB were written before it filled, so it needs more than "
        "that). Nothing was written there. Fix: free space on that file system (or point "
        "the run at another) and rerun the stage."
    )


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
    """(1-based line number, parsed value) for each non-blank line of a JSONL file; a line
    that is not UTF-8 or not JSON raises RlverInputError naming the file and the line."""
    from rlver.errors import RlverInputError

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RlverInputError(
                    f"{path}: line {lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                    f"column {exc.start + 1}). Fix: save the file as UTF-8."
                ) from exc
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


#: Written into every policy folder rlver makes (prepare_model, the update's export): the
#: folder's weights_sha256 at write time, so a reader detects weights damaged later.
WEIGHTS_RECORD = "weights.sha256"


#: Written into a LoRA policy folder (rlver/lora.py): the base model its adapter applies
#: to, as {"path": relative to the folder, "sha256": the base's weights_sha256}.
BASE_RECORD = "base.json"
#: PEFT's adapter files: what makes a policy folder a LoRA adapter.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def weights_sha256(model_dir: str | os.PathLike[str]) -> str:
    """sha256 over a model directory's weight files (name and content, sorted by name),
    and for an adapter over its base's sha256 as well (`BASE_RECORD`): the same adapter
    on another base is another policy.

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
    if (model_dir / BASE_RECORD).is_file():
        base = read_json_object(model_dir / BASE_RECORD, "delete the policy folder and rerun "
                                                         "the update that wrote it.")
        h.update(f"{BASE_RECORD}:{base.get('sha256')}".encode())
    return h.hexdigest()


def require_policy_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a Path if it holds a model (config.json) or a LoRA adapter
    (adapter_config.json); otherwise RlverInputError."""
    from rlver.errors import RlverInputError

    path = Path(path)
    if not (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file():
        raise RlverInputError(
            f"{path}: no policy here (config.json missing). "
            "Fix: run the stage that writes it (prepare_model / init_policy / update)."
        )
    return path


def record_weights_sha256(model_dir: str | os.PathLike[str]) -> str:
    """Write `model_dir`/weights.sha256 (call before the folder is renamed into place)."""
    sha = weights_sha256(model_dir)
    write_text(Path(model_dir) / WEIGHTS_RECORD, sha + "\n")
    return sha


def checked_weights_sha256(model_dir: str | os.PathLike[str]) -> str:
    """weights_sha256 of a policy about to be used, checked against the record written
    with the folder: a weight file damaged or replaced since stops the stage here, before
    any of its outputs. A folder without a record (a user's model) is not checked."""
    from rlver.errors import RlverInputError

    model_dir = require_policy_dir(model_dir)
    sha = weights_sha256(model_dir)
    record = model_dir / WEIGHTS_RECORD
    if record.is_file() and (want := record.read_text().strip()) != sha:
        parent = model_dir.parent.name
        maker = "the stage that writes it"
        if parent.startswith("iter_") and parent[5:].isdigit():
            i = int(parent[5:])
            maker = "prepare_model" if i == 0 else f"the update of iteration {i - 1}"
        raise RlverInputError(
            f"{model_dir}: its weight files hash to {sha[:12]}, not to the {want[:12]} "
            f"recorded in {WEIGHTS_RECORD} when it was written: a weight file was damaged "
            f"or replaced since. Fix: delete {model_dir} and run the workflow again "
            f"(Snakemake remakes it with {maker})."
        )
    return sha
