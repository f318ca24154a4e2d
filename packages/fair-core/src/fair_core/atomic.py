"""Safe file writes: atomic (a temporary file in the same folder, fsync, then a rename over the
target, so a reader or a resumed run sees either the old file or the whole new one), never through
a symlink (the rename replaces a planted link itself; appended files are opened with
``O_NOFOLLOW``), with the permissions of a normally created file (``0666`` less the umask)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file (0644 under the usual umask 022)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), FILE_MODE)  # mkstemp's files are 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def open_no_follow(path: str | Path, append: bool) -> IO[str]:
    """``path`` opened for writing text (appending, or truncated), refusing a symlink in its
    place (``OSError``, ``ELOOP``) so that a planted link cannot redirect the write."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_APPEND if append else os.O_TRUNC)
    return os.fdopen(os.open(path, flags, 0o666), "a" if append else "w", encoding="utf-8")
