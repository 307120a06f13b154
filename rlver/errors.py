"""The one exception type users see: bad input, explained."""

from __future__ import annotations


class RlverInputError(Exception):
    """Bad input to a stage. The message names the file, the field and the fix.

    The CLI prints it as one line and exits with status 2, without a traceback:
    the user needs the fix, not our stack.
    """
