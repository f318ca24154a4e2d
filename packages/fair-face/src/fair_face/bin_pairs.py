"""A pickle-free reader of insightface/RFW ``.bin`` verification pair files, and their conversion to
images plus ``pairs.csv``.

RFW's ``<Race>_test.bin`` (Wang et al., "Racial Faces in-the-Wild", ICCV 2019), like insightface's
``lfw.bin``, ``cfp_fp.bin`` and ``agedb_30.bin``, is a Python pickle of ``(bins, issame_list)``:
pair ``i`` is the two encoded images ``(bins[2i], bins[2i+1])`` (JPEG or PNG bytes) and
``issame_list[i]`` says whether they show the same person. Loading one with :func:`pickle.load`
runs whatever the file asks for (``GLOBAL`` + ``REDUCE`` is ``os.system(...)`` as easily as
``bytes(...)``), so this module never unpickles: it walks the opcodes with
:func:`pickletools.genops` and builds the value with its own small stack machine that knows only

* ``PROTO``, ``FRAME``, ``STOP``, ``MARK``;
* lists and tuples: ``EMPTY_LIST``, ``LIST``, ``APPEND``, ``APPENDS``, ``EMPTY_TUPLE``, ``TUPLE``,
  ``TUPLE1``, ``TUPLE2``, ``TUPLE3``;
* bytes: ``SHORT_BINBYTES``, ``BINBYTES``, ``BINBYTES8`` (Python 3 ``bytes``) and ``STRING``,
  ``BINSTRING``, ``SHORT_BINSTRING`` (Python 2 ``str``);
* text: ``UNICODE``, ``BINUNICODE``, ``SHORT_BINUNICODE``, ``BINUNICODE8``;
* ``NEWTRUE``, ``NEWFALSE``, ``NONE`` and small integers (``INT``, ``BININT``, ``BININT1``,
  ``BININT2``, ``LONG``, ``LONG1``, ``LONG4``; Python 2 writes ``True`` as ``INT`` ``I01``);
* the memo: ``PUT``, ``BINPUT``, ``LONG_BINPUT``, ``MEMOIZE``, ``GET``, ``BINGET``, ``LONG_BINGET``.

Every other opcode (``GLOBAL``, ``STACK_GLOBAL``, ``REDUCE``, ``BUILD``, ``INST``, ``OBJ``,
``NEWOBJ``, ``EXT*``, ``PERSID``, dicts, sets, floats...) is refused with one :class:`FairError`
line naming the file, the opcode and its byte position. Nothing is ever imported or called.

**One exception, interpreted symbolically.** Python 3 writes ``bytes`` at pickle protocols 0-2
(which have no bytes opcode) as ``_codecs.encode(<text>, 'latin1')``: ``GLOBAL '_codecs encode'``,
the text and ``'latin1'`` in a tuple, then ``REDUCE``. Exactly that pattern is accepted: the
``GLOBAL`` pushes an inert marker (nothing is imported), and a ``REDUCE`` whose callable is that
marker and whose argument is exactly ``(text, 'latin1')`` pushes ``text.encode('latin-1')``, computed
by this module. Any other ``GLOBAL``, or any other ``REDUCE`` (other arguments, other callable, the
``bytes()`` call Python 3 writes for an empty ``bytes``), is refused.

**Python 2 ``str`` is bytes.** The RFW bins were written by Python 2, whose ``str`` holding JPEG
data is pickled as ``SHORT_BINSTRING``/``BINSTRING``. ``pickle.load`` in Python 3 decodes those as
ASCII text by default and fails with ``UnicodeDecodeError: 'ascii' codec can't decode byte 0xff``
(insightface issues #70, #149, #1123, #1197; the usual advice, ``encoding='bytes'``, still runs
arbitrary code). Here they are always bytes (their latin-1 code points). Known limit: a protocol-0
``STRING`` holding non-ASCII bytes (Python 2 ``pickle.dump`` with no protocol, never used for the
published bins) cannot be read, because :func:`pickletools.genops` decodes that opcode's argument as
ASCII; it is refused with a message saying so.

**Refused outright:** numpy arrays (``cv2.imencode`` output kept as arrays by some packers) and numpy
booleans in ``issame_list``, since rebuilding them needs ``numpy`` imported and called through
``GLOBAL``/``REDUCE``; convert those where they were made (``arr.tobytes()``, ``bool(x)``).

**Bounds** (module constants, each with its reason): file size, opcode count, memo entries, line
length of the text opcodes, bytes per image, total image bytes, integer size and number of pairs,
so a crafted file (a memo bomb, an endless list, a length field of 2**60) fails fast in bounded
memory. **Structure:** the top value is a 2-tuple (or 2-list) ``(bins, issame)``; ``len(bins) ==
2 * len(issame)``; each bin starts with the JPEG (``FF D8 FF``) or PNG magic bytes; each issame is a
bool (or the integer 0/1).

:func:`convert_bin` writes the images once as ``DST/images/<race>/<pair:05d>_<0|1>.<jpg|png>``
(each atomically) and merges the pairs into ``DST/pairs.csv`` (columns ``race,image_a,image_b,same``;
image paths relative to ``DST`` with ``/``; ``same`` is ``1`` or ``0``), which the ``rfw`` dataset
reads; rows are grouped by race (sorted), pairs in file order. Converting another race keeps the
rows of the others; converting a race again replaces its rows (and removes its images that the new
file no longer has).
"""

from __future__ import annotations

import csv
import io
import os
import pickletools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from fair_core import FairError
from fair_core.atomic import atomic_path, write_text
from fair_core.untrusted import open_bounded, quote, read_bounded, size_text

# The published evaluation bins (RFW's four races, LFW, CFP-FP, AgeDB-30) are tens to a few hundred
# MiB; 2 GiB admits any of them with room, and caps what a crafted file can make us read.
MAX_FILE_BYTES = 2 * 2**30
# An aligned 112x112 face encodes to a few KiB; 16 MiB admits any sane photograph.
MAX_IMAGE_BYTES = 16 * 2**20
# Images shared through the memo are one object in the file but one file each on disk: without
# this a small file could make convert_bin write terabytes.
MAX_TOTAL_IMAGE_BYTES = 2 * MAX_FILE_BYTES
# RFW has 6,000 pairs per race; LFW 6,000, CFP-FP 7,000: a million pairs leaves ample room.
MAX_PAIRS = 1_000_000
# A pair costs at most 22 opcodes (Python 3 protocol 0: per image the _codecs.encode call with its
# memo writes and APPEND, 10 opcodes; 2 per boolean); 32 per pair bounds any legitimate file.
MAX_OPCODES = 32 * MAX_PAIRS + 1024
# Picklers memoize at most 3 values per image (text, argument tuple, result) plus the lists.
MAX_MEMO_ENTRIES = 8 * MAX_PAIRS + 1024
# Integers here are booleans (and memo indices, read by pickletools itself): 64 bits is plenty.
MAX_INT_BITS = 64
# Line-terminated arguments: a protocol-0 text holding an image (raw-unicode-escape writes at most
# 6 characters per code point) may be long; every other one (INT, LONG, GLOBAL, PUT, GET) is a
# number or a name.
MAX_SHORT_LINE_BYTES = 256
# pairs.csv of a merged conversion: a million pairs x several races of ~60-character rows.
MAX_PAIRS_CSV_BYTES = 256 * 2**20

PAIRS_CSV = "pairs.csv"
PAIRS_HEADER = ("race", "image_a", "image_b", "same")
IMAGES_FOLDER = "images"

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A race name becomes a folder and a CSV field: letters, digits, '_' and '-' only.
RACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
BIN_NAME_PATTERN = re.compile(r"(?P<race>[A-Za-z0-9][A-Za-z0-9_-]{0,63})_test\.bin")
_IMAGE_NAME_PATTERN = re.compile(r"[0-9]{5,}_[01]\.(?:jpg|png)")

_BYTES = frozenset({"SHORT_BINBYTES", "BINBYTES", "BINBYTES8"})
_PY2_STR = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING"})  # genops gives latin-1 text: bytes here
_TEXT = frozenset({"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"})
_INTS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_LONG_LINE_OPCODES = (b"S", b"V")  # STRING, UNICODE: an image may be their argument
_CODECS_ENCODE_GLOBAL = "_codecs encode"


@dataclass(frozen=True)
class BinPairs:
    """The pairs of a ``.bin`` file: ``images[2 * i]`` and ``images[2 * i + 1]`` form pair ``i``,
    ``same[i]`` says whether they show the same person."""

    images: list[bytes]
    same: list[bool]

    def __len__(self) -> int:
        return len(self.same)


class PairRow(NamedTuple):
    """One row of ``pairs.csv``: image paths relative to the folder holding the file."""

    race: str
    image_a: str
    image_b: str
    same: bool


class _CodecsEncodeMarker:
    """What ``GLOBAL '_codecs encode'`` pushes: an inert marker, never a function."""

    def __repr__(self) -> str:
        return "a reference to _codecs.encode"


_CODECS_ENCODE = _CodecsEncodeMarker()


class _Refused(Exception):
    """A bound or a rule broken while reading; the reader adds the file and position."""


def image_extension(data: bytes) -> str | None:
    """``jpg`` or ``png`` from the magic bytes of ``data``, else ``None``."""
    if data.startswith(JPEG_MAGIC):
        return "jpg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def read_bin_pairs(path: Path) -> BinPairs:
    """The pairs of the insightface/RFW ``.bin`` file ``path``, read without unpickling (see the
    module docstring); anything else is one :class:`FairError` line naming the file."""
    path = Path(path)
    with open_bounded(path, MAX_FILE_BYTES, "fair_face.bin_pairs.MAX_FILE_BYTES", ".bin pair file",
                      buffering=2**20) as handle:
        value = _walk(_BoundedSource(handle), path)
    return _check_structure(value, path)


def race_from_file_name(bin_path: Path) -> str:
    """``African`` for ``.../African_test.bin`` (RFW's naming); a :class:`FairError` otherwise."""
    match = BIN_NAME_PATTERN.fullmatch(Path(bin_path).name)
    if match is None:
        raise FairError(f"{bin_path}: cannot tell the race from the file name (expected <Race>_test.bin, "
                        "e.g. African_test.bin); give the race explicitly")
    return match["race"]


def convert_bin(bin_path: Path, dst: Path, race: str | None = None, progress: bool = True) -> int:
    """Write the pairs of ``bin_path`` as images ``dst/images/<race>/<pair:05d>_<0|1>.<jpg|png>`` and
    rows of ``dst/pairs.csv`` (replacing that race's earlier rows, keeping the other races'), each
    file atomically; return the number of pairs. ``race`` defaults to ``<Race>`` of the file name
    ``<Race>_test.bin``."""
    bin_path, dst = Path(bin_path), Path(dst)
    race = race_from_file_name(bin_path) if race is None else race
    if not isinstance(race, str) or RACE_PATTERN.fullmatch(race) is None:
        raise FairError(f"race {quote(race)}: use 1-64 letters, digits, '_' or '-' (starting with a letter or digit)")
    if dst.exists() and not dst.is_dir():
        raise FairError(f"{dst}: not a folder; the converted pairs go into a folder")
    csv_path = dst / PAIRS_CSV
    # an unreadable pairs.csv fails before the (long) image writing, not after
    kept = [row for row in read_pairs_csv(csv_path) if row.race != race] if csv_path.exists() else []
    pairs = read_bin_pairs(bin_path)

    from tqdm.auto import tqdm

    folder = dst / IMAGES_FOLDER / race
    names: list[str] = []
    shown = {} if progress else {"disable": True}  # when shown, TQDM_* environment variables still apply
    try:
        with tqdm(total=len(pairs.images), desc=f"{race}: writing images", unit="image", **shown) as bar:
            for index, image in enumerate(pairs.images):
                name = f"{index // 2:05d}_{index % 2}.{image_extension(image)}"
                with atomic_path(folder / name) as tmp:
                    tmp.write_bytes(image)
                names.append(name)
                bar.update()
        prefix = f"{IMAGES_FOLDER}/{race}"
        rows = [PairRow(race, f"{prefix}/{names[2 * i]}", f"{prefix}/{names[2 * i + 1]}", same)
                for i, same in enumerate(pairs.same)]
        write_pairs_csv(csv_path, sorted(kept + rows, key=lambda row: row.race))  # stable: pair order kept
        _remove_stale_images(folder, set(names))
    except OSError as exc:
        raise FairError(f"{dst}: cannot write the converted pairs of {bin_path}: "
                        f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}") from None
    return len(pairs)


def read_pairs_csv(path: Path) -> list[PairRow]:
    """The rows of a ``pairs.csv`` written by :func:`convert_bin` (header ``race,image_a,image_b,same``,
    ``same`` 1 or 0); a malformed file is one :class:`FairError` line naming the file and line."""
    path = Path(path)
    raw = read_bounded(path, MAX_PAIRS_CSV_BYTES, "fair_face.bin_pairs.MAX_PAIRS_CSV_BYTES", PAIRS_CSV)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FairError(f"{path}: unreadable {PAIRS_CSV}: not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[PairRow] = []
    try:
        header = next(reader, None)
        if header is None or tuple(header) != PAIRS_HEADER:
            raise FairError(f"{path}: line 1: header {quote(header)}, expected {','.join(PAIRS_HEADER)}")
        for fields in reader:
            where = f"{path}: line {reader.line_num}"
            if len(fields) != len(PAIRS_HEADER):
                raise FairError(f"{where}: {len(fields)} fields, expected {len(PAIRS_HEADER)} ({','.join(PAIRS_HEADER)})")
            race, image_a, image_b, same = fields
            if RACE_PATTERN.fullmatch(race) is None:
                raise FairError(f"{where}: race {quote(race)}: use letters, digits, '_' or '-'")
            if not image_a or not image_b:
                raise FairError(f"{where}: an empty image path")
            if same not in ("0", "1"):
                raise FairError(f"{where}: same is {quote(same)}, expected 1 or 0")
            rows.append(PairRow(race, image_a, image_b, same == "1"))
    except csv.Error as exc:
        raise FairError(f"{path}: line {reader.line_num}: unreadable CSV: {exc}") from None
    return rows


def write_pairs_csv(path: Path, rows: list[PairRow]) -> None:
    """Write ``rows`` as ``pairs.csv`` at ``path``, atomically as a whole file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PAIRS_HEADER)
    writer.writerows((row.race, row.image_a, row.image_b, int(row.same)) for row in rows)
    write_text(path, buffer.getvalue())


def _remove_stale_images(folder: Path, written: set[str]) -> None:
    """Remove images of an earlier conversion of this race that the new one did not write (fewer
    pairs, or a PNG where a JPEG was): only files named as :func:`convert_bin` names them."""
    for entry in os.scandir(folder):
        if entry.name not in written and _IMAGE_NAME_PATTERN.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)


class _BoundedSource:
    """The file as :func:`pickletools.genops` reads it, within the bounds: no read past
    ``MAX_FILE_BYTES``, no argument longer than an image can be, no line longer than its opcode
    allows. It also remembers where the opcode being read starts, for error messages."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self.pos = 0
        self.opcode_pos = 0
        self.opcode = b""
        self._at_opcode = False

    def tell(self) -> int:  # genops asks before each opcode
        self.opcode_pos, self._at_opcode, self.opcode = self.pos, True, b""
        return self.pos

    def read(self, n: int = -1) -> bytes:
        # a length argument is at most one image (UTF-8 text of latin-1 code points: 2 bytes each)
        limit = 2 * MAX_IMAGE_BYTES + 16
        if n < 0 or n > limit:
            raise _Refused(f"an argument of {size_text(n) if n >= 0 else 'unbounded size'}, more than an image may have "
                           f"({size_text(MAX_IMAGE_BYTES)}, fair_face.bin_pairs.MAX_IMAGE_BYTES)")
        return self._count(self._handle.read(n))

    def readline(self) -> bytes:
        if self.opcode in _LONG_LINE_OPCODES:
            limit = 6 * MAX_IMAGE_BYTES + 16
        else:
            limit = MAX_SHORT_LINE_BYTES
        line = self._handle.readline(limit + 1)
        if len(line) > limit:
            raise _Refused(f"a line argument longer than {size_text(limit)} (fair_face.bin_pairs.MAX_IMAGE_BYTES, "
                           "MAX_SHORT_LINE_BYTES)")
        return self._count(line)

    def _count(self, data: bytes) -> bytes:
        if self._at_opcode:
            self.opcode, self._at_opcode = data[:1], False
        self.pos += len(data)
        if self.pos > MAX_FILE_BYTES:
            raise _Refused(f"read past {size_text(MAX_FILE_BYTES)} (fair_face.bin_pairs.MAX_FILE_BYTES)")
        return data


def _opcode_name(code: bytes) -> str:
    if not code:
        return "end of file"
    opcode = pickletools.code2op.get(code.decode("latin-1"))
    return opcode.name if opcode is not None else f"unknown opcode {code!r}"


def _describe(value: Any) -> str:
    """What ``value`` is, for a message, in bounded time and length."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, bytes):
        return f"{len(value)} bytes starting {value[:8].hex(' ') or '(empty)'}"
    if isinstance(value, str):
        return f"text {quote(value, 30)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, int):
        return f"the integer {quote(value, 30)}"
    return "None" if value is None else repr(value)


def _walk(source: _BoundedSource, path: Path) -> Any:
    """The value the pickle in ``source`` describes, built from the allowed opcodes only."""
    machine = _StackMachine(path)
    try:
        for opcode, arg, pos in pickletools.genops(source):
            machine.name, machine.pos = opcode.name, pos
            if machine.step(arg):
                return machine.result()
    except _Refused as exc:  # a bound broken while genops read an argument
        machine.name, machine.pos = _opcode_name(source.opcode), source.opcode_pos
        raise machine.refuse(str(exc)) from None
    except ValueError as exc:  # genops: an unknown opcode, a truncated file, a bad argument (UnicodeDecodeError too)
        machine.name, machine.pos = _opcode_name(source.opcode), source.opcode_pos
        if machine.name == "STRING" and isinstance(exc, UnicodeDecodeError):
            raise machine.refuse("a protocol-0 STRING of non-ASCII bytes (Python 2 pickle.dump without a protocol), "
                                 "which pickletools cannot read; re-pack the file with protocol 2 or higher") from None
        raise FairError(f"{path}: not a readable .bin pair file (a pickle): at byte {machine.pos} ({machine.name}): "
                        f"{str(exc)[:200]}") from None
    raise FairError(f"{path}: not a readable .bin pair file: the pickle ends without STOP")  # genops stops only at STOP


class _StackMachine:
    """Pickle's stack machine reduced to the allowed opcodes: a value stack, the stacks saved by
    ``MARK`` (kept as pickle's own unpickler keeps them) and the memo. :meth:`step` applies one
    opcode (``name`` at byte ``pos``) and says whether it was ``STOP``."""

    def __init__(self, path: Path):
        self.path = path
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.opcodes = 0
        self.name = "?"
        self.pos = 0

    def refuse(self, why: str) -> FairError:
        return FairError(f"{self.path}: refused: {self.name} at byte {self.pos}: {why}")

    def pop(self, n: int = 1) -> list[Any]:
        if len(self.stack) < n:
            raise self.refuse("malformed pickle (stack underflow)")
        items = self.stack[len(self.stack) - n:]
        del self.stack[len(self.stack) - n:]
        return items

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise self.refuse("malformed pickle (no MARK)")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def push_bytes(self, data: bytes) -> None:
        if len(data) > MAX_IMAGE_BYTES:
            raise self.refuse(f"{size_text(len(data))} of bytes, more than the {size_text(MAX_IMAGE_BYTES)} an image may "
                              "have (fair_face.bin_pairs.MAX_IMAGE_BYTES)")
        self.stack.append(data)

    def result(self) -> Any:
        if self.metastack or len(self.stack) != 1:
            raise self.refuse("malformed pickle (the stack does not hold exactly one value)")
        return self.stack[0]

    def step(self, arg: Any) -> bool:
        name, stack = self.name, self.stack
        self.opcodes += 1
        if self.opcodes > MAX_OPCODES:
            raise self.refuse(f"more than {MAX_OPCODES} opcodes (fair_face.bin_pairs.MAX_OPCODES)")
        if name in _BYTES:
            self.push_bytes(arg)
        elif name in _PY2_STR:
            self.push_bytes(arg.encode("latin-1"))  # a Python 2 str: its bytes, never text
        elif name in _TEXT:
            stack.append(arg)
        elif name in _INTS:
            if not isinstance(arg, bool) and arg.bit_length() > MAX_INT_BITS:
                raise self.refuse(f"an integer of {arg.bit_length()} bits (fair_face.bin_pairs.MAX_INT_BITS = {MAX_INT_BITS})")
            stack.append(arg)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name == "NONE":
            stack.append(None)
        elif name == "MARK":
            self.metastack.append(stack)
            self.stack = []
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "LIST":
            items = self.pop_mark()
            self.stack.append(items)
        elif name in ("APPEND", "APPENDS"):
            items = self.pop() if name == "APPEND" else self.pop_mark()
            if not self.stack or not isinstance(self.stack[-1], list):
                raise self.refuse("malformed pickle (appending to something that is not a list)")
            self.stack[-1].extend(items)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "TUPLE":
            items = self.pop_mark()
            self.stack.append(tuple(items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            stack.append(tuple(self.pop(int(name[-1]))))
        elif name in _PUT or name == "MEMOIZE":
            if not stack:
                raise self.refuse("malformed pickle (memoizing an empty stack)")
            self.memo[len(self.memo) if name == "MEMOIZE" else arg] = stack[-1]
            if len(self.memo) > MAX_MEMO_ENTRIES:
                raise self.refuse(f"more than {MAX_MEMO_ENTRIES} memo entries (fair_face.bin_pairs.MAX_MEMO_ENTRIES)")
        elif name in _GET:
            if arg not in self.memo:
                raise self.refuse(f"malformed pickle (memo entry {arg} was never stored)")
            stack.append(self.memo[arg])
        elif name in ("PROTO", "FRAME"):
            pass  # the protocol and frame sizes change nothing in what is read here
        elif name == "GLOBAL" and arg == _CODECS_ENCODE_GLOBAL:
            stack.append(_CODECS_ENCODE)  # a marker; nothing is imported
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            target = quote(arg) if name == "GLOBAL" else " ".join(quote(item, 40) for item in stack[-2:])
            hint = (" (a numpy array or numpy scalar, e.g. cv2.imencode output or numpy booleans: store bytes and Python "
                    "bools instead)" if "numpy" in target else "")
            raise self.refuse(f"it would import {target}{hint}; a .bin pair file holds only lists, tuples, bytes and "
                              "booleans, and nothing in it is ever imported or called")
        elif name == "REDUCE":
            self._reduce()
        elif name == "STOP":
            return True
        else:
            raise self.refuse("a .bin pair file holds only lists, tuples, bytes and booleans; this opcode could build "
                              "other objects or run code, which is never done")
        return False

    def _reduce(self) -> None:
        """Only Python 3's protocol 0-2 bytes, ``_codecs.encode(text, 'latin1')``: read, never called."""
        func, args = self.pop(2)
        if not (func is _CODECS_ENCODE and isinstance(args, tuple) and len(args) == 2
                and isinstance(args[0], str) and args[1] == "latin1"):
            shown = ", ".join(_describe(item) for item in args[:3]) if isinstance(args, tuple) else _describe(args)
            raise self.refuse(f"a call of {_describe(func)} with ({shown}); the only call read (never made) is "
                              "_codecs.encode(text, 'latin1'), Python 3's bytes at protocols 0-2")
        try:
            data = args[0].encode("latin-1")
        except UnicodeEncodeError:
            raise self.refuse("_codecs.encode of text that is not latin-1: not bytes written by pickle") from None
        self.push_bytes(data)


def _check_structure(value: Any, path: Path) -> BinPairs:
    """``value`` checked to be ``(bins, issame_list)`` of image bytes and booleans, as a :class:`BinPairs`."""
    where = f"{path}: not an insightface/RFW pair file"
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise FairError(f"{where}: the pickle holds {_describe(value)}, expected a 2-tuple (bins, issame_list)")
    bins, issame = value
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise FairError(f"{where}: (bins, issame_list) are {_describe(bins)} and {_describe(issame)}, expected two lists")
    if not issame:
        raise FairError(f"{where}: issame_list is empty (no pairs)")
    if len(issame) > MAX_PAIRS:
        raise FairError(f"{where}: {len(issame)} pairs, more than {MAX_PAIRS} (fair_face.bin_pairs.MAX_PAIRS)")
    if len(bins) != 2 * len(issame):
        raise FairError(f"{where}: {len(bins)} images for {len(issame)} pairs; expected 2 images per pair")
    total = 0
    for index, image in enumerate(bins):
        if not isinstance(image, bytes) or image_extension(image) is None:
            raise FairError(f"{where}: image {index} (pair {index // 2}) is {_describe(image)}, expected JPEG or PNG bytes")
        total += len(image)
        if total > MAX_TOTAL_IMAGE_BYTES:
            raise FairError(f"{where}: images of more than {size_text(MAX_TOTAL_IMAGE_BYTES)} in all "
                            "(fair_face.bin_pairs.MAX_TOTAL_IMAGE_BYTES)")
    same: list[bool] = []
    for index, flag in enumerate(issame):
        if not (isinstance(flag, bool) or (isinstance(flag, int) and flag in (0, 1))):
            raise FairError(f"{where}: issame_list[{index}] is {_describe(flag)}, expected a boolean (or 0/1)")
        same.append(bool(flag))
    return BinPairs(images=list(bins), same=same)
