"""A synthetic biased image dataset, generated in memory from a seed (no download).

The class is carried by the *shape* drawn on each image (square, circle, triangle, cross, ...).
The protected attribute is *colour vs grayscale*, as in CIFAR-10S (Wang et al., CVPR 2020):

* In colour images the shape differs from its background mostly by hue: it is easy to see.
  Shape and background are close in luminance, so in a grayscale image the shape is faint:
  the grayscale group is harder, as under-exposed or low-contrast faces are in real data.
* Training split: the protected attribute is spuriously correlated with the class at
  ``bias_ratio``: ``P(grayscale | y) = bias_ratio`` for even classes and ``1 - bias_ratio`` for
  odd classes (the CIFAR-10S skew). Plain training learns "grayscale -> even class" and fails on
  grayscale images of odd classes.
* Validation and test splits are balanced: every (class, colour) cell has the same size.

Everything is generated with ``torch`` from ``seed`` (one generator per split), so a split is
the same on every machine and every call.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fair_core import DatasetBuilder, Preprocessing, SplitData

from .images import COLOR_VALUES, LUMA, to_grayscale

SHAPES = ("square", "circle", "triangle", "cross", "diamond", "ring")


class SyntheticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_classes: int = Field(2, ge=2, le=len(SHAPES), description=f"number of shape classes ({', '.join(SHAPES)})")
    bias_ratio: float = Field(0.95, ge=0.5, le=1.0, description="P(grayscale | even class) in the training split")
    image_size: int = Field(32, ge=16, le=128)
    train_size: int = Field(4000, ge=8)
    val_size: int = Field(1000, ge=8)
    test_size: int = Field(2000, ge=8)
    luminance_contrast: tuple[float, float] = Field(
        (0.04, 0.2), description="range of |luminance(shape) - luminance(background)|"
    )
    chroma: float = Field(0.35, ge=0, le=0.5, description="distance of each colour from gray, in the isoluminant plane")
    noise: float = Field(0.04, ge=0, le=0.5, description="std of the Gaussian pixel noise")
    seed: int = Field(0, description="seed of the data generator (independent of train.seed)")


def shape_masks(shape: Tensor, size: int, generator: torch.Generator, radius: tuple[float, float] = (0.22, 0.12)) -> Tensor:
    """Boolean masks ``(N, H, W)`` of each sample's shape (codes into ``SHAPES``) at a random
    position, with a random radius of ``size * (radius[0] + radius[1] * U(0, 1))``."""
    n = shape.numel()
    placement = torch.rand(n, generator=generator), torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    return masks_at(shape, size, torch.stack(placement, 1), radius)


def masks_at(shape: Tensor, size: int, placement: Tensor, radius: tuple[float, float] = (0.22, 0.12)) -> Tensor:
    """:func:`shape_masks` for given uniform draws ``placement`` ``(N, 3)``: radius, x, y."""
    n = shape.numel()
    radius = size * (radius[0] + radius[1] * placement[:, 0])
    margin = radius + 1
    cx = margin + (size - 2 * margin) * placement[:, 1]
    cy = margin + (size - 2 * margin) * placement[:, 2]
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dx = (coords.view(1, 1, -1) - cx.view(-1, 1, 1)) / radius.view(-1, 1, 1)
    dy = (coords.view(1, -1, 1) - cy.view(-1, 1, 1)) / radius.view(-1, 1, 1)
    masks = {
        "square": (dx.abs() < 0.8) & (dy.abs() < 0.8),
        "circle": dx**2 + dy**2 < 1.0,
        "triangle": (dy < 0.8) & (dy > -0.9) & (dx.abs() < (dy + 0.9) * 0.55),
        "cross": ((dx.abs() < 0.3) & (dy.abs() < 1.0)) | ((dy.abs() < 0.3) & (dx.abs() < 1.0)),
        "diamond": dx.abs() + dy.abs() < 1.0,
        "ring": (dx**2 + dy**2 < 1.0) & (dx**2 + dy**2 > 0.4),
    }
    out = torch.zeros(n, size, size, dtype=torch.bool)
    for code, name in enumerate(SHAPES):
        chosen = shape == code
        out[chosen] = masks[name][chosen]
    return out


APPEARANCE_DRAWS = 9  # per image, before the pixel noise: hue (3), luminance, contrast sign and size, placement (3)


def draw_appearance(n: int, size: int, generator: torch.Generator) -> Tensor:
    """Everything random about ``n`` images but their shape and colourfulness, flattened to
    ``(n, 9 + 3 * size * size)``: the draws of :func:`render`, in its order."""
    u = torch.randn(n, 3, generator=generator)
    scalars = [torch.rand(n, 1, generator=generator) for _ in range(3)]  # luminance, contrast sign, contrast size
    placement = [torch.rand(n, 1, generator=generator) for _ in range(3)]  # radius, x, y
    noise = torch.randn(n, 3 * size * size, generator=generator)
    return torch.cat([u, *scalars, *placement, noise], 1)


def render_appearance(shape: Tensor, colour: Tensor, draws: Tensor, params: SyntheticParams) -> Tensor:
    """Images ``(N, 3, S, S)`` in [0, 1] of the given shape codes and appearance draws
    (:func:`draw_appearance`); ``colour`` in [0, 1] blends grayscale (0) into colour (1).

    Background and shape colours are ``L + a * u`` and ``L + delta - a * u`` with ``u`` a random
    unit vector orthogonal to the luminance weights: opposite hues (an easy edge in colour), but a
    luminance difference of only ``delta`` (a faint edge once converted to grayscale)."""
    n, size = shape.numel(), params.image_size
    u = draws[:, :3]
    u = u - (u @ LUMA).unsqueeze(1) * LUMA / (LUMA @ LUMA)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-6)
    luminance = 0.35 + 0.3 * draws[:, 3:4]
    lo, hi = params.luminance_contrast
    sign = torch.where(draws[:, 4:5] < 0.5, -1.0, 1.0)
    delta = sign * (lo + (hi - lo) * draws[:, 5:6])
    background = (luminance + params.chroma * u).clamp(0, 1)
    foreground = (luminance + delta - params.chroma * u).clamp(0, 1)
    mask = masks_at(shape, size, draws[:, 6:APPEARANCE_DRAWS]).unsqueeze(1)
    images = torch.where(mask, foreground.view(n, 3, 1, 1), background.view(n, 3, 1, 1))
    images = images + params.noise * draws[:, APPEARANCE_DRAWS:].reshape(n, 3, size, size)
    weight = colour.float().view(n, 1, 1, 1)
    images = torch.lerp(to_grayscale(images), images, weight)  # exactly either end at weights 0 and 1
    return images.clamp(0, 1).contiguous()


def render(shape: Tensor, grayscale: Tensor, params: SyntheticParams, generator: torch.Generator) -> Tensor:
    """Images ``(N, 3, S, S)`` in [0, 1] for the given shape codes and grayscale flags
    (:func:`render_appearance` of fresh draws)."""
    draws = draw_appearance(shape.numel(), params.image_size, generator)
    return render_appearance(shape, 1 - grayscale.float(), draws, params)


class Synthetic(DatasetBuilder):
    """Shapes on coloured backgrounds; colour vs grayscale spuriously tied to the class in training."""

    Params = SyntheticParams
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_target = "shape"
    default_sensitive = ("color",)
    description = "in-memory biased shapes: colour vs grayscale skew (no download)"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.image_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def read_split(self, split: str) -> SplitData:
        p = self.params
        generator = torch.Generator().manual_seed(p.seed * 3 + self.splits.index(split))
        if split == "train":
            n = p.train_size
            shape = torch.arange(n) % p.num_classes
            shape = shape[torch.randperm(n, generator=generator)]
            p_gray = torch.where(shape % 2 == 0, p.bias_ratio, 1.0 - p.bias_ratio)
            grayscale = (torch.rand(n, generator=generator) < p_gray).long()
        else:  # balanced cells
            n = p.val_size if split == "val" else p.test_size
            cell = torch.arange(n) % (2 * p.num_classes)
            cell = cell[torch.randperm(n, generator=generator)]
            shape, grayscale = cell // 2, cell % 2
        images = render(shape, grayscale, p, generator)
        return SplitData(
            images=images,
            attributes={"shape": shape, "color": grayscale},
            values={"shape": SHAPES[: p.num_classes], "color": COLOR_VALUES},
        )
