"""Adv: adversarial debiasing with a confusion loss (Alvi et al., "Turning a Blind Eye: Explicit
Removal of Biases and Variation from Deep Neural Network Embeddings", ECCV-W 2018; the baseline
of Wang et al., CVPR 2020).

Network: encoder -> ``Linear(D, hidden) - ReLU - Dropout(0.5)`` -> class head ``Linear(hidden, C)``
and domain head ``Linear(hidden, B)``. Training alternates by epoch:

* when ``epoch % training_ratio == 0``: update encoder and class head with
  ``L = CE(class_logits, y) + alpha * L_conf``,
  ``L_conf = -(1/N) sum_i (1/B) sum_k log softmax(domain_logits_i)_k`` (cross-entropy against the
  uniform distribution over domains: the features should not reveal the group);
* other epochs: train only the domain head, ``CE(domain_logits, b)`` on detached features.

Defaults: ``alpha = 1``, ``training_ratio = 3`` (the study's UTKFace/CIFAR-10S setting; 2 for CelebA).

Only one epoch in ``training_ratio`` trains the encoder and class head, so Adv needs
``training_ratio`` times ERM's epochs for the same number of class-training steps
(``examples/adv.json``: 36 against ERM's 12). At ERM's 12 epochs it has had 4 class epochs and,
like ERM after 4 epochs on the synthetic dataset, still predicts from colour alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from fair_core import Method


class AdvParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, ge=0, description="weight of the confusion loss")
    training_ratio: int = Field(3, ge=2, description="one epoch of main training every training_ratio epochs")
    hidden: int = Field(512, ge=1, description="width of the shared layer before the two heads")
    dropout: float = Field(0.5, ge=0, lt=1)


class AdversarialNet(nn.Module):
    """Encoder, a shared hidden layer, a class head and a domain (protected group) head."""

    def __init__(self, backbone: nn.Module, hidden: int, dropout: float, num_classes: int, num_groups: int):
        super().__init__()
        self.encoder = backbone.encoder
        self.neck = nn.Sequential(nn.Linear(backbone.feature_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)
        self.domain_head = nn.Linear(hidden, num_groups)

    def forward(self, images: Tensor, with_domain: bool = False, detach_features: bool = False):
        features = self.neck(self.encoder(images))
        logits = self.head(features)
        if not with_domain:
            return logits
        return logits, self.domain_head(features.detach() if detach_features else features)


def confusion_loss(domain_logits: Tensor) -> Tensor:
    """Cross-entropy between the domain prediction and the uniform distribution over domains."""
    return -F.log_softmax(domain_logits, dim=1).mean()


class Adversarial(Method):
    """Alternate between fooling a domain classifier and training it."""

    Params = AdvParams
    stage = "in-processing"
    uses_task_loss = False  # its own loss (train.loss other than cross_entropy is refused)
    description = "class + domain heads, confusion loss, alternating epochs"
    paper = "Alvi et al., Turning a Blind Eye, ECCV Workshops 2018"
    ddp_find_unused_parameters = True  # domain epochs leave the encoder unused

    def build_model(self, backbone: nn.Module) -> nn.Module:
        p = self.params
        return AdversarialNet(backbone, p.hidden, p.dropout, self.info.num_classes, self.info.num_groups)

    def configure_optimizers(self, model: nn.Module, make_optimizer) -> list[torch.optim.Optimizer]:
        main = [p for name, p in model.named_parameters() if not name.startswith("domain_head.")]
        return [make_optimizer(main), make_optimizer(model.domain_head.parameters())]

    def is_main_epoch(self, epoch: int) -> bool:
        return epoch % self.params.training_ratio == 0

    def training_step(self, model, batch, trainer):
        main_epoch = self.is_main_epoch(trainer.epoch)
        logits, domain_logits = model(batch["image"], with_domain=True, detach_features=not main_epoch)
        domain_accuracy = (domain_logits.argmax(1) == batch["group"]).float().mean().detach()
        if main_epoch:
            loss = F.cross_entropy(logits, batch["target"]) + self.params.alpha * confusion_loss(domain_logits)
            trainer.step(loss, trainer.optimizers[0])
        else:
            loss = F.cross_entropy(domain_logits, batch["group"])
            trainer.step(loss, trainer.optimizers[1])
        return {"loss": loss.detach(), "domain_accuracy": domain_accuracy, "main_phase": float(main_epoch)}
