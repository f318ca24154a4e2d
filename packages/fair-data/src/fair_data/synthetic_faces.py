"""Synthetic "faces" for the verification task: identities generated from a seed, no download.

Each image is a face-like template (an oval with eyes and a mouth) on a plain background, whose
appearance carries the identity:

* Every protected group ``g`` has its own tone (the mean colour of its faces) and its own *basis*
  of smooth random patterns ``B_g`` (``basis_size`` patterns of the image size). An identity of
  group ``g`` is a random combination ``z . B_g`` of its group's basis added to the template, so
  the features that tell two identities apart differ between groups, as the facial features that
  separate identities differ between demographic groups of real faces.
* Each image of an identity adds nuisance: a pose-like shift of a few pixels, a brightness change
  and pixel noise.
* The training split is skewed: ``majority_share`` of its identities are in group 0, which also
  has more images per identity; the other groups share the rest with ``minority_images`` images
  each. A model trained on it learns group 0's basis best, so the minority groups' identities are
  verified worse. The validation and test splits hold new identities (open set, as in face
  verification), with the same number of identities and images in every group (as RFW does).
* ``pairs``: the test and validation splits also give a pair list, per identity ``pairs_per_identity``
  positive pairs and as many negative pairs with identities of the same group (RFW's layout).

The bases depend on ``seed`` only, so the splits share one population; identities and images
are drawn from one generator per split. The same seed gives the same data on every machine.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from fair_core import DatasetBuilder, Preprocessing, SplitData

from .images import smooth_patterns

GROUP_NAMES = ("A", "B", "C", "D")
TONES = torch.tensor([[0.78, 0.62, 0.52], [0.42, 0.30, 0.24], [0.62, 0.50, 0.36], [0.55, 0.45, 0.42]])


class SyntheticFacesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_groups: int = Field(2, ge=2, le=len(GROUP_NAMES), description="protected groups (A is the training majority)")
    image_size: int = Field(32, ge=16, le=128)
    train_identities: int = Field(200, ge=4)
    majority_share: float = Field(0.85, gt=0, lt=1, description="share of the training identities in group A")
    majority_images: int = Field(10, ge=2, description="training images of each group-A identity")
    minority_images: int = Field(4, ge=2, description="training images of each identity of the other groups")
    eval_identities: int = Field(40, ge=2, description="identities of each group in the val and test splits")
    eval_images: int = Field(5, ge=2, description="images of each val / test identity")
    pairs_per_identity: int = Field(3, ge=0, description="positive (and as many negative) pairs per eval identity")
    basis_size: int = Field(12, ge=1, description="smooth patterns per group that identities combine")
    identity_strength: float = Field(0.25, gt=0, description="relative amplitude of the identity pattern (it scales "
                                     "with the tone: darker faces show less contrast)")
    shift: int = Field(2, ge=0, description="largest pose-like shift in pixels")
    noise: float = Field(0.05, ge=0, le=0.5, description="std of the pixel noise")
    seed: int = Field(0, description="seed of the data generator (independent of train.seed)")

    @model_validator(mode="after")
    def _every_group_trains(self) -> SyntheticFacesParams:
        minority = round(self.train_identities * (1 - self.majority_share))
        if minority < self.num_groups - 1 or self.train_identities - minority < 1:
            raise ValueError("train_identities x majority_share leaves a group without training identities")
        return self


def _template(size: int) -> tuple[Tensor, Tensor]:
    """The face oval and the darker features (eyes, mouth) as ``(size, size)`` soft masks."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = coords.view(-1, 1), coords.view(1, -1)
    face = torch.sigmoid((1 - ((x - 0.5) / 0.36) ** 2 - ((y - 0.52) / 0.44) ** 2) * 12)

    def blob(cx: float, cy: float, rx: float, ry: float) -> Tensor:
        return torch.exp(-(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2))

    features = blob(0.36, 0.42, 0.07, 0.04) + blob(0.64, 0.42, 0.07, 0.04) + blob(0.5, 0.72, 0.13, 0.035)
    return face, features.clamp(max=1)


def _shift(images: Tensor, largest: int, generator: torch.Generator) -> Tensor:
    """Each image translated by a random (dx, dy) in [-largest, largest], edges replicated."""
    n, size = images.shape[0], images.shape[-1]
    dx, dy = (torch.randint(-largest, largest + 1, (n,), generator=generator) for _ in range(2))
    padded = F.pad(images, (largest,) * 4, mode="replicate")
    out = torch.empty_like(images)
    for x in range(-largest, largest + 1):
        for y in range(-largest, largest + 1):
            chosen = (dx == x) & (dy == y)
            out[chosen] = padded[chosen, :, largest - y: largest - y + size, largest - x: largest - x + size]
    return out


class SyntheticFaces(DatasetBuilder):
    """Identities per protected group, skewed towards group A in training (verification task)."""

    Params = SyntheticFacesParams
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_target = "identity"
    default_sensitive = ("group",)
    tasks: ClassVar[tuple[str, ...]] = ("verification",)
    description = "in-memory synthetic identities in 2-4 groups, training skewed to one group (verification)"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.image_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def bases(self) -> Tensor:
        """The identity bases of the groups, ``(G, basis_size, 3, S, S)`` (from ``seed`` only)."""
        p = self.params
        generator = torch.Generator().manual_seed(p.seed * 7919 + 17)
        return torch.stack([smooth_patterns(p.basis_size, p.image_size, generator) for _ in range(p.num_groups)])

    def _identity_plan(self, split: str) -> tuple[Tensor, Tensor]:
        """Group of every identity and number of images of each."""
        p = self.params
        if split == "train":
            minority = round(p.train_identities * (1 - p.majority_share))
            groups = [0] * (p.train_identities - minority) + [1 + k % (p.num_groups - 1) for k in range(minority)]
            groups = torch.tensor(groups)
            images = torch.where(groups == 0, p.majority_images, p.minority_images)
        else:
            groups = torch.arange(p.num_groups).repeat_interleave(p.eval_identities)
            images = torch.full_like(groups, p.eval_images)
        return groups, images

    def read_split(self, split: str) -> SplitData:
        p = self.params
        generator = torch.Generator().manual_seed(p.seed * 3 + self.splits.index(split))
        bases = self.bases()
        identity_groups, counts = self._identity_plan(split)
        num_identities = identity_groups.numel()
        codes = torch.randn(num_identities, p.basis_size, generator=generator)
        patterns = torch.einsum("ik,ikchw->ichw", codes / p.basis_size**0.5, bases[identity_groups])
        identity = torch.arange(num_identities).repeat_interleave(counts)
        group = identity_groups[identity]
        n, size = identity.numel(), p.image_size

        face, features = _template(size)
        tone = TONES[group].view(n, 3, 1, 1)
        background = 0.15 + 0.7 * torch.rand(n, 3, 1, 1, generator=generator)
        skin = tone * (1 - 0.55 * features) * (1 + p.identity_strength * patterns[identity])
        images = face * skin + (1 - face) * background
        images = images * (0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=generator))  # lighting
        if p.shift:
            images = _shift(images, p.shift, generator)
        images = images + p.noise * torch.randn(images.shape, generator=generator)
        names = tuple(f"{split}_{GROUP_NAMES[int(g)]}{i:04d}" for i, g in enumerate(identity_groups.tolist()))
        return SplitData(
            images=images.clamp(0, 1).contiguous(),
            attributes={"identity": identity, "group": group},
            values={"identity": names, "group": GROUP_NAMES[: p.num_groups]},
            pairs=None if split == "train" else self._pairs(identity, identity_groups, generator),
        )

    def _pairs(self, identity: Tensor, identity_groups: Tensor, generator: torch.Generator) -> Tensor:
        """Rows ``(a, b, same)``: per identity, positive pairs of two of its images and negative
        pairs with an image of another identity of its group."""
        p = self.params
        rows: list[list[int]] = []
        start = torch.cumsum(torch.bincount(identity, minlength=identity_groups.numel()), 0) - torch.bincount(identity)
        count = torch.bincount(identity)
        for i in range(identity_groups.numel()):
            same_group = (identity_groups == identity_groups[i]).nonzero().flatten()
            others = same_group[same_group != i]
            for _ in range(p.pairs_per_identity):
                a, b = torch.randperm(int(count[i]), generator=generator)[:2].tolist()
                rows.append([int(start[i]) + a, int(start[i]) + b, 1])
                j = int(others[torch.randint(len(others), (1,), generator=generator)])
                a = int(torch.randint(int(count[i]), (1,), generator=generator))
                b = int(torch.randint(int(count[j]), (1,), generator=generator))
                rows.append([int(start[i]) + a, int(start[j]) + b, 0])
        return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
