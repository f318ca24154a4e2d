"""BC+BB: bias-contrastive and bias-balanced learning (Hong & Yang, "Unbiased Classification
Through Bias-Contrastive and Bias-Balanced Learning", NeurIPS 2021).

Loss per step, with a main batch (size ``train.batch_size``) and a second, bias-weighted batch:

    L = ce_weight * CE(z + [bb] log p(y|b), y)  +  L_BC

* **BB** (bias-balanced): during training the logits of each sample get ``log p(y | b)`` added
  (the class prior within its group), so the model need not learn the prior from the bias;
  inference uses the plain logits.
* **BC** (bias-contrastive): a supervised contrastive loss (temperature ``tau``) over two
  augmented views of the second batch, L2-normalised features, no projection head. Positives
  of anchor ``i`` are the other views with the same label and a *different* bias:

      L_BC = -(1/|A|) sum_{i in A} (1/|P(i)|) sum_{p in P(i)} log( exp(s_ip/tau) / sum_{a != i} exp(s_ia/tau) )

  ``A`` = anchors with at least one positive. The second batch is drawn with weights
  ``1 / p(b | y)`` (clipped at ``max_weight_ratio`` times the smallest weight), so bias-conflicting
  samples appear often enough to form positives.

Defaults from the paper and the ISSTA 2024 study: ``ce_weight = 0.01``, ``tau = 0.07``, second
batch 64, clip at 10x; the study ran with BB off, the paper with BB on (default here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fair_core import FairDataset, Method, TrainingData

from .augment import random_crop_flip


class BCBBParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ce_weight: float = Field(0.01, ge=0, description="weight of the cross-entropy term")
    temperature: float = Field(0.07, gt=0)
    contrastive_batch_size: int = Field(64, ge=2)
    max_weight_ratio: float = Field(10.0, ge=1, description="clip sampling weights at this multiple of the smallest")
    bias_balanced: bool = Field(True, description="add log p(y|b) to the training logits (BB)")


def bias_contrastive_loss(features: Tensor, labels: Tensor, biases: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss whose positives share the label and differ in bias."""
    n = features.shape[0]
    features = F.normalize(features, dim=1)
    logits = features @ features.T / temperature
    not_self = ~torch.eye(n, dtype=torch.bool, device=features.device)
    positives = (labels[:, None] == labels[None, :]) & (biases[:, None] != biases[None, :]) & not_self
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    anchors = positives.any(dim=1)
    if not anchors.any():
        return features.sum() * 0.0
    per_anchor = (log_prob * positives).sum(1)[anchors] / positives.sum(1)[anchors]
    return -per_anchor.mean()


class BiasContrastive(Method):
    """Bias-contrastive loss on a bias-weighted second loader, plus bias-balanced cross-entropy."""

    Params = BCBBParams
    stage = "in-processing"
    uses_task_loss = False  # its own loss (train.loss other than cross_entropy is refused)
    description = "bias-contrastive (cross-bias positives) + bias-balanced cross-entropy"
    paper = "Hong & Yang, Unbiased Classification Through Bias-Contrastive and Bias-Balanced Learning, NeurIPS 2021"

    def prepare_data(self, train_set: FairDataset, generator: torch.Generator) -> TrainingData:
        counts = train_set.cell_counts().double()  # counts[y, b]
        p_b_given_y = counts / counts.sum(1, keepdim=True).clamp_min(1)
        p_y_given_b = counts / counts.sum(0, keepdim=True).clamp_min(1)
        self.log_prior = torch.log(p_y_given_b.clamp_min(1e-12)).float().T  # [b, y]: log p(y | b)
        weights = 1.0 / p_b_given_y[train_set.targets, train_set.groups]
        self.sampling_weights = torch.minimum(weights, weights.min() * self.params.max_weight_ratio).float()
        self.train_set = train_set
        return TrainingData(train_set)

    def setup(self, model, trainer) -> None:
        self.contrastive_loader = trainer.make_loader(
            self.train_set, self.params.contrastive_batch_size, sampling_weights=self.sampling_weights, seed_offset=1
        )

    def on_epoch_start(self, model, trainer) -> None:
        self._contrastive_batches = iter(self.contrastive_loader)

    def _next_contrastive_batch(self) -> dict[str, Tensor]:
        try:
            return next(self._contrastive_batches)
        except StopIteration:
            self._contrastive_batches = iter(self.contrastive_loader)
            return next(self._contrastive_batches)

    def training_step(self, model, batch, trainer):
        logits = model(batch["image"])
        if self.params.bias_balanced:
            logits = logits + self.log_prior.to(logits.device)[batch["group"]]
        ce = F.cross_entropy(logits, batch["target"])
        extra = self._next_contrastive_batch()
        views = torch.cat([random_crop_flip(extra["image"]), random_crop_flip(extra["image"])])
        _, features = model(views, with_features=True)
        bc = bias_contrastive_loss(features, extra["target"].repeat(2), extra["group"].repeat(2), self.params.temperature)
        loss = self.params.ce_weight * ce + bc
        trainer.step(loss)
        return {"loss": loss.detach(), "ce": ce.detach(), "bc": bc.detach()}
