"""User-facing errors: the command line prints them as one line and exits with code 2.

A :class:`FairError` is one line by construction: line breaks in its message become spaces,
other control characters (terminal escapes) are shown escaped, and a message longer than
:data:`MAX_MESSAGE_CHARS` keeps its beginning and end. Whatever an error quotes from the input,
and however it was built, it stays one readable line of bounded size.
"""

from __future__ import annotations

import re

# A safety net, not the usual limit (what messages quote is bounded where they are built, see
# fair_core.untrusted.quote): two full-length paths and their explanation fit; nobody reads more
# of one line, and a 50 MB input must never become a 50 MB error line.
MAX_MESSAGE_CHARS = 10_000

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as one line of at most ``limit`` characters (the middle elided when longer)."""
    if len(text) > 4 * limit:  # never scan more than a bounded prefix and suffix
        text = text[: 2 * limit] + "\n" + text[-2 * limit:]
    text = " ".join(text.splitlines())
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    if len(text) > limit:
        half = (limit - 5) // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return text


class FairError(Exception):
    """A problem with the user's input (spec, files, names): reported without a traceback."""

    def __init__(self, message: object = "", *args: object):
        super().__init__(one_line(str(message)), *args)
