"""The pickle-free reader of insightface/RFW ``.bin`` pair files and ``convert_bin``: real pickles
written here (Python 3 at every protocol, Python 2 byte for byte), payloads that must never run,
structure errors, bounds, and the conversion to images plus ``pairs.csv``."""

import csv
import io
import os
import pickle
import pickletools
import shlex
import struct
import time

import numpy as np
import pytest
from PIL import Image

from fair_core import FairError
from fair_face import bin_pairs
from fair_face.bin_pairs import PairRow, convert_bin, read_bin_pairs, read_pairs_csv


def encoded(seed: int, fmt: str = "JPEG", size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def sample_pairs(n_pairs: int = 3, seed: int = 0) -> tuple[list[bytes], list[bool]]:
    """``n_pairs`` pairs of distinct tiny images, a PNG of more than 255 bytes among them (so both
    the short and the long bytes opcodes occur)."""
    bins = [encoded(seed + i, "PNG", 2) if i % 3 == 1 else encoded(seed + i) for i in range(2 * n_pairs)]
    assert any(len(b) > 255 for b in bins) and any(len(b) < 256 for b in bins)
    return bins, [i % 2 == 0 for i in range(n_pairs)]


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def python2_pickle(bins: list[bytes], issame: list[bool], protocol: int) -> bytes:
    """``(bins, issame)`` as Python 2's pickler writes it with ``str`` images: protocol 2 (what
    insightface's packing scripts wrote, ``HIGHEST_PROTOCOL`` there) or 1 (``I01``/``I00`` bools)."""
    out = bytearray(b"\x80\x02" if protocol == 2 else b"")
    memo = 0

    def binput():
        nonlocal memo
        out.extend(b"q" + bytes([memo]) if memo < 256 else b"r" + struct.pack("<I", memo))  # BINPUT, LONG_BINPUT
        memo += 1

    if protocol == 1:
        out.extend(b"(")  # MARK for TUPLE
    out.extend(b"]")
    binput()
    out.extend(b"(")
    for image in bins:
        out.extend((b"U" + bytes([len(image)]) if len(image) < 256 else b"T" + struct.pack("<i", len(image))) + image)
        binput()
    out.extend(b"e]")
    binput()
    out.extend(b"(")
    for same in issame:
        out.extend((b"\x88" if same else b"\x89") if protocol == 2 else (b"I01\n" if same else b"I00\n"))
    out.extend(b"e" + (b"\x86" if protocol == 2 else b"t"))
    binput()
    out.extend(b".")
    return bytes(out)


def refused(path, match: str | None = None) -> str:
    with pytest.raises(FairError) as info:
        read_bin_pairs(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    if match is not None:
        assert match in message, message
    return message


# ---------------------------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_reads_python3_pickles_at_every_protocol(tmp_path, protocol):
    bins, issame = sample_pairs()
    path = write(tmp_path / "African_test.bin", pickle.dumps((bins, issame), protocol=protocol))
    pairs = read_bin_pairs(path)
    assert pairs.images == bins and pairs.same == issame and len(pairs) == 3
    assert all(type(image) is bytes for image in pairs.images) and all(type(s) is bool for s in pairs.same)


def test_reads_a_list_on_top_and_shared_images(tmp_path):
    bins, issame = sample_pairs()
    bins[3] = bins[0]  # one object twice: the second is a memo GET
    data = pickle.dumps([bins, issame], protocol=4)
    assert data.count(bins[0]) == 1  # stored once
    pairs = read_bin_pairs(write(tmp_path / "x.bin", data))
    assert pairs.images == bins and pairs.same == issame


@pytest.mark.parametrize("protocol", [1, 2])
def test_reads_python2_pickles_as_bytes(tmp_path, protocol):
    bins, issame = sample_pairs()
    data = python2_pickle(bins, issame, protocol)
    # the writer above is Python 2's format: pickle itself reads it with encoding="bytes" ...
    assert pickle.loads(data, encoding="bytes") == (bins, issame)
    # ... and fails as users report (insightface #70, #149) with its default encoding
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)
    opcodes = {op.name for op, _, _ in pickletools.genops(data)}
    assert {"SHORT_BINSTRING", "BINSTRING"} <= opcodes and ("INT" in opcodes) == (protocol == 1)
    pairs = read_bin_pairs(write(tmp_path / "Asian_test.bin", data))
    assert pairs.images == bins and pairs.same == issame
    assert all(type(s) is bool for s in pairs.same)


def test_python2_protocol0_binary_string_is_refused_with_the_reason(tmp_path):
    image = encoded(0)
    escaped = "".join(f"\\x{byte:02x}" for byte in image).encode("ascii")
    data = b"((lp0\nS'" + escaped + b"'\np1\naS'" + escaped + b"'\np2\na(lp3\nI01\natp4\n."
    assert pickle.loads(data, encoding="bytes") == ([image, image], [True])  # a real Python 2 protocol-0 pickle
    message = refused(write(tmp_path / "p0.bin", data), "protocol-0 STRING")
    assert "at byte 6" in message


# ---------------------------------------------------------------------------------------------
# nothing is ever imported or called


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("where", ["image", "issame"])
def test_reduce_payload_is_refused_and_never_runs(tmp_path, protocol, where):
    marker = tmp_path / "MARKER"
    bins, issame = sample_pairs(1)
    if where == "image":
        bins[1] = Payload(marker)
    else:
        issame[0] = Payload(marker)
    data = pickle.dumps((bins, issame), protocol=protocol)
    pickle.loads(data)  # the payload is live: pickle itself runs it
    assert marker.exists()
    marker.unlink()
    message = refused(write(tmp_path / "evil.bin", data), "would import")
    assert ("STACK_GLOBAL" if protocol == 4 else "GLOBAL") in message and "system" in message
    assert not marker.exists()


def test_only_the_exact_codecs_encode_pattern_is_read(tmp_path):
    image = encoded(0)
    # (_codecs.encode(text, 'latin1'), ...) as Python 3 writes bytes at protocol 2: read symbolically
    good = pickle.dumps(([image, image], [True]), protocol=2)
    assert b"_codecs\nencode" in good
    assert read_bin_pairs(write(tmp_path / "good.bin", good)).images == [image, image]
    # the same call with another encoding (which would decode differently): refused at the REDUCE
    bad = good.replace(b"latin1", b"utf_16")
    assert pickle.loads(bad)[0][0] != image  # utf-8 encoding of the same text: a different value
    refused(write(tmp_path / "bad.bin", bad), "REDUCE")
    # _codecs.encode kept as a value instead of called: not image bytes
    kept = b"\x80\x02]q\x00(c_codecs\nencode\nq\x01h\x01e]q\x02\x88a\x86."
    refused(write(tmp_path / "kept.bin", kept), "reference to _codecs.encode")
    # REDUCE of anything but the marker: refused
    other = b"\x80\x02]q\x00(X\x01\x00\x00\x00a)Re]\x88a\x86."
    refused(write(tmp_path / "other.bin", other), "REDUCE")


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_payloads_are_refused(tmp_path, protocol):
    image = encoded(0)
    cases = {
        "array image": ([np.frombuffer(image, np.uint8), image], [True]),  # cv2.imencode style
        "numpy bool": ([image, image], [np.bool_(True)]),
        "numpy issame": ([image, image], np.array([True])),
    }
    for name, value in cases.items():
        path = write(tmp_path / f"{name.replace(' ', '_')}.bin", pickle.dumps(value, protocol=protocol))
        assert "numpy" in refused(path, "would import"), name


# ---------------------------------------------------------------------------------------------
# structure


def test_wrong_structures_are_one_line_naming_the_file(tmp_path):
    bins, issame = sample_pairs(2)
    cases = {
        "odd": ((bins[:3], issame[:1]), "3 images for 1 pairs"),
        "not_image": (([bins[0], b"hello world"], [True]), "image 1 (pair 0)"),
        "text_image": (([bins[0], "a JPEG as text"], [True]), "image 1 (pair 0) is text"),
        "int_issame": ((bins[:2], [2]), "issame_list[0] is the integer 2"),
        "none_issame": ((bins[:2], [None]), "issame_list[0] is None"),
        "three_tuple": ((bins[:2], [True], [True]), "a tuple of 3 items"),
        "no_pairs": (([], []), "no pairs"),
        "not_lists": ((b"\xff\xd8\xff", True), "expected two lists"),
    }
    for name, (value, match) in cases.items():
        refused(write(tmp_path / f"{name}.bin", pickle.dumps(value, protocol=4)), match)
    # py2 ints 0/1 are booleans
    data = python2_pickle(bins[:2], [True], 1).replace(b"I01\n", b"I00\n")
    assert read_bin_pairs(write(tmp_path / "zero.bin", data)).same == [False]
    # dicts, floats, sets are not opcodes of a pair file
    refused(write(tmp_path / "dict.bin", pickle.dumps({"bins": bins}, protocol=4)), "EMPTY_DICT")
    refused(write(tmp_path / "float.bin", pickle.dumps((bins[:2], [1.0]), protocol=4)), "BINFLOAT")


def test_files_that_are_not_pickles(tmp_path):
    bins, issame = sample_pairs(1)
    good = pickle.dumps((bins, issame), protocol=4)
    refused(write(tmp_path / "empty.bin", b""), "not a readable .bin pair file")
    refused(write(tmp_path / "truncated.bin", good[:-20]), "not a readable .bin pair file")
    refused(write(tmp_path / "junk.bin", b"\x00garbage"), "unknown opcode")
    refused(write(tmp_path / "underflow.bin", b"\x80\x04\x86."), "stack underflow")
    refused(write(tmp_path / "two.bin", b"\x80\x04\x88\x88."), "exactly one value")
    refused(tmp_path / "missing.bin", "not found")
    refused(tmp_path, "is a folder")


# ---------------------------------------------------------------------------------------------
# bounds


def test_memo_and_opcode_bounds(tmp_path, monkeypatch):
    bins, issame = sample_pairs(1)
    monkeypatch.setattr(bin_pairs, "MAX_MEMO_ENTRIES", 100)
    memo_bomb = b"\x80\x04\x88" + b"\x94" * 101 + b"."  # MEMOIZE the same value 101 times
    refused(write(tmp_path / "memo.bin", memo_bomb), "more than 100 memo entries")
    monkeypatch.setattr(bin_pairs, "MAX_OPCODES", 1000)
    endless = b"\x80\x04]" + b"\x88a" * 1000 + b"."  # a list of 1000 booleans: 2003 opcodes
    # opcodes 1-2 are PROTO and EMPTY_LIST (bytes 0-2), then NEWTRUE k is opcode 3 + 2k at byte 3 + 2k
    refused(write(tmp_path / "ops.bin", endless), "NEWTRUE at byte 1001: more than 1000 opcodes")


def test_shared_list_bomb_fails_fast(tmp_path, monkeypatch):
    # a list of 2 references to a list of 2 references ... 60 deep: 2**60 leaves, a few hundred bytes
    nested: list = [b"\xff\xd8\xff"]
    for _ in range(60):
        nested = [nested, nested]
    path = write(tmp_path / "laughs.bin", pickle.dumps((nested, [True]), protocol=4))
    start = time.perf_counter()
    refused(path, "image 0 (pair 0) is a list")
    assert time.perf_counter() - start < 1.0
    # one real image shared by many pairs: bounded by the total bytes convert_bin would write
    image = encoded(0)
    monkeypatch.setattr(bin_pairs, "MAX_TOTAL_IMAGE_BYTES", 100 * len(image))
    shared = pickle.dumps(([image] * 202, [True] * 101), protocol=4)
    assert len(shared) < 2 * len(image) + 1000
    refused(write(tmp_path / "shared.bin", shared), "MAX_TOTAL_IMAGE_BYTES")


def test_size_bounds(tmp_path, monkeypatch):
    bins, issame = sample_pairs(1)
    path = write(tmp_path / "x.bin", pickle.dumps((bins, issame), protocol=4))
    monkeypatch.setattr(bin_pairs, "MAX_FILE_BYTES", 100)
    refused(path, "MAX_FILE_BYTES")
    monkeypatch.undo()
    monkeypatch.setattr(bin_pairs, "MAX_IMAGE_BYTES", 200)
    refused(write(tmp_path / "png.bin", pickle.dumps(([bins[1], bins[0]], [True]), protocol=4)), "MAX_IMAGE_BYTES")
    monkeypatch.undo()
    # a length field of 2**60 and a 10**6-digit integer line: refused before anything large is read
    huge_length = b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"\xff\xd8\xff."
    refused(write(tmp_path / "len.bin", huge_length), "BINBYTES8 at byte 2")
    huge_int = b"(lp0\nL" + b"9" * 10**6 + b"L\n."
    refused(write(tmp_path / "long.bin", huge_int), "LONG at byte 5")
    big_int = b"\x80\x02\x8a\x10" + b"\x01" * 16 + b"."  # LONG1 of 128 bits
    refused(write(tmp_path / "int.bin", big_int), "MAX_INT_BITS")
    monkeypatch.setattr(bin_pairs, "MAX_PAIRS", 2)
    bins, issame = sample_pairs(3)
    refused(write(tmp_path / "pairs.bin", pickle.dumps((bins, issame), protocol=4)), "MAX_PAIRS")


# ---------------------------------------------------------------------------------------------
# convert_bin


def extension(image: bytes) -> str:
    return "png" if image.startswith(b"\x89PNG") else "jpg"


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_convert_bin_writes_images_and_merges_races(tmp_path):
    dst = tmp_path / "rfw_converted"
    african = sample_pairs(3, seed=0)
    asian = sample_pairs(2, seed=100)
    write(tmp_path / "African_test.bin", pickle.dumps(african, protocol=4))
    write(tmp_path / "Asian_test.bin", python2_pickle(*asian, protocol=2))
    assert convert_bin(tmp_path / "Asian_test.bin", dst, progress=False) == 2
    assert convert_bin(tmp_path / "African_test.bin", dst, progress=False) == 3
    rows = read_csv(dst / "pairs.csv")
    assert rows[0] == ["race", "image_a", "image_b", "same"]
    expected = []
    for race, (bins, issame) in (("African", african), ("Asian", asian)):  # rows grouped by race, sorted
        for i, same in enumerate(issame):
            names = [f"images/{race}/{i:05d}_{k}.{extension(bins[2 * i + k])}" for k in (0, 1)]
            expected.append([race, *names, "1" if same else "0"])
            for k in (0, 1):
                assert (dst / names[k]).read_bytes() == bins[2 * i + k]
    assert rows[1:] == expected
    assert read_pairs_csv(dst / "pairs.csv") == [PairRow(r[0], r[1], r[2], r[3] == "1") for r in expected]
    assert not [p for p in dst.rglob("*") if p.name.startswith(".")]  # no temporary files left

    # converting a race again replaces its rows and its images, the other race's stay
    smaller = sample_pairs(1, seed=200)
    (tmp_path / "new").mkdir()
    write(tmp_path / "new" / "African_test.bin", pickle.dumps(smaller, protocol=2))
    assert convert_bin(tmp_path / "new" / "African_test.bin", dst, progress=False) == 1
    rows = read_csv(dst / "pairs.csv")
    assert rows[1:] == [["African", "images/African/00000_0.jpg", "images/African/00000_1.png", "1"]] + expected[3:]
    assert (dst / "images/African/00000_0.jpg").read_bytes() == smaller[0][0]
    assert sorted(p.name for p in (dst / "images/African").iterdir()) == ["00000_0.jpg", "00000_1.png"]
    assert len(list((dst / "images/Asian").iterdir())) == 4


def test_convert_bin_race_names_and_errors(tmp_path):
    bins, issame = sample_pairs(1)
    lfw = write(tmp_path / "lfw.bin", pickle.dumps((bins, issame), protocol=4))
    with pytest.raises(FairError, match="cannot tell the race"):
        convert_bin(lfw, tmp_path / "out", progress=False)
    assert convert_bin(lfw, tmp_path / "out", race="lfw", progress=False) == 1
    assert read_pairs_csv(tmp_path / "out" / "pairs.csv")[0].race == "lfw"
    for bad in ("../up", "a,b", "", "x/y"):
        with pytest.raises(FairError, match="race"):
            convert_bin(lfw, tmp_path / "out", race=bad, progress=False)
    # a malformed pairs.csv in dst: refused before anything is written
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pairs.csv").write_text("race,image_a,image_b,same\nAfrican,a.jpg,b.jpg,yes\n")
    with pytest.raises(FairError, match=r"pairs.csv: line 2: same"):
        convert_bin(lfw, broken, race="lfw", progress=False)
    assert not (broken / "images").exists()
    (broken / "pairs.csv").write_text("a,b\n")
    with pytest.raises(FairError, match=r"line 1: header"):
        convert_bin(lfw, broken, race="lfw", progress=False)
    # a refused .bin writes nothing
    evil = write(tmp_path / "Evil_test.bin", pickle.dumps(([bins[0], Payload(tmp_path / "M")], [True]), protocol=4))
    with pytest.raises(FairError, match="would import"):
        convert_bin(evil, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists() and not (tmp_path / "M").exists()
    # dst a file
    with pytest.raises(FairError, match="not a folder"):
        convert_bin(lfw, lfw, race="lfw", progress=False)
