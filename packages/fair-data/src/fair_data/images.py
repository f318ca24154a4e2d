"""Images decoded lazily (in DataLoader workers) from a folder or a zip, with errors naming the path.

Face datasets are distributed as a folder of JPEGs or as the zip that holds that folder
(``img_align_celeba.zip``, ``fairface-img-margin025-trainval.zip``). :func:`open_store` gives one
interface over both: ``names()`` lists the image files (relative names), ``images(names, size)``
is a lazy sequence of tensors. ``store="zip_in_memory"`` reads the whole zip once, so workers
decode from memory instead of opening hundreds of thousands of small files.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from fair_core import FairError

COLOR_VALUES = ("colour", "grayscale")  # value names of a colour-vs-grayscale protected attribute
LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma weights (PIL's "L" mode)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # mean, std of ImageNet-pretrained backbones
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ImageStoreKind = Literal["auto", "folder", "zip", "zip_in_memory"]
STORE_HELP = ("where images are read from: auto (the folder, else its zip), folder, zip (read from disk per image) "
              "or zip_in_memory (the whole zip read once; workers decode from memory)")


def to_tensor(image: Image.Image, size: int) -> Tensor:
    """A PIL image as a float ``(3, size, size)`` tensor in [0, 1]: shorter side resized, centre crop.

    A JPEG not yet decoded is decoded at the smallest power-of-two scale still at least ``size``
    on both sides (libjpeg's DCT scaling), so small training sizes do not pay for full decodes."""
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
    """Decode ``source`` (a path or a file object) with errors that name ``where``."""
    try:
        with Image.open(source) as image:
            return to_tensor(image, size)
    except FileNotFoundError:
        raise FairError(f"image not found: {where}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise FairError(f"corrupt image {where}: {exc}") from None


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


class ZipImages:
    """``images[i]``: the member ``members[i]`` of a zip, decoded like :class:`ImageFiles`.

    With ``data`` (the zip's bytes) images come from memory; otherwise each process opens the
    zip file once. The open archive is never pickled: workers open their own."""

    def __init__(self, path: Path, members: Sequence[str], size: int, data: bytes | None = None):
        self.path, self.members, self.size, self.data = path, list(members), size, data
        self._archive: zipfile.ZipFile | None = None

    def __len__(self) -> int:
        return len(self.members)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_archive": None}

    def _open(self) -> zipfile.ZipFile:
        if self._archive is None:
            self._archive = zipfile.ZipFile(io.BytesIO(self.data) if self.data is not None else self.path)
        return self._archive

    def __getitem__(self, i: int) -> Tensor:
        member = self.members[i]
        where = f"{self.path}:{member}"
        try:
            raw = self._open().read(member)
        except KeyError:
            raise FairError(f"image not found: {where}") from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise FairError(f"corrupt zip {self.path}: {exc}") from None
        return decode(io.BytesIO(raw), where, self.size)


class FolderStore:
    """Images in a folder (searched recursively)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def names(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def images(self, names: Sequence[str], size: int) -> ImageFiles:
        return ImageFiles([self.folder / name for name in names], size)


class ZipStore:
    """Images in a zip. Names are relative to ``inner`` (the folder the zip wraps) when every
    image sits under it, as in ``img_align_celeba.zip``, so they match the folder's names."""

    def __init__(self, path: Path, inner: str = "", in_memory: bool = False):
        self.path = path
        try:
            self.data = path.read_bytes() if in_memory else None
            with zipfile.ZipFile(io.BytesIO(self.data) if in_memory else path) as archive:
                members = [m for m in archive.namelist() if m.lower().endswith(IMAGE_SUFFIXES)]
        except (zipfile.BadZipFile, OSError) as exc:
            raise FairError(f"corrupt zip {path}: {exc}") from None
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
