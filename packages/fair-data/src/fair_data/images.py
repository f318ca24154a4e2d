"""Images read lazily from files (in DataLoader workers), with clear errors naming the path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from fair_core import FairError


class ImageFiles:
    """``images[i]``: the file ``paths[i]`` as a float ``(3, size, size)`` tensor in [0, 1], resized
    (shorter side) and centre-cropped to ``size``."""

    def __init__(self, paths: Sequence[Path], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        path = self.paths[i]
        try:
            with Image.open(path) as image:
                return to_tensor(image, self.size)
        except FileNotFoundError:
            raise FairError(f"image not found: {path}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise FairError(f"corrupt image {path}: {exc}") from None


def to_tensor(image: Image.Image, size: int) -> Tensor:
    """A PIL image as a float ``(3, size, size)`` tensor in [0, 1]: shorter side resized, centre crop."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`FairError` naming it."""
    if not path.exists():
        raise FairError(f"data.params.root: {what} not found: {path}")
    return path
