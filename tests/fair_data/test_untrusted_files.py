"""Hostile and careless data files: every loader of fair-data checks an explicit bound before it
allocates, and a broken file is one FairError line naming the file (and the bound), never a
traceback. The attacks run in a child process that reports its own peak memory."""

import io
import json
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import CELEBA_ATTRIBUTES, write_jpeg
from fair_core import FairError
from fair_data import cifar10s, images
from fair_data.ade20k import ADE20K, ZipSource, decode_mask
from fair_data.celeba import CelebA
from fair_data.celebahq import CelebAHQ
from fair_data.cifar10s import CIFAR10S, read_batch
from fair_data.fairface import FairFace
from fair_data.images import ZipStore, decode, open_zip
from fair_data.utkface import UTKFace

GB = 1024  # MB
CHILD = """
import json, resource, sys, time
from pathlib import Path
from fair_core import FairError
root = Path(sys.argv[1])

def peak_mb():
    # VmHWM: this process's own peak; ru_maxrss keeps the parent's peak across fork and exec on Linux
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

{imports}
before = peak_mb()
results = {{}}
for label, attack in ATTACKS:
    start = time.perf_counter()
    try:
        attack()
        error = None
    except FairError as exc:
        error = str(exc)
    results[label] = {{"error": error, "seconds": time.perf_counter() - start, "peak_mb": peak_mb()}}
print(json.dumps({{"before_mb": before, "results": results}}))
"""


def attack(root, code: str) -> dict:
    """Run ``code`` (imports, then ``ATTACKS = [(label, callable), ...]``) in a child process; each
    attack's FairError message (None if none), seconds and the child's peak memory so far (MB)."""
    result = subprocess.run([sys.executable, "-c", CHILD.format(imports=code), str(root)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr  # a traceback: an error that is not one line
    report = json.loads(result.stdout.splitlines()[-1])
    for label, outcome in report["results"].items():
        assert outcome["peak_mb"] < GB, f"{label}: peak memory {outcome['peak_mb']:.0f} MB"
        assert outcome["error"] is not None and "\n" not in outcome["error"], (label, outcome["error"])
    return report


def one_line(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message and "BytesIO" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------- image pixels
def test_image_headers_over_the_pixel_bound_are_refused_before_decoding(tmp_path):
    Image.new("1", (12000, 12000)).save(tmp_path / "huge.png")  # 17 kB, 144 Mpx
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # PIL's own DecompressionBombError size
    Image.new("1", (400_000, 1)).save(tmp_path / "thin.png")  # 0.4 Mpx, but 224 high: 90 Gpx
    assert (tmp_path / "huge.png").stat().st_size < 50_000
    report = attack(tmp_path, """
from fair_data.images import FolderStore, decode
from fair_data.ade20k import decode_image, decode_mask
ATTACKS = [
    ("decode", lambda: decode(root / "huge.png", str(root / "huge.png"), 224)),
    ("folder store", lambda: FolderStore(root).images(["huge.png"], 64)[0]),
    ("pil bomb error", lambda: decode(root / "bomb.png", str(root / "bomb.png"), 224)),
    ("ade20k image", lambda: decode_image((root / "huge.png").read_bytes(), "ADE/huge.jpg")),
    ("ade20k mask", lambda: decode_mask((root / "huge.png").read_bytes(), "ADE/huge.png")),
    ("resized", lambda: decode(root / "thin.png", str(root / "thin.png"), 224)),
]""")
    errors = {label: outcome["error"] for label, outcome in report["results"].items()}
    for label in ("decode", "folder store"):
        assert "huge.png: image of 12000x12000 pixels exceeds the bound of 64000000 pixels" in errors[label]
        assert "MAX_IMAGE_PIXELS" in errors[label] and "FAIR_MAX_IMAGE_PIXELS" in errors[label]
    assert "bomb.png: image of 400000000 pixels exceeds the bound of 64000000 pixels" in errors["pil bomb error"]
    assert "ADE/huge.jpg: image of 12000x12000 pixels exceeds the bound" in errors["ade20k image"]
    assert "ADE/huge.png: image of 12000x12000 pixels exceeds the bound" in errors["ade20k mask"]
    assert "thin.png: image of 400000x1 pixels resized to 89600000x224 for image_size 224 exceeds the bound" \
        in errors["resized"]
    assert all(outcome["seconds"] < 1 for outcome in report["results"].values()), report


def test_pixel_bound_can_be_set_and_broken_images_are_one_line(tmp_path, monkeypatch):
    write_jpeg(tmp_path / "a.jpg", 0, (40, 30))
    assert decode(tmp_path / "a.jpg", "a.jpg", 16).shape == (3, 16, 16)
    monkeypatch.setenv("FAIR_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(FairError) as excinfo:
        decode(tmp_path / "a.jpg", "a.jpg", 16)
    one_line(excinfo, "a.jpg: image of 40x30 pixels exceeds the bound of 1000 pixels")
    monkeypatch.setenv("FAIR_MAX_IMAGE_PIXELS", "many")
    with pytest.raises(FairError, match="FAIR_MAX_IMAGE_PIXELS='many': expected a positive number"):
        decode(tmp_path / "a.jpg", "a.jpg", 16)
    monkeypatch.delenv("FAIR_MAX_IMAGE_PIXELS")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, needle in [("cut.jpg", "corrupt image cut.jpg: image file is truncated"),
                         ("empty.jpg", "corrupt image empty.jpg: an empty file"),
                         ("missing.jpg", "image not found: missing.jpg")]:
        with pytest.raises(FairError) as excinfo:
            decode(tmp_path / name, name, 16)
        one_line(excinfo, needle)
    with pytest.raises(FairError) as excinfo:  # from memory (a zip member): no BytesIO repr
        decode(io.BytesIO(b"not an image"), "x.zip:a.jpg", 16)
    one_line(excinfo, "corrupt image x.zip:a.jpg: not an image file PIL recognises")
    with pytest.raises(FairError) as excinfo:
        decode_mask(b"", "ADE/a.png")
    one_line(excinfo, "ADE/a.png: an empty file")


# ---------------------------------------------------------------- zip members
def patch_member(path, name, *, flags=None, method=None, file_size=None):
    """Rewrite fields of member ``name`` in both its local header and its central directory entry."""
    with zipfile.ZipFile(path) as archive:
        local, start = archive.getinfo(name).header_offset, archive.start_dir
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02", start)
    while data[central + 46:central + 46 + struct.unpack_from("<H", data, central + 28)[0]] != name.encode():
        central = data.find(b"PK\x01\x02", central + 4)
    for base, (flag_at, method_at, size_at) in ((local, (6, 8, 22)), (central, (8, 10, 24))):
        for value, at in ((flags, flag_at), (method, method_at)):
            if value is not None:
                struct.pack_into("<H", data, base + at, value)
        if file_size is not None:
            struct.pack_into("<I", data, base + size_at, file_size)
    path.write_bytes(bytes(data))


def png_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hostile_zip(tmp_path_factory):
    """A zip (about 1 MB on disk) of members that must each be refused, written without holding
    the large ones in memory: a 300 MiB member (streamed deflate of zeros), 64 MiB ones (a
    compression ratio of 1000:1), encrypted-flag, unknown-method, corrupt and size-lying members."""
    root = tmp_path_factory.mktemp("zips")
    path = root / "ADEChallengeData2016.zip"
    zeros = bytes(16 * 2**20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, mib in (("big.png", 304), ("ratio.png", 64), ("ADEChallengeData2016/ratio.jpg", 64)):
            with archive.open(name, "w", force_zip64=True) as handle:
                for _ in range(mib // 16):
                    handle.write(zeros)
        for name in ("ok.png", "enc.png", "ADEChallengeData2016/enc.png", "method.png"):
            archive.writestr(name, png_bytes())
        archive.writestr("corrupt.png", bytes(range(256)) * 400)
        archive.writestr("liar.png", bytes(2**20))
    patch_member(path, "enc.png", flags=0x1)
    patch_member(path, "ADEChallengeData2016/enc.png", flags=0x1)
    patch_member(path, "method.png", method=99)
    patch_member(path, "liar.png", file_size=1000)
    with zipfile.ZipFile(path) as archive:
        offset, size = archive.getinfo("corrupt.png").header_offset, archive.getinfo("corrupt.png").compress_size
    data = bytearray(path.read_bytes())
    data[offset + 60:offset + 40 + size] = bytes(size - 20)  # zeros over the deflate stream
    path.write_bytes(bytes(data))
    assert path.stat().st_size < 2 * 2**20
    return path


def test_zip_members_over_the_bounds_are_refused_before_reading(hostile_zip):
    report = attack(hostile_zip.parent, """
from fair_data.images import ZipStore
from fair_data.ade20k import ZipSource
zip_path = root / "ADEChallengeData2016.zip"

def member(name, in_memory=False):
    return lambda: ZipStore(zip_path, in_memory=in_memory).images([name], 32)[0]

ATTACKS = [
    ("size", member("big.png")),
    ("size in memory", member("big.png", in_memory=True)),
    ("ratio", member("ratio.png")),
    ("ade20k ratio", lambda: ZipSource(zip_path, in_memory=False).read("ratio.jpg")),
]""")
    errors = {label: outcome["error"] for label, outcome in report["results"].items()}
    for label in ("size", "size in memory"):
        assert errors[label].startswith(f"{hostile_zip}:big.png: zip member of {304 * 2**20} bytes exceeds the bound "
                                        f"of {256 * 2**20} bytes"), errors[label]
        assert "MAX_FILE_BYTES" in errors[label]
    assert errors["ratio"].startswith(f"{hostile_zip}:ratio.png: zip member of {64 * 2**20} bytes compressed to ")
    assert "exceeds the compression ratio bound of 200:1" in errors["ratio"] and "MAX_ZIP_RATIO" in errors["ratio"]
    assert f"{hostile_zip}:ADEChallengeData2016/ratio.jpg: zip member" in errors["ade20k ratio"]


@pytest.mark.parametrize("in_memory", [False, True])
def test_encrypted_unsupported_and_corrupt_members_are_one_line(hostile_zip, in_memory):
    store = ZipStore(hostile_zip, in_memory=in_memory)
    assert store.images(["ok.png"], 8)[0].shape == (3, 8, 8)
    for name, needle in [("enc.png", "enc.png: an encrypted zip member"),
                         ("method.png", "method.png: unsupported zip member (compression method 99"),
                         ("corrupt.png", "corrupt zip member"),
                         ("liar.png", "corrupt zip member"),
                         ("absent.png", "image not found")]:
        with pytest.raises(FairError) as excinfo:
            store.images([name], 8)[0]
        one_line(excinfo, needle, f"{hostile_zip}:{name}")
    with pytest.raises(FairError) as excinfo:
        ZipSource(hostile_zip, in_memory=in_memory).read("enc.png")
    one_line(excinfo, f"{hostile_zip}:ADEChallengeData2016/enc.png: an encrypted zip member")


def test_zip_read_into_memory_is_bounded(hostile_zip, monkeypatch, tmp_path):
    monkeypatch.setattr(images, "MAX_ZIP_IN_MEMORY_BYTES", 1000)
    with pytest.raises(FairError) as excinfo:
        open_zip(hostile_zip, in_memory=True)
    one_line(excinfo, str(hostile_zip), "larger than the 1000 bytes", "MAX_ZIP_IN_MEMORY_BYTES", "image_store: zip")
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    for in_memory in (False, True):
        with pytest.raises(FairError) as excinfo:
            ZipStore(tmp_path / "junk.zip", in_memory=in_memory)
        one_line(excinfo, "corrupt zip", "junk.zip")


# ---------------------------------------------------------------- CIFAR pickles
def memo_bomb(levels=9, width=10) -> bytes:
    """{"data": L9, "labels": []} where L0 = [] and L(k) holds ``width`` references to L(k-1):
    255 bytes that a traversal (numpy.asarray) sees as width**levels elements."""
    out = bytearray(b"\x80\x02}(X\x04\x00\x00\x00data]q\x000")
    for level in range(1, levels + 1):
        out += b"(" + (b"h" + bytes([level - 1])) * width + b"lq" + bytes([level]) + (b"0" if level < levels else b"")
    return bytes(out + b"X\x06\x00\x00\x00labels]u.")


def codec_bomb(steps=30) -> bytes:
    """_codecs.encode(..., "hex") applied ``steps`` times to b"ab": each doubles the bytes."""
    out = bytearray(b"\x80\x02}(X\x04\x00\x00\x00datac_codecs\nencode\nq\x00h\x00X\x02\x00\x00\x00abX\x06\x00\x00\x00latin1\x86R")
    for _ in range(steps):
        out += b"q\x01h\x00h\x01X\x03\x00\x00\x00hex\x86R"
    return bytes(out + b"X\x06\x00\x00\x00labels]u.")


def test_cifar_pickle_bombs_are_refused_quickly(tmp_path):
    (tmp_path / "memo_bomb").write_bytes(memo_bomb())
    assert len(memo_bomb()) < 260
    (tmp_path / "codec_bomb").write_bytes(codec_bomb())
    (tmp_path / "memo_index").write_bytes(b"\x80\x02]r\xff\xff\xff\x7f.")  # LONG_BINPUT 2**31 - 1
    (tmp_path / "opcodes").write_bytes(pickle.dumps({"data": "", "labels": [1] * 300_000}, protocol=2))
    (tmp_path / "shape").write_bytes(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                                     b"J\x00\xe4\x0bT\x85U\x01b\x87R.")  # _reconstruct(ndarray, (10**9,), "b")
    (tmp_path / "cycle").write_bytes(b"\x80\x02]q\x00h\x00a.")  # a list that holds itself
    report = attack(tmp_path, """
from fair_data.cifar10s import read_batch
ATTACKS = [(name, lambda name=name: read_batch(root / name))
           for name in ("memo_bomb", "codec_bomb", "memo_index", "opcodes", "shape", "cycle")]""")
    errors = {label: outcome["error"] for label, outcome in report["results"].items()}
    for label, error in errors.items():
        assert error.startswith(f"{tmp_path / label}: not a CIFAR-10 python batch: "), error
    assert "more than 67108864 elements (the bound MAX_PICKLE_ELEMENTS)" in errors["memo_bomb"]
    assert "_codecs.encode other than (str, 'latin1')" in errors["codec_bomb"]
    assert "memo index 2147483647 reaches the bound of 50000 memo entries (MAX_PICKLE_MEMO)" in errors["memo_index"]
    assert "more than 200000 opcodes (the bound MAX_PICKLE_OPCODES)" in errors["opcodes"]
    assert "_reconstruct with arguments other than (ndarray, (0,), 'b')" in errors["shape"]
    assert "a container that holds itself" in errors["cycle"]
    bomb = report["results"]["memo_bomb"]
    assert bomb["seconds"] < 1 and bomb["peak_mb"] - report["before_mb"] < 100, report


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as the official files are (Python 2 cPickle, protocol 2: SHORT_BINSTRING /
    BINSTRING strings, numpy.core.multiarray._reconstruct, a dtype with its state tuple)."""
    def string(text: bytes) -> bytes:
        return (b"U" + bytes([len(text)]) if len(text) < 256 else b"T" + struct.pack("<i", len(text))) + text

    out = bytearray(b"\x80\x02}q\x01(" + string(b"data") + b"q\x02cnumpy.core.multiarray\n_reconstruct\nq\x03"
                    b"cnumpy\nndarray\nq\x04K\x00\x85" + string(b"b") + b"\x87Rq\x05(K\x01M" + struct.pack("<H", data.shape[0])
                    + b"M\x00\x0c\x86cnumpy\ndtype\nq\x06" + string(b"u1") + b"K\x00K\x01\x87Rq\x07(K\x03" + string(b"|")
                    + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + string(data.tobytes()) + b"tbq\x08")
    out += string(b"labels") + b"q\t]q\n(" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    out += string(b"filenames") + b"q\x0b]q\x0c(" + b"".join(string(f"img_{i}.png".encode()) + b"r" + struct.pack("<I", 13 + i)
                                                               for i in range(len(labels))) + b"eu."
    return bytes(out)


def test_official_batch_layout_is_accepted(tmp_path):
    rng = np.random.default_rng(0)
    data, labels = rng.integers(0, 256, (300, 3072), dtype=np.uint8), [i % 10 for i in range(300)]
    (tmp_path / "data_batch_1").write_bytes(python2_batch(data, labels))
    images_, labels_ = read_batch(tmp_path / "data_batch_1")
    assert np.array_equal(images_.reshape(300, -1), data) and labels_.tolist() == labels
    (tmp_path / "py3").write_bytes(pickle.dumps({"data": data, "labels": labels}, protocol=4))
    assert np.array_equal(read_batch(tmp_path / "py3")[0].reshape(300, -1), data)


def test_bounds_are_documented_module_constants():
    for module, name in [(images, "MAX_IMAGE_PIXELS"), (images, "MAX_FILE_BYTES"), (images, "MAX_ZIP_RATIO"),
                         (images, "MAX_ZIP_IN_MEMORY_BYTES"), (cifar10s, "MAX_PICKLE_OPCODES"),
                         (cifar10s, "MAX_PICKLE_MEMO"), (cifar10s, "MAX_PICKLE_ELEMENTS")]:
        source = open(module.__file__).read()
        assert f'\n{name} = ' in source and isinstance(getattr(module, name), int)
        assert source.split(f"\n{name} = ", 1)[1].split("\n", 1)[1].startswith('"""'), name  # a docstring follows


# ---------------------------------------------------------------- annotation files
@pytest.fixture
def celeba_root(tmp_path):
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    rows = []
    for i in range(1, 5):
        write_jpeg(root / "img_align_celeba" / f"{i:06d}.jpg", i, (12, 12))
        rows.append(f"{i:06d}.jpg " + " ".join("1" if (i + j) % 2 else "-1" for j in range(len(CELEBA_ATTRIBUTES))))
    (root / "list_attr_celeba.txt").write_text(f"4\n{' '.join(CELEBA_ATTRIBUTES)}\n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 0\n000003.jpg 1\n000004.jpg 2\n")
    return root


def celeba_error(root, **params):
    with pytest.raises(FairError) as excinfo:
        CelebA(CelebA.Params(root=root, image_size=8, **params)).load("train", None, None)
    return one_line(excinfo)


def test_celeba_malformed_annotation_files_name_file_and_line(celeba_root):
    assert len(CelebA(CelebA.Params(root=celeba_root, image_size=8)).load("train", None, None)) == 2
    partition, attributes = celeba_root / "list_eval_partition.txt", celeba_root / "list_attr_celeba.txt"
    good_partition, good_attributes = partition.read_text(), attributes.read_text()
    for text, needle in [("000001.jpg 0\nx train\n", "line 2: expected 'file partition'"),
                         ("000001.jpg 0\n000002.jpg 7\n", "line 2: expected 'file partition'"),
                         ("000001.jpg 0 1\n", "line 1: expected 'file partition'")]:
        partition.write_text(text)
        assert f"{partition}: {needle}" in celeba_error(celeba_root)
    partition.write_bytes("000001.jpg 0\ncafé.jpg 1\n".encode("latin-1"))
    assert f"{partition}: line 2: not UTF-8 text" in celeba_error(celeba_root)
    partition.write_text(good_partition)
    lines = good_attributes.splitlines()
    for changed, needle in [(lines[:3] + [lines[3] + " 1"] + lines[4:], "line 4: 41 values, expected 40"),
                            (lines[:4] + [lines[4].replace("-1", "x", 1)] + lines[5:], "line 5: value 'x' of"),
                            (lines[:1], "not a CelebA attribute file")]:
        attributes.write_text("\n".join(changed) + "\n")
        assert f"{attributes}: {needle}" in celeba_error(celeba_root)
    attributes.write_bytes(good_attributes.replace("000003.jpg", "00000\xe9.jpg").encode("latin-1"))
    assert f"{attributes}: line 5: not UTF-8 text" in celeba_error(celeba_root)
    attributes.write_text(good_attributes.replace("Blond_Hair", "Blonde_Hair"))
    message = celeba_error(celeba_root, blond_subset=True)
    assert message.startswith("data.params.blond_subset:") and str(attributes) in message and "Blond_Hair" in message


def test_celebahq_fairface_ade20k_annotation_files(tmp_path):
    hq = tmp_path / "hq"
    (hq / "CelebA-HQ-img").mkdir(parents=True)
    (hq / "CelebAMask-HQ-attribute-anno.txt").write_text("1\nMale Smiling\n0.jpg 1 -1\n")
    (hq / "CelebA-HQ-to-CelebA-mapping.txt").write_bytes("idx orig_idx orig_file\n0 x caf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(FairError) as excinfo:
        CelebAHQ(CelebAHQ.Params(root=hq)).load("train", None, None)
    one_line(excinfo, "CelebA-HQ-to-CelebA-mapping.txt: line 2: not UTF-8 text")

    ff = tmp_path / "fairface"
    ff.mkdir()
    labels = ff / "fairface_label_train.csv"
    header = "file,age,gender,race,service_test\n"
    for text, needle in [(header + "train/1.jpg,20-29,Male,White\n", "line 2: 4 columns, expected 5"),
                         (header + "train/1.jpg,20-29,Male,White,True,extra\n", "line 2: 6 columns, expected 5"),
                         (header + "train/1.jpg,20-29,Male,White,True\ntrain/2.jpg,20-29,Male,Martian,True\n",
                          "line 3: unknown race 'Martian'"),
                         (header + "train/1.jpg,20-29,Male,White,True\ntrain/" + "x" * 200_000 + ".jpg,20-29,Male,White,True\n",
                          "line 3: not a CSV row: field larger than field limit")]:
        labels.write_text(text)
        with pytest.raises(FairError) as excinfo:
            FairFace(FairFace.Params(root=ff)).load("train", None, None)
        one_line(excinfo, f"{labels}: {needle}")
    labels.write_bytes((header + "train/caf\xe9.jpg,20-29,Male,White,True\n").encode("latin-1"))
    with pytest.raises(FairError) as excinfo:
        FairFace(FairFace.Params(root=ff)).load("train", None, None)
    one_line(excinfo, f"{labels}: line 2: not UTF-8 text")
    labels.write_text(header + "".join(f"../../secret{i}.jpg,20-29,Male,White,True\n" for i in range(20)))
    (ff / "train").mkdir()
    with pytest.raises(FairError) as excinfo:
        FairFace(FairFace.Params(root=ff, image_store="folder")).load("train", None, None)
    one_line(excinfo, "'../../secret", "is not a relative path inside")

    ade = tmp_path / "ade" / "ADEChallengeData2016"
    for folder in ("images/training", "annotations/training"):
        (ade / folder).mkdir(parents=True)
    write_jpeg(ade / "images/training/ADE_train_00000001.jpg", 0, (8, 8))
    Image.fromarray(np.ones((8, 8), np.uint8)).save(ade / "annotations/training/ADE_train_00000001.png")
    scenes = ade / "sceneCategories.txt"
    for data, needle in [("ADE_train_00000001 caf\xe9".encode("latin-1"), "line 1: not UTF-8 text"),
                         (b"ADE_train_00000001 bedroom extra\n", "line 1: expected 'image scene'")]:
        scenes.write_bytes(data)
        with pytest.raises(FairError) as excinfo:
            ADE20K(ADE20K.Params(root=ade.parent)).read_split("train")
        one_line(excinfo, f"{scenes}: {needle}")
        with zipfile.ZipFile(tmp_path / "ADEChallengeData2016.zip", "w") as archive:
            for path in sorted(ade.rglob("*")):
                archive.write(path, path.relative_to(ade.parent).as_posix())
        with pytest.raises(FairError) as excinfo:
            ADE20K(ADE20K.Params(root=tmp_path, image_store="zip")).read_split("train")
        one_line(excinfo, f"{tmp_path / 'ADEChallengeData2016.zip'}:ADEChallengeData2016/sceneCategories.txt: {needle}")


def test_utkface_names_with_absurd_numbers_are_skipped_not_a_traceback(tmp_path):
    root = tmp_path / "UTKFace"
    root.mkdir()
    for i in range(10):
        write_jpeg(root / f"25_{i % 2}_0_2017{i:04d}.jpg", i, (8, 8))
    write_jpeg(root / f"{'9' * 30}_0_0_20170101.jpg", 99, (8, 8))  # an age that overflowed int64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = UTKFace(UTKFace.Params(root=root, image_size=8)).load("train", None, None)
    assert len(train) == 8 and any("99999" in str(w.message) for w in caught)


def test_cifar_batches_folder_errors_are_one_line(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "test_batch").write_bytes(b"\x80\x02K\x01")  # truncated: no STOP
    with pytest.raises(FairError) as excinfo:
        CIFAR10S(CIFAR10S.Params(root=str(root))).load("test", None, None)
    one_line(excinfo, "test_batch: not a CIFAR-10 python batch")
    (root / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((0, 3072), np.uint8), "labels": []}, protocol=4))
    with pytest.raises(FairError) as excinfo:
        CIFAR10S(CIFAR10S.Params(root=str(root))).load("test", None, None)
    one_line(excinfo, "is not CIFAR-10 (0 images, 0 labels)")
