"""The one exception type users see: bad input, explained; and what the command line
makes of the other errors a bad input causes."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Optional


class RlverInputError(Exception):
    """Bad input to a stage. The message names the file, the field and the fix.

    The CLI prints it as one line and exits with status 2, without a traceback:
    the user needs the fix, not our stack.
    """


def check_index(field: str, value: int, stop: int, source: str, fix: str) -> None:
    """Refuse `value` of `field` (an iteration, a shard) outside 0..stop-1, the range that
    `source` (a config key and its file) gives."""
    if not 0 <= value < stop:
        raise RlverInputError(
            f"{field} {value}: outside 0..{stop - 1}, the range of {source}. Fix: {fix}")


#: Libraries whose exceptions say that a file's bytes are not what they should be.
_DATA_LIBRARIES = {"pyarrow": "a readable Parquet file", "yaml": "valid YAML",
                   "safetensors": "a readable safetensors file",
                   "safetensors_rust": "a readable safetensors file"}

_OS_FIXES = {
    errno.ENOENT: "check the path (a file of the workflow: rerun the stage that writes it)",
    errno.EISDIR: "pass the file, not its folder",
    errno.ENOTDIR: "a file stands where a folder is needed: pass another path",
    errno.EEXIST: "a file stands where a folder is needed: pass another path",
    errno.EACCES: "make it accessible to this user, or pass another path",
}


def user_message(exc: BaseException, arguments: Mapping[str, Sequence[str]]) -> Optional[str]:
    """The one-line message for an error that bad input causes: an RlverInputError; an
    OSError on a path (missing, a folder for a file, no permission); bytes that do not
    decode (not UTF-8, broken JSON, YAML, Parquet or safetensors) in a file being read,
    which is found in the traceback. `arguments`: the command's path arguments (name ->
    values), to name the one a file belongs to. None for anything else: a bug, whose
    traceback is wanted."""
    if isinstance(exc, RlverInputError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.filename and exc.errno != errno.ENOSPC:
        path = os.fsdecode(exc.filename)
        fix = _OS_FIXES.get(exc.errno or 0, "check the path")
        text = f"{path}{_field(path, arguments)}: {exc.strerror or exc}. Fix: {fix}."
    elif (what := _undecodable(exc)) is not None:
        read = _file_being_read(exc.__traceback__)
        where = (read + _field(read, arguments) if read else
                 "an input (" + ", ".join(arguments) + ")")
        text = (f"{where}: not {what} ({type(exc).__name__}: {exc}). Fix: pass the file "
                "this argument takes, or delete it and rerun the stage that writes it.")
    else:
        return None
    return " ".join(text.split())


def _undecodable(exc: BaseException) -> Optional[str]:
    """What a file failing with `exc` is not, if `exc` says its bytes do not decode."""
    if isinstance(exc, UnicodeDecodeError):
        return "UTF-8 text"
    if type(exc).__name__ == "JSONDecodeError":
        return "valid JSON"
    for cls in type(exc).__mro__:
        what = _DATA_LIBRARIES.get(cls.__module__.split(".")[0])
        if what:
            return what
    return None


def _file_being_read(tb: Optional[TracebackType]) -> Optional[str]:
    """The file the innermost frame of `tb` that refers to one was reading: a local that
    is the path of an existing file, or an open file."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            path = _as_path(value)
            if path is not None and os.path.isfile(path):
                return path
    return None


def _as_path(value: Any) -> Optional[str]:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    elif not isinstance(value, str) and isinstance(getattr(value, "name", None), str):
        value = value.name  # an open file
    if isinstance(value, str) and 0 < len(value) < 4096 and "\n" not in value:
        return value
    return None


def _field(path: str, arguments: Mapping[str, Sequence[str]]) -> str:
    """" (--name)": the argument `path` is, is inside, or contains; "" if none."""
    path = os.path.abspath(path)
    for name, values in arguments.items():
        for value in values:
            value = os.path.abspath(value)
            if path == value or os.path.commonpath([path, value]) in (path, value):
                return f" ({name})"
    return ""
