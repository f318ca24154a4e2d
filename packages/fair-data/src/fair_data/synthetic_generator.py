"""A generator of the synthetic dataset's images with an editable colourfulness code (`fair augment`).

The stand-in for DiffAE on the synthetic biased dataset, so that the VLBC pipeline (generate,
label, edit the protected attribute, balance, fine-tune) runs end to end on a CPU with no download:

* ``codes`` ``(N, 1)``: the colourfulness ``t``; an image is the grayscale rendering blended into
  the colour one with weight ``sigmoid(4 t)`` (``t = +-2``: colour or grayscale). It is the only
  thing an editor moves, as z_sem is DiffAE's.
* ``noise`` ``(N, 1 + 9 + 3 S^2)``: the shape code and every appearance draw of
  :func:`~fair_data.synthetic.render_appearance` (hue, luminance, contrast, placement, pixel
  noise), DiffAE's x_T: decoding edited codes with the same noise keeps the shape and layout.

``sample(n, seed)`` draws shapes uniformly and colour or grayscale with probability
``p_colour``, so the (class, group) cells VLBC edits are all well represented.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fair_core.augment import Generator

from .synthetic import SHAPES, draw_appearance, render_appearance


class SyntheticGeneratorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_classes: int = Field(2, ge=2, le=len(SHAPES))
    image_size: int = Field(32, ge=16, le=128)
    luminance_contrast: tuple[float, float] = (0.04, 0.2)
    chroma: float = Field(0.35, ge=0, le=0.5)
    noise: float = Field(0.04, ge=0, le=0.5)
    p_colour: float = Field(0.5, ge=0, le=1, description="probability that a sampled image is in colour")
    spread: float = Field(0.25, ge=0, description="std of the colourfulness code around +-2")


class SyntheticGenerator(Generator):
    """The synthetic dataset's shapes, with colourfulness as the code (no weights)."""

    Params = SyntheticGeneratorParams
    description = "the synthetic dataset's renderer; code: colourfulness (no weights, CPU)"

    def sample(self, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        p = self.params
        generator = torch.Generator().manual_seed(seed)
        shape = torch.randint(p.num_classes, (n,), generator=generator)
        colour = torch.rand(n, generator=generator) < p.p_colour
        t = torch.where(colour, 2.0, -2.0) + p.spread * torch.randn(n, generator=generator)
        draws = draw_appearance(n, p.image_size, generator)
        codes, noise = t.unsqueeze(1), torch.cat([shape.float().unsqueeze(1), draws], 1)
        return self.decode(codes, noise), codes, noise

    def decode(self, codes: Tensor, noise: Tensor) -> Tensor:
        shape = noise[:, 0].round().long()
        return render_appearance(shape, torch.sigmoid(4 * codes[:, 0].cpu()), noise[:, 1:].cpu(), self.params)
