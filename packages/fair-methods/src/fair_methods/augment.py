"""Batch augmentation on tensors, per sample: random crop after zero padding and horizontal flip
(the standard CIFAR-style views used by contrastive methods). Randomness comes from torch's
global generator, which the runner seeds per epoch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(images: Tensor, padding: int = 4) -> Tensor:
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,)).tolist()
    dx = torch.randint(0, 2 * padding + 1, (n,)).tolist()
    crops = torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy, dx, strict=True))])
    flip = (torch.rand(n) < 0.5).to(images.device).view(n, 1, 1, 1)
    return torch.where(flip, crops.flip(-1), crops)
