"""Reading untrusted input within explicit bounds: files (regular files only, size checked before
reading), nesting depth, and what an error message may quote of a value.

Each caller names its own bound (a module-level constant with its reason, e.g.
``fair_core.spec.MAX_SPEC_BYTES``); the messages name the file, the bound and the constant.
"""

from __future__ import annotations

import json
import os
import reprlib
import stat
from pathlib import Path
from typing import Any, BinaryIO

from .errors import FairError

# What an error message quotes of a value: enough to recognise the input, never a copy of it.
QUOTE_CHARS = 60


def size_text(n: int) -> str:
    """``n`` bytes for a message: ``1 MiB``, ``512 KiB``, ``300 bytes``."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def open_bounded(path: str | Path, max_bytes: int, bound: str, what: str, buffering: int = -1) -> BinaryIO:
    """``path`` opened for binary reading, refused (one :class:`FairError` line naming the file
    and ``bound``) when it is not a regular file (a FIFO would block, a device never ends) or is
    larger than ``max_bytes``, both checked on the open descriptor before anything is read.
    ``what`` names the file's role (``spec file``, ``config.json``). A reader that reads to the
    end should still stop at ``max_bytes + 1`` bytes (the file may grow)."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer, so fstat can refuse it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FairError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise FairError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FairError(f"{path}: is a folder, not a {what}")
        if not stat.S_ISREG(info.st_mode):
            raise FairError(f"{path}: not a regular file (a FIFO, device or socket); refusing to read it as the {what}")
        if info.st_size > max_bytes:
            raise FairError(f"{path}: {size_text(info.st_size)}, larger than the {size_text(max_bytes)} a {what} "
                            f"may have ({bound})")
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | Path, max_bytes: int, bound: str, what: str) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_bounded`)."""
    path = Path(path)
    with open_bounded(path, max_bytes, bound, what) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise FairError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew while being read
        raise FairError(f"{path}: larger than the {size_text(max_bytes)} a {what} may have ({bound})")
    return data


def regular_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a regular file (after symlinks), else a :class:`FairError` naming it."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FairError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise FairError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FairError(f"{path}: not a regular file; refusing to read it as the {what}")
    return path


def read_json(path: str | Path, max_bytes: int, bound: str, what: str, depth_bound: str) -> Any:
    """The parsed JSON file ``path`` (read by :func:`read_bounded`); text that is not UTF-8, not
    JSON, nested past Python's recursion limit (``depth_bound`` names the caller's depth bound) or
    holding an integer of more than 4300 digits is one line naming the file."""
    path = Path(path)
    raw = read_bounded(path, max_bytes, bound, what)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FairError(f"{path}: unreadable {what}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise FairError(f"{path}: unreadable {what}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise FairError(f"{path}: unreadable {what}: nested too deeply ({depth_bound})") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise FairError(f"{path}: unreadable {what}: {str(exc)[:200]}") from None


class _Full(Exception):
    pass


_short = reprlib.Repr()
_short.maxstring = _short.maxother = QUOTE_CHARS


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``value`` as JSON-like text of at most ``limit`` characters, built lazily: the cost is bounded
    by ``limit``, not by the value, so a 50 MB string, a 10**6-digit integer or a YAML alias bomb
    (a tree of shared lists with 10**9 leaves) quotes in microseconds."""
    parts: list[str] = []
    budget = limit + 1

    def emit(text: str) -> None:
        nonlocal budget
        parts.append(text[:budget])
        budget -= len(text)
        if budget <= 0:
            raise _Full

    def walk(item: Any) -> None:  # each level emits a character before descending: depth <= limit
        if item is None or isinstance(item, bool):
            emit(json.dumps(item))
        elif isinstance(item, int):
            emit(str(item) if item.bit_length() <= 256 else f"<{'-' if item < 0 else ''}{item.bit_length()}-bit integer>")
        elif isinstance(item, float):
            emit(json.dumps(item))
        elif isinstance(item, str):
            emit(json.dumps(item[: limit + 1]))
        elif isinstance(item, (bytes, bytearray)):
            emit(repr(bytes(item[: limit + 1])))
        elif isinstance(item, dict):
            emit("{")
            for i, (key, child) in enumerate(item.items()):
                emit(", " if i else "")
                walk(key if isinstance(key, str) else str(key)[: limit + 1])
                emit(": ")
                walk(child)
            emit("}")
        elif isinstance(item, (list, tuple, set, frozenset)):
            emit("[")
            for i, child in enumerate(item):
                emit(", " if i else "")
                walk(child)
            emit("]")
        else:
            emit(json.dumps(_short.repr(item)))

    try:
        walk(value)
    except _Full:
        pass
    text = "".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_nesting(value: Any, max_depth: int, bound: str, where: str, max_items: int | None = None,
                  items_bound: str = "") -> None:
    """A :class:`FairError` when ``value`` (parsed JSON/YAML) nests lists or objects more than
    ``max_depth`` levels deep (the value itself is level 1), or holds more than ``max_items`` list
    items and object entries in all. Walked with an explicit stack, in memory proportional to the
    depth and time bounded by ``max_items``: the recursive consumers after it (pydantic,
    json.dumps, checkpoints) would otherwise stop with a RecursionError, or take minutes."""
    if not isinstance(value, (dict, list, tuple)):
        return
    stack = [_children(value)]
    keys: list[Any] = []
    items = len(value)
    while stack:
        try:
            key, child = next(stack[-1])
        except StopIteration:
            stack.pop()
            if keys:
                keys.pop()
            continue
        if isinstance(child, (dict, list, tuple)):
            if len(stack) >= max_depth:
                loc = [*keys, key]
                shown = ".".join(str(p) if isinstance(p, int) or (str(p).isidentifier() and len(str(p)) <= 40)
                                 else quote(str(p), 40) for p in loc[:6])
                raise FairError(f"{where}: nested more than {max_depth} levels deep ({bound}) at {shown}"
                                f"{'...' if len(loc) > 6 else ''}")
            items += len(child)
            if max_items is not None and items > max_items:
                raise FairError(f"{where}: more than {max_items} list items and object entries ({items_bound})")
            stack.append(_children(child))
            keys.append(key)
    if max_items is not None and items > max_items:
        raise FairError(f"{where}: more than {max_items} list items and object entries ({items_bound})")


def _children(item: Any):
    return iter(item.items()) if isinstance(item, dict) else enumerate(item)
