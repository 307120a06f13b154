"""Durations as `rlver status` and the served simulator's status lines print them."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """12 s, 3 min 4 s, 2 h 5 min; "unknown" for None."""
    if seconds is None:
        return "unknown"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
