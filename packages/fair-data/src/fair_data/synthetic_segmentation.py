"""Synthetic scenes for the segmentation task: shapes on textured backgrounds, some classes rare.

Each image is a textured background with ``shapes_per_image`` shapes painted over it (later ones
occlude earlier ones), each a textured colour blob. The mask gives every pixel its class:
``background`` or the shape's (square, circle, triangle, cross, diamond, ring); with
``ignore_boundary`` the one-pixel outline around every shape is unlabelled (the ignore index 255),
as VOC and ADE20K annotations leave object boundaries.

* Class imbalance: in the training split each shape is a rare class (``rare_classes``, default
  diamond and ring, look-alikes of the common square and circle) with weight
  ``rare_frequency`` against 1 for the others. Validation and test draw every shape class
  alike. Plain per-pixel cross-entropy sees few rare pixels and confuses the rare classes with
  their common look-alikes: their accuracy falls well below the common classes' and mAcc well
  below aAcc (which the background dominates), the class-fairness problem ZUT addresses.
* An optional image-level protected attribute ``lighting`` (``day`` / ``night``): night images are
  darker with more noise; ``night_share`` of the training images are night (half of the
  evaluation images), so per-group mIoU can be compared too.

Generated with ``torch`` from ``seed`` (one generator per split): the same data on every machine.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from fair_core import DatasetBuilder, Preprocessing, SplitData

from .images import smooth_patterns
from .synthetic import SHAPES, shape_masks

CLASSES = ("background", *SHAPES)
LIGHTING = ("day", "night")
IGNORE_INDEX = 255


class SyntheticSegmentationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = Field(32, ge=16, le=256)
    train_size: int = Field(800, ge=4)
    val_size: int = Field(100, ge=4)
    test_size: int = Field(200, ge=4)
    shapes_per_image: int = Field(2, ge=1, le=8)
    rare_classes: tuple[str, ...] = Field(("diamond", "ring"), description=f"shape classes made rare in training ({', '.join(SHAPES)})")
    rare_frequency: float = Field(0.1, gt=0, le=1, description="weight of a rare class when drawing a shape in training (others: 1)")
    night_share: float = Field(0.2, ge=0, le=1, description="share of night images in training (evaluation: half)")
    ignore_boundary: bool = Field(True, description="label the one-pixel outline of each shape with the ignore index")
    noise: float = Field(0.04, ge=0, le=0.5, description="std of the pixel noise (doubled at night)")
    seed: int = Field(0, description="seed of the data generator (independent of train.seed)")

    @field_validator("rare_classes")
    @classmethod
    def _known_shapes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shape {unknown[0]!r}; allowed: {', '.join(SHAPES)}")
        return value


def _outline(mask: Tensor) -> Tensor:
    """The pixels just outside ``mask`` ``(N, H, W)``: not in it, with a 4-neighbour in it."""
    m = F.pad(mask.float().unsqueeze(1), (1, 1, 1, 1))
    neighbour = (m[..., :-2, 1:-1] + m[..., 2:, 1:-1] + m[..., 1:-1, :-2] + m[..., 1:-1, 2:]).squeeze(1) > 0
    return neighbour & ~mask


class SyntheticSegmentation(DatasetBuilder):
    """Shapes on textured backgrounds with rare classes in training (segmentation task)."""

    Params = SyntheticSegmentationParams
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_target = None
    default_sensitive = ()
    tasks: ClassVar[tuple[str, ...]] = ("segmentation",)
    description = "in-memory scenes of shapes, rare classes and night images in training (segmentation)"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.image_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def pair_transform(self, train: bool):
        """Training: a random horizontal flip of image and mask together."""
        if not train:
            return None

        def flip(image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
            if torch.rand(()) < 0.5:
                return image.flip(-1), mask.flip(-1)
            return image, mask

        return flip

    def read_split(self, split: str) -> SplitData:
        p = self.params
        generator = torch.Generator().manual_seed(p.seed * 3 + self.splits.index(split))
        n = {"train": p.train_size, "val": p.val_size, "test": p.test_size}[split]
        size = p.image_size
        weights = torch.ones(len(SHAPES))
        if split == "train":
            for name in p.rare_classes:
                weights[SHAPES.index(name)] = p.rare_frequency
            night = (torch.rand(n, generator=generator) < p.night_share).long()
        else:
            night = (torch.arange(n) % 2)[torch.randperm(n, generator=generator)]

        background = 0.2 + 0.6 * torch.rand(n, 3, 1, 1, generator=generator)
        images = (background * (1 + 0.15 * smooth_patterns(n, size, generator, grid=4))).clamp(0, 1)
        masks = torch.zeros(n, size, size, dtype=torch.long)
        ignored = torch.zeros(n, size, size, dtype=torch.bool)
        for _ in range(p.shapes_per_image):
            shape = torch.multinomial(weights, n, replacement=True, generator=generator)
            mask = shape_masks(shape, size, generator, radius=(0.18, 0.1))
            colour = (1 - background + 0.3 * torch.rand(n, 3, 1, 1, generator=generator) - 0.15).clamp(0.05, 0.95)
            texture = colour * (1 + 0.1 * smooth_patterns(n, size, generator, grid=8))
            images = torch.where(mask.unsqueeze(1), texture, images)
            masks = torch.where(mask, (shape + 1).view(n, 1, 1), masks)
            ignored = (ignored & ~mask) | _outline(mask)
        scale = torch.where(night.bool(), 0.45, 1.0).view(n, 1, 1, 1)
        noise = p.noise * torch.where(night.bool(), 2.0, 1.0).view(n, 1, 1, 1)
        images = (images * scale + noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)
        if p.ignore_boundary:
            masks = masks.masked_fill(ignored, IGNORE_INDEX)
        return SplitData(
            images=images.contiguous(),
            attributes={"lighting": night},
            values={"lighting": LIGHTING},
            masks=masks.to(torch.uint8),
            mask_classes=CLASSES,
            ignore_index=IGNORE_INDEX,
        )
