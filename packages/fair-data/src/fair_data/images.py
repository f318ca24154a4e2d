"""Images decoded lazily (in DataLoader workers) from a folder or a zip, with errors naming the path.

Face datasets are distributed as a folder of JPEGs or as the zip that holds that folder
(``img_align_celeba.zip``, ``fairface-img-margin025-trainval.zip``). :func:`open_store` gives one
interface over both: ``names()`` lists the image files (relative names), ``images(names, size)``
is a lazy sequence of tensors. ``store="zip_in_memory"`` reads the whole zip once, so workers
decode from memory instead of opening hundreds of thousands of small files.

Dataset files are untrusted input: every reader here checks an explicit bound before it
allocates (the pixels an image header declares, the size a zip member declares and its
compression ratio, the size of an archive read into memory, the size of a text file), and
reports a broken or hostile file as one :class:`~fair_core.FairError` line naming the file and
the bound. The bounds are the module constants below.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from fair_core import FairError
from fair_core.untrusted import read_bounded

COLOR_VALUES = ("colour", "grayscale")  # value names of a colour-vs-grayscale protected attribute
LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma weights (PIL's "L" mode)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # mean, std of ImageNet-pretrained backbones
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ImageStoreKind = Literal["auto", "folder", "zip", "zip_in_memory"]
STORE_HELP = ("where images are read from: auto (the folder, else its zip), folder, zip (read from disk per image) "
              "or zip_in_memory (the whole zip read once; workers decode from memory)")

MiB, GiB = 2**20, 2**30

MAX_IMAGE_PIXELS = 64_000_000
"""Most pixels (width x height, from the header, before decoding) of an image fair decodes: 8000 x 8000,
far above every image of the supported datasets (CelebA-HQ's are 1 Mpx, ADE20K's a few Mpx), while one
decode stays under 1 GB (192 MB as RGB bytes, 768 MB as a float tensor). The environment variable
``FAIR_MAX_IMAGE_PIXELS`` (see :data:`PIXELS_ENV`) replaces it, for datasets of larger images."""
PIXELS_ENV = "FAIR_MAX_IMAGE_PIXELS"

MAX_FILE_BYTES = 256 * MiB
"""Largest file fair reads whole into memory: one zip member (a declared ``file_size``), an ADE20K file,
a label or attribute file. The largest of the supported datasets is list_attr_celeba.txt (26 MB); images
are 10 kB to a few MB."""

MAX_ZIP_RATIO = 200
"""Largest ``file_size / compress_size`` of a zip member above :data:`ZIP_RATIO_SLACK`: JPEG and PNG do
not compress (about 1:1) and text about 10:1, while deflate reaches 1032:1 on crafted input (a zip bomb)."""

ZIP_RATIO_SLACK = 1 * MiB
"""Size up to which a zip member may have any compression ratio (small, very regular files)."""

MAX_ZIP_IN_MEMORY_BYTES = 4 * GiB
"""Largest archive ``image_store: zip_in_memory`` reads into memory: the supported datasets' zips are
0.5 to 3 GB; a larger one is read member by member from disk with ``image_store: zip``."""


def max_image_pixels() -> int:
    """:data:`MAX_IMAGE_PIXELS`, or the value of the environment variable :data:`PIXELS_ENV`."""
    value = os.environ.get(PIXELS_ENV)
    if value is None or not value.strip():
        return MAX_IMAGE_PIXELS
    try:
        bound = int(float(value))
    except (ValueError, OverflowError):
        bound = 0
    if bound < 1:
        raise FairError(f"{PIXELS_ENV}={value[:40]!r}: expected a positive number of pixels")
    return bound


def pixel_bound_error(where: str, pixels: str, bound: int) -> FairError:
    return FairError(f"{where}: image of {pixels} pixels exceeds the bound of {bound} pixels "
                     f"(fair_data.images.MAX_IMAGE_PIXELS; set {PIXELS_ENV} to change it)")


def check_pixels(image: Image.Image, where: str, bound: int | None = None) -> None:
    """A :class:`FairError` when ``image`` (its header's size) is empty or has more than ``bound``
    pixels (default :func:`max_image_pixels`)."""
    bound = max_image_pixels() if bound is None else bound
    width, height = image.size
    if width * height > bound:
        raise pixel_bound_error(where, f"{width}x{height}", bound)
    if width < 1 or height < 1:
        raise FairError(f"corrupt image {where}: {width}x{height} pixels")


def _unidentified(source, where: str) -> FairError:
    try:
        empty = (isinstance(source, io.BytesIO) and not source.getbuffer().nbytes) or (
            isinstance(source, (str, Path)) and os.path.getsize(source) == 0)
    except OSError:
        empty = False
    return FairError(f"corrupt image {where}: {'an empty file' if empty else 'not an image file PIL recognises'}")


def open_image(source, where: str) -> Image.Image:
    """``Image.open(source)`` (a path or a file object), its header's size checked against
    :func:`max_image_pixels` before anything is decoded; every failure is a :class:`FairError`
    naming ``where``. PIL's own decompression-bomb limit follows a raised bound."""
    bound = max_image_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < bound:
        Image.MAX_IMAGE_PIXELS = bound  # the user raised the bound (PIL errors at twice its limit)
    if isinstance(source, (str, Path)):
        try:
            mode = os.stat(source).st_mode
        except FileNotFoundError:
            raise FairError(f"image not found: {where}") from None
        except OSError as exc:
            raise FairError(f"unreadable image {where}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(mode):
            raise FairError(f"unreadable image {where}: not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_pixels decides
            image = Image.open(source)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise pixel_bound_error(where, found.group(1) if found else "more", bound) from None
    except FileNotFoundError:
        raise FairError(f"image not found: {where}") from None
    except UnidentifiedImageError:
        raise _unidentified(source, where) from None
    except Exception as exc:  # PIL's format plugins raise many types on corrupt headers
        raise FairError(f"corrupt image {where}: {one_line(exc)}") from None
    try:
        check_pixels(image, where, bound)
    except FairError:
        image.close()
        raise
    return image


def quote(text: str, limit: int = 80) -> str:
    """``repr(text)``, shortened to about ``limit`` characters, for error messages quoting input."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f" ... ({len(text)} characters)"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc``'s message on one line, at most ``limit`` characters (with its type when it has none)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def check_member(info: zipfile.ZipInfo, where: str) -> None:
    """A :class:`FairError` for a zip member fair will not read: encrypted, declaring more than
    :data:`MAX_FILE_BYTES`, or compressed beyond :data:`MAX_ZIP_RATIO` (a zip bomb)."""
    if info.flag_bits & 0x1:
        raise FairError(f"{where}: an encrypted zip member; fair reads only unencrypted archives")
    if info.file_size > MAX_FILE_BYTES:
        raise FairError(f"{where}: zip member of {info.file_size} bytes exceeds the bound of {MAX_FILE_BYTES} bytes "
                        f"for one file (fair_data.images.MAX_FILE_BYTES)")
    if info.file_size > MAX_ZIP_RATIO * info.compress_size + ZIP_RATIO_SLACK:
        raise FairError(f"{where}: zip member of {info.file_size} bytes compressed to {info.compress_size} exceeds "
                        f"the compression ratio bound of {MAX_ZIP_RATIO}:1 beyond {ZIP_RATIO_SLACK} bytes "
                        f"(fair_data.images.MAX_ZIP_RATIO; a zip bomb?)")


ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, RuntimeError,
              NotImplementedError, struct.error)


def read_member(archive: zipfile.ZipFile, name: str, archive_path: Path | str, missing: str = "file not found") -> bytes:
    """The bytes of member ``name``, checked by :func:`check_member` first; a missing, encrypted,
    oversized, unsupported or corrupt member is one :class:`FairError` line naming ``archive:name``."""
    where = f"{archive_path}:{name}"
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise FairError(f"{missing}: {where}") from None
    check_member(info, where)
    try:
        with archive.open(info) as handle:
            data = handle.read(info.file_size + 1)  # the reader stops at the declared size
    except NotImplementedError as exc:
        raise FairError(f"{where}: unsupported zip member (compression method {info.compress_type}: "
                        f"{one_line(exc)})") from None
    except ZIP_ERRORS as exc:
        kind = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
        raise FairError(f"corrupt zip member {where}: {kind}: {one_line(exc)}") from None
    if len(data) != info.file_size:
        raise FairError(f"corrupt zip member {where}: {len(data)} bytes, the archive declares {info.file_size}")
    return data


def open_zip(path: Path, in_memory: bool) -> tuple[zipfile.ZipFile, bytes | None]:
    """The archive at ``path`` (read whole into memory when ``in_memory``, up to
    :data:`MAX_ZIP_IN_MEMORY_BYTES`), with its bytes; a corrupt archive is a :class:`FairError`."""
    data = None
    try:
        if in_memory:
            data = read_bytes(path, "zip", MAX_ZIP_IN_MEMORY_BYTES, "MAX_ZIP_IN_MEMORY_BYTES",
                              hint="; use image_store: zip to read it from disk")
        return zipfile.ZipFile(io.BytesIO(data) if data is not None else path), data
    except FairError:
        raise
    except ZIP_ERRORS as exc:
        raise FairError(f"corrupt zip {path}: {type(exc).__name__}: {one_line(exc)}") from None


def read_bytes(path: Path, what: str, bound: int = MAX_FILE_BYTES, bound_name: str = "MAX_FILE_BYTES",
               hint: str = "") -> bytes:
    """The bytes of the regular file ``path`` (:func:`fair_core.untrusted.read_bounded`: a FIFO or
    a file above ``bound`` bytes is one line naming it and ``fair_data.images.<bound_name>``)."""
    try:
        return read_bounded(path, bound, f"fair_data.images.{bound_name}", what)
    except FairError as exc:
        if hint and bound_name in str(exc):
            raise FairError(f"{exc}{hint}") from None
        raise


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped); other bytes are one line naming the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FairError(f"{where}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                        f"save the file as UTF-8") from None


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (at most :data:`MAX_FILE_BYTES`), errors naming it."""
    if not path.exists() and not path.is_symlink():
        raise FairError(f"data.params.root: {what} not found: {path}")
    return decode_text(read_bytes(path, what), str(path))


def to_tensor(image: Image.Image, size: int, where: str = "image") -> Tensor:
    """A PIL image as a float ``(3, size, size)`` tensor in [0, 1]: shorter side resized, centre crop.

    A JPEG not yet decoded is decoded at the smallest power-of-two scale still at least ``size``
    on both sides (libjpeg's DCT scaling), so small training sizes do not pay for full decodes.
    The image's size and the resized size are checked against :func:`max_image_pixels` first
    (an image 1 pixel high would otherwise be resized to ``size`` x an enormous width)."""
    bound = max_image_pixels()
    check_pixels(image, where, bound)
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    if w * h > bound:
        raise FairError(f"{where}: image of {image.width}x{image.height} pixels resized to {w}x{h} for image_size "
                        f"{size} exceeds the bound of {bound} pixels (fair_data.images.MAX_IMAGE_PIXELS; "
                        f"set {PIXELS_ENV} to change it)")
    if image.format == "JPEG":
        image.draft("RGB", (size, size))
    image = image.convert("RGB")
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0


def to_grayscale(images: Tensor) -> Tensor:
    """Images ``(..., 3, H, W)`` as their luma copied to three channels."""
    return (images * LUMA.view(3, 1, 1)).sum(-3, keepdim=True).expand_as(images)


def smooth_patterns(n: int, size: int, generator: torch.Generator, grid: int = 5) -> Tensor:
    """``n`` smooth random colour patterns ``(n, 3, size, size)`` of unit RMS: Gaussian noise on a
    ``grid x grid`` lattice, upsampled bicubically (for the synthetic datasets' textures)."""
    coarse = torch.randn(n, 3, grid, grid, generator=generator)
    patterns = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return patterns / patterns.pow(2).mean((1, 2, 3), keepdim=True).sqrt()


def decode(source, where: str, size: int) -> Tensor:
    """Decode ``source`` (a path or a file object) with errors that name ``where``; the pixel
    bound is checked on the header (:func:`open_image`) before decoding."""
    with open_image(source, where) as image:
        try:
            return to_tensor(image, size, where)
        except FairError:
            raise
        except Exception as exc:  # PIL's decoders raise OSError, ValueError, struct.error, ... on corrupt data
            raise FairError(f"corrupt image {where}: {one_line(exc)}") from None


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`FairError` naming it."""
    if not path.exists():
        raise FairError(f"data.params.root: {what} not found: {path}")
    return path


class ImageFiles:
    """``images[i]``: the file ``paths[i]`` as a float ``(3, size, size)`` tensor in [0, 1]."""

    def __init__(self, paths: Sequence[Path], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        return decode(self.paths[i], str(self.paths[i]), self.size)


class ZipReader:
    """A zip read from ``path``, or from ``data`` (its bytes, in memory): each process opens its
    own handle (a forked DataLoader worker reopens it); an open archive is never pickled."""

    path: Path
    data: bytes | None
    _archive: zipfile.ZipFile | None = None
    _pid: int = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_archive": None}

    def _read_archive(self, path: Path, in_memory: bool) -> list[str]:
        """Open the zip at ``path`` in this process (its bytes read into ``data`` with ``in_memory``,
        at most ``MAX_ZIP_IN_MEMORY_BYTES``) and return its member names."""
        self.path = path
        self._archive, self.data = open_zip(path, in_memory)
        self._pid = os.getpid()
        return self._archive.namelist()

    def _open(self) -> zipfile.ZipFile:
        if self._archive is None or self._pid != os.getpid():  # a forked worker opens its own handle
            try:
                self._archive = zipfile.ZipFile(io.BytesIO(self.data) if self.data is not None else self.path)
            except ZIP_ERRORS as exc:
                raise FairError(f"corrupt zip {self.path}: {type(exc).__name__}: {one_line(exc)}") from None
            self._pid = os.getpid()
        return self._archive


class ZipImages(ZipReader):
    """``images[i]``: the member ``members[i]`` of a zip, decoded like :class:`ImageFiles`.

    With ``data`` (the zip's bytes) images come from memory; otherwise each process opens the
    zip file once. The open archive is never pickled: workers open their own."""

    def __init__(self, path: Path, members: Sequence[str], size: int, data: bytes | None = None):
        self.path, self.members, self.size, self.data = path, list(members), size, data
        self._archive: zipfile.ZipFile | None = None
        self._pid = 0

    def __len__(self) -> int:
        return len(self.members)


    def __getitem__(self, i: int) -> Tensor:
        member = self.members[i]
        raw = read_member(self._open(), member, self.path, missing="image not found")
        return decode(io.BytesIO(raw), f"{self.path}:{member}", self.size)


class FolderStore:
    """Images in a folder (searched recursively)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def names(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def images(self, names: Sequence[str], size: int) -> ImageFiles:
        """The images ``names`` (relative to the folder; names from a label file that leave it,
        absolute or with ``..``, are refused)."""
        outside = [n for n in names if n.startswith("/") or ".." in n.split("/")]
        if outside:
            raise FairError(f"image name {outside[0]!r} is not a relative path inside {self.folder} "
                            f"({len(outside)} such names)")
        return ImageFiles([self.folder / name for name in names], size)


class ZipStore:
    """Images in a zip. Names are relative to ``inner`` (the folder the zip wraps) when every
    image sits under it, as in ``img_align_celeba.zip``, so they match the folder's names."""

    def __init__(self, path: Path, inner: str = "", in_memory: bool = False):
        self.path = path
        archive, self.data = open_zip(path, in_memory)
        with archive:
            members = [m for m in archive.namelist() if m.lower().endswith(IMAGE_SUFFIXES)]
        prefix = f"{inner.strip('/')}/" if inner else ""
        self.prefix = prefix if prefix and members and all(m.startswith(prefix) for m in members) else ""
        self._members = members

    def names(self) -> list[str]:
        return sorted(m[len(self.prefix):] for m in self._members)

    def images(self, names: Sequence[str], size: int) -> ZipImages:
        return ZipImages(self.path, [self.prefix + name for name in names], size, self.data)


def open_store(folder: Path, zip_path: Path, kind: ImageStoreKind = "auto") -> FolderStore | ZipStore:
    """The images of ``folder`` or of ``zip_path`` (the zip that holds it), as ``kind`` asks."""
    if kind == "folder" or (kind == "auto" and folder.is_dir()):
        return FolderStore(require(folder, "image folder"))
    if kind == "auto" and not zip_path.exists():
        raise FairError(f"data.params.root: image folder not found: {folder} (nor its zip {zip_path.name})")
    return ZipStore(require(zip_path, "image zip"), inner=folder.name, in_memory=kind == "zip_in_memory")
