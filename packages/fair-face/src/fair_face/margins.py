"""Margin heads of face recognition: softmax, CosFace and ArcFace, as reusable modules.

A head is split in two so that its weights are used inside the model's ``forward`` (DDP sees
them) while the margin, which needs the labels, is applied in the loss:

* ``head(embeddings)`` gives the *scores* ``(N, C)``: the logits ``W e + b`` of the softmax head,
  or the cosines ``cos(theta_ij) = norm(e_i) . norm(W_j)`` of the cosine heads. These are also
  what a trained model's classifier outputs at inference.
* ``head.logits(scores, labels, extra_margin)`` gives the training logits with the margin at each
  sample's label ``y_i`` (and the scale ``s``); cross-entropy of them is the loss.

Formulas (``theta = arccos(cos)``, ``1[j = y_i]`` the label indicator):

* softmax: ``logit_ij = W_j . e_i + b_j`` (no margin, no scale).
* CosFace (Wang et al., CVPR 2018, "CosFace: Large Margin Cosine Loss"):
  ``logit_ij = s (cos theta_ij - 1[j = y_i] (m + extra_i))``. MixFairFace adds its identity bias
  ``eps_i`` (and the CIFP margin) as ``extra_i``. insightface uses m = 0.40, MixFairFace 0.35.
* ArcFace (Deng et al., CVPR 2019, "ArcFace: Additive Angular Margin Loss"):
  ``logit_iy = s cos(theta_iy + m)`` when ``cos theta_iy > cos(pi - m)``, else
  ``s (cos theta_iy - m sin m)`` (insightface's ``mm = sin(pi - m) m``: keeps the target logit
  monotonic in theta past ``pi - m``); with ``easy_margin``: ``cos(theta + m)`` when
  ``cos theta > 0``, else ``cos theta``. ``extra_i`` adds to the angular margin ``m``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

HeadKind = Literal["softmax", "cosface", "arcface"]


class MarginParams(BaseModel):
    """The identity head of a face method (reused in the ``Params`` of methods)."""

    model_config = ConfigDict(extra="forbid")
    head: HeadKind = Field("cosface", description="softmax (linear), cosface (additive cosine margin) or arcface "
                                                  "(additive angular margin)")
    s: float = Field(64.0, gt=0, le=1024, description="scale of the cosine logits")
    m: float = Field(0.35, ge=0, lt=1.5, description="margin (CosFace: on the cosine, ArcFace: on the angle in radians)")
    easy_margin: bool = Field(False, description="ArcFace: apply the margin only where cos theta > 0")


class MarginHead(nn.Module):
    """Base of the identity heads: ``forward`` gives scores, :meth:`logits` the training logits."""

    def logits(self, scores: Tensor, labels: Tensor, extra_margin: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class SoftmaxHead(MarginHead):
    """A linear classifier: scores are the logits, with no margin."""

    def __init__(self, embedding_dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(embedding_dim, num_classes)

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.linear(embeddings)

    def logits(self, scores: Tensor, labels: Tensor, extra_margin: Tensor | None = None) -> Tensor:
        if extra_margin is not None:
            raise ValueError("the softmax head takes no margin")
        return scores


class CosineHead(MarginHead):
    """Cosines of the embeddings with normalised class weights ``W (C, D)`` (insightface's init:
    normal with std 0.01)."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float, m: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim).normal_(0, 0.01))
        self.s, self.m = s, m

    def forward(self, embeddings: Tensor) -> Tensor:
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    @staticmethod
    def _at_label(scores: Tensor, labels: Tensor) -> Tensor:
        return scores.gather(1, labels.view(-1, 1)).squeeze(1)

    @staticmethod
    def _replace_label(scores: Tensor, labels: Tensor, values: Tensor) -> Tensor:
        return scores.scatter(1, labels.view(-1, 1), values.view(-1, 1).to(scores.dtype))


class CosFaceHead(CosineHead):
    """``s (cos theta_ij - 1[j = y_i] (m + extra_i))``."""

    def logits(self, scores: Tensor, labels: Tensor, extra_margin: Tensor | None = None) -> Tensor:
        margin = self.m if extra_margin is None else self.m + extra_margin
        target = self._at_label(scores, labels) - margin
        return self.s * self._replace_label(scores, labels, target)


class ArcFaceHead(CosineHead):
    """``s cos(theta_iy + m)`` at the label, with insightface's fallback past ``pi - m``."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float, m: float, easy_margin: bool = False):
        super().__init__(embedding_dim, num_classes, s, m)
        self.easy_margin = easy_margin

    def logits(self, scores: Tensor, labels: Tensor, extra_margin: Tensor | None = None) -> Tensor:
        m = torch.as_tensor(self.m, dtype=scores.dtype, device=scores.device)
        if extra_margin is not None:
            m = m + extra_margin
        cos = self._at_label(scores, labels).clamp(-1, 1)
        sin = (1 - cos * cos).clamp_min(0).sqrt()
        with_margin = cos * torch.cos(m) - sin * torch.sin(m)  # cos(theta + m)
        if self.easy_margin:
            target = torch.where(cos > 0, with_margin, cos)
        else:
            target = torch.where(cos > torch.cos(math.pi - m), with_margin, cos - torch.sin(math.pi - m) * m)
        return self.s * self._replace_label(scores, labels, target)


def build_margin_head(params: MarginParams, embedding_dim: int, num_classes: int) -> MarginHead:
    """The head ``params.head`` names."""
    if params.head == "softmax":
        return SoftmaxHead(embedding_dim, num_classes)
    if params.head == "cosface":
        return CosFaceHead(embedding_dim, num_classes, params.s, params.m)
    return ArcFaceHead(embedding_dim, num_classes, params.s, params.m, params.easy_margin)


def margin_loss(head: MarginHead, scores: Tensor, labels: Tensor, extra_margin: Tensor | None = None) -> Tensor:
    """Cross-entropy of the head's training logits."""
    return F.cross_entropy(head.logits(scores, labels, extra_margin), labels)
